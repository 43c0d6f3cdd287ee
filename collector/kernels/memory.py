"""Memory-bound ops as transformers writes them (norms, activations, residual adds, softmax): bytes-bound
kernels whose latency is mostly bytes / bandwidth plus launch cost. Table elementwise_perf
(costmodel.tables.specs.ELEMENTWISE): bytes_moved is the op's minimum HBM traffic, each input (weights and biases
included) read once and the output written once, as the traced op's bytes count it.

op_name: rmsnorm (fp32 variance, rsqrt, weight; LlamaRMSNorm), layernorm (F.layer_norm), silu_and_mul
(act(gate) * up over hidden_size outputs), gelu_tanh, residual_add, softmax (fp32, over hidden_size).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from collector.common import TABLE_DTYPE, as_int, randn, torch_dtype
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import ELEMENTWISE



def _rmsnorm(x, w):
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    return w * h.to(dtype)


def _layernorm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def _silu_and_mul(gate, up):
    return F.silu(gate) * up


def _gelu(x):
    return F.gelu(x, approximate="tanh")


def _add(x, r):
    return x + r


def _softmax(x):
    return torch.softmax(x, dim=-1, dtype=torch.float32).to(x.dtype)


# op -> (function, input shapes (t, h) -> list of shapes); each writes one (t, h) output
OPS = {
    "rmsnorm": (_rmsnorm, lambda t, h: [(t, h), (h,)]),
    "layernorm": (_layernorm, lambda t, h: [(t, h), (h,), (h,)]),
    "silu_and_mul": (_silu_and_mul, lambda t, h: [(t, h), (t, h)]),
    "gelu_tanh": (_gelu, lambda t, h: [(t, h)]),
    "residual_add": (_add, lambda t, h: [(t, h), (t, h)]),
    "softmax": (_softmax, lambda t, h: [(t, h)]),
}


def _parse(case):
    op = case.get("op_name")
    if op not in OPS:
        raise ValueError(f"unknown memory-bound op {op!r}; known: {', '.join(OPS)}")
    dtype = torch_dtype(case.get("dtype", "bfloat16"))
    if dtype not in TABLE_DTYPE:
        raise ValueError(f"dtype {case.get('dtype')!r} not collected; use bfloat16, float16 or float32")
    return op, dtype, as_int(case, "num_tokens"), as_int(case, "hidden_size")


@collector("memory", spec=ELEMENTWISE)
def memory(case: dict, ctx) -> float:
    op, dtype, t, h = _parse(case)
    fn, shapes = OPS[op]

    def make():
        return tuple(randn(s, ctx, dtype) for s in shapes(t, h))

    return time_call(fn, make, ctx)


@memory.normalizer
def _row(case: dict, ctx) -> dict:
    op, dtype, t, h = _parse(case)
    elements = sum(math.prod(s) for s in OPS[op][1](t, h)) + t * h
    return {"op_name": op, "kernel_source": "torch_eager", "dtype": TABLE_DTYPE[dtype], "num_tokens": t,
            "hidden_size": h, "bytes_moved": elements * dtype.itemsize}
