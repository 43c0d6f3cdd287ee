"""Perf database: price cost operations from measured kernel tables, else from a roofline.

Data roots and layout
---------------------
Tables live under ``<root>/<system>/<family>/<backend>/<version>/<table>.parquet`` (a
``collection_meta.yaml`` sits beside them). Roots, highest priority first: extra dirs passed in
(``data_dirs``, a future ``--data-dir``), our own ``systems/data`` in this repo, and the installed
aiconfigurator-core package's ``aiconfigurator_core/systems/data`` (found with
``importlib.util.find_spec``, without importing the package). In the aiconfigurator root the
system folder is the YAML's ``aiconfigurator_name``; elsewhere it is our system name.

Backend and version
-------------------
A backend is a serving framework folder (trtllm, vllm, sglang); collective libraries (nccl,
oneccl) are not backends, and nccl queries use the newest nccl version. Default backend: trtllm
where it has tables (the widest op coverage), else the first by name. Default version: the newest
version of that backend on that system, compared as PEP 440 versions (1.3.0rc20 > 1.3.0rc10,
0.5.6.post2 < 0.5.9, 0.1.dev19262 < 0.24.0; unparseable strings sort below all valid ones).
Versions differ per op family (a release often re-measures only one op), so a table is the union
of that table's files at the chosen version and every older version of the same backend, newest
version first, then root priority; on identical keys the first file wins ("backfill",
``backfill=False`` uses the chosen version only).

Table schemas (aiconfigurator-core 0.12.0)
-------------------------------------------
Every table has ``framework, version, device, op_name, kernel_source`` (some nccl tables omit the
first three) and ``latency`` in milliseconds, except ``moe_a2a_perf`` whose ``latency`` (and
``transmit_us``) is in microseconds. Grid axes below are the columns interpolated over; variant
columns are matched exactly. ``kernel_source`` names the kernel lane (e.g. fa3 vs triton); unless a
query names one, the lane with the most rows for the requested variant is used (ties: CUDA-graph
lanes, then name), so one interpolation never mixes two kernels' grids.

gemm_perf (gemm/): variant gemm_dtype {bfloat16, fp8, fp8_block, nvfp4, int8_wo, int4_wo, sq};
    axes m (tokens, 1..32768, 74 values), n, k (22 values each, 32..65536). Ragged: not every
    (m, n, k) exists.
context_attention_perf (attention/): variants attn_dtype {bfloat16, fp8}, kv_cache_dtype
    {bfloat16, fp8}, window_size {0 = full, 128, 512, 1024, 8192}; constants beam_width=1, step=0;
    axes head_dim {64..256}, num_key_value_heads, num_heads, batch_size, isl (prompt length).
    MHA rows store num_key_value_heads == num_heads.
generation_attention_perf (attention/): one decode step, one new token per sequence. Variants
    kv_cache_dtype, window_size; constants attn_dtype=bfloat16, isl=1, beam_width=1; axes head_dim,
    num_key_value_heads, num_heads, batch_size, step = tokens already in the KV cache (2^k - 1, up
    to 131071; the new token attends to step + 1 tokens).
context_mla_perf / generation_mla_perf (mla/): DeepSeek-V3 MLA geometry fixed by the collector
    (kv_lora_rank 512, qk_nope 128, qk_rope 64, v_head 128). Variants mla_dtype {bfloat16},
    kv_cache_dtype {bfloat16, fp8}; axes num_heads (per GPU, 1..128), batch_size, isl (context,
    step=0) or step (generation, isl=1, as for attention). tp_size is 128 / num_heads and not
    used. Absent for vllm (only module tables).
mla_context_module_perf / mla_generation_module_perf (mla/): a whole DeepSeek-V3 attention block
    (projections included, columns model, architecture, gemm_type, tp_size=1; generation ``step``
    here counts the new token too: 2^k). Not queried: tracecost prices projections as GEMMs.
mla_bmm_perf (mla_bmm/): MLA absorbed BMMs (op_name mla_gen_pre / mla_gen_post, bmm_dtype,
    num_tokens, num_heads). Not queried yet.
moe_perf (moe/): variants moe_dtype {bfloat16, fp8, fp8_block, nvfp4, int4_wo, w4a16_mxfp4,
    w4a8_mxfp4_mxfp8, w4afp8}, distribution {balanced, power_law_1.01, power_law_1.2}; axes
    hidden_size, inter_size, num_experts, topk, moe_tp_size, moe_ep_size, num_tokens (tokens
    entering the layer). Kernel names with "nongated" are non-gated (2-matrix) experts.
    wideep_moe_perf / wideep_{context,generation}_moe_perf add EPLB slots and per-rank token
    counts; not queried.
nccl_perf (comm/nccl/): variants op_name {all_reduce, all_gather, reduce_scatter, alltoall},
    nccl_dtype {half, int8}; axes num_gpus {2, 4, 8} (2, 4 on gb200), message_size in
    *elements* of nccl_dtype (nccl-tests bytes // element size). Queried in bytes.
custom_allreduce_perf (comm/<backend>/): the framework's own all-reduce; allreduce_dtype
    {bfloat16}, num_gpus, message_size in bfloat16 elements; kernel_source tells graph vs eager.
moe_a2a_perf, wideep_deepep_*_perf, trtllm_alltoall_perf (comm/): expert-parallel dispatch and
    combine; not queried (latency in microseconds in moe_a2a_perf).
mamba2_perf (linear_attention/): only the causal conv1d of a Mamba2 mixer (kernel_source
    causal_conv1d_fn for phase=context, causal_conv1d_update for generation; no scan kernel).
    Model columns d_model, d_state, nheads, head_dim, n_groups, chunk_size, model_name; axes used:
    d_conv, conv channels = nheads * head_dim + 2 * n_groups * d_state, batch_size, seq_len
    (num_tokens = batch_size * seq_len).
gdn_perf (linear_attention/): gated delta-net; variant phase {context, generation}; two kernels
    per phase, a causal conv1d (kernel_source contains "conv1d") and the delta rule
    (chunk_gated_delta_rule* / fused_recurrent_gated_delta_rule*); axes d_conv, head_k_dim,
    head_v_dim, num_k_heads, num_v_heads, batch_size, seq_len (d_model and model_name do not
    change the kernels; duplicates collapse as below).
Not queried here: kda_perf (same layout as gdn), encoder_attention_perf, msa_*, dsa_*, dsv4_*,
    glm5_*, mhc_module_perf, computescale_perf / scale_matrix_perf (quantize/), wideep_*mlp*.

Rows with identical variant, kernel and axes keep the newest file's row, then the fastest: the
engine runs the fastest kernel it has, and repeated model configs measure the same kernel shape.
Rows with a non-positive or non-finite latency or axis value are dropped.

Interpolation
-------------
Linear in log space: log(latency) is interpolated against log(axis value). Axes are nested in the
order listed per query (outer first). At each axis the query is bracketed among the values that
exist *in the current slice* of the grid; an exact value descends into that slice alone, a value
between two descends into both and mixes them with weight t = (log x - log lo) / (log hi - log lo),
i.e. latency = lo_lat * (hi_lat / lo_lat) ** t. On a full grid this is exactly tensor-product
multilinear interpolation (what scipy's RegularGridInterpolator computes on log axes and log
values); on ragged grids (the usual case) each slice brackets with its own values. Exact hits
return the stored latency unchanged (provenance "exact"); any mixing gives "interpolated".

Beyond the grid (on any axis, in any slice) the nearest edge value is used and the result keeps
the measured efficiency there: latency = roofline(query) * measured(edge) / roofline(edge), the
edge point being the query with each out-of-range axis clamped. Provenance "extrapolated".

Roofline
--------
Ops with no table (or a system with no measured data, e.g. mi300x) cost
``max(flops / (peak * COMPUTE_EFFICIENCY), bytes / (hbm_bandwidth * MEMORY_EFFICIENCY)) * 1e3`` ms,
with the dense peak of the precision the op computes in; communication costs
``bytes / (link_bandwidth * LINK_EFFICIENCY)``. Each query computes its own flops and bytes; the
same formula shapes the extrapolation above. Provenance "roofline", source "roofline: <yaml>".
"""

