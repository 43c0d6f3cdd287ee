"""torch.export (non-strict) of the prefill and decode steps with symbolic batch, new-token and cache lengths.

Prefill: B sequences of S new tokens, no cache.  Decode: one new token per sequence over L cached tokens.

Decode holds the cache on the wrapper: a meta prefill of B0 x L0 tokens builds whatever cache the model uses
(KV, sliding-window, Mamba conv/SSM states...). The wrapper takes that cache's tensors as export inputs and puts them
back into the cache object before each call, so their batch and length dims can be symbolic. Which dims are B and L
is read from their sizes: B0 and L0 are primes no model dimension is expected to equal. A sliding-window layer
whose window is shorter than L0 stores a fixed window, so its cache stays constant, as engines store it.
"""
from __future__ import annotations

import contextlib
import copy
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


# Largest number of input rows per sequence looked for (see batch_group): codebooks, channels and the like.
MAX_GROUP = 16
# model id -> rows of input_ids per sequence, where the model's code needs a multiple of the batch (see batch_group)
_GROUPS: dict[int, int] = {}


def _group(model) -> int:
    return _GROUPS.get(id(model), 1)


def _rows(input_ids):
    """The model's input_ids from the wrapper's: (B, k, S) -> (B*k, S) for a model that reads k rows per sequence
    (see batch_group), so that the batch dim of the export input is the number of sequences itself."""
    return input_ids.flatten(0, 1) if input_ids.dim() == 3 else input_ids


def _ids(model, batch: int, length: int):
    """Export input of `batch` sequences of `length` tokens: (batch, length), or (batch, k, length) where the model
    reads k rows per sequence."""
    k = _group(model)
    shape = (batch, k, length) if k > 1 else (batch, length)
    return torch.zeros(shape, dtype=torch.long, device="meta")


def _probe(model, rows: int) -> bool:
    """Does a plain meta forward of `rows` x S0 tokens run?"""
    ids = torch.zeros(rows, S0, dtype=torch.long, device="meta")
    try:
        with quiet(), torch.no_grad(), _tracing_branches():
            model(input_ids=ids, use_cache=False)
        return True
    except Exception:
        return False


def batch_group(model) -> int:
    """Rows of input_ids per sequence, for a model whose code needs the batch of its input to be a multiple of a
    constant k: it reshapes (batch * k, S) into (batch, k, S), as an audio decoder reads one row per codebook.
    Found by probing which row counts a meta forward accepts: 1 fails, k is the least that runs, and 2k runs too.
    1 where a single row runs, or where no row count up to MAX_GROUP does (the failure is not about the batch).
    Set for the model (the export inputs then hold k rows per sequence); asked only after an export failed."""
    if id(model) in _GROUPS:
        return _GROUPS[id(model)]
    k = 1
    if not _probe(model, 1):
        k = next((n for n in range(2, MAX_GROUP + 1) if _probe(model, n)), 1)
        if k > 1 and not _probe(model, 2 * k):
            k = 1
    _GROUPS[id(model)] = k
    return k


def _group_note(model) -> str:
    k = _group(model)
    return (f"the model reads {k} rows of input_ids per sequence (its code reshapes the batch by {k}): B counts "
            f"sequences of {k} rows") if k > 1 else ""


class _Prefill(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids):
        return self.model(input_ids=_rows(input_ids), use_cache=False, **self.extra).logits


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
        return self.model(input_ids=_rows(input_ids), use_cache=True, **{self.cache_arg: self.cache},
                          **self.extra).logits


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
        yield
    finally:
        torch.compiler.is_compiling = original
        torch.distributions.Distribution.set_default_validate_args(validate)


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


_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "context_length", "n_ctx",
                   "max_seq_len", "seq_length")


def _context_length(config) -> int | None:
    """The longest sequence the config says the model takes, where it says one."""
    for name in _CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if type(value) is int and value > 0:
            return value
    return None


def _bounds(phase: ExportedPhase, role: str) -> tuple[int, int | None] | None:
    """(lower, upper) of the range export kept for the symbol of `role`; upper None where unbounded."""
    for symbol, vr in phase.program.range_constraints.items():
        if phase.symbols.get(str(symbol)) == role:
            upper = int(vr.upper) if isinstance(vr.upper, (int, sympy.Integer)) else None  # else torch's int_oo
            return int(vr.lower), upper
    return None


