"""The serving estimate: TTFT, TPOT, request latency, tokens/s, memory per GPU and whether it fits.

Definitions (a static estimate: one batch of `batch` sequences per attention-DP rank, all starting together)
------------------------------------------------------------------------------------------------------------
- TTFT: the prefill step of batch x ISL new tokens (no cached prefix), every pipeline stage plus the stage sends.
- TPOT: the mean decode step while the context grows from ISL to ISL + OSL - 1 cached tokens. The step is priced
  at 8 evenly spaced context lengths (fewer when OSL < 8) and averaged. The part of the step that depends on the
  context (attention, KV writes) is priced at knots L = 2^k - 1 (the generation tables' own grid) and
  interpolated in log-log between them, the rest once per batch, so a sweep does not re-price shared work.
- request latency = TTFT + (OSL - 1) x TPOT; tokens/s = batch x dp x OSL / request latency (per GPU: divided by
  tp x pp x dp); tokens/s per user = 1000 / TPOT.
- memory per GPU = weights + KV cache + activation workspace + runtime reserve:
  - weights: every weight GEMM and expert at the quantization's bytes per weight (modules the quantization config
    excludes at 2 bytes), the rest of the parameters (embeddings, norms) at 2 bytes; split as the plan splits the
    op (column/row/heads over tp, experts over ep x moe_tp with ep's redundant slots where it does not divide
    them, replicated ops whole, the rest over tp); with PP, the most loaded stage's share of the layers plus all
    non-layer weights (conservative).
  - KV cache at ISL + OSL tokens per sequence for `batch` sequences, from costmodel.kv's kv_report (per GPU:
    bytes per token of the growing caches, plus the fixed bytes per sequence of sliding-window caches and recurrent
    states).
  - activation workspace: engines pre-allocate for their token budget per step (max_num_tokens: the backend's
    max_tokens_per_step in systems/engines/overheads.yaml)
    and chunk longer prefills; two live buffers of the widest per-token activation (GEMM in + out, MoE routed
    rows) plus the residual stream, at min(batch x ISL, max_num_tokens) tokens, and the fp32 logits of the batch.
  - runtime reserve: RUNTIME_RESERVE_BYTES (2 GiB) for the CUDA context, cuBLAS/NCCL workspaces and CUDA graphs.
  fits when the total is at most the system's HBM; the largest batch that fits is searched on the same formula.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace

from core.context import mid_decode_context
from core.dtypes import canonical_kv_dtype
from core.errors import UserError, require_int
from core.ops import Comm, Gemm, expert_slots, pipeline_stages, redundant_experts
from costmodel import parallel, serving
from costmodel.database import PROVENANCES, Database
from costmodel.kv import declared_kv_dtype, kv_report
from costmodel.overheads import EngineSettings, load_overheads
from costmodel.parallel import Plan
from costmodel.pricing import Pricer, fold_gdn_convs, output_heads, resolve_quant
from costmodel.steps import op_ms, step_ms

SCHEMA = "tracecost.estimate/1"
DECODE_POINTS = 8
RUNTIME_RESERVE_BYTES = 2 * 1024**3
_PROBE_L = (1000, 3000)   # two context lengths to tell which decode ops depend on L


class Estimator:
    """One matched model on one system: prices any (plan, batch, ISL, OSL) with caches shared across calls."""

    def __init__(self, model_graph, *, system, backend=None, version=None, quant=None, kv_dtype=None,
                 data_dirs=(), matched=None, engine: EngineSettings | None = None):
        from graph.match import match_model

        self.model = model_graph
        self.matched = matched if matched is not None else match_model(model_graph)
        if "prefill" not in self.matched or "decode" not in self.matched:
            raise UserError(f"{model_graph.name}: the trace lacks a prefill or decode phase")
        self.db = Database(system, backend, version, data_dirs)
        # the engine as launched: its kernel choices (mxfp4 experts' activations, its MoE kernels) price every op
        self.overheads = load_overheads(self.db.backend, self.db.version, self.db.system.name).with_settings(engine)
        self.max_num_tokens = self.overheads.max_tokens_per_step
        self.kv_cache_dtype = _kv_cache_dtype(model_graph.config, kv_dtype)
        self.quant = resolve_quant(model_graph.config, quant, _KV_TABLE_DTYPE.get(self.kv_cache_dtype, "bf16"))
        if self.quant.source == "--quant":   # quantized by the engine: its output head stays as the checkpoint has it
            self.quant = replace(self.quant, exclude=self.quant.exclude + output_heads(self.matched["prefill"].ops))
        self.pricer = Pricer(self.db, self.quant, self.overheads.mxfp4_moe_activation, self.overheads.moe_kernels,
                             self.overheads.fp8_input_scale)
        self.base = {p: list(m.ops) for p, m in self.matched.items()}
        self.hidden = parallel.hidden_size(self.base["prefill"], model_graph.config)
        self.num_layers = model_graph.num_layers
        self._ops: dict[tuple, list] = {}
        self._split: dict[Plan, tuple[list, list]] = {}
        self._prefill: dict[tuple, float] = {}
        self._decode_const: dict[tuple, float] = {}
        self._decode_var: dict[tuple, float] = {}
        self._memory_fixed: dict[Plan, dict] = {}

    # -- ops per plan ---------------------------------------------------------------------------

    def ops(self, plan: Plan, phase: str) -> list:
        key = (plan, phase)
        ops = self._ops.get(key)
        if ops is None:
            cross = plan.gpus > self.db.system.gpus_per_node
            ops = self._ops[key] = fold_gdn_convs(parallel.apply(self.base[phase], plan, hidden=self.hidden,
                                                                 num_layers=self.num_layers, phase=phase,
                                                                 cross_node=cross))
        return ops

    def decode_split(self, plan: Plan):
        """The decode ops whose cost does not depend on the context L, and those that do."""
        split = self._split.get(plan)
        if split is None:
            const, var = [], []
            for op in self.ops(plan, "decode"):
                a = {"B": 4, "S": 1, "L": _PROBE_L[0]}
                b = {"B": 4, "S": 1, "L": _PROBE_L[1]}
                depends = op.bytes(a) != op.bytes(b) or op.flops(a) != op.flops(b)
                (var if depends else const).append(op)
            split = self._split[plan] = (const, var)
        return split

    # -- pricing --------------------------------------------------------------------------------

    def _sum(self, ops, sizes) -> float:
        return step_ms(self.pricer.price, ops, sizes, self.overheads)

    def prefill_ms(self, plan: Plan, batch: int, isl: int) -> float:
        key = (plan, batch, isl)
        v = self._prefill.get(key)
        if v is None:
            v = self._prefill[key] = self._sum(self.ops(plan, "prefill"), {"B": batch, "S": isl, "L": 0})
        return v

    def _const_ms(self, plan: Plan, batch: int) -> float:
        key = (plan, batch)
        v = self._decode_const.get(key)
        if v is None:
            v = self._decode_const[key] = self._sum(self.decode_split(plan)[0], {"B": batch, "S": 1, "L": 1024})
        return v

    def _var_at(self, plan: Plan, batch: int, L: int) -> float:
        key = (plan, batch, L)
        v = self._decode_var.get(key)
        if v is None:
            v = self._decode_var[key] = self._sum(self.decode_split(plan)[1], {"B": batch, "S": 1, "L": L})
        return v

    def context_ms(self, plan: Plan, batch: int, L: float) -> float:
        """The context-dependent part of a decode step at L cached tokens, log-log between knots 2^k - 1."""
        if not self.decode_split(plan)[1]:
            return 0.0
        if L <= 1:
            return self._var_at(plan, batch, 1)
        k = math.log2(L + 1)
        lo_k = math.floor(k)
        lo = 2 ** lo_k - 1
        if lo == L:
            return self._var_at(plan, batch, int(L))
        hi = 2 ** (lo_k + 1) - 1
        if lo < 1:
            lo = 1
        a, b = self._var_at(plan, batch, lo), self._var_at(plan, batch, hi)
        if a <= 0 or b <= 0:
            return a + (b - a) * (L - lo) / (hi - lo)
        t = (math.log(L) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return a * (b / a) ** t

    def decode_points(self, isl: int, osl: int) -> list[float]:
        n = max(1, min(DECODE_POINTS, osl))
        last = isl + osl - 1
        if n == 1:
            return [float(isl)]
        return [isl + (last - isl) * i / (n - 1) for i in range(n)]

    def decode_step_ms(self, plan: Plan, batch: int, L: float) -> float:
        return self._const_ms(plan, batch) + self.context_ms(plan, batch, L)

    def tpot_ms(self, plan: Plan, batch: int, isl: int, osl: int) -> float:
        return self._const_ms(plan, batch) + self.mean_context_ms(plan, batch, isl, osl)

    def mean_context_ms(self, plan: Plan, batch: int, isl: int, osl: int) -> float:
        """The context-dependent part of a decode step, averaged over the request's decode points."""
        points = self.decode_points(isl, osl)
        return sum(self.context_ms(plan, batch, L) for L in points) / len(points)

    # -- memory ---------------------------------------------------------------------------------

    def _fixed_memory(self, plan: Plan) -> dict:
        fixed = self._memory_fixed.get(plan)
        if fixed is not None:
            return fixed
        prefill = self.base["prefill"]
        stage = max(pipeline_stages(self.num_layers, plan.pp)) / self.num_layers if self.num_layers else 1.0
        weights = 0.0
        counted = 0.0
        for op, params, share in parallel.weight_shares(prefill, plan, self.hidden):
            excluded = self.pricer._is_excluded(op.module)
            nbytes = 2.0 if excluded else self.quant.weight_bytes
            layer_share = stage if op.layer_kind is not None else 1.0
            weights += params * share * nbytes * layer_share
            counted += params
        rest = max(self.model.weight_bytes - 2.0 * counted, 0.0)  # embeddings, norms, biases at 2 bytes
        weights += rest / plan.tp
        report = kv_report(self.model, tp=plan.tp, pp=plan.pp, kv_dtype=self.kv_cache_dtype, seq_len=1,
                           matched=self.matched)["per_rank"]
        # activation workspace per token, on this GPU
        widest = max((op.act_width() * 2.0 for op in self.ops(plan, "prefill")), default=0.0)
        vocab = max((op.n for op in prefill if isinstance(op, Gemm) and op.layer_kind is None), default=0)
        experts = max((op.experts for op in prefill if op.expert_parallel), default=0)
        fixed = self._memory_fixed[plan] = {
            "weights": weights, "kv_per_token": float(report["kv_bytes_per_token"]), "kv_source": "costmodel.kv",
            "state_per_seq": float(report["fixed_bytes_per_sequence"]),
            "act_per_token": 2 * widest + 2 * self.hidden * 2.0,
            "logits_per_seq": math.ceil(vocab / plan.tp) * 4.0,
        }
        redundant = redundant_experts(experts, plan.ep)
        if redundant:   # the engines' redundant experts, in the weights above
            fixed["expert_slots"] = {"per_gpu": expert_slots(experts, plan.ep), "experts": experts,
                                     "redundant": redundant}
        return fixed

    def memory(self, plan: Plan, batch: int, isl: int, osl: int) -> dict:
        f = self._fixed_memory(plan)
        tokens = isl + osl
        kv_token = f["kv_per_token"] * tokens
        kv = batch * (kv_token + f["state_per_seq"])
        act = min(batch * isl, self.max_num_tokens) * f["act_per_token"] + batch * f["logits_per_seq"]
        total = f["weights"] + kv + act + RUNTIME_RESERVE_BYTES
        return {"weights_bytes": f["weights"], "kv_cache_bytes": kv, "activation_bytes": act,
                "reserve_bytes": float(RUNTIME_RESERVE_BYTES), "total_bytes": total,
                "kv_bytes_per_token": f["kv_per_token"],
                "kv_bytes_per_sequence": kv_token + f["state_per_seq"], "kv_source": f["kv_source"],
                "kv_dtype": self.kv_cache_dtype, **({"expert_slots": f["expert_slots"]} if "expert_slots" in f else {})}

    def max_batch(self, plan: Plan, isl: int, osl: int) -> int:
        hbm = self.db.system.hbm_bytes
        fits = lambda b: self.memory(plan, b, isl, osl)["total_bytes"] <= hbm  # noqa: E731
        if not fits(1):
            return 0
        lo, hi = 1, 2
        while fits(hi):
            lo, hi = hi, hi * 2
            if hi > 1 << 24:
                return lo
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    # -- results --------------------------------------------------------------------------------

    def point(self, plan: Plan, batch: int, isl: int, osl: int) -> dict:
        """The compact figures of one point (what sweep returns)."""
        ttft = self.prefill_ms(plan, batch, isl)
        tpot = self.tpot_ms(plan, batch, isl, osl)
        latency = ttft + (osl - 1) * tpot
        mem = self.memory(plan, batch, isl, osl)
        hbm = self.db.system.hbm_bytes
        total_tokens = batch * plan.dp * osl
        return {
            "tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "dp": plan.dp, "gpus": plan.gpus,
            "batch": batch, "isl": isl, "osl": osl,
            "ttft_ms": ttft, "tpot_ms": tpot, "request_latency_ms": latency,
            "tokens_per_s": total_tokens / latency * 1e3 if latency > 0 else 0.0,
            "tokens_per_s_per_gpu": total_tokens / latency * 1e3 / plan.gpus if latency > 0 else 0.0,
            "tokens_per_s_per_user": 1e3 / tpot if tpot > 0 else 0.0,
            "memory_per_gpu_bytes": mem["total_bytes"], "fits": mem["total_bytes"] <= hbm,
        }

    def priced_ops(self, plan: Plan, phase: str, sizes: dict) -> list[tuple]:
        return [(op, self.pricer.price(op, sizes)) for op in self.ops(plan, phase)]

    def estimate(self, plan: Plan, batch: int, isl: int, osl: int) -> dict:
        batch, isl, osl = require_int("batch", batch), require_int("isl", isl), require_int("osl", osl)
        out = self.point(plan, batch, isl, osl)
        mem = self.memory(plan, batch, isl, osl)
        hbm = self.db.system.hbm_bytes
        max_batch = self.max_batch(plan, isl, osl)
        prefill_sizes = {"B": batch, "S": isl, "L": 0}
        decode_sizes = {"B": batch, "S": 1, "L": mid_decode_context(isl, osl)}
        prefill = self.priced_ops(plan, "prefill", prefill_sizes)
        decode = self.priced_ops(plan, "decode", decode_sizes)
        result = {
            "schema": SCHEMA,
            "model": self.model.name,
            "model_type": self.model.model_type,
            "system": self.db.system.name,
            "gpu": self.db.system.gpu,
            "backend": self.db.backend,
            "backend_version": self.db.version,
            "plan": plan.to_json(),
            "inputs": {"batch": batch, "isl": isl, "osl": osl},
            "quant": self.quant.to_json(),
            "ttft_ms": out["ttft_ms"],
            "tpot_ms": out["tpot_ms"],
            "request_latency_ms": out["request_latency_ms"],
            "tokens_per_s": out["tokens_per_s"],
            "tokens_per_s_per_gpu": out["tokens_per_s_per_gpu"],
            "tokens_per_s_per_user": out["tokens_per_s_per_user"],
            "decode_steps": [{"L": round(L, 1), "step_ms": self.decode_step_ms(plan, batch, L)}
                             for L in self.decode_points(isl, osl)],
            "memory": {
                **mem,
                "hbm_bytes": float(hbm),
                "fits": mem["total_bytes"] <= hbm,
                "verdict": "fits" if mem["total_bytes"] <= hbm else "does not fit",
                "max_batch": max_batch,
                "max_num_tokens": self.max_num_tokens,
            },
            "breakdown": {
                "prefill": _breakdown(prefill, prefill_sizes, self.overheads),
                "decode": _breakdown(decode, decode_sizes, self.overheads),
            },
        }
        result["measured_share"] = {p: result["breakdown"][p]["measured_share"] for p in ("prefill", "decode")}
        result["unsupported"] = [{"op": u.op, "module": u.module, "count": u.count}
                                 for u in self.matched["prefill"].unsupported]
        return result