from __future__ import annotations

import bisect
import importlib.util
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.dtypes import FORMAT_ALIASES, GEMM_FORMATS, MOE_FORMATS, WEIGHT_FORMATS, element_bytes
from costmodel.systems import System, load_system
from core.errors import UserError
from core.ops import attention_bytes, attention_flops, causal_pairs, mla_bytes, mla_flops, moe_bytes, moe_flops

try:
    from packaging.version import InvalidVersion, Version
except ImportError:  # packaging is near-universal; fall back to the tolerant parse alone
    Version = None
    InvalidVersion = ValueError

# Fractions of peak a well-tuned kernel reaches, measured on the aiconfigurator tables: large
# bf16/fp8 GEMMs (m, n, k >= 4096) run at a median 0.53-0.84 of dense peak on H100/H200/B200/A100;
# weight-streaming GEMMs (m <= 8) at 0.54-0.83 of HBM bandwidth; large NCCL collectives at
# 0.6-0.75 of NVLink bandwidth (bus-bandwidth convention).
COMPUTE_EFFICIENCY = 0.7
MEMORY_EFFICIENCY = 0.75
LINK_EFFICIENCY = 0.7

PROVENANCES = ("exact", "interpolated", "extrapolated", "roofline")  # increasing uncertainty
COLLECTIVE_LIBRARIES = frozenset({"nccl", "oneccl", "gloo"})  # gloo: the collector's CPU dry run
OWN_DATA_ROOT = Path(__file__).resolve().parent.parent / "systems" / "data"
AICONFIGURATOR_ROOT_LABEL = "aiconfigurator-core"
OWN_ROOT_LABEL = "tracecost"


@dataclass(frozen=True, slots=True)
class Price:
    latency_ms: float
    provenance: str  # one of PROVENANCES
    source: str  # table file label(s), or "roofline: <system yaml>"


def worst_provenance(a: str, b: str) -> str:
    return a if PROVENANCES.index(a) >= PROVENANCES.index(b) else b


def total(prices: Sequence[Price]) -> Price:
    """Sum of prices run back to back; the least certain provenance wins."""
    provenance = "exact"
    sources: list[str] = []
    for p in prices:
        provenance = worst_provenance(provenance, p.provenance)
        if p.source not in sources:
            sources.append(p.source)
    return Price(sum(p.latency_ms for p in prices), provenance, " + ".join(sources))


# ---------------------------------------------------------------------------------------------
# Data roots, table files, versions
# ---------------------------------------------------------------------------------------------


def aiconfigurator_data_root() -> Path | None:
    """aiconfigurator_core/systems/data of the installed package, located without importing it."""
    spec = importlib.util.find_spec("aiconfigurator_core")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "systems" / "data"
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class DataRoot:
    path: Path
    label: str  # short name for provenance; extra dirs are shown by absolute path
    named: bool


def data_roots(extra: Sequence[str | Path] = ()) -> list[DataRoot]:
    """Data roots, highest priority first: extra dirs, our own systems/data, aiconfigurator-core."""
    roots = []
    for d in extra:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise UserError(f"data dir not found: {path}")
        roots.append(DataRoot(path.resolve(), str(path.resolve()), False))
    roots.append(DataRoot(OWN_DATA_ROOT, OWN_ROOT_LABEL, True))
    aic = aiconfigurator_data_root()
    if aic is not None:
        roots.append(DataRoot(aic, AICONFIGURATOR_ROOT_LABEL, True))
    return roots


@dataclass(frozen=True)
class TableFile:
    family: str  # op family folder: gemm, attention, comm, ...
    table: str  # file stem: gemm_perf, nccl_perf, ...
    backend: str
    version: str
    path: Path
    label: str  # "<root>:<system>/<family>/<backend>/<version>/<file>", or the absolute path
    priority: int  # index of the root in data_roots(); 0 is highest


def find_tables(system: System, extra: Sequence[str | Path] = ()) -> list[TableFile]:
    out = []
    for priority, root in enumerate(data_roots(extra)):
        if root.label == AICONFIGURATOR_ROOT_LABEL:
            folders = [system.aiconfigurator_name]
        else:
            folders = [system.name, system.aiconfigurator_name]
        for folder in dict.fromkeys(f for f in folders if f):
            base = root.path / folder
            if not base.is_dir():
                continue
            for path in sorted(base.glob("*/*/*/*.parquet")):
                family, backend, version = path.parts[-4:-1]
                label = f"{root.label}:{path.relative_to(root.path)}" if root.named else str(path)
                out.append(TableFile(family, path.stem, backend, version, path, label, priority))
    return out


