"""Plan a deployment (`tracecost plan`): search one engine's parallel plan and concurrency (agg), and the prefill and
decode pools (disagg), under a GPU budget, for the quantization and KV dtype asked; price every candidate with
costmodel.serving (agg_point, disagg_estimate); keep those that fit in memory; return the Pareto front of tokens/s
per GPU against tokens/s per user and the best candidate under the TTFT / TPOT limits.

Search space
- plans (`plan_space`): TP and PP in powers of two, TP within one node. For a model with routed experts, also
  attention DP (TP 1 inside each DP rank: the layout TensorRT-LLM's enable_attention_dp, vLLM's data parallel with
  expert parallel and SGLang's DP attention all run) and every EP in powers of two that divides TP x DP and the
  experts (one that does not runs only with the engine's expert load balancer). A plan that does not divide the
  model (heads, layers) is skipped where pricing refuses it.
- concurrency per attention-DP rank (agg) or per decode worker (disagg): CONCURRENCY, powers of two and the points
  between them, rising until the KV cache no longer fits.
- disagg: prefill and decode plans from the same set, prompts per prefill batch in PREFILL_BATCHES and the engine's
  own (the whole prompts its token budget fits, serving.prompts_per_step), x prefill and y decode workers whose
  group of x * gpus(prefill) + y * gpus(decode) GPUs divides the budget (its replicas use every GPU, as
  aiconfigurator's disagg replicas do) and gcd(x, y) = 1 (a multiple of a ratio is replicas of it, with the same
  figures per GPU and per user).
- quantization: the config's own (or the one named), or with `any` every mode whose dense-GEMM format the system's
  tables measure for the backend; KV dtype: the config's (or the one named), or with `any` each priced KV dtype.
An instance (agg) or an x:y group (disagg) of g GPUs is repeated floor(budget / g) times; the figures per GPU and
per user are its own.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable

from core.dtypes import QUANT_MODES, WEIGHT_FORMATS
from core.errors import UserError
from core.ops import redundant_experts
from costmodel.estimate import Estimator
from costmodel.overheads import EngineSettings
from costmodel.parallel import Plan
from costmodel.pricing import PRICED_KV_DTYPES, resolve_quant
from costmodel.serving import agg_point, disagg_estimate, prompts_per_step
from costmodel.speculative import Speculation, mtp_ops
from costmodel.speculative import agg_point as speculative_agg_point
from costmodel.tables.specs import GEMM

SCHEMA = "tracecost.plan/1"
MODES = ("agg", "disagg")
CONCURRENCY = (1, 2, 4, 6, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
               448, 512)
PREFILL_BATCHES = (1, 2, 4)
ANY = "any"
FIGURES = ("ttft_ms", "tpot_ms", "request_latency_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user")


def _powers(limit: int) -> list[int]:
    return [1 << i for i in range(limit.bit_length()) if 1 << i <= limit]


def plan_space(max_gpus: int, *, experts: bool, gpus_per_node: int) -> list[Plan]:
    """Every plan of at most max_gpus GPUs (see the module docstring), fewest GPUs first."""
    plans = []
    for tp in _powers(min(max_gpus, gpus_per_node)):
        for dp in _powers(gpus_per_node) if experts and tp == 1 else [1]:
            for pp in _powers(max_gpus // (tp * dp)):
                for ep in _powers(tp * dp) if experts else [1]:
                    plans.append(Plan(tp=tp, pp=pp, ep=ep, dp=dp))
    return sorted(plans, key=lambda p: (p.gpus, p.pp, p.dp, p.tp, p.ep))


def has_experts(est: Estimator) -> bool:
    return any(op.expert_parallel for op in est.base["prefill"])


def quant_choices(est: Estimator) -> list[str]:
    """Quantization modes whose dense-GEMM format the system's tables measure for the estimator's backend."""
    return [mode for mode, q in QUANT_MODES.items() if est.db.has_variant(GEMM, (WEIGHT_FORMATS[q.gemm].table,))]


def estimators(model_graph, matched, *, system, backend=None, version=None, quant=None, kv_dtype=None,
               data_dirs=()) -> list[Estimator]:
    """One Estimator per (quantization, KV dtype) searched; `any` for either expands it (module docstring)."""
    def make(q, kv):
        return Estimator(model_graph, system=system, backend=backend, version=version, quant=q, kv_dtype=kv,
                         data_dirs=data_dirs, matched=matched)

    base = make(None if quant == ANY else quant, None if kv_dtype == ANY else kv_dtype)
    quants = [base.quant.mode] if quant != ANY else quant_choices(base) or [base.quant.mode]
    kvs = [base.kv_cache_dtype] if kv_dtype != ANY else list(PRICED_KV_DTYPES)
    out = []
    for q in quants:
        for kv in kvs:
            if (q, kv) == (base.quant.mode, base.kv_cache_dtype):
                out.append(base)
                continue
            try:
                out.append(make(q if quant == ANY else quant, kv if kv_dtype == ANY else kv_dtype))
            except UserError:   # a mode this GPU cannot run (nvfp4 without FP4 tensor cores)
                continue
    return out


# ---------------------------------------------------------------------------------------------
# candidates
# ---------------------------------------------------------------------------------------------


def _plan_json(plan: Plan) -> dict:
    return {"tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "dp": plan.dp}


def _valid(est: Estimator, plan: Plan) -> bool:
    if any(op.expert_parallel and redundant_experts(op.experts, plan.ep) for op in est.base["prefill"]):
        return False   # redundant expert slots need the engine's load balancer launched
    try:
        est.ops(plan, "prefill")
        est.ops(plan, "decode")
    except UserError:
        return False
    return True


def _agg(est: Estimator, plan: Plan, budget: int, isl: int, osl: int, engine: EngineSettings | None,
         speculation: Speculation | None = None) -> list[dict]:
    out = []
    for per_rank in CONCURRENCY:
        try:
            if speculation is None:
                row = agg_point(est, plan, per_rank * plan.dp, isl, osl, engine)
            else:
                row = speculative_agg_point(est, plan, per_rank * plan.dp, isl, osl, speculation, engine)
        except UserError:   # the KV cache of this many requests does not fit; more will not either
            break
        out.append({"mode": "agg", "quant": est.quant.mode, "kv_dtype": est.kv_cache_dtype, "plan": _plan_json(plan),
                    "gpus": plan.gpus, "replicas": budget // plan.gpus, "concurrency": row["batch"],
                    "batch_per_rank": per_rank, "prefill": None, "decode": None,
                    "memory_per_gpu_bytes": row["memory_per_gpu_bytes"], **{k: row[k] for k in FIGURES}})
    return out


def _ratios(budget: int, gp: int, gd: int) -> list[tuple[int, int]]:
    """x:y worker counts whose group of x * gp + y * gd GPUs divides the budget (replicas fill it), gcd(x, y) = 1."""
    return [(x, y) for x in range(1, budget // gp + 1) for y in range(1, (budget - x * gp) // gd + 1)
            if math.gcd(x, y) == 1 and budget % (x * gp + y * gd) == 0]


def _disagg(est: Estimator, prefill: Plan, batch: int, decode: Plan, budget: int, isl: int, osl: int,
            engine: EngineSettings | None) -> list[dict]:
    out = []
    for x, y in _ratios(budget, prefill.gpus, decode.gpus):
        for per_worker in CONCURRENCY:
            try:
                row = disagg_estimate(est, prefill, decode, per_worker * y * decode.dp, isl, osl, prefill_workers=x,
                                      decode_workers=y, prefill_batch=batch, engine=engine,
                                      full=False)
            except UserError:   # a pool does not fit; more requests per worker will not either
                break
            gpus = x * prefill.gpus + y * decode.gpus
            out.append({"mode": "disagg", "quant": est.quant.mode, "kv_dtype": est.kv_cache_dtype,
                        "plan": _plan_json(decode), "gpus": gpus, "replicas": budget // gpus,
                        "concurrency": row["batch"], "batch_per_rank": per_worker,
                        "prefill": {**_plan_json(prefill), "workers": x, "batch": batch},
                        "decode": {**_plan_json(decode), "workers": y, "batch": per_worker},
                        "memory_per_gpu_bytes": row["memory_per_gpu_bytes"], **{k: row[k] for k in FIGURES}})
    return out


def prefill_batches(est: Estimator, isl: int, engine: EngineSettings | None) -> list[int]:
    """PREFILL_BATCHES and the engine's own batch: the whole prompts its token budget fits."""
    own = prompts_per_step(est.overheads.with_settings(engine).max_tokens_per_step, isl)
    return sorted({*PREFILL_BATCHES, own})