# KV-cache dtypes (costmodel.kv's names) -> the attention tables' kv_cache_dtype rows
_KV_TABLE_DTYPE = {"bf16": "bf16", "fp16": "bf16", "fp32": "bf16", "fp8": "fp8", "int8": "fp8", "fp4": "fp8"}


def _kv_cache_dtype(config: dict, override: str | None) -> str:
    """The KV-cache dtype: the override, else what the config declares (costmodel.kv reads it), else bf16."""
    if override is not None:
        return canonical_kv_dtype(override)
    declared = declared_kv_dtype(config or {})
    if declared:
        return declared[0]
    return resolve_quant(config, None, None).kv_dtype


def _breakdown(priced, sizes, overheads) -> dict:
    """Per op its time in the step (ms: price x count, 0 where it runs hidden beside the routed experts, steps.op_ms)
    and whether it runs so (hidden, with its own time in own_ms); shares and totals are of the step's kernel time."""
    times = op_ms([op for op, _ in priced], [p.latency_ms for _, p in priced], sizes, overheads)
    total = sum(times) or 1.0
    by_type: dict[str, float] = defaultdict(float)
    by_prov: dict[str, float] = defaultdict(float)
    rows = []
    for (op, p), ms in zip(priced, times):
        kind = f"Comm:{op.collective}" if isinstance(op, Comm) else op.kind
        by_type[kind] += ms
        by_prov[p.provenance] += ms
        own = p.latency_ms * op.count
        rows.append({"type": kind, "module": op.module, "layer_kind": op.layer_kind, "count": op.count,
                     "shape": op.shape_text(sizes), "ms_each": p.latency_ms, "ms": ms, "share": ms / total,
                     "hidden": ms == 0.0 and own > 0.0, "own_ms": own,
                     "provenance": p.provenance, "source": p.source})
    rows.sort(key=lambda r: (-r["ms"], -r["own_ms"]))
    return {
        "sizes": dict(sizes),
        "total_ms": sum(times),
        "by_type": {k: {"ms": v, "share": v / total} for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])},
        "by_provenance": {k: by_prov.get(k, 0.0) / total for k in PROVENANCES},
        "measured_share": sum(by_prov.get(k, 0.0) for k in PROVENANCES[:3]) / total,
        "ops": rows,
    }


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def estimate(model_graph, *, system, backend=None, version=None, plan: Plan | None = None, batch: int = 1,
             isl: int = 1024, osl: int = 128, quant=None, kv_dtype=None, data_dirs=(), matched=None,
             mode: str = "static", **serving_options) -> dict:
    """One estimate as a JSON-ready dict (schema tracecost.estimate/1); see the module docstring. mode: static
    (this module), agg or disagg (costmodel.serving, with its serving_options)."""
    est = Estimator(model_graph, system=system, backend=backend, version=version, quant=quant, kv_dtype=kv_dtype,
                    data_dirs=data_dirs, matched=matched, engine=serving_options.get("engine"))
    return serving.mode_estimate(est, mode, plan or Plan(), batch, isl, osl, **serving_options)


