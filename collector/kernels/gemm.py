"""GEMM: out[m, n] = x[m, k] @ W[n, k]^T as transformers runs a Linear (torch.nn.functional.linear, bf16), and
fp8 with per-tensor scales via torch._scaled_mm where the GPU has fp8 tensor cores. Table gemm_perf."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from collector.common import as_int, randn
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import GEMM

KERNELS = {"bfloat16": "torch.nn.functional.linear", "fp8": "torch._scaled_mm"}
ALIASES = {"bf16": "bfloat16", "float8_e4m3fn": "fp8"}


@collector("gemm", spec=GEMM)
def gemm(case: dict, ctx) -> float:
    m, n, k = as_int(case, "m"), as_int(case, "n"), as_int(case, "k")
    dtype = _dtype(case)
    if dtype == "bfloat16":
        def make():
            return randn((m, k), ctx), randn((n, k), ctx, scale=k ** -0.5)

        return time_call(F.linear, make, ctx)
    if not ctx.features.get("fp8_scaled_mm"):
        raise RuntimeError(f"fp8 GEMM needs torch._scaled_mm with fp8 support on {ctx.device_name}")
    f8 = torch.float8_e4m3fn

    def make():
        one = torch.ones((), device=ctx.device)
        return randn((m, k), ctx, f8), randn((n, k), ctx, f8).t(), one, one.clone()

    def run(a, b, sa, sb):
        return torch._scaled_mm(a, b, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)

    return time_call(run, make, ctx)


@gemm.normalizer
def _row(case: dict, ctx) -> dict:
    dtype = _dtype(case)
    return {"op_name": "gemm", "kernel_source": KERNELS[dtype], "gemm_dtype": dtype,
            "m": as_int(case, "m"), "n": as_int(case, "n"), "k": as_int(case, "k")}


def _dtype(case: dict) -> str:
    dtype = ALIASES.get(case.get("gemm_dtype", "bfloat16"), case.get("gemm_dtype", "bfloat16"))
    if dtype not in KERNELS:
        raise ValueError(f"gemm_dtype {dtype!r} not collected; known: {', '.join(KERNELS)}")
    return dtype
