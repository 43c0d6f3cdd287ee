"""What a trace knows of values although the meta device holds none (see KnownValues)."""
from __future__ import annotations

import sympy
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

from tracer.value_support import ValueSupport

# functions that select by value: the indices of nonzero elements (torch.where with the condition alone)
_SELECTING = {torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere}
# indexing with a Python index (slices whose bounds may be tensors)
_SUBSCRIPTS = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
# functions that read a tensor's values into Python
_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
          torch.Tensor.__index__, torch.Tensor.__float__}
# in-place dunders (besides methods named with a trailing underscore): they write their first argument
_WRITES = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
           "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__"}
# a value known at the example sizes is computed only up to this many elements
_KNOWN_LIMIT = 1 << 22


class KnownValues(torch.overrides.TorchFunctionMode):
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
    member it is (an identity expert) goes as it would. Members known to be zero are left out (ValueSupport: the
    sentinel class of a one-hot over more classes than its indices reach). A selection from a tensor sized by B, S
    or L keeps its data-dependent count, hinted that every element is selected: `if count == 0: continue` takes the
    non-empty path (graph.build prices the count). A tensor known to be all zero (a count over an empty dim) reads
    as 0."""

    def __init__(self):
        super().__init__()
        self.values = WeakIdKeyDictionary()  # traced tensor -> (its value as a CPU tensor, exact?)
        self.zeros = ValueSupport()          # where values are known to be zero (a one-hot's unreached classes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SELECTING or (func is torch.where and len(args) == 1 and not kwargs):
            return self._select(func, args, kwargs)
        if func in _READS and self.zeros.is_zero(args[0]):
            return _zero_read(func, args[0])
        if func in _SUBSCRIPTS and len(args) > 1:  # a slice bound known to be zero is read as 0, as Python would
            args = (args[0], self._zero_bounds(args[1]), *args[2:])
        written = _written(func, args, kwargs)
        self.zeros.forget(written)
        if func is not torch.arange and not self._all_known(args, kwargs):
            for tensor in written:  # written from unknown values: no longer known
                self.values.pop(tensor, None)
            out = func(*args, **kwargs)
            self.zeros.follow(func, args, kwargs, out)
            return out
        if func in _READS:
            return self._read(func, args, kwargs)
        out = func(*args, **kwargs)
        self._follow(func, args, kwargs, out)
        return out

    def _zero_bounds(self, index):
        def bound(b):
            return 0 if isinstance(b, torch.Tensor) and b.dim() == 0 and self.zeros.is_zero(b) else b

        def each(i):
            return slice(bound(i.start), bound(i.stop), bound(i.step)) if isinstance(i, slice) else i

        return tuple(each(i) for i in index) if isinstance(index, tuple) else each(index)

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
                return int(a.node.shape_env.guarding_hint_or_throw(a.node.expr))  # data-dependent: raises
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
        if not exact:
            known = self.zeros.of(x)
        with _disable_current_modes():
            value = (known if known is not None else torch.ones(x.shape, dtype=torch.bool)).nonzero()
        columns = value.unbind(1) if as_tuple else (value,)
        out = tuple(torch.tensor(c.tolist(), dtype=torch.long, device=x.device).reshape(c.shape) for c in columns)
        for traced, real in zip(out, columns):
            self.values[traced] = (real, True)
        return out if as_tuple else out[0]


def _zero_read(func, tensor: torch.Tensor):
    """A read of a tensor whose values are all known to be zero, as Python gives it."""
    if func is torch.Tensor.tolist:
        with _disable_current_modes():
            return torch.zeros([int(d) for d in tensor.shape], dtype=tensor.dtype).tolist()
    zero = False if tensor.dtype == torch.bool else 0.0 if tensor.dtype.is_floating_point else 0
    convert = {torch.Tensor.__bool__: bool, torch.Tensor.__int__: int, torch.Tensor.__index__: int,
               torch.Tensor.__float__: float}.get(func)
    return convert(zero) if convert else zero


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
    try:
        return int(n.node.shape_env.guarding_hint_or_throw(n.node.expr))
    except Exception:  # a data-dependent size without a hint
        return _KNOWN_LIMIT + 1


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