def _short(upper: int | None, role: str, context: int | None) -> bool:
    """An upper bound below what the model takes: S up to the context length, L up to one less, are the model's
    own limits, not a branch."""
    limit = {"S": context, "L": context - 1 if context else None}.get(role)
    return upper is not None and (limit is None or upper < limit)


def _range_note(phase: ExportedPhase, config) -> str:
    """Where export bounded B, S or L (the model's code branches on the size: block-sparse attention that falls
    back to full attention for short sequences, chunked linear attention that runs a recurrent kernel below its
    chunk), the graph holds only within the bounds: said in the note. Upper bounds at the model's own limits are
    not noted, nor lower bounds of the cached length (a sliding window traced in its steady state)."""
    context = _context_length(config) if config is not None else None
    bounds = []
    for role in ("B", "S", "L"):
        found = _bounds(phase, role)
        if found is None:
            continue
        lower, upper = found
        low = role == "S" and lower > 2
        if _short(upper, role, context):
            bounds.append(f"{lower} <= {role} <= {upper}" if low else f"{role} <= {upper}")
        elif low:
            bounds.append(f"{role} >= {lower}")
    if not bounds:
        return ""
    return (f"the {phase.phase} graph holds only for {', '.join(bounds)}: elsewhere the model's code takes another "
            "path, which this graph does not show (other sizes are priced as if it did not)")


# Longer prefill lengths tried, at most, where the trace holds only for short sequences (see _past_short_paths).
LONGER_TRIES = 3


def export_prefill(model, length: int | None = None) -> ExportedPhase:
    """Prefill with S symbolic, or fixed at `length` (the sequence-loop fallback; B stays symbolic). A model that
    reads several input rows per sequence (batch_group) is exported with that many rows per sequence; one whose
    symbolic trace holds only for short sequences is traced again past them (_past_short_paths)."""
    pristine = None if length else _twin(model)
    try:
        phase = _export_prefill(model, length)
    except SequenceLoop:
        raise
    except Exception:
        if id(model) in _GROUPS or batch_group(model) == 1:
            raise
        if pristine is not None:
            _GROUPS[id(pristine)] = _group(model)
        phase = _export_prefill(model, length)
    return phase if length else _past_short_paths(pristine, phase)


def _twin(model):
    """A copy of the model as it is now (a meta model copies in milliseconds): a model may change itself when it
    runs (BigBird swaps its block-sparse attention for full attention on a short sequence, for good), and a second
    trace at another length must start from the model as built. The model itself where it cannot be copied."""
    try:
        twin = copy.deepcopy(model)
    except Exception:
        return model
    if id(model) in _GROUPS:
        _GROUPS[id(twin)] = _GROUPS[id(model)]
    _TWINS.append(twin)  # kept alive: _GROUPS is keyed by id
    return twin


_TWINS: list = []


def _past_short_paths(pristine, phase: ExportedPhase) -> ExportedPhase:
    """A prefill whose trace holds only up to some S below the model's context (its code takes another path for
    longer sequences: chunked attention, block-sparse attention, a kernel chosen by length) is exported again, from
    a copy of the model as built, at a prime length past that bound, up to LONGER_TRIES times, so the graph shows
    the path that serving lengths take. Where a longer trace fails, the last one that worked is kept; its note says
    where it holds."""
    context = _context_length(getattr(pristine, "config", None))
    for _ in range(LONGER_TRIES):
        _, upper = _bounds(phase, "S") or (0, None)
        if not _short(upper, "S", context) or (context and upper + 1 >= context):
            break
        try:
            phase = _export_prefill(_twin(pristine), None, _next_prime(upper))
        except Exception:
            break
    return phase


def _export_prefill(model, length: int | None, s0: int = S0) -> ExportedPhase:
    B, S, _ = _dims()
    ids = _ids(model, B0, length or s0)
    seq = ids.dim() - 1
    dims = {0: B} if length else {0: B, seq: S}
    try:
        with quiet(), torch.no_grad(), _tracing_branches():
            program = torch.export.export(_Prefill(model), (ids,), dynamic_shapes={"input_ids": dims}, strict=False)
    except Exception as exc:
        # range(S) in the model's code makes export fix S and refuse the dynamic dim
        if not length and "Constraints violated" in str(exc) and f"input_ids'].size()[{seq}]" in str(exc):
            raise SequenceLoop(one_line(exc)) from exc
        if "Constraints violated" in str(exc) and "input_ids'].size()[0]" in str(exc):
            raise UserError(f"the prefill fixes the batch size (export specialised B to {B0}): the model's code "
                            "depends on the number of sequences in Python, e.g. a loop over the sequences of a batch: "
                            f"{one_line(exc)}") from exc
        raise
    roles = [(0, 0, "B")] if length else [(0, 0, "B"), (0, seq, "S")]
    return ExportedPhase("prefill", program, _symbol_names(program, roles), note=_group_note(model))