def search(ests: list[Estimator], *, gpus: int, isl: int, osl: int, modes=MODES, engine: EngineSettings | None = None,
           progress: Callable[[int, int], None] | None = None, speculation: Speculation | None = None) -> list[dict]:
    """Every candidate that fits, in every mode of `modes` (see the module docstring)."""
    tasks = []
    for est in ests:
        plans = [p for p in plan_space(gpus, experts=has_experts(est), gpus_per_node=est.db.system.gpus_per_node)
                 if _valid(est, p)]
        if "agg" in modes:
            tasks += [partial(_agg, est, p, speculation=speculation) for p in plans]
        if "disagg" in modes:
            pools = [p for p in plans if p.gpus < gpus]
            batches = prefill_batches(est, isl, engine)
            tasks += [partial(_disagg, est, p, b, d) for p in pools for b in batches for d in pools
                      if p.gpus + d.gpus <= gpus]
    found = []
    for i, task in enumerate(tasks):
        found += task(gpus, isl, osl, engine)
        if progress:
            progress(i + 1, len(tasks))
    return found


def smallest_fit(est: Estimator, gpus: int, isl: int, osl: int, engine: EngineSettings | None = None,
                 limit: int = 1024) -> Plan | None:
    """The plan with the fewest GPUs (more than `gpus`, up to `limit`) that serves one request per rank in agg."""
    for plan in plan_space(limit, experts=has_experts(est), gpus_per_node=est.db.system.gpus_per_node):
        if plan.gpus <= gpus or not _valid(est, plan):
            continue
        try:
            agg_point(est, plan, plan.dp, isl, osl, engine)
        except UserError:
            continue
        return plan
    return None


