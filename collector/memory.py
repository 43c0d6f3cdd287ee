"""Memory-bound ops as transformers writes them (norms, activations, residual adds, softmax): bytes-bound
kernels whose latency is mostly bytes / bandwidth plus launch cost. Table elementwise_perf (family
elementwise; new): op_name, kernel_source, dtype, num_tokens, hidden_size, bytes_moved (the op's minimum
HBM traffic, for an effective bandwidth), latency.

op_name: rmsnorm (fp32 variance, rsqrt, weight; LlamaRMSNorm), layernorm (F.layer_norm), silu_and_mul
(act(gate) * up over hidden_size outputs), gelu_tanh, residual_add, softmax (fp32, over hidden_size).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from collector.common import TABLE_DTYPE, as_int, randn, torch_dtype
from collector.registry import collector
from collector.timing import time_call

MEM_COLUMNS = ("dtype", "num_tokens", "hidden_size", "bytes_moved")
MEM_KEY = ("op_name", "kernel_source", "dtype", "hidden_size", "num_tokens")


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


# op -> (function, input shapes (t, h) -> list of shapes, [reads, writes] in elements of dtype per t*h)
OPS = {
    "rmsnorm": (_rmsnorm, lambda t, h: [(t, h), (h,)], (1, 1)),
    "layernorm": (_layernorm, lambda t, h: [(t, h), (h,), (h,)], (1, 1)),
    "silu_and_mul": (_silu_and_mul, lambda t, h: [(t, h), (t, h)], (2, 1)),
    "gelu_tanh": (_gelu, lambda t, h: [(t, h)], (1, 1)),
    "residual_add": (_add, lambda t, h: [(t, h), (t, h)], (2, 1)),
    "softmax": (_softmax, lambda t, h: [(t, h)], (1, 1)),
}


def _parse(case):
    op = case.get("op_name")
    if op not in OPS:
        raise ValueError(f"unknown memory-bound op {op!r}; known: {', '.join(OPS)}")
    dtype = torch_dtype(case.get("dtype", "bfloat16"))
    if dtype not in TABLE_DTYPE:
        raise ValueError(f"dtype {case.get('dtype')!r} not collected; use bfloat16, float16 or float32")
    return op, dtype, as_int(case, "num_tokens"), as_int(case, "hidden_size")


@collector("memory", table="elementwise_perf", family="elementwise", columns=MEM_COLUMNS, key=MEM_KEY)
def memory(case: dict, ctx) -> float:
    op, dtype, t, h = _parse(case)
    fn, shapes, _ = OPS[op]

    def make():
        return tuple(randn(s, ctx, dtype) for s in shapes(t, h))

    return time_call(fn, make, ctx)


@memory.normalizer
def _row(case: dict, ctx) -> dict:
    op, dtype, t, h = _parse(case)
    reads, writes = OPS[op][2]
    return {"op_name": op, "kernel_source": "torch_eager", "dtype": TABLE_DTYPE[dtype], "num_tokens": t,
            "hidden_size": h, "bytes_moved": (reads + writes) * t * h * dtype.itemsize}