def version_key(version: str):
    """Sort key for version folder names: PEP 440 where it parses, a tolerant split otherwise."""
    if Version is not None:
        try:
            return (1, Version(version), ())
        except InvalidVersion:
            pass
    parts = tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.findall(r"\d+|[A-Za-z]+", version))
    return (0, 0, parts)


# ---------------------------------------------------------------------------------------------
# Table specs and loading
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    name: str  # file stem
    variants: tuple[str, ...]  # matched exactly (kernel_source is added implicitly)
    axes: tuple[str, ...]  # interpolated, outer first
    columns: tuple[str, ...] = ()  # further source columns that derive() reads
    optional: tuple[tuple[str, object], ...] = ()  # column -> value when a file lacks it
    fixed: tuple[tuple[str, object], ...] = ()  # rows must have these values
    derive: Callable | None = field(default=None, compare=False)  # adds computed columns

    def required(self, derived: set[str]) -> list[str]:
        cols = [*self.variants, *self.axes, *self.columns, *(c for c, _ in self.fixed), "kernel_source", "latency"]
        skip = derived | {c for c, _ in self.optional}
        return list(dict.fromkeys(c for c in cols if c not in skip))


def _derive_geometry(**constants):
    """Constant columns for geometry a collector fixed without recording it (MLA head dims)."""

    def derive(df):
        for name, value in constants.items():
            df[name] = value

    derive.columns = tuple(constants)
    return derive


def _derive_message_bytes(dtype_column: str | None, element_bytes: dict | int):
    def derive(df):
        if dtype_column is None:
            df["message_bytes"] = df["message_size"] * element_bytes
        else:
            # an unknown dtype maps to NaN; the finiteness filter in _read_file drops those rows
            df["message_bytes"] = df["message_size"] * df[dtype_column].map(element_bytes)

    derive.columns = ("message_bytes",)
    return derive


def _derive_conv_channels(df):
    df["conv_channels"] = df["nheads"] * df["head_dim"] + 2 * df["n_groups"] * df["d_state"]


_derive_conv_channels.columns = ("conv_channels",)

_MLA_CONTEXT_GEOMETRY = _derive_geometry(qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
_MLA_GENERATION_GEOMETRY = _derive_geometry(kv_lora_rank=512, qk_rope_head_dim=64)

GEMM = TableSpec("gemm_perf", ("gemm_dtype",), ("n", "k", "m"))
CONTEXT_ATTENTION = TableSpec(
    "context_attention_perf",
    ("attn_dtype", "kv_cache_dtype", "window_size"),
    ("head_dim", "num_key_value_heads", "num_heads", "batch_size", "isl"),
    optional=(("window_size", 0), ("beam_width", 1), ("step", 0)),
    fixed=(("beam_width", 1), ("step", 0)),
)
GENERATION_ATTENTION = TableSpec(
    "generation_attention_perf",
    ("kv_cache_dtype", "window_size"),
    ("head_dim", "num_key_value_heads", "num_heads", "batch_size", "step"),
    optional=(("window_size", 0), ("beam_width", 1), ("isl", 1)),
    fixed=(("beam_width", 1), ("isl", 1), ("attn_dtype", "bfloat16")),
)
CONTEXT_MLA = TableSpec(
    "context_mla_perf",
    ("mla_dtype", "kv_cache_dtype"),
    ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "num_heads", "batch_size", "isl"),
    optional=(("step", 0),),
    fixed=(("step", 0),),
    derive=_MLA_CONTEXT_GEOMETRY,
)
GENERATION_MLA = TableSpec(
    "generation_mla_perf",
    ("mla_dtype", "kv_cache_dtype"),
    ("kv_lora_rank", "qk_rope_head_dim", "num_heads", "batch_size", "step"),
    optional=(("isl", 1),),
    fixed=(("isl", 1),),
    derive=_MLA_GENERATION_GEOMETRY,
)
MOE = TableSpec(
    "moe_perf",
    ("moe_dtype", "distribution"),
    ("hidden_size", "inter_size", "num_experts", "topk", "moe_tp_size", "moe_ep_size", "num_tokens"),
)
NCCL = TableSpec(
    "nccl_perf",
    ("op_name", "nccl_dtype"),
    ("num_gpus", "message_bytes"),
    columns=("message_size",),
    derive=_derive_message_bytes("nccl_dtype", {"half": 2, "int8": 1}),
)
CUSTOM_ALLREDUCE = TableSpec(
    "custom_allreduce_perf",
    ("allreduce_dtype",),
    ("num_gpus", "message_bytes"),
    columns=("message_size",),
    fixed=(("allreduce_dtype", "bfloat16"),),
    derive=_derive_message_bytes(None, 2),
)
MAMBA2_CONV = TableSpec(
    "mamba2_perf",
    ("phase",),
    ("d_conv", "conv_channels", "batch_size", "seq_len"),
    columns=("nheads", "head_dim", "n_groups", "d_state"),
    derive=_derive_conv_channels,
)
GDN = TableSpec(
    "gdn_perf",
    ("phase",),
    ("d_conv", "head_k_dim", "head_v_dim", "num_k_heads", "num_v_heads", "batch_size", "seq_len"),
)

# kernel_source filters a query may ask for (strings so they can key caches)
_KERNEL_FILTERS: dict[str | None, Callable[[str], bool]] = {
    None: lambda k: True,
    "gated": lambda k: "nongated" not in k,
    "nongated": lambda k: "nongated" in k,
    "conv1d": lambda k: "conv1d" in k,
    "delta_rule": lambda k: "conv1d" not in k,
}