def _declared_windows(config) -> list[int]:
    """Sliding / chunked attention sizes the config declares (any int field named for a window), below the
    model's context length: a window at least that long never binds."""
    limit = getattr(config, "max_position_embeddings", None) or 1 << 62
    values = [v for k, v in config.to_dict().items() if "window" in k.lower() and type(v) is int and 0 < v < limit]
    return values


def _next_prime(n: int) -> int:
    n += 1
    while any(n % d == 0 for d in range(2, int(n ** 0.5) + 1)):
        n += 1
    return n


def decode_lengths(config) -> tuple[int, ...]:
    """Cached lengths to try for the decode trace. A declared window gets a length past it first, so the window
    layers are traced in their steady state (cache full) and the trace shows their window."""
    windows = _declared_windows(config)
    return (_next_prime(max(windows)), *L0_TRIES) if windows else L0_TRIES


def export_decode(model, chunk: bool = False, length: int | None = None) -> ExportedPhase:
    """Decode with B and L symbolic: one new token per sequence, or with `chunk` (see BatchFixedDecode) a chunk of
    S new tokens over the cache, S symbolic or fixed at `length`. A model that reads several input rows per
    sequence (batch_group) is exported with that many rows per sequence."""
    try:
        return _export_decode(model, chunk, length)
    except (SequenceLoop, BatchFixedDecode):
        raise
    except Exception:
        if id(model) in _GROUPS or batch_group(model) == 1:
            raise
    return _export_decode(model, chunk, length)


class BatchFixedDecode(Exception):
    """Export had to fix the batch of the one-token decode step: the model's one-token code does not keep the
    sequences of a batch apart (RWKV's token shift broadcasts a (B, H) state against (B, 1, H) hidden states, right
    only for one sequence). The caller may trace decode as a chunk of new tokens over the cache instead (the
    model's multi-token path, which keeps the batch), priced at one token."""


def _export_decode(model, chunk: bool, length: int | None) -> ExportedPhase:
    errors = []
    for l0 in decode_lengths(model.config):
        try:
            return _export_decode_at(model, l0, chunk, length)
        except UserError:
            raise
        except Exception as exc:
            errors.append(exc)
            # range(S) over the new tokens of a chunk makes export fix S: traced at fixed lengths by the caller
            if chunk and not length and "Constraints violated" in str(exc) and _specialised_roles(exc) >= {"S"}:
                raise SequenceLoop(one_line(exc)) from exc
            # another cached length only helps where the trace fixed a length; a fixed batch stays fixed (and the
            # longer prefill of a model that loops over the tokens in Python would run for a long time)
            if "specialized" not in str(exc) or _specialised_roles(exc) == {"B"}:
                break
    if _specialised_roles(errors[-1]) == {"B"}:
        message = ("the decode step fixes the batch size: the model's one-token code does not keep the batch "
                   f"separate (export specialised B to {B0}): {one_line(errors[-1])}")
        if chunk:
            raise UserError(f"{message}, nor does its multi-token path with a cache") from errors[-1]
        raise BatchFixedDecode(message) from errors[-1]
    raise errors[-1]


_SPECIALISED = re.compile(r"L\['(input_ids|states)'\](?:\[(\d+)\])?\.size\(\)\[(\d+)\]")


def _specialised_roles(exc: Exception) -> set[str]:
    """Roles ("B", "S", "L", "?" where not known) of the decode inputs' dims that export's error says it
    specialised."""
    roles_of = getattr(exc, "state_roles", None)
    seq = getattr(exc, "seq_dim", None)
    found = set()
    for name, index, dim in _SPECIALISED.findall(str(exc)):
        if name == "input_ids":
            found.add("B" if dim == "0" else "S" if int(dim) == seq else "?")
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
    ids = torch.zeros(batch * _group(model), l0, dtype=torch.long, device="meta")
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


