"""torch.export (non-strict) of the prefill and decode steps with symbolic batch, new-token and cache lengths.

Prefill: B sequences of S new tokens, no cache.  Decode: one new token per sequence over L cached tokens.

Decode holds the cache on the wrapper: a meta prefill of B0 x L0 tokens builds whatever cache the model uses
(KV, sliding-window, Mamba conv/SSM states...). The wrapper takes that cache's tensors as export inputs and puts them
back into the cache object before each call, so their batch and length dims can be symbolic. Which dims are B and L
is read from their sizes: B0 and L0 are primes no model dimension is expected to equal. A sliding-window layer
whose window is shorter than L0 stores a fixed window, so its cache stays constant, as engines store it. L0 stays
within the config's context length. Where the model's code fixes L whatever L0 (LengthFixed), decode is traced at
a few fixed L and folded into one graph in L by the caller (graph.loops), as a prefill that loops over S is.
"""
from __future__ import annotations

import contextlib
import inspect
import re
from dataclasses import dataclass

import sympy
import torch

from tracer.errors import UserError
from tracer.meta import one_line, quiet

B0, S0 = 3, 17
# Prefill lengths for a model whose code loops over the new tokens in Python, so export must fix S: one trace per
# length, folded into one graph symbolic in S by graph.loops (four points: a degree-2 fit and a check).
LOOP_LENGTHS = (5, 6, 7, 8)
# Cached length of the meta prefill: a small prime first (recurrent fallbacks loop over it in Python); if the trace
# must branch on the length (a sliding-window cache that is not yet full), a prime past every usual window, so the
# window layers hold their steady state and only the full-attention caches grow with L.
L0_TRIES = (173, 131071)


class SequenceLoop(Exception):
    """Export had to fix the new-token count S: the model's code loops over the sequence in Python."""


class LengthFixed(Exception):
    """Export had to fix the cached length L at every length tried: the model's decode code reads it as a Python
    number (int() of the cache's length, a list as long as the sequence), or takes the whole sequence at each step
    (`whole_sequence`). Decode is then traced at fixed lengths (B stays symbolic) and folded into one graph in L."""

    def __init__(self, message: str, whole_sequence: bool = False):
        super().__init__(message)
        self.whole_sequence = whole_sequence


@dataclass
class ExportedPhase:
    phase: str                       # "prefill" | "decode"
    program: torch.export.ExportedProgram
    symbols: dict[str, str]          # export's symbol name -> "B" | "S" | "L"
    note: str = ""                   # how the phase was traced, where it is not the usual way


def _forward_kwargs(model) -> dict:
    # Engines compute logits for the last position only; ask the model to do the same where it can.
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


class _Prefill(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False, **self.extra).logits


class _Decode(torch.nn.Module):
    def __init__(self, model, cache, setters, lengths, length_ref, cache_arg="past_key_values"):
        super().__init__()
        self.model = model
        self.cache = cache
        self.cache_arg = cache_arg    # the forward argument the cache goes back in (the output field it came from)
        self.setters = setters
        self.lengths = lengths        # setters of the cache's plain int counters equal to the cached length
        self.length_ref = length_ref  # (state index, dim) of one L-sized dim, to read the symbolic length from
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids, states):
        for put, tensor in zip(self.setters, states):
            put(tensor)
        if self.length_ref is not None:
            length = states[self.length_ref[0]].shape[self.length_ref[1]]
            for put in self.lengths:
                put(length)
        return self.model(input_ids=input_ids, use_cache=True, **{self.cache_arg: self.cache}, **self.extra).logits