def sweep(model_graph, *, batches=(1,), isls=(1024,), osls=(128,), tps=(1,), pp=1, ep=1, dp=1, plans=None,
          system, backend=None, version=None, quant=None, kv_dtype=None, data_dirs=(), matched=None,
          estimator: Estimator | None = None, mode: str = "static", **serving_options) -> list[dict]:
    """Every (plan, batch, ISL, OSL) of the grid, priced from one matched graph. plans: explicit Plan list, else
    Plan(tp, pp, ep, dp) for tp in tps. A plan that does not divide the model gives one row with its "error"; in
    agg and disagg (costmodel.serving: batch is the concurrency) so does a point whose KV cache does not fit."""
    est = estimator or Estimator(model_graph, system=system, backend=backend, version=version, quant=quant,
                                 kv_dtype=kv_dtype, data_dirs=data_dirs, matched=matched,
                                 engine=serving_options.get("engine"))
    batches = [require_int("batch", b) for b in batches]
    isls = [require_int("isl", s) for s in isls]
    osls = [require_int("osl", s) for s in osls]
    point = serving.point_function(est, mode, **serving_options)
    rows = []
    for plan in plans or [Plan(tp=t, pp=pp, ep=ep, dp=dp) for t in tps]:
        try:
            est.ops(plan, "prefill")
            est.ops(plan, "decode")
        except UserError as exc:
            rows.append({"mode": mode, "tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "dp": plan.dp, "error": str(exc)})
            continue
        for b in batches:
            for s in isls:
                for o in osls:
                    try:
                        rows.append(point(plan, b, s, o))
                    except UserError as exc:
                        rows.append({"mode": mode, "tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "dp": plan.dp,
                                     "batch": b, "isl": s, "osl": o, "error": str(exc)})
    return rows