def _export_decode_at(model, l0: int, chunk: bool = False, length: int | None = None) -> ExportedPhase:
    B, S, L = _dims()
    out, module_states = _cache_prefill(model, l0)
    cache_arg, cache = _returned_cache(model, out)
    _MADE_CACHES.clear()
    if cache is None:
        return _export_decode_without_cache(model)
    held, counters = cache_contents(cache, l0)
    held += module_states
    states = [t for t, _ in held]
    roles_of = _state_roles(model, states, l0)
    dyn = [{d: (B if role == "B" else L) for d, role in r.items()} for r in roles_of]
    length_ref = next(((i, d) for i, r in enumerate(roles_of) for d, role in r.items() if role == "L"), None)
    ids = _ids(model, B0, (length or S0) if chunk else 1)
    seq = ids.dim() - 1
    ids_dims = {0: B, seq: S} if chunk and not length else {0: B}
    wrapper = _Decode(model, cache, [put for _, put in held], counters, length_ref, cache_arg)
    try:
        with quiet(), torch.no_grad(), _tracing_branches():
            program = torch.export.export(wrapper, (ids, states), dynamic_shapes={"input_ids": ids_dims, "states": dyn},
                                          strict=False)
    except Exception as exc:
        exc.state_roles = roles_of  # which dims were B and L: a fixed length may be retried longer, a batch not
        exc.seq_dim = seq if chunk and not length else None
        raise
    roles = [(0, 0, "B")] + ([(0, seq, "S")] if chunk and not length else [])
    for i, r in enumerate(roles_of):
        roles += [(1 + i, dim, role) for dim, role in r.items()]
    note = "; ".join(n for n in (_CHUNK_NOTE if chunk else "", _group_note(model)) if n)
    return ExportedPhase("decode", program, _symbol_names(program, roles), note=note)


_CHUNK_NOTE = ("decode traced as a chunk of S new tokens over the cache (the model's multi-token path) and priced "
               "at S = 1: its one-token code does not keep the sequences of a batch apart")


class _Recompute(torch.nn.Module):
    """Decode of a model that keeps no cache: the new token appended to the L tokens before it, and the whole
    sequence of L + 1 tokens run again, as such a model generates."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids, history):
        ids = torch.cat([history, input_ids], dim=-1)
        return self.model(input_ids=_rows(ids), use_cache=False, **self.extra).logits


_RECOMPUTE_NOTE = ("decode recomputes: the model keeps no KV cache, so each step is traced as a full forward over "
                   "the L + 1 tokens")


def _export_decode_without_cache(model) -> ExportedPhase:
    """A model that returns no cache from a use_cache=True prefill recomputes the whole sequence at every step:
    that full forward over L cached + 1 new tokens is its decode step, and is traced as such (noted)."""
    B, _, L = _dims()
    ids, history = _ids(model, B0, 1), _ids(model, B0, L0_TRIES[0])
    seq = ids.dim() - 1
    with quiet(), torch.no_grad(), _tracing_branches():
        program = torch.export.export(_Recompute(model), (ids, history),
                                      dynamic_shapes={"input_ids": {0: B}, "history": {0: B, seq: L}}, strict=False)
    return ExportedPhase("decode", program, _symbol_names(program, [(0, 0, "B"), (1, 0, "B"), (1, seq, "L")]),
                         note="; ".join(n for n in (_RECOMPUTE_NOTE, _group_note(model)) if n))


def export_phase(model, phase: str, progress=lambda msg: None, length: int | None = None,
                 chunk: bool = False) -> ExportedPhase:
    """Export one phase ("prefill" or "decode"; at a fixed S given `length`; decode as a chunk of new tokens given
    `chunk`); export's own failures become one-line UserErrors, except SequenceLoop, which asks the caller to trace
    at fixed lengths, and BatchFixedDecode, which asks it to trace decode as a chunk."""
    progress(f"torch.export of the {phase} step" + (" as a chunk of new tokens" if chunk else "")
             + (f" at S={length}" if length else ""))
    try:
        exported = export_prefill(model, length) if phase == "prefill" else export_decode(model, chunk, length)
    except (UserError, SequenceLoop, BatchFixedDecode):
        raise
    except Exception as exc:
        raise UserError(f"torch.export of the {phase} step failed: {one_line(exc)}") from exc
    bounded = _range_note(exported, getattr(model, "config", None))
    if bounded:
        exported.note = "; ".join(n for n in (exported.note, bounded) if n)
    return _with_bounds(exported)


def export_phases(model, progress=lambda msg: None) -> dict[str, ExportedPhase]:
    return {phase: export_phase(model, phase, progress) for phase in ("prefill", "decode")}
