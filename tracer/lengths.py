"""Example sizes of the traces, and the lengths a trace may use: within the context length the config declares,
past the windows it declares, and told apart from the batch by size (primes no model dimension is expected to equal).
"""
from __future__ import annotations

from core.context import context_length, sliding_windows

# Example batch and new-token count: primes no model dimension is expected to equal, so a size tells its role.
B0, S0 = 3, 17
# Prefill lengths for a model whose code loops over the new tokens in Python, so export must fix S: one trace per
# length, folded into one graph symbolic in S by graph.loops (four points: a degree-2 fit and a check).
LOOP_LENGTHS = (5, 6, 7, 8)
# Cached length of the meta prefill: a small prime first (recurrent fallbacks loop over it in Python); if the trace
# must branch on the length (a sliding-window cache that is not yet full), a prime past every usual window, so the
# window layers hold their steady state and only the full-attention caches grow with L.
L0_TRIES = (173, 131071)

# a second batch size, to tell the batch dims of the cache from model dims that happen to equal B0
B1 = 5

# Positions past the cached ones a decode step reads: the new token's, and the offset some position tables add to
# every position (a padding index + 1).
_POSITION_MARGIN = 4


def is_prime(n: int) -> bool:
    return n > 1 and not any(n % d == 0 for d in range(2, int(n ** 0.5) + 1))


def next_prime(n: int) -> int:
    n += 1
    while not is_prime(n):
        n += 1
    return n


def _prime_at_most(n: int) -> int | None:
    while n > 1 and not is_prime(n):
        n -= 1
    return n if n > 1 else None


def _length_cap(config) -> int | None:
    """The longest cached length a decode trace may use: a prime the model's position table still covers with the
    decode token's position (and a position offset) added; None where the config declares no context length."""
    limit = context_length(config)
    return _prime_at_most(limit - _POSITION_MARGIN) if limit else None


def decode_lengths(config) -> tuple[int, ...]:
    """Cached lengths to try for the decode trace. A declared window gets a length past it first, so the window
    layers are traced in their steady state (cache full) and the trace shows their window. None is past the
    model's context length: a length its position table does not cover fails in the model's own code (a learned
    position embedding of fixed size), so a longer try is cut to the longest length the table covers."""
    windows = list(sliding_windows(config).values())
    tries = (next_prime(max(windows)), *L0_TRIES) if windows else L0_TRIES
    cap = _length_cap(config)
    if cap is None or cap <= B1:  # no context length, or one too short to tell L from B by size
        return tries
    return tuple(dict.fromkeys(min(length, cap) for length in tries))


FOLD_POINTS = 4  # fixed-length traces folded into one graph: a degree-2 fit through three and a check on the fourth


def fold_lengths(config) -> tuple[int, ...]:
    """Cached lengths at which a decode that fixes L is traced and folded: consecutive primes from the first decode
    length (past every declared window), within the model's context length (downwards where it ends)."""
    start, cap = decode_lengths(config)[0], _length_cap(config)
    lengths = [start]
    while len(lengths) < FOLD_POINTS and (cap is None or next_prime(lengths[-1]) <= cap):
        lengths.append(next_prime(lengths[-1]))
    while len(lengths) < FOLD_POINTS:
        below = _prime_at_most(lengths[0] - 1)
        if below is None or below <= B1:  # a length no larger than a batch size would be read as one
            break
        lengths.insert(0, below)
    return tuple(lengths)


def compression_rate(l0: int, c0: int, l1: int, c1: int) -> int | None:
    """The rate r of a cache dim that holds floor(L / r) entries (a cache compressed along the length, r tokens to
    one entry), fitted from its sizes c0, c1 at cached lengths l0 < l1: the largest r that gives c1 at l1 (exact
    where l1 is long beside r * r), where it also gives c0 at l0; None where none does (a constant, or a buffer of
    the tokens not yet compressed, L mod r)."""
    if c1 <= c0:
        return None
    rate = l1 // c1
    return rate if rate >= 2 and l0 // rate == c0 else None


def compressed_length(config, rate: int) -> int | None:
    """The shortest cached length (a prime) at which a cache compressed at `rate` holds two entries: export fixes a
    dim of size 1 to that value. None where the model's context length is shorter."""
    length = next_prime(2 * rate - 1)
    cap = _length_cap(config)
    return length if cap is None or length <= cap else None


def compressed_role(rate: int) -> str:
    """A compressed cache dim's size in L, as the decode graph writes it."""
    return f"floor(L/{rate})"

