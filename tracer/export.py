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
import copy
import inspect
import re
from dataclasses import dataclass

import sympy
import torch
import torch.utils._pytree as pytree
from torch.fx.experimental import _config as fx_config
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

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
    branch on data a trace does not have: off for the duration, as for any traced graph. Selections by value
    (nonzero) and values known from sizes follow _KnownValues; on plain meta tensors (the prefill that builds the
    decode cache) a selection selects every element, torch's own assumption for its meta kernel, so the prefill
    runs through an MoE's per-expert loop without being traced."""
    original = torch.compiler.is_compiling
    validate = torch.distributions.Distribution._validate_args
    torch.compiler.is_compiling = lambda: True
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with _unbounded_clamp_is_identity(), _unaligned_grouped_mm_falls_back(), _caches_without_attention(), \
                _KnownValues(), fx_config.patch(meta_nonzero_assume_all_nonzero=True):
            yield
    finally:
        torch.compiler.is_compiling = original
        torch.distributions.Distribution.set_default_validate_args(validate)


@contextlib.contextmanager
def _unbounded_clamp_is_identity():
    """clamp / clip with neither bound is the identity; torch refuses the call instead. Model code that computes
    optional bounds reaches it when the clip is unset (min = -c if c is not None else None, max = c, with an
    unset clip in a default config), and means no clipping: the input is passed through, as no op."""
    originals = [(owner, name, getattr(owner, name)) for owner in (torch.Tensor, torch) for name in ("clamp", "clip")]

    def passing(original):
        def clamp(input, min=None, max=None, **kwargs):
            if min is None and max is None and not kwargs:
                return input
            return original(input, min, max, **kwargs)
        return clamp

    for owner, name, original in originals:
        setattr(owner, name, passing(original))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


@contextlib.contextmanager
def _unaligned_grouped_mm_falls_back():
    """torch's grouped GEMM needs each operand's leading stride to be a multiple of 16 bytes (a row of 1407 bf16
    values is not), and its meta kernel checks it; transformers takes its own fallback op where the kernel cannot be
    used (its _can_use_grouped_mm). Operands the kernel would refuse take that fallback here too: the same grouped
    GEMM, one op in the graph (transformers.grouped_mm_fallback), priced as the kernel is."""
    try:
        import transformers.integrations.moe as moe
    except ImportError:
        yield
        return
    can_use = getattr(moe, "_can_use_grouped_mm", None)
    if can_use is None:
        yield
        return

    def aligned(mat) -> bool:  # the row stride, the larger of the last two; a symbolic one is not judged
        strides = mat.stride()[-2:]
        return not all(type(s) is int for s in strides) or max(strides) * mat.element_size() % 16 == 0

    def can_use_aligned(input, weight, offs) -> bool:
        return can_use(input, weight, offs) and aligned(input) and aligned(weight)

    moe._can_use_grouped_mm = can_use_aligned
    try:
        yield
    finally:
        moe._can_use_grouped_mm = can_use


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


# functions that select by value: the indices of nonzero elements (torch.where with the condition alone)
_SELECTING = {torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere}
# functions that read a tensor's values into Python
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
          torch.Tensor.__index__, torch.Tensor.__float__}
# in-place dunders (besides methods named with a trailing underscore): they write their first argument
_WRITES = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
           "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__"}
# a value known at the example sizes is computed only up to this many elements
_KNOWN_LIMIT = 1 << 22