def _read_file(spec: TableSpec, file: TableFile, index: int):
    import pandas as pd
    import pyarrow.parquet as pq

    derived = set(getattr(spec.derive, "columns", ()))
    try:
        names = set(pq.read_schema(file.path).names)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"corrupt perf table {file.path}: {exc}") from exc
    required = spec.required(derived)
    missing = [c for c in required if c not in names]
    if missing:
        raise UserError(f"perf table {file.path} lacks column(s) {', '.join(missing)} expected in {spec.name}")
    wanted = list(dict.fromkeys([*required, *(c for c, _ in spec.optional if c in names)]))
    try:
        df: pd.DataFrame = pq.read_table(file.path, columns=wanted).to_pandas()
    except Exception as exc:
        raise UserError(f"corrupt perf table {file.path}: {exc}") from exc
    for column, default in spec.optional:
        if column not in df.columns:
            df[column] = default
    for column, value in spec.fixed:
        df = df[df[column] == value]
    df = df.copy()
    if spec.derive is not None:
        spec.derive(df)
    numeric = [*spec.axes, "latency"]
    try:
        values = df[numeric].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"perf table {file.path} has non-numeric values in {', '.join(numeric)}") from exc
    keep = np.isfinite(values).all(axis=1) & (values > 0).all(axis=1)
    df = df[keep]
    df["_file"] = index
    return df[[*spec.variants, "kernel_source", *spec.axes, "latency", "_file"]]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class Table:
    """One table (possibly several version files), indexed by variant + kernel; grids built lazily."""

    def __init__(self, spec: TableSpec, files: Sequence[TableFile]):
        import pandas as pd

        self.spec = spec
        self.labels = [f.label for f in files]
        frames = [_read_file(spec, f, i) for i, f in enumerate(files)]
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
        self._axes = df[list(spec.axes)].to_numpy(dtype=np.float64)
        self._latency = df["latency"].to_numpy(dtype=np.float64)
        self._file = df["_file"].to_numpy(dtype=np.int64)
        keys = [*spec.variants, "kernel_source"]
        self._rows: dict[tuple, np.ndarray] = {}
        self.kernel_counts: dict[tuple, dict[str, int]] = {}
        if len(df):
            for key, idx in df.groupby(keys, sort=False).indices.items():
                key = tuple(_plain(v) for v in (key if isinstance(key, tuple) else (key,)))
                self._rows[key] = idx
                self.kernel_counts.setdefault(key[:-1], {})[key[-1]] = len(idx)
        self._grids: dict[tuple, object] = {}

    def variants(self) -> list[tuple]:
        return list(self.kernel_counts)

    def default_kernel(self, variant: tuple, kernel_filter: str | None) -> str | None:
        accept = _KERNEL_FILTERS[kernel_filter]
        counts = {k: n for k, n in self.kernel_counts.get(variant, {}).items() if accept(k)}
        if not counts:
            return None
        # most rows = the framework's main lane; ties go to CUDA-graph lanes, which serving uses
        return min(counts, key=lambda k: (-counts[k], "graph" not in k.lower(), k))

    def grid(self, variant: tuple, kernel: str):
        key = (*variant, kernel)
        grid = self._grids.get(key)
        if grid is None:
            idx = self._rows.get(key)
            if idx is None:
                return None
            grid = self._grids[key] = _build_grid(self._axes[idx], self._latency[idx], self._file[idx])
        return grid


_TABLE_CACHE: dict[tuple, Table] = {}


def _load_table(spec: TableSpec, files: Sequence[TableFile]) -> Table:
    stamp = []
    for f in files:
        try:
            st = f.path.stat()
        except OSError as exc:
            raise UserError(f"cannot read perf table {f.path}: {exc.strerror}") from exc
        stamp.append((str(f.path), st.st_mtime_ns, st.st_size, f.label))
    key = (spec, tuple(stamp))
    table = _TABLE_CACHE.get(key)
    if table is None:
        table = _TABLE_CACHE[key] = Table(spec, files)
    return table


# ---------------------------------------------------------------------------------------------
# Grid: nested sorted axes, log-space multilinear interpolation
# ---------------------------------------------------------------------------------------------


def _build_grid(axes: np.ndarray, latency: np.ndarray, file: np.ndarray):
    """Nested nodes (values, log values, children); leaves are (latency_ms, file index)."""
    ndim = axes.shape[1]
    # primary sort on axis 0 .. axis d-1, then the newest file, then the fastest row
    order = np.lexsort((latency, file, *(axes[:, j] for j in reversed(range(ndim)))))
    axes, latency, file = axes[order], latency[order], file[order]
    if len(axes) > 1:
        first = np.concatenate(([True], (axes[1:] != axes[:-1]).any(axis=1)))
        axes, latency, file = axes[first], latency[first], file[first]

    def node(lo: int, hi: int, level: int):
        if level == ndim:
            return (float(latency[lo]), int(file[lo]))
        column = axes[lo:hi, level]
        cuts = (np.flatnonzero(column[1:] != column[:-1]) + (lo + 1)).tolist()
        starts = [lo, *cuts]
        ends = [*cuts, hi]
        values = [float(axes[s, level]) for s in starts]
        return (values, [math.log(v) for v in values], [node(s, e, level + 1) for s, e in zip(starts, ends)])

    return node(0, len(axes), 0)


def _evaluate(grid, point: tuple, cost: Callable[[tuple], float]):
    """Latency at point: exact, interpolated, or extrapolated with the edge's measured efficiency."""
    ndim = len(point)
    logs_q = [math.log(x) for x in point]
    edge = list(point)  # the query with out-of-range axes clamped, per branch
    used: set[int] = set()
    flags = 0
    cost_at_query = None

    def visit(node, level: int, clamped: bool) -> float:
        nonlocal flags, cost_at_query
        if level == ndim:
            latency, file = node
            used.add(file)
            if not clamped:
                return latency
            if cost_at_query is None:
                cost_at_query = cost(point)
            cost_at_edge = cost(tuple(edge))
            return latency * cost_at_query / cost_at_edge if cost_at_edge > 0 else latency
        values, logs, children = node
        x = point[level]
        i = bisect.bisect_left(values, x)
        n = len(values)
        if i < n and values[i] == x:
            return visit(children[i], level + 1, clamped)
        if i == 0 or i == n:
            e = 0 if i == 0 else n - 1
            flags |= 2
            edge[level] = values[e]
            result = visit(children[e], level + 1, True)
            edge[level] = x
            return result
        flags |= 1
        t = (logs_q[level] - logs[i - 1]) / (logs[i] - logs[i - 1])
        lo = visit(children[i - 1], level + 1, clamped)
        hi = visit(children[i], level + 1, clamped)
        return lo * (hi / lo) ** t

    value = visit(grid, 0, False)
    provenance = "extrapolated" if flags & 2 else "interpolated" if flags & 1 else "exact"
    return value, provenance, used