# ---------------------------------------------------------------------------------------------
# selection
# ---------------------------------------------------------------------------------------------


def meets(c: dict, ttft_ms: float | None, tpot_ms: float | None) -> bool:
    return (ttft_ms is None or c["ttft_ms"] <= ttft_ms) and (tpot_ms is None or c["tpot_ms"] <= tpot_ms)


def pareto_front(cands: list[dict]) -> list[dict]:
    """The candidates no other beats on both tokens/s/GPU and tokens/s/user, by tokens/s/user rising."""
    front, best = [], -1.0
    for c in sorted(cands, key=lambda c: (-c["tokens_per_s_per_user"], -c["tokens_per_s_per_gpu"])):
        if c["tokens_per_s_per_gpu"] > best:
            front.append(c)
            best = c["tokens_per_s_per_gpu"]
    return front[::-1]


def miss(c: dict, ttft_ms: float | None, tpot_ms: float | None) -> dict:
    """By how much a candidate misses each limit, as a fraction over it (0 where it meets it)."""
    out = {}
    if ttft_ms is not None:
        out["ttft"] = max(0.0, c["ttft_ms"] / ttft_ms - 1)
    if tpot_ms is not None:
        out["tpot"] = max(0.0, c["tpot_ms"] / tpot_ms - 1)
    return out