class _KnownValues(torch.overrides.TorchFunctionMode):
    """Values a trace knows although the meta device holds none, and what it assumes of selections by value.

    Positions: torch.arange makes its values from sizes alone, so they are known at the example sizes (B0, S0
    and the cached length of the trace), as is what is computed from known values alone (positions after the
    cached length, their maximum). Reading such a value (.item(), bool()) gives export's usual data-dependent
    symbol with that value as its hint, so a guard export could not decide on it (long or short RoPE factors
    by the largest position) goes the way the traced sizes imply; a hint decides only guards that would
    otherwise fail, the graph keeps the decision as a runtime assertion and its sizes stay symbolic.

    A selection (nonzero) from a tensor of fixed size (no dim in B, S or L: which of a fixed set, such as the
    experts that received tokens) selects every member, as torch's meta kernel assumes when asked to
    (meta_nonzero_assume_all_nonzero); its values, and those computed from fixed values alone, are known
    exactly, and reading them gives plain numbers: a Python loop over the members unrolls, and a branch on which
    member it is (an identity expert) goes as it would. A selection from a tensor sized by B, S or L keeps its
    data-dependent count, hinted that every element is selected: `if count == 0: continue` takes the non-empty
    path (graph.build prices the count)."""

    def __init__(self):
        super().__init__()
        self.values = WeakIdKeyDictionary()  # traced tensor -> (its value as a CPU tensor, exact?)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SELECTING or (func is torch.where and len(args) == 1 and not kwargs):
            return self._select(func, args, kwargs)
        if func is not torch.arange and not self._all_known(args, kwargs):
            for tensor in _written(func, args, kwargs):  # written from unknown values: no longer known
                self.values.pop(tensor, None)
            return func(*args, **kwargs)
        if func in _READS:
            return self._read(func, args, kwargs)
        out = func(*args, **kwargs)
        self._follow(func, args, kwargs, out)
        return out

    def _all_known(self, args, kwargs) -> bool:
        if not self.values:
            return False
        tensors = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        return bool(tensors) and all(t in self.values for t in tensors)

    def _read(self, func, args, kwargs):
        value, exact = self.values[args[0]]
        if not exact:
            return _hinted_read(func, args[0], value)
        with _disable_current_modes():
            return func(value, *args[1:], **kwargs)

    def _follow(self, func, args, kwargs, out) -> None:
        """Record the values of what func made (or wrote) from known values; a written tensor whose new value is
        not computed is forgotten."""
        leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        written = _written(func, args, kwargs)
        if not leaves and not written:
            return
        try:
            if sum(_example_numel(t) for t in leaves) > _KNOWN_LIMIT:
                raise ValueError("too large to follow")
            value, exact = self._evaluate(func, args, kwargs)  # writes the written tensors' values as well
        except Exception:  # a size without an example value (data-dependent), a function the CPU refuses
            for tensor in written:
                self.values.pop(tensor, None)
            return
        for tensor in written:
            self.values[tensor] = (self.values[tensor][0], exact)
        for traced, real in zip(leaves, [v for v in pytree.tree_leaves(value) if isinstance(v, torch.Tensor)]):
            self.values[traced] = (real, exact)

    def _evaluate(self, func, args, kwargs):
        """func on the known values (symbolic sizes at their example values, on the CPU): (value, exact)."""
        exact = True

        def real(a):
            nonlocal exact
            if isinstance(a, torch.Tensor):
                value, known_exactly = self.values[a]
                exact = exact and known_exactly
                return value
            if isinstance(a, torch.SymInt):
                exact = False
                return int(a.node.shape_env.size_hint(a.node.expr))
            if isinstance(a, (torch.SymFloat, torch.SymBool)):
                raise ValueError("a symbolic float or bool has no example value here")
            return torch.device("cpu") if isinstance(a, torch.device) else a

        real_args, real_kwargs = pytree.tree_map(real, (args, kwargs))
        if "device" in real_kwargs:
            real_kwargs["device"] = "cpu"
        with _disable_current_modes():
            value = func(*real_args, **real_kwargs)
        if any(isinstance(v, torch.Tensor) and v.device.type != "cpu" for v in pytree.tree_leaves(value)):
            raise ValueError("moved off the CPU: no value")
        return value, exact

    def _select(self, func, args, kwargs):
        """nonzero / argwhere / where(condition): of a fixed-size tensor, exact (every element, unless its values
        are known); of one sized by B, S or L, export's data-dependent count, hinted that every element is in."""
        x = args[0]
        as_tuple = func is torch.where or kwargs.get("as_tuple", False)
        if not all(type(d) is int for d in x.shape):
            out = func(*args, **kwargs)
            _hint_all_selected(out[0] if as_tuple else out, x)
            return out
        known, exact = self.values.get(x, (None, False))
        with _disable_current_modes():
            value = (known if exact else torch.ones(x.shape, dtype=torch.bool)).nonzero()
        columns = value.unbind(1) if as_tuple else (value,)
        out = tuple(torch.tensor(c.tolist(), dtype=torch.long, device=x.device).reshape(c.shape) for c in columns)
        for traced, real in zip(out, columns):
            self.values[traced] = (real, True)
        return out if as_tuple else out[0]


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an in-place function writes: its first argument (add_, __setitem__...), and out=."""
    name = getattr(func, "__name__", "")
    written = []
    if ((name.endswith("_") and not name.startswith("__")) or name in _WRITES) and args \
            and isinstance(args[0], torch.Tensor):
        written.append(args[0])
    if isinstance(kwargs.get("out"), torch.Tensor):
        written.append(kwargs["out"])
    return written


def _example_numel(t: torch.Tensor) -> int:
    """Elements of a traced tensor at the example sizes (of a data-dependent size: counted as too many)."""
    n = t.numel()
    if type(n) is int:
        return n
    hint = n.node.shape_env.size_hint(n.node.expr, allow_none=True)
    return int(hint) if hint is not None else _KNOWN_LIMIT + 1


def _hinted_read(func, traced: torch.Tensor, value: torch.Tensor):
    """Read a traced tensor's values as export does (data-dependent symbols), each hinted with its example value
    (from `value`), then convert as `func` asks (bool(), int(): a guard decided by the hint)."""
    if func is torch.Tensor.tolist:
        symbols = traced.tolist()
        for sym, example in zip(pytree.tree_leaves(symbols), pytree.tree_leaves(value.tolist())):
            _hint(sym, example)
        return symbols
    sym = traced.item()
    _hint(sym, value.item())
    convert = {torch.Tensor.__bool__: bool, torch.Tensor.__int__: int, torch.Tensor.__index__: int,
               torch.Tensor.__float__: float}.get(func)
    return convert(sym) if convert else sym


def _hint(sym, example) -> None:
    """Give export's data-dependent symbol behind `sym` (u0, or Eq(u0, 1) for a bool) its example value."""
    if not isinstance(sym, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return
    expr = sym.node.expr
    if isinstance(expr, sympy.Symbol):
        sym.node.shape_env.set_real_tensor_prop_unbacked_vals(expr, example)
    elif isinstance(sym, torch.SymBool) and len(expr.free_symbols) == 1:
        sym.node.shape_env.set_real_tensor_prop_unbacked_vals(next(iter(expr.free_symbols)), int(example))


def _hint_all_selected(out: torch.Tensor, source: torch.Tensor) -> None:
    """Give a selection's data-dependent count the hint that every element of `source` is selected."""
    count = out.shape[0]
    if isinstance(count, torch.SymInt) and isinstance(count.node.expr, sympy.Symbol):
        count.node.shape_env.set_real_tensor_prop_unbacked_vals(count.node.expr, _example_numel(source))


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


# ops that read a tensor's value into a symbol (.item())
_VALUE_READS = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)


