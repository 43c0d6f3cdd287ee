"""FLOPs and bytes per ATen op: a registry of small functions, one per op family.

Each formula receives the op's argument values as export recorded them (FakeTensors whose sizes may be symbolic)
and returns a sympy-compatible expression. Adding an op is adding one decorated function.

FLOPs count multiply and add separately (2 per MAC), as torch.utils.flop_counter does; attention counts both
products (Q.K^T and P.V) over the full score matrix; elementwise ops count one FLOP per output element.
Bytes are the distinct tensors read plus the tensors written, at their dtype; metadata-only ops move nothing.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

aten = torch.ops.aten

FLOP_FORMULAS: dict[str, Callable] = {}
BYTE_FORMULAS: dict[str, Callable] = {}
CATEGORY: dict[str, str] = {}


def _name(op) -> str:
    """'aten.linear' for aten.linear.default / aten.linear (packet); custom ops keep their namespace."""
    text = str(op)
    parts = text.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else text


def register(*ops, category: str):
    def wrap(fn):
        for op in ops:
            FLOP_FORMULAS[_name(op)] = fn
            CATEGORY[_name(op)] = category
        return fn
    return wrap


def categorize(*ops, category: str):
    for op in ops:
        CATEGORY[_name(op)] = category


def op_name(target) -> str:
    return _name(target)


def size(t) -> tuple:
    return tuple(d.node.expr if isinstance(d, torch.SymInt) else int(d) for d in t.shape)


def numel(t) -> object:
    return math.prod(size(t)) if t.dim() else 1


# --- matrix products --------------------------------------------------------------------------------------------

def _mm_flops(a, b):
    *batch, m, k = size(a)
    return 2 * math.prod(batch) * m * k * size(b)[-1]


@register(aten.mm, aten.bmm, category="matmul")
def _mm(args, out):
    return _mm_flops(args[0], args[1])


@register(aten.addmm, aten.baddbmm, category="matmul")
def _addmm(args, out):
    return _mm_flops(args[1], args[2])  # the bias add is not counted, as torch's counter does


@register(aten.linear, category="matmul")
def _linear(args, out):
    x, w = args[0], args[1]
    return 2 * numel(x) * size(w)[0]


@register(aten.matmul, category="matmul")
def _matmul(args, out):
    a = args[0]
    k = size(a)[-1]
    return 2 * numel(out) * k


@register(aten.einsum, category="matmul")
def _einsum(args, out):
    # Contracted size = product of all input dims over the output's: exact for products of two operands.
    equation, operands = args[0], args[1]
    inputs, _, output = equation.replace(" ", "").partition("->")
    dims = {}
    for spec, t in zip(inputs.split(","), operands):
        for letter, d in zip(spec, size(t)):
            dims[letter] = d
    contracted = math.prod(d for letter, d in dims.items() if letter not in output)
    return 2 * numel(out) * contracted


def _grouped(args, out):
    # (tokens, k) x (experts, k, n) with per-expert offsets: every routed token meets one expert's weight.
    x, w = args[0], args[1]
    return 2 * numel(x) * size(w)[-1]


for _op in ("transformers.grouped_mm_fallback", "aten._grouped_mm"):
    FLOP_FORMULAS[_op] = _grouped
    CATEGORY[_op] = "matmul"


# --- attention ---------------------------------------------------------------------------------------------------

@register(aten.scaled_dot_product_attention, aten._scaled_dot_product_flash_attention,
          aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
          aten._scaled_dot_product_flash_attention_for_cpu, category="attention")
def _sdpa(args, out):
    q, k, v = args[0], args[1], args[2]
    *batch, sq, dqk = size(q)
    sk = size(k)[-2]
    dv = size(v)[-1]
    return 2 * math.prod(batch) * sq * sk * (dqk + dv)


# --- convolution -------------------------------------------------------------------------------------------------

@register(aten.convolution, aten.conv1d, aten.conv2d, aten.conv3d, aten._convolution, category="conv")
def _conv(args, out):
    w = args[1]
    out_t = out[0] if isinstance(out, (tuple, list)) else out
    # per output element: (in_channels / groups) x kernel MACs; the weight's dims after the first give exactly that
    return 2 * numel(out_t) * math.prod(size(w)[1:])


# --- everything else ---------------------------------------------------------------------------------------------

VIEW_OPS = ("view", "_unsafe_view", "reshape", "transpose", "t", "permute", "expand", "unsqueeze", "squeeze",
            "slice", "select", "alias", "detach", "as_strided", "unflatten", "flatten", "split", "split_with_sizes",
            "chunk", "unbind", "narrow", "view_as", "expand_as", "movedim", "_assert_tensor_metadata",
            "_assert_scalar", "sym_size", "sym_numel", "sym_stride", "lift_fresh_copy", "diagonal", "unfold",
            "view_as_real", "view_as_complex", "real", "imag", "dropout", "feature_dropout", "alpha_dropout",
            "lift_fresh", "item", "_local_scalar_dense", "sym_constrain_range_for_size", "_assert_async",
            "scalar_tensor", "empty", "empty_like", "new_empty", "empty_strided", "size", "stride", "dim",
            "set_grad_enabled", "_functional_assert_async", "contiguous", "numpy_T", "mT", "mH", "adjoint",
            "swapaxes", "swapdims", "moveaxis")
MEMORY_OPS = ("cat", "stack", "clone", "copy", "copy_", "_to_copy", "to", "index", "index_select", "gather",
              "scatter", "scatter_add", "index_put", "index_put_", "index_copy", "index_copy_", "embedding",
              "masked_fill", "masked_fill_", "where", "zeros", "zeros_like", "ones", "ones_like", "full",
              "full_like", "new_zeros", "new_ones", "new_full", "arange", "fill", "fill_", "zero_", "flip",
              "roll", "repeat", "repeat_interleave", "pad", "constant_pad_nd", "tril", "triu", "sort", "argsort",
              "topk", "one_hot", "histc", "bincount", "nonzero", "tensor", "type_as", "float", "masked_scatter",
              "index_add", "slice_scatter", "select_scatter", "diag_embed", "linspace", "randn", "rand",
              "searchsorted", "bucketize", "unique", "split_copy")
REDUCTION_OPS = ("sum", "mean", "amax", "amin", "max", "min", "var", "std", "norm", "prod", "cumsum", "cumprod",
                 "logsumexp", "softmax", "_softmax", "log_softmax", "_log_softmax", "any", "all", "argmax",
                 "argmin", "rms_norm", "layer_norm", "group_norm", "native_layer_norm", "linalg_vector_norm",
                 "_safe_softmax", "count_nonzero", "var_mean")


def category_of(name: str) -> str:
    if name in CATEGORY:
        return CATEGORY[name]
    base = name.split(".", 1)[-1]
    if base in VIEW_OPS:
        return "view"
    if base in MEMORY_OPS:
        return "memory"
    if base in REDUCTION_OPS:
        return "reduction"
    return "elementwise"


def flops(name: str, args, out) -> object:
    fn = FLOP_FORMULAS.get(name)
    if fn is not None:
        return fn(args, out)
    category = category_of(name)
    if category in ("elementwise", "reduction"):
        tensors = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
        ins = [a for a in _flat(args) if isinstance(a, torch.Tensor)]
        # a reduction does one op per element it reads; an elementwise op one per element it writes
        pool = ins if category == "reduction" else tensors
        return max((numel(t) for t in pool), default=0, key=_hint) if pool else 0
    return 0


def _hint(e) -> float:
    """A large numeric stand-in for comparing symbolic sizes (picks the biggest tensor)."""
    if isinstance(e, int):
        return e
    return float(e.subs({s: 1 << 12 for s in e.free_symbols}))


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


def _gathered(args, out):
    # A lookup reads only the rows it returns (plus the indices), not the whole table.
    outs = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
    index_bytes = sum(tensor_bytes(a) for a in _flat(args)
                      if isinstance(a, torch.Tensor) and not a.is_floating_point())
    return index_bytes + 2 * sum(tensor_bytes(t) for t in outs)


for _op in ("aten.embedding", "aten.index", "aten.index_select", "aten.gather"):
    BYTE_FORMULAS[_op] = _gathered


def tensor_bytes(t) -> object:
    return numel(t) * t.element_size()


def bytes_moved(name: str, args, out) -> object:
    """Distinct input tensors read plus output tensors written; nothing for metadata-only ops."""
    if category_of(name) == "view":
        return 0
    if name in BYTE_FORMULAS:
        return BYTE_FORMULAS[name](args, out)
    seen, total = set(), 0
    for a in _flat(args):
        if isinstance(a, torch.Tensor) and id(a) not in seen:
            seen.add(id(a))
            total = total + tensor_bytes(a)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    for t in outs:
        if isinstance(t, torch.Tensor):
            total = total + tensor_bytes(t)
    return total
