"""The one table of data types: bytes per element of tensors and KV caches, and the weight formats of quantized
GEMMs and experts (bytes per weight with their block scales, bytes per activation, the precision the math runs in).

Every other module reads sizes from here: the pricer and the roofline, memory, the KV report, the op formulas.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from core.errors import UserError

# Bits per element, by short name. fp4 also carries block scales where it is a storage format (see vector_bytes).
ELEMENT_BITS = {"bf16": 16, "fp16": 16, "fp32": 32, "fp64": 64, "fp8": 8, "int8": 8, "uint8": 8, "int16": 16,
                "int32": 32, "int64": 64, "bool": 8, "fp4": 4}
# torch's and the tables' names for the same types
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
            "float64": "fp64", "double": "fp64", "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8",
            "float8_e4m3fnuz": "fp8", "float8_e5m2fnuz": "fp8", "fp8_e4m3": "fp8", "fp8_e5m2": "fp8",
            "e4m3": "fp8", "e5m2": "fp8", "nvfp4": "fp4", "float4": "fp4", "float4_e2m1fn_x2": "fp4",
            "long": "int64", "int": "int32", "short": "int16"}
# NVFP4's layout: 4-bit elements with one fp8 (E4M3) scale per block of 16; its one fp32 scale per tensor is not
# counted. (MXFP4's one 8-bit scale per 32 elements would be 1/32 byte per element less.)
FP4_BLOCK = 16


def canonical(name: str) -> str | None:
    """The short name of a dtype written any common way (torch.bfloat16, bfloat16, bf16), or None if unknown."""
    key = str(name).strip().lower().replace("torch.", "")
    key = _ALIASES.get(key, key)
    return key if key in ELEMENT_BITS else None


def element_bytes(name: str, default: float = 2) -> float:
    """Bytes of one element of a traced tensor's dtype; `default` for a dtype the table does not know."""
    key = canonical(name)
    if not key:
        return default
    bits = ELEMENT_BITS[key]
    return bits // 8 if bits % 8 == 0 else bits / 8  # whole bytes stay ints: byte expressions print as "2*B*S"


def vector_bytes(elements: int, dtype: str) -> int:
    """Bytes of one cached vector (a head's K or V, the latent, the rope key) of `elements` values, scales included."""
    if dtype == "fp4":
        return math.ceil(elements / 2) + math.ceil(elements / FP4_BLOCK)
    return elements * ELEMENT_BITS[dtype] // 8


# KV-cache dtypes a user may name (the tables measure bf16 and fp8 caches)
KV_DTYPES = ("bf16", "fp16", "fp32", "fp8", "int8", "fp4")


def canonical_kv_dtype(name: str) -> str:
    """A KV-cache dtype's short name; one clear error for anything else."""
    key = canonical(name)
    if key not in KV_DTYPES:
        raise UserError(f"unknown KV dtype {name!r}: use one of {', '.join(KV_DTYPES)}")
    return key


class WeightFormat(NamedTuple):
    """One value of a GEMM or MoE table's dtype column: how its weights are stored and its math runs."""
    table: str           # the value in gemm_perf.gemm_dtype / moe_perf.moe_dtype
    compute: str         # precision of the math (which dense peak a roofline uses)
    act_bytes: float     # per activation element read
    weight_bytes: float  # per weight, block scales included
    stand_in: str | None = None  # the format whose measured GEMM lane prices this one where none of its own is


# Scales: fp8_block one fp32 per 128x128 block; nvfp4 one fp8 per 16; mxfp4 one e8m0 per 32; int4 (AWQ/GPTQ) one
# fp16 per group of 128.
WEIGHT_FORMATS = {f.table: f for f in (
    WeightFormat("bfloat16", "bf16", 2, 2),
    WeightFormat("fp8", "fp8", 1, 1),
    WeightFormat("fp8_block", "fp8", 1, 1 + 4 / (128 * 128), stand_in="fp8"),   # the same fp8 math and bytes
    WeightFormat("nvfp4", "fp4", 0.5625, 0.5625),
    WeightFormat("int8_wo", "bf16", 2, 1),
    WeightFormat("int4_wo", "bf16", 2, 0.5 + 2 / 128),
    WeightFormat("sq", "int8", 1, 1),  # SmoothQuant W8A8
    WeightFormat("w4a16_mxfp4", "bf16", 2, 0.5 + 1 / 32),
    WeightFormat("w4a8_mxfp4_mxfp8", "fp8", 1 + 1 / 32, 0.5 + 1 / 32),
    WeightFormat("w4afp8", "fp8", 1, 0.5),
)}
GEMM_FORMATS = ("bfloat16", "fp8", "fp8_block", "nvfp4", "int8_wo", "int4_wo", "sq")
MOE_FORMATS = ("bfloat16", "fp8", "fp8_block", "nvfp4", "int4_wo", "w4a16_mxfp4", "w4a8_mxfp4_mxfp8", "w4afp8")
MXFP4_MOE_ACTIVATIONS = ("bf16", "mxfp8")   # what an engine feeds mxfp4 experts on GPUs with FP4 tensor cores
FP8_INPUT_SCALES = ("static", "dynamic")    # how an engine scales a per-tensor FP8 GEMM's input


class QuantMode(NamedTuple):
    """A model's quantization as a user names it: the table formats its dense GEMMs and experts run, and the format
    its weights are stored in (memory)."""
    gemm: str
    moe: str
    stored: str

    @property
    def weight_bytes(self) -> float:
        return WEIGHT_FORMATS[self.stored].weight_bytes


QUANT_MODES = {
    "bf16": QuantMode("bfloat16", "bfloat16", "bfloat16"),
    "fp8": QuantMode("fp8", "fp8", "fp8"),
    "fp8_block": QuantMode("fp8_block", "fp8_block", "fp8_block"),
    "nvfp4": QuantMode("nvfp4", "nvfp4", "nvfp4"),
    "mxfp4": QuantMode("int4_wo", "w4a16_mxfp4", "w4a16_mxfp4"),  # dense GEMMs run weight-only
    "int4_wo": QuantMode("int4_wo", "int4_wo", "int4_wo"),
    "int8_wo": QuantMode("int8_wo", "bfloat16", "int8_wo"),        # no int8 MoE table: experts priced as bf16
    "w8a8": QuantMode("sq", "bfloat16", "sq"),
}
QUANT_ALIASES = {"bfloat16": "bf16", "fp16": "bf16", "float16": "bf16", "none": "bf16", "int4": "int4_wo",
                 "awq": "int4_wo", "gptq": "int4_wo", "int8": "int8_wo", "fp4": "nvfp4", "sq": "w8a8",
                 "fp8_blockwise": "fp8_block"}
# the tables' dtype columns take these spellings of the same formats
FORMAT_ALIASES = {"bf16": "bfloat16", "fp16": "bfloat16", "float16": "bfloat16", "fp4": "nvfp4", "w8a8": "sq"}