def _bound_masked_sizes(program, symbols: dict[str, str]) -> tuple[dict[str, str], str]:
    """Sizes that depend on data: the rows a boolean mask selects (hidden[mask], as a per-language adapter routes
    its tokens). Each is given its bound, the mask's element count in B / S / L (every element selected), so the
    graph stays priced in B, S and L; noted, as an upper bound. Returns the added symbols and the note."""
    roles = {r: sympy.Symbol(r) for r in ("B", "S", "L")}
    added = {}
    for node in program.graph.nodes:
        bindings = node.meta.get("unbacked_bindings") or {}
        if not bindings or node.op != "call_function" or node.target in _VALUE_READS:
            continue  # a value read (.item()) is no row count
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


def export_decode(model, chunk: bool = False, length: int | None = None) -> ExportedPhase:
    """Decode with B and L symbolic: one new token per sequence, or with `chunk` (see BatchFixedDecode) a chunk of
    S new tokens over the cache, S symbolic or fixed at `length`. A model that reads several input rows per
    sequence (batch_group) is exported with that many rows per sequence. Raises LengthFixed where every length
    tried fixed L, or where the step fails fed one new token because the model takes the whole sequence at each
    step (its generation code says so)."""
    try:
        return _export_decode(model, chunk, length)
    except (SequenceLoop, BatchFixedDecode, LengthFixed):
        raise
    except Exception:
        if id(model) in _GROUPS or batch_group(model) == 1:
            raise
    return _export_decode(model, chunk, length)


class BatchFixedDecode(Exception):
    """Export had to fix the batch of the one-token decode step: the model's one-token code does not keep the
    sequences of a batch apart (a token shift that broadcasts a (B, H) state against (B, 1, H) hidden states is
    right only for one sequence). The caller may trace decode as a chunk of new tokens over the cache instead (the
    model's multi-token path, which keeps the batch), priced at one token."""


def _export_decode(model, chunk: bool, length: int | None) -> ExportedPhase:
    errors = []
    lengths = decode_lengths(model.config)
    for l0 in lengths:
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
    last = errors[-1]
    roles = _specialised_roles(last)
    if roles == {"B"}:
        message = ("the decode step fixes the batch size: the model's one-token code does not keep the batch "
                   f"separate (export specialised B to {B0}): {one_line(last)}")
        if chunk:
            raise UserError(f"{message}, nor does its multi-token path with a cache") from last
        raise BatchFixedDecode(message) from last
    if "specialized" in str(last) and "L" in roles and "B" not in roles:
        raise LengthFixed(f"the decode step fixes the cached length at every length tried "
                          f"({', '.join(map(str, lengths[:len(errors)]))}): {one_line(last)}") from last
    if not chunk and "specialized" not in str(last) and _takes_whole_sequence(model, lengths[0]):
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


