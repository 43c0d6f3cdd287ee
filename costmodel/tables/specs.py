"""Table specs: one TableSpec per measured table, read by the database (which columns to match, which to
interpolate over) and by the collector (which columns to write, in which order, and which identify a point).

Every table has ``framework, version, device, op_name, kernel_source`` (some nccl tables omit the first three)
and ``latency`` in milliseconds, except ``moe_a2a_perf`` whose ``latency`` (and ``transmit_us``) is in
microseconds. Axes are the columns interpolated over; variant columns are matched exactly. ``kernel_source``
names the kernel lane (e.g. fa3 vs triton); unless a query names one, the lane with the most rows for the
requested variant is used (ties: CUDA-graph lanes, then name), so one interpolation never mixes two kernels' grids.

aiconfigurator-core 0.12.0 tables:

gemm_perf (gemm/): variant gemm_dtype {bfloat16, fp8, fp8_block, nvfp4, int8_wo, int4_wo, sq};
    axes m (tokens, 1..32768, 74 values), n, k (22 values each, 32..65536). Ragged: not every (m, n, k) exists.
    TensorRT-LLM's fp8 lane runs the dynamic input scale (its collector gives the weights no input_scale).
computescale_perf (quantize/): that dynamic scale alone (op_name compute_scale, quant_dtype fp8; axes k, m):
    7-8 us at small m in TensorRT-LLM's tables, under 1 us in vLLM's and SGLang's.
context_attention_perf (attention/): variants attn_dtype {bfloat16, fp8}, kv_cache_dtype {bfloat16, fp8},
    window_size {0 = full, 128, 512, 1024, 8192}; constants beam_width=1, step=0; axes head_dim {64..256},
    num_key_value_heads, num_heads, batch_size, isl (prompt length). MHA rows store num_key_value_heads == num_heads.
generation_attention_perf (attention/): one decode step, one new token per sequence. Variants kv_cache_dtype,
    window_size; constants attn_dtype=bfloat16, isl=1, beam_width=1; axes head_dim, num_key_value_heads,
    num_heads, batch_size, step = tokens already in the KV cache (2^k - 1, up to 131071; the new token attends to
    step + 1 tokens).
context_mla_perf / generation_mla_perf (mla/): DeepSeek-V3 MLA geometry fixed by the collector (kv_lora_rank 512,
    qk_nope 128, qk_rope 64, v_head 128). Variants mla_dtype {bfloat16}, kv_cache_dtype {bfloat16, fp8}; axes
    num_heads (per GPU, 1..128), batch_size, isl (context, step=0) or step (generation, isl=1, as for attention).
    tp_size is 128 / num_heads and not used. Absent for vllm (only module tables).
mla_context_module_perf / mla_generation_module_perf (mla/): a whole DeepSeek-V3 attention block (projections
    included, columns model, architecture, gemm_type, tp_size=1; generation ``step`` here counts the new token
    too: 2^k). Not queried: tracecost prices projections as GEMMs.
mla_bmm_perf (mla_bmm/): MLA absorbed BMMs (op_name mla_gen_pre / mla_gen_post, bmm_dtype, num_tokens,
    num_heads). Not queried yet.
moe_perf (moe/): variants moe_dtype {bfloat16, fp8, fp8_block, nvfp4, int4_wo, w4a16_mxfp4, w4a8_mxfp4_mxfp8,
    w4afp8}, distribution {balanced, power_law_1.01, power_law_1.2}; axes hidden_size, inter_size, num_experts,
    topk, moe_tp_size, moe_ep_size, num_tokens (tokens entering the layer). Kernel names with "nongated" are
    non-gated (2-matrix) experts; "moe_torch_flow_min_latency" (trtllm, nvfp4 on b200_sxm and gb200) is TensorRT-LLM's
    min-latency kernel, which gated queries of at most 128 tokens take where it measured the shape.
    wideep_moe_perf / wideep_{context,generation}_moe_perf add EPLB slots and per-rank token counts; not queried.
nccl_perf (comm/nccl/): variants op_name {all_reduce, all_gather, reduce_scatter, alltoall}, nccl_dtype
    {half, int8}; axes num_gpus {2, 4, 8} (2, 4 on gb200), message_size in *elements* of nccl_dtype (nccl-tests
    bytes // element size). Queried in bytes.
custom_allreduce_perf (comm/<backend>/): the framework's own all-reduce; allreduce_dtype {bfloat16}, num_gpus,
    message_size in bfloat16 elements; kernel_source tells graph vs eager.
moe_a2a_perf, wideep_deepep_*_perf, trtllm_alltoall_perf (comm/): expert-parallel dispatch and combine; not
    queried (latency in microseconds in moe_a2a_perf).
mamba2_perf (linear_attention/): only the causal conv1d of a Mamba2 mixer (kernel_source causal_conv1d_fn for
    phase=context, causal_conv1d_update for generation; no scan kernel). Model columns d_model, d_state, nheads,
    head_dim, n_groups, chunk_size, model_name; axes used: d_conv, conv channels = nheads * head_dim + 2 *
    n_groups * d_state, batch_size, seq_len (num_tokens = batch_size * seq_len).
gdn_perf (linear_attention/): gated delta-net; variant phase {context, generation}; two kernels per phase, a
    causal conv1d (kernel_source contains "conv1d") and the delta rule (chunk_gated_delta_rule* /
    fused_recurrent_gated_delta_rule*); axes d_conv, head_k_dim, head_v_dim, num_k_heads, num_v_heads,
    batch_size, seq_len (d_model and model_name do not change the kernels; duplicates collapse as below).
Not queried here: kda_perf (same layout as gdn), encoder_attention_perf, msa_*, dsa_*, dsv4_*, glm5_*,
    mhc_module_perf, scale_matrix_perf (quantize/), wideep_*mlp*.

Tables only tracecost's collector writes (backend folder ``torch``, read whatever backend the database prices for):

ssm_scan_perf (linear_attention/): Mamba-1 selective scan (op_name mamba1_selective_scan, nheads = d_inner,
    head_dim = 1, chunk_size = 1) and Mamba-2 SSD (mamba2_ssd); variant phase; axes chunk_size, d_state, head_dim,
    n_groups, nheads, batch_size, seq_len (1 for generation).
elementwise_perf (elementwise/): memory-bound kernels (op_name rmsnorm, layernorm, silu_and_mul, gelu_tanh,
    residual_add, softmax), variant dtype; axis bytes_moved (each input once, each output once, as the traced
    op's bytes count them); num_tokens and hidden_size identify the measured shape.
aten_perf (aten/): one ATen op replayed at fixed input shapes; variants op_name (e.g. "aten.baddbmm"), dtype,
    shapes (input shapes as compact JSON, ``shapes_key``) and args (its constant arguments as compact JSON with
    sorted keys, ``args_key``: two einsums with equal shapes and different equations are different rows); no
    axes: a query hits a row exactly or not at all.

Rows with identical variant, kernel and axes keep the newest file's row, then the fastest: the engine runs the
fastest kernel it has, and repeated model configs measure the same kernel shape. Rows with a non-positive or
non-finite latency or axis value are dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from core.dtypes import element_bytes

COMMON_COLUMNS = ("framework", "version", "device", "op_name", "kernel_source")
OWN_BACKEND = "torch"  # backend folder of the tables only tracecost's collector writes


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem
    family: str  # op family folder under the system
    variants: tuple[str, ...]  # matched exactly (kernel_source is added implicitly)
    axes: tuple[str, ...]  # interpolated, outer first
    columns: tuple[str, ...] = ()  # further source columns: what derive() reads, or what tells points apart
    optional: tuple[tuple[str, object], ...] = ()  # column -> value when a file lacks it
    fixed: tuple[tuple[str, object], ...] = ()  # rows must have these values
    derive: Callable | None = field(default=None, compare=False)  # adds computed columns
    schema: tuple[str, ...] = ()  # the collector's columns between COMMON_COLUMNS and latency, in file order
    backend: str | None = None  # a backend folder read whatever backend is priced (tables only we write)
    # (work, ratio): in aiconfigurator-core's tables, a lane whose rows of at most this product of the axes all take
    # over ratio x the fastest such row of its file timed its host, not its kernels
    host_timed: tuple[float, float] | None = None

    @property
    def derived(self) -> tuple[str, ...]:
        return tuple(getattr(self.derive, "columns", ()))

    def required(self) -> list[str]:
        """Columns a file must have to be read (derived and optional ones aside)."""
        cols = [*self.variants, *self.axes, *self.columns, *(c for c, _ in self.fixed), "kernel_source", "latency"]
        skip = set(self.derived) | {c for c, _ in self.optional}
        return list(dict.fromkeys(c for c in cols if c not in skip))

    @property
    def key(self) -> tuple[str, ...]:
        """Columns that identify one measured point (the collector's --resume and replace key)."""
        stored_axes = (a for a in self.axes if a not in self.derived)
        return tuple(dict.fromkeys([*self.variants, "kernel_source", *stored_axes, *self.columns]))

    @property
    def column_order(self) -> list[str]:
        """Every column of a file the collector writes, in order."""
        return [*COMMON_COLUMNS, *self.schema, "latency"]


def _derive_geometry(**constants):
    """Constant columns for geometry a collector fixed without recording it (MLA head dims)."""

    def derive(df):
        for name, value in constants.items():
            df[name] = value

    derive.columns = tuple(constants)
    return derive


NCCL_DTYPE_BYTES = {name: element_bytes(name) for name in ("half", "int8")}  # nccl_perf's nccl_dtype values


def _derive_message_bytes(dtype_column: str | None, element_bytes: dict | int):
    def derive(df):
        if dtype_column is None:
            df["message_bytes"] = df["message_size"] * element_bytes
        else:
            # an unknown dtype maps to NaN; the finiteness filter of the loader drops those rows
            df["message_bytes"] = df["message_size"] * df[dtype_column].map(element_bytes)

    derive.columns = ("message_bytes",)
    return derive


def _derive_conv_channels(df):
    df["conv_channels"] = df["nheads"] * df["head_dim"] + 2 * df["n_groups"] * df["d_state"]


_derive_conv_channels.columns = ("conv_channels",)

_ATTENTION_SCHEMA = ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "beam_width", "attn_dtype",
                     "kv_cache_dtype", "step", "window_size")

