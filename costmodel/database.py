"""Perf database: price cost operations from measured kernel tables, else from a roofline.

Where tables live, their specs, loading and interpolation: costmodel/tables/ (roots, specs, load, interpolate).

Backend and version
-------------------
Default backend: trtllm where it has tables (the widest op coverage), else the first by name. Default version:
the newest version of that backend on that system; nccl queries use the newest nccl version, and tables only
tracecost's collector writes (a spec with ``backend``) the newest version of that backend. Versions differ per op
family (a release often re-measures only one op), so a table is the union of that table's files at the chosen
version and every older version of the same backend, newest version first, then root priority; on identical keys
the first file wins ("backfill", ``backfill=False`` uses the chosen version only); a query none of those files can
price takes the nearest newer version's table that can, before a roofline (a release's collector often skipped an
op family its neighbours measured: vLLM's b200_sxm GEMMs exist only at 0.24.0). Where a variant has several
kernel lanes (kernel_source), a query's lane is one the newest file that measured its shape (every axis but the
swept size) holds, the one with most rows among those; a shape no lane measured takes the lane with most rows.
A lane of aiconfigurator-core's tables that timed its host rather than its kernels is not read (TableSpec.host_timed:
vLLM 0.24.0's fp8_block GEMMs); a GEMM format with no lane of its own is priced by its stand-in's measured lane
(WeightFormat.stand_in: fp8_block by fp8's), provenance at best "extrapolated", before a roofline.

Roofline
--------
Ops with no table (or a system with no measured data, e.g. mi300x) cost
``max(flops / (peak * COMPUTE_EFFICIENCY), bytes / (hbm_bandwidth * MEMORY_EFFICIENCY)) * 1e3`` ms,
with the dense peak of the precision the op computes in; communication costs
``bytes / (link_bandwidth * LINK_EFFICIENCY)``. Each query computes its own flops and bytes; the
same formula shapes the extrapolation beyond a table's grid. Provenance "roofline", source "roofline: <yaml>".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.dtypes import FORMAT_ALIASES, GEMM_FORMATS, MOE_FORMATS, WEIGHT_FORMATS, element_bytes
from core.errors import UserError
from core.ops import attention_bytes, attention_flops, causal_pairs, mla_bytes, mla_flops, moe_bytes, moe_flops
from costmodel.systems import System, load_system
from costmodel.tables.interpolate import evaluate
from costmodel.tables.load import Table, load_table
from costmodel.tables.roots import COLLECTIVE_LIBRARIES, TableFile, version_key
from costmodel.tables.specs import (ATEN, COMPUTE_SCALE, CONTEXT_ATTENTION, CONTEXT_MLA, CUSTOM_ALLREDUCE,
                                    ELEMENTWISE, GDN, GENERATION_ATTENTION, GENERATION_MLA, GEMM, MAMBA1_SCAN,
                                    MAMBA2_CONV, MAMBA2_SCAN, MOE, NCCL, NCCL_DTYPE_BYTES, SSM_SCAN, TableSpec,
                                    args_key, shapes_key)

# Fractions of peak a well-tuned kernel reaches, measured on the aiconfigurator tables: large
# bf16/fp8 GEMMs (m, n, k >= 4096) run at a median 0.53-0.84 of dense peak on H100/H200/B200/A100;
# weight-streaming GEMMs (m <= 8) at 0.54-0.83 of HBM bandwidth; large NCCL collectives at
# 0.6-0.75 of NVLink bandwidth (bus-bandwidth convention).
COMPUTE_EFFICIENCY = 0.7
MEMORY_EFFICIENCY = 0.75
LINK_EFFICIENCY = 0.7

PROVENANCES = ("exact", "interpolated", "extrapolated", "roofline")  # increasing uncertainty


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
# Query arguments
# ---------------------------------------------------------------------------------------------


_GEMM_QUANTS = {name: WEIGHT_FORMATS[name] for name in GEMM_FORMATS}
_MOE_QUANTS = {name: WEIGHT_FORMATS[name] for name in MOE_FORMATS}
_ATTENTION_DTYPES = ("bfloat16", "fp8")  # the attention tables' attn_dtype / kv_cache_dtype values
NCCL_OPS = {"all_reduce": 2.0, "all_gather": 1.0, "reduce_scatter": 1.0, "alltoall": 1.0}  # bus traffic / size
_PHASES = ("context", "generation")
_MOE_DISTRIBUTIONS = ("power_law_1.01", "balanced")  # default preference when none is named
# TensorRT-LLM runs gated MoE through its min-latency kernel up to this many tokens per rank; moe_perf measures that
# kernel as its own lane (kernel_source moe_torch_flow_min_latency, nvfp4 on b200_sxm and gb200). aiconfigurator
# 0.12 takes that lane for nvfp4 gated queries of at most 128 tokens and the main lane otherwise.
_MOE_MIN_LATENCY_TOKENS = 128
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
        self.files = self.system.tables(data_dirs)
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
        """Files that make up a table, in precedence order (newest version, then root priority). A table only
        tracecost's collector writes is read from its own backend folder (spec.backend)."""
        backend = backend or spec.backend or self.backend
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
            self._tables[key] = load_table(spec, files) if files else None
        return self._tables[key]

    def _resolve(self, spec, variant, kernel, kernel_filter, backend, version, shape=None):
        table = self._table(spec, backend, version)
        if table is None:
            return None, None
        if kernel is None:
            kernel = table.default_kernel(variant, kernel_filter, shape)
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
        shape = tuple(point[:-1]) if kernel is None else None  # the lane may differ per shape (newest measured)
        key = (spec.name, variant, kernel, kernel_filter, backend, version, shape)
        resolved = self._resolved.get(key)
        if resolved is None:
            resolved = self._resolved[key] = self._resolve(spec, variant, kernel, kernel_filter, backend, version,
                                                           shape)
        grid, labels = resolved
        if grid is None and self.backfill and version is None and backend is None and spec.backend is None \
                and self.backend:
            # what this release's tables (and older ones) never measured, the nearest newer release's did
            for newer in self._this_and_newer()[1:]:
                price = self._lookup(spec, variant, point, cost, kernel, kernel_filter, self.backend, newer)
                if price.provenance != "roofline":
                    return price
        if grid is None:
            return Price(cost(point), "roofline", self._roofline_source)
        value, provenance, used = evaluate(grid, point, cost)
        source = labels[next(iter(used))] if len(used) == 1 else " + ".join(labels[i] for i in sorted(used))
        return Price(value, provenance, source)

    def _this_and_newer(self) -> list[str]:
        """The chosen version of the backend and its newer ones, nearest first."""
        versions = self.versions(self.backend)
        return versions[versions.index(self.version):]

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

    def gemm(self, m: int, n: int, k: int, quant: str = "bf16", kernel: str | None = None,
             static_input_scale: bool = False) -> Price:
        """C[m, n] = A[m, k] @ W[k, n]; m is tokens. quant: bf16, fp8, fp8_block, nvfp4, int8_wo,
        int4_wo, sq. Axes n, k, m. static_input_scale: a per-tensor fp8 GEMM quantizes its input with a calibrated
        scale, so the dynamic scale its lane may have timed (compute_scale) is taken off, no lower than its roofline."""
        m, n, k = _size("m", m), _size("n", n), _size("k", k)
        q = _choose("gemm quant", quant, _GEMM_QUANTS)

        def cost(pt):
            n_, k_, m_ = pt
            return self._roofline_ms(2 * m_ * n_ * k_, m_ * k_ * q.act_bytes + k_ * n_ * q.weight_bytes + m_ * n_ * 2, q.compute)

        price = self._lookup(GEMM, (q.table,), (n, k, m), cost, kernel)
        if static_input_scale and q.table == "fp8" and price.provenance != "roofline":
            scale = self.compute_scale(m, k)
            if scale.provenance != "roofline":   # only a measured dynamic scale is known to be in the lane
                return Price(max(price.latency_ms - scale.latency_ms, cost((n, k, m))),
                             worst_provenance(price.provenance, scale.provenance),
                             f"{price.source} less {scale.source} (static input scale)")
        if price.provenance == "roofline" and kernel is None and q.stand_in:
            proxy = self._lookup(GEMM, (q.stand_in,), (n, k, m), cost)
            if proxy.provenance != "roofline":   # a measured lane of the same math, no less uncertain than a reach
                return Price(proxy.latency_ms, worst_provenance(proxy.provenance, "extrapolated"),
                             f"{proxy.source} ({q.stand_in} lane for {q.table})")
        return price

    def compute_scale(self, m: int, k: int) -> Price:
        """The dynamic scale of a per-tensor FP8 GEMM's input: its amax over the bf16 m x k activations."""
        m, k = _size("m", m), _size("k", k)

        def cost(pt):
            k_, m_ = pt
            return self._roofline_ms(0, m_ * k_ * element_bytes("bfloat16"))

        return self._lookup(COMPUTE_SCALE, ("fp8",), (k, m), cost)

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
        family: str | None = None,
    ) -> Price:
        """Routed experts of one MoE layer on one rank: num_tokens entering the layer, each sent to
        topk of num_experts experts of size hidden x inter; experts split ep ways, each expert's
        inter split tp ways. gated: gate+up+down (SwiGLU) vs up+down. distribution: routing skew
        as measured (power_law_1.01 where present, else balanced, by default). family: the kernel family the
        engine runs gated experts with (Overheads.moe_kernels), priced by the lanes of that family, from this
        version's table or, where its collector measured another kernel, the nearest newer version's."""
        num_tokens, hidden, inter = _size("num_tokens", num_tokens), _size("hidden", hidden), _size("inter", inter)
        topk, num_experts = _size("topk", topk), _size("num_experts", num_experts)
        tp, ep = _size("tp", tp), _size("ep", ep)
        q = _choose("moe quant", quant, _MOE_QUANTS)

        def cost(pt):
            h, inter_, experts, k_, tp_, ep_, tokens = pt
            flops = moe_flops(tokens, h, inter_, k_, tp_, ep_, gated)
            bytes_moved = moe_bytes(tokens, h, inter_, k_, experts, tp_, ep_, gated, q.weight_bytes, q.act_bytes)
            return self._roofline_ms(flops, bytes_moved, q.compute)

        point = (hidden, inter, num_experts, topk, tp, ep, num_tokens)
        if family and gated and kernel is None and self.backend:
            for version in self._this_and_newer():   # each release's own distributions: not _lookup's fallback
                variant = (q.table, self._moe_distribution(self._table(MOE, self.backend, version), q, distribution))
                price = self._lookup(MOE, variant, point, cost, None, family, self.backend, version)
                if price.provenance != "roofline":
                    return price
        variant = (q.table, self._moe_distribution(self._table(MOE), q, distribution))
        if kernel is None and gated and num_tokens <= _MOE_MIN_LATENCY_TOKENS:
            price = self._lookup(MOE, variant, point, cost, None, "min_latency")
            if price.provenance in ("exact", "interpolated"):  # the lane measured this expert shape
                return price
        return self._lookup(MOE, variant, point, cost, kernel, "gated" if gated else "nongated")

    @staticmethod
    def _moe_distribution(table: Table | None, q, distribution: str | None) -> str:
        """The routing distribution a MoE query reads from `table`: the one asked for (an error where the table
        measured others), else power_law_1.01 where present, else balanced."""
        present = {v[1] for v in table.variants() if v[0] == q.table} if table else set()
        if distribution is None:
            return next((d for d in _MOE_DISTRIBUTIONS if d in present), min(present, default="balanced"))
        if present and distribution not in present:
            have = ", ".join(sorted(present))
            raise UserError(f"no moe distribution {distribution!r} for {q.table}; measured: {have}")
        return distribution

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
        """Selective scan: Mamba-2's SSD, or Mamba-1's where head_dim is 1 (one channel per head, d_inner heads),
        from ssm_scan_perf where tracecost's collector measured it, else by roofline: chunked scan flops, x/y/B/C
        traffic and the fp32 state. Mamba-1's rows store chunk_size 1 (no chunks); the roofline uses chunk_size."""
        phase = self._phase(phase)
        b, s = _size("batch", batch), _size("seq_len", seq_len)
        nh, hd, ds = _size("nheads", nheads), _size("head_dim", head_dim), _size("d_state", d_state)
        ng, chunk = _size("n_groups", n_groups), _size("chunk_size", chunk_size)
        kind = MAMBA1_SCAN if hd == 1 else MAMBA2_SCAN

        def cost(pt):
            _, ds, hd, ng, nh, b, s = pt
            state = b * nh * hd * ds * 4
            if phase == "context":
                flops = b * s * nh * (4 * hd * ds + 2 * min(chunk, s) * (ds + hd))
                bytes_moved = b * s * (nh * hd * 4 + ng * ds * 4) + state
            else:
                flops = b * s * nh * 4 * hd * ds
                bytes_moved = b * s * (nh * hd * 4 + ng * ds * 4) + 2 * state
            return self._roofline_ms(flops, bytes_moved, "bf16")

        point = (1 if kind == MAMBA1_SCAN else chunk, ds, hd, ng, nh, b, s)
        return self._lookup(SSM_SCAN, (kind, phase), point, cost)

    def elementwise(self, kinds: Sequence[str], bytes_moved: float, dtype: str = "bfloat16") -> Price | None:
        """A memory-bound kernel moving bytes_moved bytes, from elementwise_perf: the first of `kinds` (op_names,
        e.g. rmsnorm, layernorm) measured at this dtype, where the bytes fall within its measured range (exact or
        interpolated); None where no row fits, for the caller's roofline."""
        bytes_moved = _size("bytes_moved", bytes_moved)
        table = self._table(ELEMENTWISE)
        if table is None:
            return None
        kind = next((k for k in kinds if (k, dtype) in table.kernel_counts), None)
        if kind is None:
            return None
        price = self._lookup(ELEMENTWISE, (kind, dtype), (bytes_moved,), lambda pt: self._roofline_ms(0, pt[0]))
        return None if price.provenance == "extrapolated" else price

    def aten(
        self, op: str, shapes: Sequence[Sequence[int]], consts: dict | None = None, dtype: str | None = None
    ) -> Price | None:
        """An ATen op replayed by the collector at exactly these input shapes and constant arguments (aten_perf),
        or None. dtype None matches any (several dtypes: the fastest)."""
        table = self._table(ATEN)
        if table is None:
            return None
        shapes_text, args_text = shapes_key(shapes), args_key(consts)
        hits = [v for v in table.variants()
                if v[0] == op and v[2:] == (shapes_text, args_text) and dtype in (None, v[1])]
        prices = [self._lookup(ATEN, v, (), lambda pt: 0.0) for v in hits]
        return min(prices, key=lambda p: p.latency_ms, default=None)

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
        buffer). Beyond the widest measured group: that group's time plus the extra wire time of the larger
        group over its link (the inter-node bandwidth beyond the NVLink domain)."""
        if op not in NCCL_OPS:
            raise UserError(f"unknown collective {op!r}; known: {', '.join(NCCL_OPS)}")
        if dtype not in NCCL_DTYPE_BYTES:
            raise UserError(f"unknown nccl dtype {dtype!r}; known: {', '.join(NCCL_DTYPE_BYTES)}")
        message_bytes, num_gpus = _size("message_bytes", message_bytes), _size("num_gpus", num_gpus)
        if num_gpus == 1:
            return Price(0.0, "roofline", self._roofline_source)
        factor = NCCL_OPS[op]

        def cost(pt):
            n, size = pt
            return self._link_ms(factor * (n - 1) / n * size, self.system.link_bandwidth_bytes_per_s(n))

        variant = (op, dtype)
        grid, _ = self._resolve(NCCL, variant, None, None, "nccl", self.nccl_version)
        widest = grid[0][-1] if grid is not None else num_gpus
        if num_gpus > widest:
            # more GPUs than any measured group: the widest group's time (launch, latency and its traffic) plus the
            # extra wire time over the slower link. Scaling that time by the bandwidth ratio instead would also
            # multiply the fixed latency, which is nearly all of a small message's time (a 56 KiB decode all-reduce
            # over 16 b300_sxm GPUs: 0.264 ms scaled vs 0.029 ms added)
            edge = self._lookup(NCCL, variant, (widest, message_bytes), cost, backend="nccl", version=self.nccl_version)
            extra = max(cost((num_gpus, message_bytes)) - cost((widest, message_bytes)), 0.0)
            return Price(edge.latency_ms + extra, "extrapolated", edge.source)
        return self._lookup(NCCL, variant, (num_gpus, message_bytes), cost, backend="nccl", version=self.nccl_version)

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
