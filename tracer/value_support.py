"""Where a traced tensor's values may be nonzero, known from how it was made although the meta device holds none.

Indices from topk, sort, argmax... lie below the size of the dim they index. A one-hot over more classes than
those indices reach (a sentinel class for dropped tokens) is zero in the classes beyond: permuted, summed over
tokens and compared with zero, it still is, so a selection of the classes that received tokens (nonzero) leaves
them out where it would otherwise take every class. A tensor with no elements has none nonzero: a sum over an empty
dim is zero, and reading it (.item(), a slice bound) gives 0, not a data-dependent symbol.

A support is a bool CPU tensor broadcastable to the traced tensor (size 1 in every dim it does not resolve), False
where the value is known to be zero. Only exact rules are followed; anything else forgets what was known, and a
selection without a support takes every member, as before.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

from core.aten import INDEXING

# functions that keep every value of their first argument (ranges pass through), or move it without changing it
_SAME_VALUES = {"view", "reshape", "flatten", "to", "long", "int", "type", "contiguous", "clone", "detach",
                "permute", "transpose", "unsqueeze", "squeeze", "expand", "view_as", "reshape_as", "__getitem__"}
# functions whose support is the same function applied to the support (same dims, reordered or added)
_MOVES = {"permute", "transpose", "unsqueeze"}
# functions that keep zeros zero, element for element
_KEEP_ZEROS = {"to", "long", "int", "float", "bool", "type", "contiguous", "clone", "detach", "abs"}
# comparisons that are False where the value is zero, given 0 as the other operand
_ZERO_IS_FALSE = {"gt", "greater", "__gt__", "ne", "not_equal", "__ne__"}
# reductions that are zero where every reduced value is
_REDUCTIONS = {"sum", "any", "amax"}
# the same, only as a reduction over every element (called on the tensor alone): max(a, b) is elementwise
_FULL_REDUCTIONS = {"max", "min", "amin", "mean", "prod"}


class ValueSupport:
    """Ranges of index tensors and supports of tensors made from them, followed call by call (see follow)."""

    def __init__(self):
        self.ranges = WeakIdKeyDictionary()   # traced integer tensor -> (lowest, highest) value it can hold
        self.support = WeakIdKeyDictionary()  # traced tensor -> bool CPU tensor: False where known zero

    def of(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """The support of a traced tensor, expanded to its shape (a fixed shape), or None where not known."""
        mask = self.support.get(tensor)
        if mask is None or not all(type(d) is int for d in tensor.shape):
            return None
        with _disable_current_modes():  # a CPU tensor, outside export's fake mode
            return mask.expand(tensor.shape)

    def is_zero(self, tensor: torch.Tensor) -> bool:
        """Whether every value of the traced tensor is known to be zero (a sum over an empty dim)."""
        mask = self.support.get(tensor)
        if mask is None:
            return False
        with _disable_current_modes():
            return not bool(mask.any())

    def forget(self, tensors) -> None:
        for tensor in tensors:
            self.ranges.pop(tensor, None)
            self.support.pop(tensor, None)

    def follow(self, func, args, kwargs, out) -> None:
        name = getattr(func, "__name__", "")
        if name in INDEXING:
            self._indices(name, args, kwargs, out)
            return
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if not isinstance(out, torch.Tensor):
            return
        if any(type(d) is int and d == 0 for d in out.shape):  # no elements: none of them nonzero
            with _disable_current_modes():
                self.support[out] = torch.zeros([0 if type(d) is int and d == 0 else 1 for d in out.shape],
                                                dtype=torch.bool)
            return
        if first is None:
            return
        if name == "one_hot" and first in self.ranges:
            self._one_hot(first, args, kwargs, out)
        elif name in _SAME_VALUES and first in self.ranges:
            self.ranges[out] = self.ranges[first]
        if first not in self.support:
            return
        mask = self.support[first]
        with _disable_current_modes():
            if name in _MOVES:
                self.support[out] = func(mask, *args[1:], **kwargs)
            elif name in _KEEP_ZEROS or (name in _ZERO_IS_FALSE and _is_zero(args[1:], kwargs)):
                self.support[out] = mask
            elif name in _REDUCTIONS or (name in _FULL_REDUCTIONS and len(args) == 1 and not kwargs):
                reduced = _reduced(mask, args, kwargs)
                if reduced is not None:
                    self.support[out] = reduced

    def _indices(self, name, args, kwargs, out) -> None:
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        indices = out[INDEXING[name][0]] if INDEXING[name][0] is not None else out
        _, position, default = INDEXING[name]  # argmax without a dim: a flat index
        dim = kwargs.get("dim", args[position] if len(args) > position else default)
        if source is None or not isinstance(indices, torch.Tensor) or not isinstance(dim, int) or source.dim() == 0:
            return
        size = source.shape[dim]
        if type(size) is int:
            self.ranges[indices] = (0, size - 1)

    def _one_hot(self, indices, args, kwargs, out) -> None:
        classes = out.shape[-1]
        if type(classes) is not int:
            return
        low, high = self.ranges[indices]
        with _disable_current_modes():
            mask = torch.zeros((1,) * (out.dim() - 1) + (classes,), dtype=torch.bool)
            mask[..., max(low, 0):high + 1] = True
        self.support[out] = mask


def _is_zero(others, kwargs) -> bool:
    other = others[0] if others else kwargs.get("other")
    return type(other) in (int, float, bool) and other == 0


def _reduced(mask: torch.Tensor, args, kwargs) -> torch.Tensor | None:
    """The support of a sum / any / amax of a tensor with support `mask`: nonzero somewhere in what it reduces."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keepdim = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    if not isinstance(keepdim, bool):
        return None
    if dim is None:
        return mask.any()
    if isinstance(dim, torch.Tensor):
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim) if all(isinstance(d, int) for d in dim) else None
    if dims is None:
        return None
    return mask.any(dim=dims, keepdim=keepdim)