# ---------------------------------------------------------------------------------------------
# Query arguments
# ---------------------------------------------------------------------------------------------


_GEMM_QUANTS = {name: WEIGHT_FORMATS[name] for name in GEMM_FORMATS}
_MOE_QUANTS = {name: WEIGHT_FORMATS[name] for name in MOE_FORMATS}
_ATTENTION_DTYPES = ("bfloat16", "fp8")  # the attention tables' attn_dtype / kv_cache_dtype values
NCCL_OPS = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "alltoall": 1.0}  # bus traffic / size
_NCCL_DTYPES = {"half": 2, "int8": 1}
_PHASES = ("context", "generation")
_MOE_DISTRIBUTIONS = ("power_law_1.01", "balanced")  # default preference when none is named
_GDN_CHUNK = 64  # chunk length of the chunked delta-rule kernels (roofline flops only)


def _choose(kind: str, value: str, known: dict):
    name = FORMAT_ALIASES.get(value, value)
    if name not in known:
        raise UserError(f"unknown {kind} {value!r}; known: {', '.join(sorted(known))}")
    return known[name]


def _dtype(kind: str, value: str) -> str:
    name = FORMAT_ALIASES.get(value, value)
    if name not in _ATTENTION_DTYPES:
        raise UserError(f"unknown {kind} {value!r}; known: bf16, fp8")
    return name


def _size(name: str, value, minimum: float = 1) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Database
# ---------------------------------------------------------------------------------------------