# GEMMs of at most 2^22 multiply-adds: in every file of aiconfigurator-core's tables each lane's fastest is within
# 7.3x of the file's fastest lane's (launch and memory bound), but vLLM 0.24.0's fp8_block lanes, at 22-171x on
# every GPU (55-280 us): host time around the kernel. A lane over 15x is not read.
GEMM = TableSpec("gemm_perf", "gemm", ("gemm_dtype",), ("n", "k", "m"), schema=("gemm_dtype", "m", "n", "k"),
                 host_timed=(2 ** 22, 15.0))
COMPUTE_SCALE = TableSpec("computescale_perf", "quantize", ("quant_dtype",), ("k", "m"),
                          schema=("m", "k", "quant_dtype"))
CONTEXT_ATTENTION = TableSpec(
    "context_attention_perf",
    "attention",
    ("attn_dtype", "kv_cache_dtype", "window_size"),
    ("head_dim", "num_key_value_heads", "num_heads", "batch_size", "isl"),
    optional=(("window_size", 0), ("beam_width", 1), ("step", 0)),
    fixed=(("beam_width", 1), ("step", 0)),
    schema=_ATTENTION_SCHEMA,
)
GENERATION_ATTENTION = TableSpec(
    "generation_attention_perf",
    "attention",
    ("kv_cache_dtype", "window_size"),
    ("head_dim", "num_key_value_heads", "num_heads", "batch_size", "step"),
    optional=(("window_size", 0), ("beam_width", 1), ("isl", 1)),
    fixed=(("beam_width", 1), ("isl", 1), ("attn_dtype", "bfloat16")),
    schema=_ATTENTION_SCHEMA,
)
CONTEXT_MLA = TableSpec(
    "context_mla_perf",
    "mla",
    ("mla_dtype", "kv_cache_dtype"),
    ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "num_heads", "batch_size", "isl"),
    optional=(("step", 0),),
    fixed=(("step", 0),),
    derive=_derive_geometry(qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
)
GENERATION_MLA = TableSpec(
    "generation_mla_perf",
    "mla",
    ("mla_dtype", "kv_cache_dtype"),
    ("kv_lora_rank", "qk_rope_head_dim", "num_heads", "batch_size", "step"),
    optional=(("isl", 1),),
    fixed=(("isl", 1),),
    derive=_derive_geometry(kv_lora_rank=512, qk_rope_head_dim=64),
)
MOE = TableSpec(
    "moe_perf",
    "moe",
    ("moe_dtype", "distribution"),
    ("hidden_size", "inter_size", "num_experts", "topk", "moe_tp_size", "moe_ep_size", "num_tokens"),
    schema=("moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size",
            "moe_ep_size", "distribution"),
)
NCCL = TableSpec(
    "nccl_perf",
    "comm",
    ("op_name", "nccl_dtype"),
    ("num_gpus", "message_bytes"),
    columns=("message_size",),
    derive=_derive_message_bytes("nccl_dtype", NCCL_DTYPE_BYTES),
    schema=("nccl_dtype", "num_gpus", "message_size"),
)
CUSTOM_ALLREDUCE = TableSpec(
    "custom_allreduce_perf",
    "comm",
    ("allreduce_dtype",),
    ("num_gpus", "message_bytes"),
    columns=("message_size",),
    fixed=(("allreduce_dtype", "bfloat16"),),
    derive=_derive_message_bytes(None, 2),
)
MAMBA2_CONV = TableSpec(
    "mamba2_perf",
    "linear_attention",
    ("phase",),
    ("d_conv", "conv_channels", "batch_size", "seq_len"),
    columns=("nheads", "head_dim", "n_groups", "d_state"),
    derive=_derive_conv_channels,
    schema=("phase", "batch_size", "seq_len", "num_tokens", "d_model", "d_state", "d_conv", "nheads", "head_dim",
            "n_groups", "chunk_size", "model_name"),
)
GDN = TableSpec(
    "gdn_perf",
    "linear_attention",
    ("phase",),
    ("d_conv", "head_k_dim", "head_v_dim", "num_k_heads", "num_v_heads", "batch_size", "seq_len"),
)
SSM_SCAN = TableSpec(
    "ssm_scan_perf",
    "linear_attention",
    ("op_name", "phase"),
    ("chunk_size", "d_state", "head_dim", "n_groups", "nheads", "batch_size", "seq_len"),
    schema=("phase", "batch_size", "seq_len", "num_tokens", "nheads", "head_dim", "d_state", "n_groups",
            "chunk_size"),
    backend=OWN_BACKEND,
)
ELEMENTWISE = TableSpec(
    "elementwise_perf",
    "elementwise",
    ("op_name", "dtype"),
    ("bytes_moved",),
    columns=("num_tokens", "hidden_size"),
    schema=("dtype", "num_tokens", "hidden_size", "bytes_moved"),
    backend=OWN_BACKEND,
)
ATEN = TableSpec(
    "aten_perf",
    "aten",
    ("op_name", "dtype", "shapes", "args"),
    (),
    schema=("dtype", "shapes", "args", "num_elements"),
    backend=OWN_BACKEND,
)

# Mamba-1's selective scan in ssm_scan_perf: one channel per head, no chunks
MAMBA1_SCAN, MAMBA2_SCAN = "mamba1_selective_scan", "mamba2_ssd"


def shapes_key(shapes) -> str:
    """aten_perf.shapes: the input shapes as compact JSON, e.g. "[[16,1,16],[16,16,16]]"."""
    return json.dumps([[int(d) for d in s] for s in shapes], separators=(",", ":"))


def args_key(consts: dict | None) -> str:
    """aten_perf.args: an op's constant arguments (an einsum's equation, a dim) as compact JSON, keys sorted."""
    return json.dumps(consts or {}, separators=(",", ":"), sort_keys=True)
