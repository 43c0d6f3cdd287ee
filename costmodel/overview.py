"""The answer a user traces a model for, shown before the op tables: how big the model is, what its KV cache holds
per token and per sequence, and what serving it costs on one system (TTFT and TPOT).

Where the trace was not given a system, the latency is priced on DEFAULT_SYSTEM with its default backend, in the
serving mode DEFAULT_MODE (one engine, in-flight batching with chunked prefill) at the trace's batch as the
concurrency, on the smallest TP (1, 2, 4, ... up to the GPUs of one node) that divides the model and whose memory
fits. Where the trace was given a system, its estimate is the one summarised.
"""
from __future__ import annotations

from core.errors import UserError
from costmodel import serving
from costmodel.estimate import Estimator
from costmodel.kv import kv_report
from costmodel.parallel import Plan

DEFAULT_SYSTEM = "h200_sxm"
DEFAULT_MODE = "agg"


def _latency(row: dict, *, system, gpu, backend, backend_version, quant, kv_dtype, plan_rule: str, mode: str,
             concurrency: int) -> dict:
    return {"system": system, "gpu": gpu, "backend": backend, "backend_version": backend_version, "quant": quant,
            "kv_dtype": kv_dtype, "plan": row["plan"],
            "plan_rule": plan_rule, "mode": mode, "concurrency": concurrency,
            **{k: row[k] for k in ("ttft_ms", "tpot_ms", "tokens_per_s_per_user", "tokens_per_s_per_gpu")},
            "memory_per_gpu_bytes": row["memory_per_gpu_bytes"]}


def default_latency(model_graph, matched, *, batch: int, isl: int, osl: int, pp: int = 1, dp: int = 1,
                    quant=None, kv_dtype=None, data_dirs=()) -> dict:
    """DEFAULT_MODE on DEFAULT_SYSTEM at the smallest TP that divides the model and fits (EP 1)."""
    est = Estimator(model_graph, system=DEFAULT_SYSTEM, quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs,
                    matched=matched)
    system = est.db.system
    where = {"system": system.name, "gpu": system.gpu, "backend": est.db.backend, "backend_version": est.db.version,
             "quant": est.quant.mode, "kv_dtype": est.kv_cache_dtype}
    reason = "no TP tried"
    tp = 1
    while tp <= system.gpus_per_node:
        plan = Plan(tp=tp, pp=pp, dp=dp)
        try:
            row = serving.agg_point(est, plan, batch, isl, osl)
        except UserError as exc:   # the plan does not divide the model, or its memory does not fit
            reason = str(exc)
            tp *= 2
            continue
        return _latency({**row, "plan": plan.to_json()}, **where, plan_rule="smallest TP that fits",
                        mode=DEFAULT_MODE, concurrency=batch)
    return {**where, "mode": DEFAULT_MODE, "concurrency": batch,
            "error": f"no TP up to {system.gpus_per_node} (one node) fits: {reason}"}


def overview(model_graph, matched, *, batch: int, isl: int, osl: int, estimate: dict | None = None, pp: int = 1,
             dp: int = 1, quant=None, kv_dtype=None, data_dirs=()) -> dict:
    """Parameters, KV cache at ISL + OSL tokens, and latency (from `estimate`, the trace's own estimate on a given
    system, else default_latency) as a JSON-ready dict."""
    if estimate is not None:
        latency = _latency({**estimate, "memory_per_gpu_bytes": estimate["memory"]["total_bytes"]},
                           system=estimate["system"], gpu=estimate["gpu"], backend=estimate["backend"],
                           backend_version=estimate["backend_version"], quant=estimate["quant"]["mode"],
                           kv_dtype=estimate["memory"]["kv_dtype"],
                           plan_rule="given", mode=estimate["mode"], concurrency=estimate["inputs"]["batch"])
    else:
        latency = default_latency(model_graph, matched, batch=batch, isl=isl, osl=osl, pp=pp, dp=dp, quant=quant,
                                  kv_dtype=kv_dtype, data_dirs=data_dirs)
    # the KV figures at the dtype the latency was priced with
    report = kv_report(model_graph, kv_dtype=latency["kv_dtype"], seq_len=isl + osl, matched=matched)
    return {"parameters": model_graph.param_count, "weight_bytes": model_graph.weight_bytes,
            "dtype": model_graph.dtype,
            "kv": {"dtype": report["kv_dtype"], "bytes_per_token": report["kv_bytes_per_token"],
                   "fixed_bytes_per_sequence": report["fixed_bytes_per_sequence"], "isl": isl, "osl": osl,
                   "bytes_per_sequence": report["sequence"]["bytes"]},
            "latency": latency}