def choose(cands: list[dict], *, ttft_ms: float | None = None, tpot_ms: float | None = None, modes=MODES,
           closest: int = 3) -> dict:
    """Per mode and overall: the best candidate that meets the limits (most tokens/s/GPU) and the Pareto front of
    those that meet the TTFT limit (the TPOT limit is a tokens/s/user line across the front); when none meets the
    limits, the `closest` candidates by their largest miss."""
    by_mode = {m: [c for c in cands if c["mode"] == m] for m in modes}
    ok = [c for c in cands if meets(c, ttft_ms, tpot_ms)]
    best = {m: max((c for c in ok if c["mode"] == m), key=lambda c: c["tokens_per_s_per_gpu"], default=None)
            for m in modes}
    best["overall"] = max(ok, key=lambda c: c["tokens_per_s_per_gpu"], default=None)
    fronts = {m: pareto_front([c for c in by_mode[m] if ttft_ms is None or c["ttft_ms"] <= ttft_ms]) for m in modes}
    near = []
    if not ok:
        near = sorted(cands, key=lambda c: (max(miss(c, ttft_ms, tpot_ms).values(), default=0.0),
                                            -c["tokens_per_s_per_gpu"]))[:closest]
        near = [{**c, "miss": miss(c, ttft_ms, tpot_ms)} for c in near]
    return {"best": best, "fronts": fronts, "closest": near,
            "candidates": {"total": len(cands), **{m: len(by_mode[m]) for m in modes}, "meeting_sla": len(ok)}}


def plan_deployment(model_graph, matched, *, system, gpus: int, isl: int, osl: int, ttft_ms=None, tpot_ms=None,
                    modes=MODES, backend=None, version=None, quant=None, kv_dtype=None, data_dirs=(),
                    max_tokens_per_step=None, progress=None,
                    speculation: Speculation | None = None) -> tuple[dict, list[dict]]:
    """The plan report (JSON-ready, schema tracecost.plan/1) and every candidate searched. With `speculation`
    (MTP speculative decoding) agg candidates are priced with it; disagg is not priced with it."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise UserError(f"--gpus must be a positive integer, got {gpus!r}")
    for name, limit in (("ttft", ttft_ms), ("tpot", tpot_ms)):
        if limit is not None and not limit > 0:
            raise UserError(f"--{name} must be a positive number of milliseconds, got {limit!r}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UserError(f"unknown --mode {unknown[0]!r}; known: agg, disagg, both")
    if speculation is not None:
        if "agg" not in modes:
            raise UserError("--speculative is priced in agg mode only; plan it with --mode agg or both")
        modes = ("agg",)
    ests = estimators(model_graph, matched, system=system, backend=backend, version=version, quant=quant,
                      kv_dtype=kv_dtype, data_dirs=data_dirs)
    if speculation is not None:
        mtp_ops(ests[0], Plan(), "decode")   # a model without MTP layers: one clear line before the search
    engine = EngineSettings(max_tokens_per_step=max_tokens_per_step)
    cands = search(ests, gpus=gpus, isl=isl, osl=osl, modes=modes, engine=engine,
                   progress=progress, speculation=speculation)
    if not cands:
        needed = smallest_fit(ests[0], gpus, isl, osl, engine)
        where = f"{gpus} x {ests[0].db.system.name}"
        if needed is None:
            raise UserError(f"{model_graph.name} does not fit in {where} at ISL {isl} + OSL {osl}, nor in any plan "
                            f"of up to 1024 GPUs")
        raise UserError(f"{model_graph.name} does not fit in {where} at ISL {isl} + OSL {osl} ({' or '.join(modes)})"
                        f": the smallest plan that fits needs {needed.gpus} GPUs ({needed.label()})")
    chosen = choose(cands, ttft_ms=ttft_ms, tpot_ms=tpot_ms, modes=modes)
    est = ests[0]
    report = {
        "schema": SCHEMA, "model": model_graph.name, "model_type": model_graph.model_type,
        "system": est.db.system.name, "gpu": est.db.system.gpu, "backend": est.db.backend,
        "backend_version": est.db.version, "gpus": gpus, "isl": isl, "osl": osl,
        "sla": {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms}, "modes": list(modes),
        "speculative": speculation.to_json() if speculation else None,
        "config_quant": resolve_quant(model_graph.config).mode,
        "max_tokens_per_step": max_tokens_per_step or est.max_num_tokens,
        "searched": {"quant": sorted({e.quant.mode for e in ests}),
                     "kv_dtype": sorted({e.kv_cache_dtype for e in ests}),
                     "concurrency_per_rank": list(CONCURRENCY),
                     "prefill_batches": sorted({b for e in ests for b in prefill_batches(e, isl, engine)})},
        **chosen,
        "sla_met": chosen["best"]["overall"] is not None,
    }
    return report, cands