def cache_contents(cache, length: int):
    """Every tensor a cache object holds, and every plain int counter equal to the cached length, each with a
    setter that puts a replacement in its place.

    Walks attributes, lists and dicts generically: KV layers, sliding layers and recurrent states alike.
    """
    tensors: list[tuple[torch.Tensor, callable]] = []
    counters: list[callable] = []
    seen: set[int] = set()

    def walk(obj, put, get, depth):
        if isinstance(obj, torch.Tensor):
            tensors.append((obj, put))
            return
        if type(obj) is int:
            if obj == length and put is not None:
                counters.append(put)
            return
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                walk(item, lambda v, o=obj, i=i: o.__setitem__(i, v), lambda o=obj, i=i: o[i], depth + 1)
        elif isinstance(obj, tuple) and put is not None:
            # immutable: an item is replaced by putting a new tuple (of the same type) where the current one is
            for i, item in enumerate(obj):
                walk(item, lambda v, i=i, put=put, get=get: put(_replaced(get(), i, v)),
                     lambda i=i, get=get: get()[i], depth + 1)
        elif isinstance(obj, dict):
            for key, item in obj.items():
                walk(item, lambda v, o=obj, k=key: o.__setitem__(k, v), lambda o=obj, k=key: o[k], depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            for key, item in list(vars(obj).items()):
                if not key.startswith("__"):
                    walk(item, lambda v, o=obj, k=key: setattr(o, k, v), lambda o=obj, k=key: getattr(o, k),
                         depth + 1)

    walk(cache, None, None, 0)
    return tensors, counters


def _replaced(items: tuple, i: int, value) -> tuple:
    new = [value if j == i else item for j, item in enumerate(items)]
    return type(items)(*new) if hasattr(items, "_fields") else type(items)(new)


@contextlib.contextmanager
def _tracing_branches():
    """Make transformers take the branches it keeps for compiled / exported graphs.

    Non-strict export does not count as compiling, so models would take eager-only branches (checking a mask's
    values with .item(), which a meta tensor cannot answer). Export is a trace: say so for its duration.
    torch.distributions checks its arguments' values by default (a Categorical's probabilities are a simplex), a
    branch on data a trace does not have: off for the duration, as for any traced graph."""
    original = torch.compiler.is_compiling
    validate = torch.distributions.Distribution._validate_args
    torch.compiler.is_compiling = lambda: True
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with _caches_without_attention():
            yield
    finally:
        torch.compiler.is_compiling = original
        torch.distributions.Distribution.set_default_validate_args(validate)


@contextlib.contextmanager
def _caches_without_attention():
    """A cache of recurrent layers only (a hybrid config whose layer list holds no attention layer) tracks no
    sequence length, and transformers' Cache refuses the questions the model's own code still asks it while
    building the masks of its attention layers (of which it has none): get_seq_length, get_mask_sizes. Such a cache
    is answered as transformers answers for a cache that holds no attention layer yet: no cached tokens, masks over
    the new tokens only. Nothing of the model reads those masks; the recurrent layers read their own states."""
    try:
        from transformers.cache_utils import Cache, CacheLayerMixin
    except ImportError:  # a transformers without per-layer caches
        yield
        return
    seq_length, mask_sizes = Cache.get_seq_length, Cache.get_mask_sizes

    def lengthless(cache, layer_idx) -> bool:
        layers = getattr(cache, "layers", None)
        return (layer_idx == 0 and isinstance(layers, list) and bool(layers)
                and not any(isinstance(layer, CacheLayerMixin) for layer in layers))

    def get_seq_length(self, layer_idx: int = 0, *args, **kwargs):
        return 0 if lengthless(self, layer_idx) else seq_length(self, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query_length, layer_idx, *args, **kwargs):
        if lengthless(self, layer_idx):
            return query_length, 0
        return mask_sizes(self, query_length, layer_idx, *args, **kwargs)

    Cache.get_seq_length, Cache.get_mask_sizes = get_seq_length, get_mask_sizes
    try:
        yield
    finally:
        Cache.get_seq_length, Cache.get_mask_sizes = seq_length, mask_sizes


def _dims():
    # Dim.DYNAMIC, not named Dims: export then records guards it cannot prove over a whole range (such as
    # min(128 + 128*L, 512 + 512*L) == 128 + 128*L from stride arithmetic) instead of refusing, and still fails
    # if a dim would be specialised to one value. The graph stays valid for every size.
    return torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC


def _symbol_names(program, roles: list[tuple[int, int, str]]) -> dict[str, str]:
    """Map export's symbols (s0, s17...) to B / S / L from the user inputs' placeholder shapes."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name in set(program.graph_signature.user_inputs)]
    names = {}
    for input_index, dim, role in roles:
        size = user[input_index].meta["val"].shape[dim]
        if isinstance(size, torch.SymInt):
            names[str(size.node.expr)] = role
    return names


def _bound_masked_sizes(program, symbols: dict[str, str]) -> tuple[dict[str, str], str]:
    """Sizes that depend on data: the rows a boolean mask selects (hidden[mask], as a per-language adapter routes
    its tokens). Each is given its bound, the mask's element count in B / S / L (every element selected), so the
    graph stays priced in B, S and L; noted, as an upper bound. Returns the added symbols and the note."""
    roles = {r: sympy.Symbol(r) for r in ("B", "S", "L")}
    added = {}
    for node in program.graph.nodes:
        bindings = node.meta.get("unbacked_bindings") or {}
        if not bindings or node.op != "call_function":
            continue
        masks = [a for a in (node.args[1] if len(node.args) > 1 and isinstance(node.args[1], (list, tuple))
                             else node.args[:1]) if isinstance(a, torch.fx.Node)]
        masks = [m.meta["val"] for m in masks if getattr(m.meta.get("val"), "dtype", None) == torch.bool]
        if len(masks) != 1:
            continue
        numel = sympy.Integer(1)
        for d in masks[0].shape:
            numel *= sympy.sympify(d.node.expr if isinstance(d, torch.SymInt) else d)
        named = {s: roles[symbols[s.name]] for s in numel.free_symbols if symbols.get(s.name) in roles}
        if len(named) != len(numel.free_symbols):
            continue
        for symbol in bindings:
            added[str(symbol)] = str(numel.xreplace(named))
    note = ("data-dependent sizes (rows a boolean mask selects) priced at their bound: "
            + ", ".join(sorted(set(added.values())))) if added else ""
    return added, note


def _with_bounds(phase: ExportedPhase) -> ExportedPhase:
    added, note = _bound_masked_sizes(phase.program, phase.symbols)
    if added:
        phase.symbols.update(added)
        phase.note = "; ".join(n for n in (phase.note, f"{phase.phase}: {note}") if n)
    return phase


def export_prefill(model, length: int | None = None) -> ExportedPhase:
    """Prefill with S symbolic, or fixed at `length` (the sequence-loop fallback; B stays symbolic)."""
    B, S, _ = _dims()
    ids = torch.zeros(B0, length or S0, dtype=torch.long, device="meta")
    dims = {0: B} if length else {0: B, 1: S}
    try:
        with quiet(), torch.no_grad(), _tracing_branches():
            program = torch.export.export(_Prefill(model), (ids,), dynamic_shapes={"input_ids": dims}, strict=False)
    except Exception as exc:
        # range(S) in the model's code makes export fix S and refuse the dynamic dim
        if not length and "Constraints violated" in str(exc) and "input_ids'].size()[1]" in str(exc):
            raise SequenceLoop(one_line(exc)) from exc
        raise
    roles = [(0, 0, "B")] if length else [(0, 0, "B"), (0, 1, "S")]
    return ExportedPhase("prefill", program, _symbol_names(program, roles))


# Fields that bound the positions a model can embed (its context length), under the names configs use.
_POSITION_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_target_positions",
                    "context_length")
# Positions past the cached ones a decode step reads: the new token's, and the offset some position tables add to
# every position (a padding index + 1).
_POSITION_MARGIN = 4


def _max_positions(config) -> int | None:
    """The model's context length: the smallest positive limit the config declares, None where it declares none."""
    limits = []
    for key in _POSITION_LIMITS:
        try:
            value = getattr(config, key, None)
        except Exception:  # a per-layer field of a heterogeneous config refuses a global read
            continue
        if type(value) is int and value > 0:
            limits.append(value)
    return min(limits) if limits else None


def _declared_windows(config) -> list[int]:
    """Sliding / chunked attention sizes the config declares (any int field named for a window), below the
    model's context length: a window at least that long never binds."""
    limit = _max_positions(config) or 1 << 62
    values = [v for k, v in config.to_dict().items() if "window" in k.lower() and type(v) is int and 0 < v < limit]
    return values


def _is_prime(n: int) -> bool:
    return n > 1 and not any(n % d == 0 for d in range(2, int(n ** 0.5) + 1))


def _next_prime(n: int) -> int:
    n += 1
    while not _is_prime(n):
        n += 1
    return n


def _prime_at_most(n: int) -> int | None:
    while n > 1 and not _is_prime(n):
        n -= 1
    return n if n > 1 else None


def _length_cap(config) -> int | None:
    """The longest cached length a decode trace may use: a prime the model's position table still covers with the
    decode token's position (and a position offset) added; None where the config declares no context length."""
    limit = _max_positions(config)
    return _prime_at_most(limit - _POSITION_MARGIN) if limit else None


def decode_lengths(config) -> tuple[int, ...]:
    """Cached lengths to try for the decode trace. A declared window gets a length past it first, so the window
    layers are traced in their steady state (cache full) and the trace shows their window. None is past the
    model's context length: a length its position table does not cover fails in the model's own code (a learned
    position embedding of fixed size), so a longer try is cut to the longest length the table covers."""
    windows = _declared_windows(config)
    tries = (_next_prime(max(windows)), *L0_TRIES) if windows else L0_TRIES
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
    while len(lengths) < FOLD_POINTS and (cap is None or _next_prime(lengths[-1]) <= cap):
        lengths.append(_next_prime(lengths[-1]))
    while len(lengths) < FOLD_POINTS:
        below = _prime_at_most(lengths[0] - 1)
        if below is None or below <= B1:  # a length no larger than a batch size would be read as one
            break
        lengths.insert(0, below)
    return tuple(lengths)


def export_decode(model) -> ExportedPhase:
    """Decode with B and L symbolic. Raises LengthFixed where every length tried fixed L, or where the step fails
    fed one new token because the model takes the whole sequence at each step (its generation code says so)."""
    errors = []
    lengths = decode_lengths(model.config)
    for l0 in lengths:
        try:
            return _export_decode_at(model, l0)
        except UserError:
            raise
        except Exception as exc:
            errors.append(exc)
            # another cached length only helps where the trace fixed a length; a fixed batch stays fixed (and the
            # longer prefill of a model that loops over the tokens in Python would run for a long time)
            if "specialized" not in str(exc) or _specialised_roles(exc) == {"B"}:
                break
    last = errors[-1]
    roles = _specialised_roles(last)
    if roles == {"B"}:
        raise UserError("the decode step fixes the batch size: the model's one-token code does not keep the batch "
                        f"separate (export specialised B to {B0}): {one_line(last)}") from last
    if "specialized" in str(last) and "L" in roles and "B" not in roles:
        raise LengthFixed(f"the decode step fixes the cached length at every length tried "
                          f"({', '.join(map(str, lengths[:len(errors)]))}): {one_line(last)}") from last
    if "specialized" not in str(last) and _takes_whole_sequence(model, lengths[0]):
        raise LengthFixed("the model takes the whole sequence at each decode step (its generation code passes every "
                          f"token, not only the new one; fed one token: {one_line(last)})", whole_sequence=True) \
            from last
    raise last


def _takes_whole_sequence(model, l0: int) -> bool:
    """Whether the model's generate() hands forward the whole sequence at a decode step, not only the new token: what
    its prepare_inputs_for_generation returns for l0 cached tokens + 1 new one over the cache a prefill built (a model
    that slices the cached prefix off itself, inside forward, asks for every token)."""
    prepare = getattr(model, "prepare_inputs_for_generation", None)
    if prepare is None:
        return False
    ids = torch.zeros(B0, l0 + 1, dtype=torch.long, device="meta")
    try:
        out, _ = _cache_prefill(model, l0)
        _, cache = _returned_cache(model, out)
        _MADE_CACHES.clear()
        with quiet(), torch.no_grad(), _tracing_branches():
            inputs = prepare(ids, next_sequence_length=1, past_key_values=cache, use_cache=True)
    except Exception:
        return False
    given = inputs.get("input_ids") if hasattr(inputs, "get") else None
    return isinstance(given, torch.Tensor) and given.dim() == 2 and given.shape[1] == l0 + 1


_SPECIALISED = re.compile(r"L\['(input_ids|states)'\](?:\[(\d+)\])?\.size\(\)\[(\d+)\]")


def _specialised_roles(exc: Exception) -> set[str]:
    """Roles ("B", "L", "?" where not known) of the decode inputs' dims that export's error says it specialised."""
    roles_of = getattr(exc, "state_roles", None)
    found = set()
    for name, index, dim in _SPECIALISED.findall(str(exc)):
        if name == "input_ids":
            found.add("B" if dim == "0" else "?")
        else:
            found.add(roles_of[int(index)].get(int(dim), "?") if roles_of is not None else "?")
    return found


def _returned_cache(model, out) -> tuple[str, object]:
    """(forward argument, cache object) of what a use_cache=True prefill returned: `past_key_values`, else the one
    output field that forward() also takes as an argument and that is neither a tensor nor a plain value (recurrent
    models name their state object otherwise, e.g. `cache_params`). A model that made a cache for the call but did
    not return it (the caller is expected to pass one in, as generate() does) gives the one it made, where forward()
    takes it back as `past_key_values`."""
    if getattr(out, "past_key_values", None) is not None:
        return "past_key_values", out.past_key_values
    params = inspect.signature(model.forward).parameters
    fields = out.items() if hasattr(out, "items") else vars(out).items()
    for key, value in fields:
        if key in params and value is not None and (_tensor_list(value) or
                                                     not isinstance(value, (torch.Tensor, *_PLAIN_VALUES))):
            # a tuple of state tensors becomes a list: the decode wrapper puts symbolic tensors in its slots
            return key, list(value) if isinstance(value, tuple) else value
    made = _MADE_CACHES.get(id(out))
    if made is not None and "past_key_values" in params:
        return "past_key_values", made
    return "past_key_values", None


# output id -> the cache object the model made inside that prefill and passed down to its layers
_MADE_CACHES: dict[int, object] = {}


@contextlib.contextmanager
def _watch_caches(model, seen: list):
    """Record every cache object (transformers' Cache) handed to a submodule while the model runs."""
    from transformers.cache_utils import Cache

    def hook(module, args, kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, Cache) and not any(v is value for v in seen):
                seen.append(value)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _module_tensors(model) -> dict[tuple[str, str], object]:
    """Plain tensor (or None) attributes of every submodule: neither parameters nor buffers."""
    return {(path, key): value for path, mod in model.named_modules() for key, value in vars(mod).items()
            if not key.startswith("_") and (value is None or isinstance(value, torch.Tensor))}


def _module_states(model, before: dict) -> list[tuple[torch.Tensor, callable]]:
    """State a model keeps on its own modules between calls (a recurrent layer's conv and scan states set as plain
    attributes by the prefill): each tensor attribute the prefill assigned, with a setter that puts a replacement
    in its place."""
    found = []
    for (path, key), value in _module_tensors(model).items():
        if isinstance(value, torch.Tensor) and before.get((path, key), None) is not value:
            mod = model.get_submodule(path) if path else model
            found.append((value, lambda v, m=mod, k=key: setattr(m, k, v)))
    return found


_PLAIN_VALUES = (int, float, str, bool, tuple, list)


def _tensor_list(value) -> bool:
    """A recurrent state returned as a plain list of tensors (one per state kind)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, torch.Tensor) for v in value)


class _CachePrefill(torch.nn.Module):
    """The use_cache=True prefill, as an export input: keeps what the model returned (with its cache)."""

    def __init__(self, model, returned: list):
        super().__init__()
        self.model = model
        self.returned = returned  # a plain list outside the module: export restores module attributes it sees set

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, use_cache=True)
        # export restores the module attributes the prefill set: keep them with the output
        self.returned.append((out, {k: v for k, v in _module_tensors(self.model).items() if v is not None}))
        return out.logits


def _cache_prefill(model, l0: int, batch: int = B0):
    """Run a use_cache=True prefill of B0 x l0 tokens on the meta device; return the model's output (its cache)
    and the state it left on its own modules (see _module_states).

    On plain meta tensors first: they cannot answer value checks (.item() on a mask), so the prefill takes the
    traced branches as the export does. Where the model still reads values (expert counts with .tolist(), a length
    check with .item()), the prefill is traced with static sizes instead, as the export traces (those values become
    symbols), and the cache it leaves is remade of plain meta tensors of the same sizes."""
    ids = torch.zeros(batch, l0, dtype=torch.long, device="meta")
    before = _module_tensors(model)
    made = []
    try:
        with quiet(), torch.no_grad(), _tracing_branches(), _watch_caches(model, made):
            out = model(input_ids=ids, use_cache=True)
        if made:
            _MADE_CACHES[id(out)] = made[0]
        return out, _module_states(model, before)
    except Exception as exc:
        first = exc
    returned = []
    made.clear()
    wrapper = _CachePrefill(model, returned)
    try:
        with quiet(), torch.no_grad(), _tracing_branches(), _watch_caches(model, made):
            torch.export.export(wrapper, (ids,), strict=False)
    except Exception:
        raise UserError("the prefill that builds the decode cache (use_cache=True) fails in the model's own code: "
                        f"{one_line(first)}") from first
    out, assigned = returned[-1]
    if made:
        _MADE_CACHES[id(out)] = made[0]
    for (path, key), value in assigned.items():  # put back the module state export restored
        if before.get((path, key)) is not value:
            setattr(model.get_submodule(path) if path else model, key, value)
    _, cache = _returned_cache(model, out)
    states = _module_states(model, before)
    held = (cache_contents(cache, l0)[0] if cache is not None else []) + states
    for tensor, put in held:
        if not all(type(d) is int for d in tensor.shape):
            raise UserError("the decode cache's sizes depend on token values: decode cannot be traced")
        put(torch.empty_strided(tuple(tensor.shape), tuple(tensor.stride()), dtype=tensor.dtype, device="meta"))
    return out, _module_states(model, before)


# a second batch size, to tell the batch dims of the cache from model dims that happen to equal B0
B1 = 5


def _state_roles(model, states: list[torch.Tensor], l0: int) -> list[dict[int, str]]:
    """Per cache tensor, its dims of role "B" (batch) and "L" (cached length), read from their sizes: B0 and l0.
    Where a tensor has a B0-sized dim other than one leading batch dim (a conv state of width B0 + 1, a state laid
    out with the batch elsewhere), a size cannot tell: the cache is built again for B1 sequences, and the dims that
    followed the batch are B."""
    roles = [{d: ("B" if size == B0 else "L") for d, size in enumerate(t.shape) if size in (B0, l0)}
             for t in states]
    if all([d for d, r in r_.items() if r == "B"] in ([0], []) for r_ in roles):
        return roles
    out, module_states = _cache_prefill(model, l0, batch=B1)
    _, cache = _returned_cache(model, out)
    _MADE_CACHES.clear()
    other = [t for t, _ in (cache_contents(cache, l0)[0] if cache is not None else []) + module_states]
    if len(other) != len(states) or any(a.dim() != b.dim() for a, b in zip(states, other)):
        return roles
    return [{d: ("B" if (a.shape[d], b.shape[d]) == (B0, B1) else "L") for d in range(a.dim())
             if (a.shape[d], b.shape[d]) == (B0, B1) or a.shape[d] == l0} for a, b in zip(states, other)]


def _export_decode_at(model, l0: int, fixed: bool = False, whole_sequence: bool = False) -> ExportedPhase:
    """Decode over a cache of l0 tokens, B and L symbolic; `fixed`: L fixed at l0 (B symbolic), for folding;
    `whole_sequence`: the step is given all l0 + 1 tokens, as the model's generate() gives them."""
    B, _, L = _dims()
    out, module_states = _cache_prefill(model, l0)
    cache_arg, cache = _returned_cache(model, out)
    _MADE_CACHES.clear()
    if cache is None:
        return _export_decode_without_cache(model)
    held, counters = cache_contents(cache, l0)
    held += module_states
    states = [t for t, _ in held]
    roles_of = _state_roles(model, states, l0)
    if fixed:
        roles_of = [{d: role for d, role in r.items() if role == "B"} for r in roles_of]
    dyn = [{d: (B if role == "B" else L) for d, role in r.items()} for r in roles_of]
    length_ref = next(((i, d) for i, r in enumerate(roles_of) for d, role in r.items() if role == "L"), None)
    ids = torch.zeros(B0, l0 + 1 if whole_sequence else 1, dtype=torch.long, device="meta")
    wrapper = _Decode(model, cache, [put for _, put in held], counters, length_ref, cache_arg)
    try:
        with quiet(), torch.no_grad(), _tracing_branches():
            program = torch.export.export(wrapper, (ids, states), dynamic_shapes={"input_ids": {0: B}, "states": dyn},
                                          strict=False)
    except Exception as exc:
        exc.state_roles = roles_of  # which dims were B and L: a fixed length may be retried longer, a batch not
        raise
    roles = [(0, 0, "B")]
    for i, r in enumerate(roles_of):
        roles += [(1 + i, dim, role) for dim, role in r.items()]
    return ExportedPhase("decode", program, _symbol_names(program, roles))


class _Recompute(torch.nn.Module):
    """Decode of a model that keeps no cache: the new token appended to the L tokens before it, and the whole
    sequence of L + 1 tokens run again, as such a model generates."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids, history):
        ids = torch.cat([history, input_ids], dim=1)
        return self.model(input_ids=ids, use_cache=False, **self.extra).logits


_RECOMPUTE_NOTE = ("decode recomputes: the model keeps no KV cache, so each step is traced as a full forward over "
                   "the L + 1 tokens")


def _export_decode_without_cache(model) -> ExportedPhase:
    """A model that returns no cache from a use_cache=True prefill recomputes the whole sequence at every step:
    that full forward over L cached + 1 new tokens is its decode step, and is traced as such (noted)."""
    B, _, L = _dims()
    ids = torch.zeros(B0, 1, dtype=torch.long, device="meta")
    history = torch.zeros(B0, L0_TRIES[0], dtype=torch.long, device="meta")
    with quiet(), torch.no_grad(), _tracing_branches():
        program = torch.export.export(_Recompute(model), (ids, history),
                                      dynamic_shapes={"input_ids": {0: B}, "history": {0: B, 1: L}}, strict=False)
    return ExportedPhase("decode", program, _symbol_names(program, [(0, 0, "B"), (1, 0, "B"), (1, 1, "L")]),
                         note=_RECOMPUTE_NOTE)


def export_phase(model, phase: str, progress=lambda msg: None, length: int | None = None,
                 whole_sequence: bool = False) -> ExportedPhase:
    """Export one phase ("prefill" or "decode"); given `length`, prefill at that fixed S, or decode over that fixed
    L (`whole_sequence`: fed every token, see LengthFixed). Export's own failures become one-line UserErrors, except
    SequenceLoop and LengthFixed, which ask the caller to trace at fixed lengths."""
    size = "S" if phase == "prefill" else "L"
    progress(f"torch.export of the {phase} step" + (f" at {size}={length}" if length else ""))
    try:
        if phase == "prefill":
            return _with_bounds(export_prefill(model, length))
        if length:
            return _with_bounds(_export_decode_at(model, length, fixed=True, whole_sequence=whole_sequence))
        return _with_bounds(export_decode(model))
    except (UserError, SequenceLoop, LengthFixed):
        raise
    except Exception as exc:
        at = f" at {size}={length}" if length else ""
        raise UserError(f"torch.export of the {phase} step{at} failed: {one_line(exc)}") from exc


def export_phases(model, progress=lambda msg: None) -> dict[str, ExportedPhase]:
    return {phase: export_phase(model, phase, progress) for phase in ("prefill", "decode")}
