"""Small helpers shared by the collectors: dtype names, random tensors."""
from __future__ import annotations

import torch

DTYPES = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    DTYPES["float8_e4m3fn"] = DTYPES["fp8"] = torch.float8_e4m3fn

# names the tables use for a dtype
TABLE_DTYPE = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}") from None


def randn(shape, ctx, dtype=torch.bfloat16, scale: float = 1.0) -> torch.Tensor:
    t = torch.randn(*shape, device=ctx.device, dtype=torch.float32 if dtype.is_floating_point else dtype)
    if scale != 1.0:
        t.mul_(scale)
    return t.to(dtype)


def as_int(case: dict, name: str, default=None) -> int:
    value = case.get(name, default)
    if value is None:
        raise ValueError(f"case lacks {name!r}")
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)