def _give_cache_layer_count(config) -> None:
    """transformers' cache code sizes the cache a model makes for itself by the layer count of the config it is given
    (DynamicCache(config=...) reads get_text_config(decoder=True).num_hidden_layers). A composite config whose
    sub-models each count their own layers (an encoder, a global transformer and a decoder) has none, and the
    model's own cache construction fails on it. Such a config is given the largest layer count of its sub-configs:
    every sub-model's layer index then has a cache layer, and layers none of them uses stay empty (they hold no
    tensors). Set after the layer plan, which cuts only the counts of the stack it reduces."""
    if config is None:
        return
    try:
        target = config.get_text_config(decoder=True)
    except Exception:
        target = config
    try:
        getattr(target, "num_hidden_layers")
        return
    except AttributeError:
        pass
    counts = [getattr(sub, "num_hidden_layers", None) for sub in vars(target).values() if hasattr(sub, "to_dict")]
    counts = [c for c in counts if type(c) is int and c > 0]
    if counts:
        target.num_hidden_layers = max(counts)


def _cache_prefill(model, l0: int, batch: int = B0):
    """Run a use_cache=True prefill of B0 x l0 tokens on the meta device; return the model's output (its cache)
    and the state it left on its own modules (see _module_states).

    On plain meta tensors first: they cannot answer value checks (.item() on a mask), so the prefill takes the
    traced branches as the export does. Where the model still reads values (expert counts with .tolist(), a length
    check with .item()), the prefill is traced with static sizes instead, as the export traces (those values become
    symbols), and the cache it leaves is remade of plain meta tensors of the same sizes."""
    ids = torch.zeros(batch * _group(model), l0, dtype=torch.long, device="meta")
    _give_cache_layer_count(getattr(model, "config", None))
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


def _export_decode_at(model, l0: int, chunk: bool = False, length: int | None = None, fixed: bool = False,
                      whole_sequence: bool = False) -> ExportedPhase:
    """Decode over a cache of l0 tokens, B and L symbolic: one new token, or a chunk of S (`chunk`, S fixed at
    `length` if given); `fixed`: L fixed at l0 (B symbolic), for folding; `whole_sequence`: the step is given all
    l0 + 1 tokens, as the model's generate() gives them."""
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
    if fixed:
        roles_of = [{d: role for d, role in r.items() if role == "B"} for r in roles_of]
    dyn = [{d: (B if role == "B" else L) for d, role in r.items()} for r in roles_of]
    length_ref = next(((i, d) for i, r in enumerate(roles_of) for d, role in r.items() if role == "L"), None)
    ids = _ids(model, B0, l0 + 1 if whole_sequence else (length or S0) if chunk else 1)
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
                 chunk: bool = False, cached: int | None = None, whole_sequence: bool = False) -> ExportedPhase:
    """Export one phase ("prefill" or "decode"). Prefill at a fixed S given `length`; decode as a chunk of new
    tokens given `chunk` (S fixed at `length` if given), or over a fixed cached length `cached` (`whole_sequence`:
    fed every token, see LengthFixed). Export's own failures become one-line UserErrors, except SequenceLoop,
    LengthFixed and BatchFixedDecode, which ask the caller to trace another way."""
    at = f" at S={length}" if length else f" at L={cached}" if cached else ""
    progress(f"torch.export of the {phase} step" + (" as a chunk of new tokens" if chunk else "") + at)
    try:
        if phase == "prefill":
            exported = export_prefill(model, length)
        elif cached:
            exported = _export_decode_at(model, cached, fixed=True, whole_sequence=whole_sequence)
        else:
            exported = export_decode(model, chunk, length)
    except (UserError, SequenceLoop, BatchFixedDecode, LengthFixed):
        raise
    except Exception as exc:
        raise UserError(f"torch.export of the {phase} step{at} failed: {one_line(exc)}") from exc
    bounded = _range_note(exported, getattr(model, "config", None))
    if bounded:
        exported.note = "; ".join(n for n in (exported.note, bounded) if n)
    return _with_bounds(exported)


def export_phases(model, progress=lambda msg: None) -> dict[str, ExportedPhase]:
    return {phase: export_phase(model, phase, progress) for phase in ("prefill", "decode")}