class Database:
    """Prices cost ops for one system, backend and version (see the module docstring)."""

    def __init__(
        self,
        system: str | System,
        backend: str | None = None,
        version: str | None = None,
        data_dirs: Sequence[str | Path] = (),
        backfill: bool = True,
    ):
        self.system = system if isinstance(system, System) else load_system(system)
        self.files = find_tables(self.system, data_dirs)
        self.backfill = backfill
        self.backends = sorted({f.backend for f in self.files if f.backend not in COLLECTIVE_LIBRARIES})
        if backend is None:
            backend = "trtllm" if "trtllm" in self.backends else (self.backends[0] if self.backends else None)
            if backend is None and version is not None:
                raise UserError(f"{self.system.name} has no measured tables, so no version {version!r}")
        elif backend not in self.backends:
            have = ", ".join(self.backends) or "none (priced by roofline alone)"
            raise UserError(f"no {backend!r} tables for {self.system.name}; backends with tables: {have}")
        self.backend = backend
        self.version = self._pick_version(backend, version) if backend else None
        nccl = self.versions("nccl")
        self.nccl_version = nccl[-1] if nccl else None
        self._roofline_source = f"roofline: {self.system.label}"
        self._tables: dict[tuple, Table | None] = {}
        self._resolved: dict[tuple, tuple] = {}

    def __repr__(self) -> str:
        return f"Database({self.system.name!r}, backend={self.backend!r}, version={self.version!r})"

    # -- selection ----------------------------------------------------------------------------

    def versions(self, backend: str) -> list[str]:
        """Version folders of a backend on this system, oldest first."""
        return sorted({f.version for f in self.files if f.backend == backend}, key=version_key)

    def _pick_version(self, backend: str, version: str | None) -> str:
        versions = self.versions(backend)
        if version is None:
            return versions[-1]
        if version in versions:
            return version
        for v in versions:  # "2.27" names the same release as "2.27.0"
            if version_key(v)[0] == 1 and version_key(v) == version_key(version):
                return v
        raise UserError(
            f"no {backend} version {version!r} for {self.system.name}; versions with tables: {', '.join(versions)}"
        )

    def table_files(self, spec: TableSpec, backend: str | None = None, version: str | None = None) -> list[TableFile]:
        """Files that make up a table, in precedence order (newest version, then root priority)."""
        backend = backend or self.backend
        if backend is None:
            return []
        if version is None:
            version = self.version if backend == self.backend else (self.versions(backend) or [None])[-1]
        if version is None:
            return []
        limit = version_key(version)
        files = [
            f
            for f in self.files
            if f.table == spec.name
            and f.backend == backend
            and (version_key(f.version) <= limit if self.backfill else f.version == version)
        ]
        files.sort(key=lambda f: f.priority)
        files.sort(key=lambda f: version_key(f.version), reverse=True)  # stable: priority within a version
        return files

    def _table(self, spec: TableSpec, backend: str | None = None, version: str | None = None) -> Table | None:
        key = (spec.name, backend, version)
        if key not in self._tables:
            files = self.table_files(spec, backend, version)
            self._tables[key] = _load_table(spec, files) if files else None
        return self._tables[key]

    def _resolve(self, spec, variant, kernel, kernel_filter, backend, version):
        table = self._table(spec, backend, version)
        if table is None:
            return None, None
        if kernel is None:
            kernel = table.default_kernel(variant, kernel_filter)
            if kernel is None:
                return None, None
        grid = table.grid(variant, kernel)
        if grid is None:
            have = sorted(table.kernel_counts.get(variant, {}))
            raise UserError(
                f"{spec.name}: no kernel_source {kernel!r} for {variant}; "
                f"available: {', '.join(have) or 'none for this variant'}"
            )
        return grid, table.labels

    def _lookup(
        self,
        spec: TableSpec,
        variant: tuple,
        point: tuple,
        cost: Callable[[tuple], float],
        kernel: str | None = None,
        kernel_filter: str | None = None,
        backend: str | None = None,
        version: str | None = None,
    ) -> Price:
        key = (spec.name, variant, kernel, kernel_filter, backend, version)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolved[key] = self._resolve(spec, variant, kernel, kernel_filter, backend, version)
        grid, labels = resolved
        if grid is None:
            return Price(cost(point), "roofline", self._roofline_source)
        value, provenance, used = _evaluate(grid, point, cost)
        source = labels[next(iter(used))] if len(used) == 1 else " + ".join(labels[i] for i in sorted(used))
        return Price(value, provenance, source)

    def has_variant(self, spec: TableSpec, variant: tuple, backend: str | None = None) -> bool:
        table = self._table(spec, backend)
        return table is not None and variant in table.kernel_counts

    # -- roofline -----------------------------------------------------------------------------

    def _roofline_ms(self, flops: float, bytes_moved: float, precision: str = "bf16") -> float:
        compute_s = flops / (self.system.peak_flops_per_s(precision) * COMPUTE_EFFICIENCY) if flops else 0.0
        memory_s = bytes_moved / (self.system.hbm_bandwidth_bytes_per_s * MEMORY_EFFICIENCY)
        return max(compute_s, memory_s) * 1e3

    def _link_ms(self, bytes_moved: float, bandwidth_bytes_per_s: float) -> float:
        return bytes_moved / (bandwidth_bytes_per_s * LINK_EFFICIENCY) * 1e3

    def roofline(self, flops: float, bytes_moved: float, precision: str = "bf16") -> Price:
        """Any op with no table: flops at the precision's dense peak vs bytes at HBM bandwidth."""
        _size("flops", flops, 0)
        _size("bytes_moved", bytes_moved, 0)
        return Price(self._roofline_ms(flops, bytes_moved, precision), "roofline", self._roofline_source)

    # -- queries ------------------------------------------------------------------------------

    def gemm(self, m: int, n: int, k: int, quant: str = "bf16", kernel: str | None = None) -> Price:
        """C[m, n] = A[m, k] @ W[k, n]; m is tokens. quant: bf16, fp8, fp8_block, nvfp4, int8_wo,
        int4_wo, sq. Axes n, k, m."""
        m, n, k = _size("m", m), _size("n", n), _size("k", k)
        q = _choose("gemm quant", quant, _GEMM_QUANTS)

        def cost(pt):
            n_, k_, m_ = pt
            return self._roofline_ms(2 * m_ * n_ * k_, m_ * k_ * q.act_bytes + k_ * n_ * q.weight_bytes + m_ * n_ * 2, q.compute)

        return self._lookup(GEMM, (q.table,), (n, k, m), cost, kernel)

    def context_attention(
        self,
        batch: int,
        isl: int,
        q_heads: int,
        kv_heads: int,
        head_dim: int,
        window: int = 0,
        dtype: str = "bf16",
        kv_dtype: str = "bf16",
        kernel: str | None = None,
    ) -> Price:
        """Causal prefill attention over isl new tokens per sequence (no cached prefix), writing the
        KV cache. window > 0 is sliding-window attention. dtype fp8 needs kv_dtype fp8."""
        batch, isl = _size("batch", batch), _size("isl", isl)
        q_heads, kv_heads, head_dim = _size("q_heads", q_heads), _size("kv_heads", kv_heads), _size("head_dim", head_dim)
        window = _size("window", window, 0)
        dtype, kv_dtype = _dtype("attention dtype", dtype), _dtype("kv_dtype", kv_dtype)
        act, kvb = element_bytes(dtype), element_bytes(kv_dtype)
        precision = "fp8" if dtype == "fp8" else "bf16"

        def cost_for(w):
            def cost(pt):
                d, hkv, hq, b, s = pt
                flops = attention_flops(b, hq, causal_pairs(s, w), d, d)
                # q, o; k, v read, and the cache written by the kernel
                bytes_moved = attention_bytes(b, s, s, hq, hkv, d, d, act, kvb, kv_written=s)
                return self._roofline_ms(flops, bytes_moved, precision)

            return cost

        point = (head_dim, kv_heads, q_heads, batch, isl)
        w = window if 0 < window < isl else 0
        if w == 0 or self.has_variant(CONTEXT_ATTENTION, (dtype, kv_dtype, w)):
            return self._lookup(CONTEXT_ATTENTION, (dtype, kv_dtype, w), point, cost_for(w), kernel)
        # window not measured: full attention scaled by the windowed / full roofline ratio
        full = self._lookup(CONTEXT_ATTENTION, (dtype, kv_dtype, 0), point, cost_for(0), kernel)
        if full.provenance == "roofline":
            return Price(cost_for(w)(point), "roofline", full.source)
        scale = cost_for(w)(point) / cost_for(0)(point)
        return Price(full.latency_ms * scale, worst_provenance(full.provenance, "extrapolated"), full.source)

    def generation_attention(
        self,
        batch: int,
        kv_len: int,
        q_heads: int,
        kv_heads: int,
        head_dim: int,
        window: int = 0,
        kv_dtype: str = "bf16",
        kernel: str | None = None,
    ) -> Price:
        """One decode step: one new token per sequence attending to kv_len cached tokens plus
        itself (kv_len is the table's `step`)."""
        batch, kv_len = _size("batch", batch), _size("kv_len", kv_len)
        q_heads, kv_heads, head_dim = _size("q_heads", q_heads), _size("kv_heads", kv_heads), _size("head_dim", head_dim)
        window = _size("window", window, 0)
        kv_dtype = _dtype("kv_dtype", kv_dtype)
        kvb = element_bytes(kv_dtype)

        def cost_for(w):
            def cost(pt):
                d, hkv, hq, b, past = pt
                seen = min(past + 1, w) if w > 0 else past + 1
                flops = attention_flops(b, hq, seen, d, d)
                bytes_moved = attention_bytes(b, 1, seen, hq, hkv, d, d, 2, kvb, kv_written=1)
                return self._roofline_ms(flops, bytes_moved, "bf16")

            return cost

        w = window if 0 < window < kv_len + 1 else 0
        if w == 0 or self.has_variant(GENERATION_ATTENTION, (kv_dtype, w)):
            point = (head_dim, kv_heads, q_heads, batch, kv_len)
            return self._lookup(GENERATION_ATTENTION, (kv_dtype, w), point, cost_for(w), kernel)
        # a decode step over a window of w keys costs what full attention over w keys does
        point = (head_dim, kv_heads, q_heads, batch, max(w - 1, 1))
        price = self._lookup(GENERATION_ATTENTION, (kv_dtype, 0), point, cost_for(0), kernel)
        if price.provenance == "exact":
            price = Price(price.latency_ms, "interpolated", price.source)
        return price

    def context_mla(
        self,
        batch: int,
        isl: int,
        num_heads: int,
        kv_dtype: str = "bf16",
        dtype: str = "bf16",
        qk_nope_head_dim: int = 128,
        qk_rope_head_dim: int = 64,
        v_head_dim: int = 128,
        kv_lora_rank: int = 512,
        kernel: str | None = None,
    ) -> Price:
        """MLA prefill attention (K/V expanded from the latent), num_heads per GPU. The tables were
        measured at DeepSeek-V3 head dims; other dims extrapolate along those axes."""
        batch, isl, num_heads = _size("batch", batch), _size("isl", isl), _size("num_heads", num_heads)
        nope, rope = _size("qk_nope_head_dim", qk_nope_head_dim), _size("qk_rope_head_dim", qk_rope_head_dim)
        v_dim, rank = _size("v_head_dim", v_head_dim), _size("kv_lora_rank", kv_lora_rank)
        dtype, kv_dtype = _dtype("mla dtype", dtype), _dtype("kv_dtype", kv_dtype)
        kvb = element_bytes(kv_dtype)

        def cost(pt):
            nope_, rope_, v_, h, b, s = pt
            flops = mla_flops("context", b, s, s, h, nope_, rope_, v_, rank)
            bytes_moved = mla_bytes("context", b, s, s, h, nope_, rope_, v_, rank, 2, kvb, kv_written=s)
            return self._roofline_ms(flops, bytes_moved, "bf16")

        point = (nope, rope, v_dim, num_heads, batch, isl)
        return self._lookup(CONTEXT_MLA, (dtype, kv_dtype), point, cost, kernel)

    def generation_mla(
        self,
        batch: int,
        kv_len: int,
        num_heads: int,
        kv_dtype: str = "bf16",
        dtype: str = "bf16",
        qk_rope_head_dim: int = 64,
        kv_lora_rank: int = 512,
        kernel: str | None = None,
    ) -> Price:
        """MLA decode step in the absorbed form (queries attend to the latent cache of
        kv_lora_rank + qk_rope_head_dim per token); kv_len cached tokens, num_heads per GPU."""
        batch, kv_len, num_heads = _size("batch", batch), _size("kv_len", kv_len), _size("num_heads", num_heads)
        rope, rank = _size("qk_rope_head_dim", qk_rope_head_dim), _size("kv_lora_rank", kv_lora_rank)
        dtype, kv_dtype = _dtype("mla dtype", dtype), _dtype("kv_dtype", kv_dtype)
        kvb = element_bytes(kv_dtype)

        def cost(pt):
            rank_, rope_, h, b, past = pt
            flops = mla_flops("generation", b, 1, past + 1, h, 0, rope_, 0, rank_)
            bytes_moved = mla_bytes("generation", b, 1, past + 1, h, 0, rope_, 0, rank_, 2, kvb)
            return self._roofline_ms(flops, bytes_moved, "bf16")

        point = (rank, rope, num_heads, batch, kv_len)
        return self._lookup(GENERATION_MLA, (dtype, kv_dtype), point, cost, kernel)

    def moe(
        self,
        num_tokens: int,
        hidden: int,
        inter: int,
        topk: int,
        num_experts: int,
        tp: int = 1,
        ep: int = 1,
        quant: str = "bf16",
        distribution: str | None = None,
        gated: bool = True,
        kernel: str | None = None,
    ) -> Price:
        """Routed experts of one MoE layer on one rank: num_tokens entering the layer, each sent to
        topk of num_experts experts of size hidden x inter; experts split ep ways, each expert's
        inter split tp ways. gated: gate+up+down (SwiGLU) vs up+down. distribution: routing skew
        as measured (power_law_1.01 where present, else balanced, by default)."""
        num_tokens, hidden, inter = _size("num_tokens", num_tokens), _size("hidden", hidden), _size("inter", inter)
        topk, num_experts = _size("topk", topk), _size("num_experts", num_experts)
        tp, ep = _size("tp", tp), _size("ep", ep)
        q = _choose("moe quant", quant, _MOE_QUANTS)

        def cost(pt):
            h, inter_, experts, k_, tp_, ep_, tokens = pt
            flops = moe_flops(tokens, h, inter_, k_, tp_, ep_, gated)
            bytes_moved = moe_bytes(tokens, h, inter_, k_, experts, tp_, ep_, gated, q.weight_bytes, q.act_bytes)
            return self._roofline_ms(flops, bytes_moved, q.compute)

        table = self._table(MOE)
        if distribution is None:
            present = {v[1] for v in table.variants() if v[0] == q.table} if table else set()
            distribution = next((d for d in _MOE_DISTRIBUTIONS if d in present), min(present, default="balanced"))
        elif table is not None and (q.table, distribution) not in table.kernel_counts:
            have = sorted({v[1] for v in table.variants() if v[0] == q.table})
            if have:
                raise UserError(f"no moe distribution {distribution!r} for {q.table}; measured: {', '.join(have)}")
        point = (hidden, inter, num_experts, topk, tp, ep, num_tokens)
        return self._lookup(MOE, (q.table, distribution), point, cost, kernel, "gated" if gated else "nongated")

    def causal_conv1d(
        self, phase: str, batch: int, seq_len: int, channels: int, kernel_size: int = 4, kernel: str | None = None
    ) -> Price:
        """Depthwise causal conv1d (Mamba2 / short-conv mixers), priced from the mamba2 table.
        channels for Mamba2: nheads * head_dim + 2 * n_groups * d_state. phase "generation" is one
        token per sequence updating the conv state."""
        phase = self._phase(phase)
        batch, seq_len = _size("batch", batch), _size("seq_len", seq_len)
        channels, kernel_size = _size("channels", channels), _size("kernel_size", kernel_size)
        return self._lookup(
            MAMBA2_CONV, (phase,), (kernel_size, channels, batch, seq_len), self._conv_cost(phase), kernel
        )

    def _conv_cost(self, phase: str):
        def cost(pt):
            width, ch, b, s = pt[0], pt[-3], pt[-2], pt[-1]
            flops = 2 * b * s * ch * width
            bytes_moved = b * s * ch * 4 + ch * width * 2  # bf16 in/out, weights
            if phase == "generation":
                bytes_moved += b * ch * (width - 1) * 4  # conv state read + write
            return self._roofline_ms(flops, bytes_moved, "bf16")

        return cost

    def ssm_scan(
        self,
        phase: str,
        batch: int,
        seq_len: int,
        nheads: int,
        head_dim: int,
        d_state: int,
        n_groups: int = 1,
        chunk_size: int = 256,
    ) -> Price:
        """Mamba2 selective scan (SSD). No table measures it (mamba2_perf holds only the conv1d),
        so it is priced by roofline: chunked scan flops, x/y/B/C traffic and the fp32 state."""
        phase = self._phase(phase)
        b, s = _size("batch", batch), _size("seq_len", seq_len)
        nh, hd, ds = _size("nheads", nheads), _size("head_dim", head_dim), _size("d_state", d_state)
        ng, chunk = _size("n_groups", n_groups), _size("chunk_size", chunk_size)
        state = b * nh * hd * ds * 4
        if phase == "context":
            flops = b * s * nh * (4 * hd * ds + 2 * min(chunk, s) * (ds + hd))
            bytes_moved = b * s * (nh * hd * 4 + ng * ds * 4) + state
        else:
            flops = b * s * nh * 4 * hd * ds
            bytes_moved = b * s * (nh * hd * 4 + ng * ds * 4) + 2 * state
        return self.roofline(flops, bytes_moved, "bf16")

    def gdn(
        self,
        phase: str,
        batch: int,
        seq_len: int,
        num_k_heads: int,
        num_v_heads: int,
        head_k_dim: int = 128,
        head_v_dim: int = 128,
        conv_kernel: int = 4,
    ) -> Price:
        """Gated delta-net mixer core: its causal conv1d plus the delta rule (chunked for context,
        recurrent for generation), summed. Projections are GEMMs, priced separately."""
        phase = self._phase(phase)
        b, s = _size("batch", batch), _size("seq_len", seq_len)
        nk, nv = _size("num_k_heads", num_k_heads), _size("num_v_heads", num_v_heads)
        dk, dv, width = _size("head_k_dim", head_k_dim), _size("head_v_dim", head_v_dim), _size("conv_kernel", conv_kernel)
        conv = self._conv_cost(phase)

        def conv_cost(pt):
            width_, dk_, dv_, nk_, nv_, b_, s_ = pt
            return conv((width_, 2 * nk_ * dk_ + nv_ * dv_, b_, s_))

        def rule_cost(pt):
            _, dk_, dv_, nk_, nv_, b_, s_ = pt
            state = b_ * nv_ * dk_ * dv_ * 4
            if phase == "context":
                flops = b_ * s_ * nv_ * (4 * dk_ * dv_ + 2 * min(_GDN_CHUNK, s_) * (dk_ + dv_))
                bytes_moved = b_ * s_ * (2 * nk_ * dk_ + 2 * nv_ * dv_) * 2 + state
            else:
                flops = b_ * s_ * nv_ * 4 * dk_ * dv_
                bytes_moved = b_ * s_ * (2 * nk_ * dk_ + 2 * nv_ * dv_) * 2 + 2 * state
            return self._roofline_ms(flops, bytes_moved, "bf16")

        point = (width, dk, dv, nk, nv, b, s)
        return total(
            [
                self._lookup(GDN, (phase,), point, conv_cost, kernel_filter="conv1d"),
                self._lookup(GDN, (phase,), point, rule_cost, kernel_filter="delta_rule"),
            ]
        )

    def nccl(self, op: str, message_bytes: float, num_gpus: int, dtype: str = "half") -> Price:
        """NCCL collective over num_gpus GPUs; message_bytes is the nccl-tests size (the full
        buffer). Beyond the system's NVLink domain the inter-node bandwidth shapes extrapolation."""
        if op not in NCCL_OPS:
            raise UserError(f"unknown collective {op!r}; known: {', '.join(NCCL_OPS)}")
        if dtype not in _NCCL_DTYPES:
            raise UserError(f"unknown nccl dtype {dtype!r}; known: {', '.join(_NCCL_DTYPES)}")
        message_bytes, num_gpus = _size("message_bytes", message_bytes), _size("num_gpus", num_gpus)
        if num_gpus == 1:
            return Price(0.0, "roofline", self._roofline_source)
        factor = NCCL_OPS[op]

        def cost(pt):
            n, size = pt
            return self._link_ms(factor * (n - 1) / n * size, self.system.link_bandwidth_bytes_per_s(n))

        return self._lookup(NCCL, (op, dtype), (num_gpus, message_bytes), cost, backend="nccl", version=self.nccl_version)

    def custom_allreduce(self, message_bytes: float, num_gpus: int, kernel: str | None = None) -> Price:
        """The serving framework's own bf16 all-reduce (TP), from its custom_allreduce table."""
        message_bytes, num_gpus = _size("message_bytes", message_bytes), _size("num_gpus", num_gpus)
        if num_gpus == 1:
            return Price(0.0, "roofline", self._roofline_source)

        def cost(pt):
            n, size = pt
            return self._link_ms(2 * (n - 1) / n * size, self.system.link_bandwidth_bytes_per_s(n))

        return self._lookup(CUSTOM_ALLREDUCE, ("bfloat16",), (num_gpus, message_bytes), cost, kernel)

    def p2p(self, message_bytes: float, cross_node: bool = False) -> Price:
        """Point-to-point send (pipeline stages, KV transfer). No shipped table measures it, so it
        is the link roofline: intra-node link, or the per-GPU network when cross_node."""
        message_bytes = _size("message_bytes", message_bytes, 0)
        if cross_node:
            bandwidth = self.system.link_bandwidth_bytes_per_s(self.system.scale_up_domain_gpus + 1)
        else:
            bandwidth = float(self.system.intra_node_bandwidth_bytes_per_s)
        return Price(self._link_ms(message_bytes, bandwidth), "roofline", self._roofline_source)

    @staticmethod
    def _phase(phase: str) -> str:
        if phase not in _PHASES:
            raise UserError(f"unknown phase {phase!r}; known: {', '.join(_PHASES)}")
        return phase
