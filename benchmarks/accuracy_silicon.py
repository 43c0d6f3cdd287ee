"""Accuracy against real GPUs: tracecost and aiconfigurator 0.12 beside aiconfigurator-core's silicon_sample.csv.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy_silicon.py [--only-model TEXT] [--mode agg|disagg]
        [--limit N] [--no-aic | --aic-refresh] [--no-tracecost] [--fit-on SYSTEM[,SYSTEM]|half] [--fit]

The CSV holds thousands of end-to-end runs (TTFT and TPOT at a fixed concurrency); how a row maps onto a plan,
quantization and request lengths, and the rules that set rows apart, are in benchmarks/silicon_rows.py. Every row
whose model resolves (tracecost's own resolver) and whose system and backend have tables is priced by tracecost,
in-process, from one trace per model, and by aiconfigurator's cli_estimate (what ``aiconfigurator cli estimate
--estimate-mode agg|disagg`` calls) on the same config file, layout, quantization, lengths and table version, in
one aic_silicon_worker.py process under its own venv (see parity_aiconfigurator.py). aiconfigurator's answers are
kept in benchmarks/results/aic_silicon_rows.csv, keyed by row id, aiconfigurator version and a digest of the
request, and reused by a rerun that asks the same (--aic-refresh asks again).

The table version: the row's engine version where tracecost has tables for it, else the newest. aiconfigurator is
asked for the same version (AIC_ALLOW_UNLISTED_VERSIONS=1, as it otherwise takes only its current/next slots); where
its own copy lacks tables of that version it is asked again with its default, and aic_table_version says which.

tracecost's mode: `tracecost_ms` is the one call: the row's mode (costmodel.serving: agg at the row's concurrency;
disagg with its prefill and decode plans, worker counts and prefill batch), with the engine overheads of
systems/engines/overheads.yaml.

Fitting split: --fit-on SYSTEMS marks the rows of those systems as fit rows, the rest as held out (a test of the
constants on GPUs they never saw); --fit-on half marks the rows whose id's CRC-32 is even (every system on both
sides: a test on runs they never saw). Figures are shown for both parts. --fit fits five engine constants per
backend, per (backend, table version) and per (backend, system) with enough fit rows of enough models
(MIN_VERSION_ROWS, MIN_SYSTEM_ROWS, MIN_MODELS: fewer models would make a per-model constant), on the agg fit rows
within the rules, starting from the shipped systems/engines/overheads.yaml alone: for TPOT, graph_kernel_scale (the
share of their kernels' summed timings that agg's decode steps run as CUDA graphs take) and an addition to step_ms
(every engine step); then for TTFT, request_ms, first_token_steps and prompt_token_us (TTFT + request_ms +
first_token_steps x TPOT + prompt_token_us x ISL x the prompts a prompt waits for at the front end,
costmodel.serving.ingest_prompts), each the value minimising the median |error| of tracecost's prediction. On the
disagg fit rows within the rules, likewise (a default entry too only with MIN_DISAGG_ROWS of them, else the handoff
pooled over every backend's rows): for TPOT, per GPU architecture, disagg_kernel_scale (both pools' share of their
kernels' sum); then for TTFT, handoff_ms and handoff_steps (TTFT + handoff_ms + handoff_steps x TPOT, less what it
takes from a saturated pool's queue). Every row is priced twice to fit: with both scales 0 and 1 (its figures are
linear in them, short of a pool's saturation); the disagg rows a third time, at the fitted scales with agg's
constants in place, for the handoff (a pool's queue is not linear in its scale). The
constants go to systems/engines/overheads.fitted.yaml (which `tracecost estimate` reads: the backend's default, then
its table version's entry, then its system's, each overriding) and every row is priced again with them; the summary
shows both, on the fit rows and on the held-out ones, and how far constants could go at all: the held-out TTFT with
one shift per run series, a per-model constant the fit may not use (calibration_lines).

Writes benchmarks/results/accuracy_silicon_rows.csv (per row) and accuracy_silicon.md (summary). Progress on stderr.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.errors import UserError  # noqa: E402
from costmodel.speculative import DEFAULT_ACCEPTANCE, Speculation, speculative_estimate  # noqa: E402
from inferencex_launch import disagg_launch, launch, prefill_cap  # noqa: E402
from silicon_rows import (DUPLICATE_RULE, LAUNCH_RULE, MappedRow, map_row, mark_duplicates, read_rows,  # noqa: E402
                          silicon_csv)

RESULTS = ROOT / "benchmarks" / "results"
AIC_VENV = Path("/tmp/aic-venv")
AIC_MODELS = Path("/tmp/aic-models-accuracy")
AIC_WORKER = Path(__file__).resolve().parent / "aic_silicon_worker.py"
AIC_CACHE = RESULTS / "aic_silicon_rows.csv"  # aiconfigurator's answers: reused by a rerun unless --aic-refresh
AIC_CACHE_COLUMNS = ["id", "aic_version", "request", "aic_table_version", "aic_ttft_ms", "aic_tpot_ms", "aic_reason"]
CONFIG_QUANT = "config"  # MappedRow.quant for "the config's own quantization"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- tracecost -----------------------------------------------------------------------------------------------------


class Tracecost:
    """One trace and match per model, one Estimator per (model, system, backend, table version, quant, launch)."""

    def __init__(self):
        self.graphs: dict = {}
        self.estimators: dict = {}
        self.versions: dict = {}

    def table_version(self, system: str, backend: str, engine_version: str) -> str:
        """The tables to price a row with (see the module docstring); UserError when there are none."""
        key = (system, backend)
        if key not in self.versions:
            from costmodel.database import Database
            db = Database(system, backend)
            self.versions[key] = db.versions(backend)
        have = self.versions[key]
        return engine_version if engine_version in have else have[-1]

    def graph(self, model: str):
        if model not in self.graphs:
            from graph.match import match_model
            from graph.model_graph import trace_model
            start = time.perf_counter()
            try:
                mg = trace_model(model)
                self.graphs[model] = (mg, match_model(mg), None)
            except UserError as exc:
                self.graphs[model] = (None, None, str(exc))
            except Exception as exc:  # a trace bug must not stop thousands of rows; the reason is reported per row
                self.graphs[model] = (None, None, f"trace failed: {type(exc).__name__}: {str(exc)[:160]}")
            log(f"  traced {model} in {time.perf_counter() - start:.1f} s"
                + (f" ({self.graphs[model][2]})" if self.graphs[model][2] else ""))
        mg, matched, err = self.graphs[model]
        if err:
            raise UserError(err)
        return mg, matched

    def estimator(self, r: MappedRow, version: str):
        quant = None if r.quant == CONFIG_QUANT else r.quant
        # the launch settings an Estimator prices every op with (its kernel choices); the rest go to the steps
        kernels = r.engine.kernel_choices() if r.engine else None
        key = (r.model, r.system, r.backend, version, quant, r.kv_dtype, kernels)
        est = self.estimators.get(key)
        if est is None:
            from costmodel.estimate import Estimator
            mg, matched = self.graph(r.model)
            est = self.estimators[key] = Estimator(mg, system=r.system, backend=r.backend, version=version,
                                                   quant=quant, kv_dtype=r.kv_dtype, matched=matched,
                                                   engine=kernels)
        return est


def with_launch(m: MappedRow, row: dict) -> MappedRow:
    """An InferenceX agg row priced at its script's launch settings, KV-cache dtype and layout where the script ran
    another than the row's columns say, an agg row of aiconfigurator's gap-analysis sweeps at the settings its
    generator launched the engine with (aic_gap_launch.yaml); a disagg row without worker counts at those its master
    config gave (inferencex_launch.py), and one whose csv gives them at the prompts its token budget fits per
    prefill step. A run with speculative decoding, which the row does not say, breaks the written rule "launch:
    ..."; an agg one whose draft tokens its launch gives is priced with them (costmodel.speculative, MTP, at the
    default acceptance: the runs' own is not recorded), the others without."""
    if m.mode == "disagg" and m.source_kind == "inferencex" and m.no_layout:
        found = disagg_launch(row, m)
        if found:
            m.layouts, m.concurrency, m.no_layout = found["layouts"], found["concurrency"], ""
            m.engine, m.launch = found["engine"], found["source"]
            m.add_rule(*(LAUNCH_RULE + u for u in found["unpriced"]))
    elif m.mode == "disagg" and m.source_kind == "inferencex" and "prefill" in m.layouts:
        # the exports write a prefill batch of 1 for every InferenceX disagg run whose workers they give: a
        # placeholder, not the recipe's cap (its srt-slurm recipes give prefill workers max_batch_size 16 or so)
        m.layouts["prefill"] = replace(m.layouts["prefill"], batch=prefill_cap(m))
    if m.mode == "agg" and m.source_kind in ("inferencex", "aic-gap-analysis") and "agg" in m.layouts:
        found = launch(row, m)
        if found:
            m.engine, m.launch, m.kv_dtype = found["engine"], found["source"], found["kv_dtype"] or m.kv_dtype
            m.add_rule(*(LAUNCH_RULE + u for u in found["unpriced"]))
            m.draft_tokens = found["draft_tokens"]
            if found["layout"]:
                m.layouts["agg"] = found["layout"]
                m.launch += "; priced at the layout the script ran"
    return m


def without_fp4(r: MappedRow) -> None:
    """nvfp4 named on a GPU without FP4 tensor cores (gpt-oss on Hopper: its checkpoint is mxfp4, which Hopper runs
    weight-only): tracecost prices the config's own quantization and the row carries the rule."""
    from costmodel.systems import load_system
    if r.quant == "nvfp4" and load_system(r.system).fp4_dense_flops_per_s is None:
        r.quant, r.kv_dtype = CONFIG_QUANT, None
        r.add_rule("quant: nvfp4 on a GPU without FP4; priced at the config's own")


def _plan(lay):
    from costmodel.parallel import Plan
    return Plan(tp=lay.tp, pp=lay.pp, ep=lay.ep, dp=lay.dp)


def tracecost_ms(est, r: MappedRow) -> dict:
    """TTFT and TPOT of row `r`, priced in the row's serving mode at its concurrency, the prompts each waits for at
    the server's front end (costmodel.serving.ingest_prompts) and, for a disagg row, its queue and the benchmark's
    rounds (what fit_handoff needs)."""
    from costmodel.serving import Benchmark, mode_estimate

    isl, osl = r.isl_used, r.osl_used
    bench = Benchmark(fixed_lengths=r.fixed_lengths)
    if r.mode == "agg" and r.draft_tokens:
        out = speculative_estimate(est, "agg", _plan(r.layouts["agg"]), r.concurrency, isl, osl,
                                   Speculation(draft_tokens=r.draft_tokens), engine=r.engine, bench=bench)
    elif r.mode == "agg":
        out = mode_estimate(est, "agg", _plan(r.layouts["agg"]), r.concurrency, isl, osl, engine=r.engine,
                            bench=bench)
    else:
        pre, dec = r.layouts["prefill"], r.layouts["decode"]
        out = mode_estimate(est, "disagg", _plan(dec), r.concurrency, isl, osl, prefill_plan=_plan(pre),
                            prefill_workers=pre.workers, decode_workers=dec.workers, prefill_batch=pre.batch,
                            engine=r.engine, bench=bench)
    serving = out["serving"]
    figures = {"tc_ttft_ms": out["ttft_ms"], "tc_tpot_ms": out["tpot_ms"], "tc_mode": r.mode,
               "tc_ingest_prompts": serving["ingest_prompts"]}
    if r.mode == "disagg":
        figures.update(tc_queue_ms=serving["queue_ms"], tc_rounds=serving["rounds"])
    return figures


def price_tracecost(tc: Tracecost, r: MappedRow) -> dict:
    try:
        version = tc.table_version(r.system, r.backend, r.backend_version)
        est = tc.estimator(r, version)
        figures = tracecost_ms(est, r)
    except UserError as exc:
        return {"tc_reason": str(exc).splitlines()[0][:200]}
    return dict(figures, table_version=version)


# -- aiconfigurator ------------------------------------------------------------------------------------------------


def aic_model_dir(model: str) -> str:
    """A folder holding the config tracecost resolved for `model` (and its quant config when bundled), so both
    tools read the same file and aiconfigurator never asks the hub."""
    from tracer.source import resolve
    src = resolve(model)
    folder = AIC_MODELS / model.replace("/", "--")
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        cfg = Path(src.origin if src.path is None else src.path)
        cfg = cfg / "config.json" if cfg.is_dir() else cfg
        shutil.copyfile(cfg, folder / "config.json")
        quant = cfg.with_name(cfg.name.replace("_config.json", "_hf_quant_config.json"))
        if quant != cfg and quant.exists():
            shutil.copyfile(quant, folder / "hf_quant_config.json")
    return str(folder)


def aic_request(r: MappedRow, model_dir: str, version: str | None) -> dict:
    """Row `r` as the keyword arguments of aiconfigurator's cli_estimate (what `aiconfigurator cli estimate` calls;
    the options left out take the CLI's defaults)."""
    req = {"model_path": model_dir, "system_name": r.system, "backend_name": r.backend, "backend_version": version,
           "mode": r.mode, "isl": r.isl_used, "osl": r.osl_used, "gemm_quant_mode": r.gemm_quant,
           "moe_quant_mode": r.moe_quant}
    for phase, lay in r.layouts.items():
        p = "" if phase == "agg" else f"{phase}_"
        req.update({f"{p}tp_size": lay.tp, f"{p}pp_size": lay.pp, f"{p}attention_dp_size": lay.dp,
                    f"{p}moe_tp_size": lay.moe_tp, f"{p}moe_ep_size": lay.ep, f"{p}batch_size": lay.batch})
        if p:
            req[f"{p}num_workers"] = lay.workers
    return req


def run_aic_worker(requests: dict[str, dict]) -> dict[str, dict]:
    """aiconfigurator's answers ({aic_table_version, aic_ttft_ms, aic_tpot_ms} or {aic_table_version, aic_reason})
    to {row id: cli_estimate arguments},
    from one aic_silicon_worker.py process; a row it did not answer (the process died) is left out."""
    if not requests:
        return {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "AIC_ALLOW_UNLISTED_VERSIONS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        req_path, ans_path = Path(tmp, "requests.jsonl"), Path(tmp, "answers.jsonl")
        req_path.write_text("".join(json.dumps({"id": i, "estimate": kw}) + "\n" for i, kw in requests.items()),
                            encoding="utf-8")
        proc = subprocess.run([str(AIC_VENV / "bin" / "python"), str(AIC_WORKER), str(req_path), str(ans_path)],
                              env=env, stdout=sys.stderr)
        lines = ans_path.read_text(encoding="utf-8").splitlines() if ans_path.exists() else []
    if proc.returncode:
        log(f"  aiconfigurator worker exited {proc.returncode} after {len(lines)} of {len(requests)} rows")
    return {a["id"]: {"aic_table_version": a["version"], **({"aic_reason": a["reason"]} if "reason" in a else
                                                           {"aic_ttft_ms": a["ttft_ms"], "aic_tpot_ms": a["tpot_ms"]})}
            for a in map(json.loads, lines)}


def request_digest(req: dict) -> str:
    return hashlib.sha1(json.dumps(req, sort_keys=True).encode()).hexdigest()[:12]


def read_aic_cache() -> dict[str, dict]:
    if not AIC_CACHE.exists():
        return {}
    with open(AIC_CACHE, newline="", encoding="utf-8") as fh:
        return {row["id"]: row for row in csv.DictReader(fh)}


def write_aic_cache(entries: dict[str, dict]) -> None:
    AIC_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(AIC_CACHE, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=AIC_CACHE_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for key in sorted(entries):
            w.writerow(entries[key])


def price_aic(todo: list[tuple[dict, MappedRow, str]], refresh: bool) -> None:
    """aiconfigurator's figures into each row dict of `todo` (row dict, mapped row, table version). A row is asked
    at its table version; where aiconfigurator's copy lacks tables of that version, again with its default
    (aic_table_version says which was priced). Answers come from AIC_CACHE where it holds the same request under the
    same aiconfigurator version (unless `refresh`), else from one worker process; AIC_CACHE is updated."""
    version = aic_version()
    entries = read_aic_cache()
    cache = {} if refresh else entries
    asks: dict[str, dict] = {}
    reused = 0
    for r, m, table_version in todo:
        try:
            req = aic_request(m, aic_model_dir(m.model), table_version)
        except UserError as exc:
            r["aic_reason"] = str(exc).splitlines()[0][:200]
            continue
        hit = cache.get(r["id"])
        if hit and hit["aic_version"] == version and hit["request"] == request_digest(req):
            r.update({k: (float(v) if k in ("aic_ttft_ms", "aic_tpot_ms") else v)
                      for k, v in hit.items() if k.startswith("aic_") and k != "aic_version" and v != ""})
            reused += 1
            continue
        asks[r["id"]] = req
    log(f"  aiconfigurator: {reused} rows from {AIC_CACHE.name}, {len(asks)} to price")
    answers = run_aic_worker(asks)
    retry = {i: {**asks[i], "backend_version": None} for i, res in answers.items()
             if "perf database error" in res.get("aic_reason", "")}
    answers.update(run_aic_worker(retry))
    by_id = {r["id"]: r for r, _, _ in todo}
    for i, res in answers.items():
        by_id[i].update(res)
        entries[i] = {"id": i, "aic_version": version, "request": request_digest(asks[i]), **res}
    for i in asks.keys() - answers.keys():
        by_id[i]["aic_reason"] = "no answer: the aiconfigurator worker died"  # not cached: a rerun asks again
    if answers:
        write_aic_cache(entries)


def aic_version() -> str:
    try:
        out = subprocess.run([str(AIC_VENV / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('aiconfigurator'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "not installed"


# -- figures -------------------------------------------------------------------------------------------------------


def rel_err(pred, meas) -> float:
    if pred is None or meas is None or not math.isfinite(pred) or not meas:
        return math.nan
    return (pred - meas) / meas


def pct(values: list[float], q: float) -> float:
    """The q-quantile (linear between order statistics) of `values`; NaN when empty."""
    v = sorted(values)
    if not v:
        return math.nan
    i = (len(v) - 1) * q
    lo = math.floor(i)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (i - lo)


def figures(rows: list[dict]) -> dict:
    """Median and p90 |error| of each tool and metric: on the rows both priced and on all rows each priced."""
    both = [r for r in rows if r.get("tc_ttft_ms") is not None and r.get("aic_ttft_ms") is not None]
    out = {"n": len(rows), "n_tc": sum(r.get("tc_ttft_ms") is not None for r in rows),
           "n_aic": sum(r.get("aic_ttft_ms") is not None for r in rows), "n_both": len(both)}
    for tool in ("tc", "aic"):
        for metric in ("ttft", "tpot"):
            for label, subset in (("both", both), ("each", rows)):
                errs = [abs(r[f"{tool}_{metric}_err"]) for r in subset
                        if r.get(f"{tool}_{metric}_err") is not None and math.isfinite(r[f"{tool}_{metric}_err"])]
                out[f"{tool}_{metric}_{label}"] = (pct(errs, 0.5), pct(errs, 0.9))
    return out


def fmt(pair) -> str:
    med, p90 = pair
    return "-" if math.isnan(med) else f"{med:.0%} / {p90:.0%}"


def figure_line(label: str, f: dict) -> str:
    return (f"| {label} | {f['n']} | {f['n_tc']} | {f['n_aic']} | {f['n_both']} | "
            f"{fmt(f['tc_ttft_both'])} | {fmt(f['aic_ttft_both'])} | {fmt(f['tc_tpot_both'])} | "
            f"{fmt(f['aic_tpot_both'])} | {fmt(f['tc_ttft_each'])} | {fmt(f['aic_ttft_each'])} | "
            f"{fmt(f['tc_tpot_each'])} | {fmt(f['aic_tpot_each'])} |")


FIGURE_HEADER = (
    "| rows | n | tracecost priced | aic priced | both | TTFT tc (both) | TTFT aic (both) | TPOT tc (both) | "
    "TPOT aic (both) | TTFT tc (each) | TTFT aic (each) | TPOT tc (each) | TPOT aic (each) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
MIN_GROUP_ROWS = 20   # a (mode, system, backend, model) group this big should beat aiconfigurator's median (#14)


# -- fitting -------------------------------------------------------------------------------------------------------


MIN_VERSION_ROWS = 50          # a table version gets its own constants only with this many fit rows
MIN_SYSTEM_ROWS = 40           # a system (per backend) likewise
MIN_MODELS = 2                 # and only where those rows span this many models (else a per-model constant)
MIN_DISAGG_ROWS = 40           # a backend's disagg constants need this many disagg fit rows, its default entry too
SYSTEM_KEY = "system "          # fit_constants' key prefix of a per-system group
ARCH_KEY = "architecture "      # ... of a per-GPU-architecture group (costmodel.systems.System.architecture)
ANY_BACKEND = "any backend"     # fit_constants' backend of the disagg handoff pooled over every backend's rows
GRAPH_KERNEL_SCALES = [0.5 + i / 50 for i in range(36)]   # the grid graph_kernel_scale is chosen from: 0.5 ... 1.2
FIRST_TOKEN_STEPS = [i / 2 for i in range(21)]   # the grid first_token_steps is chosen from: 0, 0.5, ... 10
PROMPT_TOKEN_US = [i / 5 for i in range(51)]     # the grid prompt_token_us is chosen from: 0, 0.2, ... 10 us
HANDOFF_STEPS = [i / 2 for i in range(81)]       # the grid handoff_steps is chosen from: 0, 0.5, ... 40
HANDOFF_MS = np.arange(1001.0)                   # the grid handoff_ms is chosen from: 0, 1, ... 1000 ms


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([r[key] for r in rows], dtype=float)


def best_shift(pred, meas, least: float = 0.0) -> tuple[float, float]:
    """The shift c >= least (ms) minimising the median of |(pred + c - meas) / meas| over the rows, and that median.
    The median of these piecewise-linear terms is smallest where one term is zero (c = meas - pred) or at the floor
    (0, or least where that is above 0)."""
    pred, meas = np.asarray(pred, dtype=float), np.asarray(meas, dtype=float)
    candidates = np.unique(np.concatenate([[max(0.0, least)], np.maximum(meas - pred, least)]))
    cost = np.median(np.abs(pred[None, :] + candidates[:, None] - meas[None, :]) / meas[None, :], axis=1)
    i = int(np.argmin(cost))   # the first of equal costs: the smallest shift
    return float(candidates[i]), float(cost[i])


def fit_group(rows: list[dict]) -> dict:
    """TPOT first: graph_kernel_scale (a) and the shift of every engine step (step_ms), the a of the grid whose best
    shift gives the smallest median |TPOT error|. A row's figures are linear in a (priced at a = 1 and a = 0:
    tc_*_ms and tc_*_nograph_ms), so TPOT(a) = TPOT(0) + a x (TPOT(1) - TPOT(0)), TTFT likewise. Then TTFT:
    request_ms, first_token_steps (k) and prompt_token_us (u), the (k, u) of the grids whose best request_ms gives
    the smallest median |TTFT error|, TTFT taken as TTFT(a) + request_ms + k x TPOT + u x ISL x the prompts a
    prompt waits for at the front end (Overheads.ingest_ms, the row's tc_ingest_prompts)."""
    col = partial(_column, rows)
    tpot1, tpot0 = col("tc_tpot_ms"), col("tc_tpot_nograph_ms")
    ttft1, ttft0 = col("tc_ttft_ms"), col("tc_ttft_nograph_ms")
    tpot_meas, ttft_meas = col("tpot_ms"), col("ttft_ms")
    ingest = col("isl_used") * col("tc_ingest_prompts") / 1e3
    fits = []
    for a in GRAPH_KERNEL_SCALES:
        shift, err = best_shift(tpot0 + a * (tpot1 - tpot0), tpot_meas)
        fits.append((err, abs(a - 1.0), a, shift))   # equal errors: the scale nearest 1
    _, _, scale, step = min(fits)
    tpot = tpot0 + scale * (tpot1 - tpot0) + step
    ttft = ttft0 + scale * (ttft1 - ttft0)
    fits = []
    for k in FIRST_TOKEN_STEPS:
        for u in PROMPT_TOKEN_US:
            shift, err = best_shift(ttft + k * tpot + u * ingest, ttft_meas)
            fits.append((err, k, u, shift))
    err, k, u, request = min(fits)
    return {"rows": len(rows), "graph_kernel_scale": scale, "step_ms": step, "request_ms": request,
            "first_token_steps": k, "prompt_token_us": u}


def fit_pool_scale(rows: list[dict]) -> dict:
    """disagg_kernel_scale: the a of the grid giving the smallest median |TPOT error| of the disagg rows, TPOT(a)
    = TPOT(0) + a x (TPOT(1) - TPOT(0)) (the decode pools' host time stays as shipped: Overheads.decode_step_ms).
    The prefill pools take the same a (costmodel/serving.py says why)."""
    col = partial(_column, rows)
    tpot1, tpot0, meas = col("tc_tpot_ms"), col("tc_tpot_nograph_ms"), col("tpot_ms")
    fits = [(float(np.median(np.abs(tpot0 + a * (tpot1 - tpot0) - meas) / meas)), abs(a - 1.0), a)
            for a in GRAPH_KERNEL_SCALES]   # equal errors: the scale nearest 1
    return {"rows": len(rows), "disagg_kernel_scale": min(fits)[2]}


def fit_handoff(rows: list[dict]) -> dict:
    """handoff_ms and handoff_steps (k): the pair of the grids giving the smallest median |TTFT error| of the disagg
    rows, each priced at its pools' fitted scale and no handoff (fit_and_write's third pricing pass). A handoff
    h = handoff_ms + k x TPOT adds to a request's TTFT, but where a pool sets the pace it takes from the queue of the
    rounds after the first (the slower pool's rate fixes the cycle): TTFT(h) = TTFT + h - (1 - 1/rounds) x min(h,
    queue), the row's tc_queue_ms and tc_rounds (costmodel/serving.py's disagg_estimate)."""
    col = partial(_column, rows)
    ttft, tpot, queue, meas = col("tc_ttft_ms"), col("tc_tpot_ms"), col("tc_queue_ms"), col("ttft_ms")
    later = 1 - 1 / col("tc_rounds")
    fits = []
    for k in HANDOFF_STEPS:
        h = HANDOFF_MS[:, None] + k * tpot[None, :]
        cost = np.median(np.abs(ttft + h - later * np.minimum(h, queue) - meas) / meas, axis=1)
        i = int(np.argmin(cost))   # the first of equal costs: the smallest handoff_ms
        fits.append((float(cost[i]), k, float(HANDOFF_MS[i])))
    _, k, handoff = min(fits)
    return {"rows": len(rows), "handoff_ms": handoff, "handoff_steps": k}


@lru_cache(maxsize=None)
def architecture(system: str) -> str | None:
    from costmodel.systems import load_system
    return load_system(system).architecture


def _enough(rows: list[dict], least: int) -> bool:
    return len(rows) >= least and len({r["model_path"] for r in rows}) >= MIN_MODELS


def _groups(fit_rows: list[dict], mode: str) -> dict:
    """The fit rows of `mode` within the rules, by key: (mode, backend, "default"), (mode, backend, version),
    (mode, backend, "system " + name), and for disagg ("disagg", ANY_BACKEND, "default") (the serving stack's
    handoff, pooled over the engines behind it) and ("disagg", backend, "architecture " + name)."""
    groups = defaultdict(list)
    for r in fit_rows:
        if r.get("tc_ttft_ms") is not None and not r["rule"] and r["mode"] == mode:
            for which in ("default", r["table_version"], SYSTEM_KEY + r["system"]):
                groups[(mode, r["backend"], which)].append(r)
            if mode == "disagg":
                groups[("disagg", ANY_BACKEND, "default")].append(r)
                if architecture(r["system"]):
                    groups[("disagg", r["backend"], ARCH_KEY + architecture(r["system"]))].append(r)
    return groups


def _least(mode: str, which: str) -> int:
    return (MIN_SYSTEM_ROWS if which.startswith(SYSTEM_KEY) else MIN_VERSION_ROWS if which != "default"
            else MIN_DISAGG_ROWS if mode == "disagg" else 0)


def fit_constants(fit_rows: list[dict]) -> dict:
    """What the fit rows within the rules, priced with the shipped overheads alone, fit first; the modes fit apart
    (the disagg rows measure engines behind another serving stack, whose decode pools batch nothing but decodes).
    Agg: fit_group per backend ('default', always), per (backend, table version) with MIN_VERSION_ROWS fit rows and
    per (backend, system) with MIN_SYSTEM_ROWS, each of MIN_MODELS models or more.
    Disagg: the pools' kernel scale per (backend, GPU architecture) with MIN_SYSTEM_ROWS rows of MIN_MODELS models
    (fit_pool_scale): the tables' timings miss a GPU generation's own share (agg's fitted graph scales run from 0.68
    on b200_sxm to 1.06 on h200_sxm), one scale across generations fitted on Blackwell's pools under-prices Hopper's
    (held-out disagg h200_sxm rows: TPOT error -8% became -35%), and no single system but gb200 has enough rows.
    The handoff is fitted after it, on the rows priced again at those scales (fit_handoffs)."""
    out = {}
    for key, rows in sorted(_groups(fit_rows, "agg").items(), key=lambda kv: (kv[0][1], kv[0][2] != "default",
                                                                                kv[0][2])):
        if key[2] == "default" or _enough(rows, _least("agg", key[2])):
            out[key] = fit_group(rows)
    for key, rows in sorted(_groups(fit_rows, "disagg").items()):
        if key[2].startswith(ARCH_KEY) and _enough(rows, MIN_SYSTEM_ROWS):
            out[key] = fit_pool_scale(rows)
    return out


def fit_handoffs(fit_rows: list[dict]) -> dict:
    """The handoff (fit_handoff) on the disagg fit rows priced at their pools' fitted scales: per backend with
    MIN_DISAGG_ROWS rows, per table version and per system as agg's, and pooled over every backend's rows
    (ANY_BACKEND): the handoff happens in the serving stack in front of the engines, so a backend with too few
    disagg rows of its own takes the pooled fit (write_fitted_overheads)."""
    return {key: fit_handoff(rows) for key, rows in sorted(_groups(fit_rows, "disagg").items())
            if not key[2].startswith(ARCH_KEY) and _enough(rows, _least("disagg", key[2]))}


def is_fit_row(m: MappedRow, fit_on: list[str]) -> bool:
    if fit_on == ["half"]:
        return zlib.crc32(m.id.encode()) % 2 == 0
    return m.system in fit_on


def split_text(fit_on: list[str]) -> str:
    return "half the rows: id's CRC-32 even" if fit_on == ["half"] else f"rows of {', '.join(fit_on)}"


def write_fitted_overheads(constants: dict, fit_on: list[str]) -> Path:
    """systems/engines/overheads.fitted.yaml: the fitted constants in the overheads file's own schema."""
    from costmodel.overheads import FITTED_FILE, OVERHEADS_FILE, backend_names, load_overheads
    from costmodel.systems import list_systems
    backends: dict = {}
    pooled = constants.get(("disagg", ANY_BACKEND, "default"))
    for backend in backend_names():   # a backend without disagg rows enough of its own takes the pooled
        if pooled and backend != "none" and ("disagg", backend, "default") not in constants:
            source = (f"fitted by benchmarks/accuracy_silicon.py --fit on {pooled['rows']} silicon_sample.csv disagg "
                      f"rows of every backend ({split_text(fit_on)}): the serving stack's handoff, this backend "
                      f"having fewer than {MIN_DISAGG_ROWS} of its own (median |TTFT error|)")
            backends.setdefault(backend, {}).setdefault("default", {}).update(
                {"handoff_ms": {"value": round(pooled["handoff_ms"], 3), "source": source},
                 "handoff_steps": {"value": pooled["handoff_steps"], "source": source}})
    for (mode, backend, key), c in constants.items():
        if backend == ANY_BACKEND:
            continue
        slot = backends.setdefault(backend, {})
        if key.startswith(ARCH_KEY):   # the pools' scale, written to every system of that GPU architecture
            arch = key[len(ARCH_KEY):]
            systems = [name for name in list_systems() if architecture(name) == arch]
            source = (f"fitted by benchmarks/accuracy_silicon.py --fit on {c['rows']} silicon_sample.csv disagg rows "
                      f"({split_text(fit_on)}) of {arch} GPUs, {', '.join(systems)} (median |TPOT error|)")
            for name in systems:
                slot.setdefault("systems", {}).setdefault(name, {})["disagg_kernel_scale"] = {
                    "value": round(c["disagg_kernel_scale"], 2), "source": source}
            continue
        system = key[len(SYSTEM_KEY):] if key.startswith(SYSTEM_KEY) else None
        version = None if key == "default" or system else key
        where = f"{c['rows']} silicon_sample.csv {mode} rows ({split_text(fit_on)})" + (
            f" on {system}" if system else f" at table version {version}" if version else "")
        source = f"fitted by benchmarks/accuracy_silicon.py --fit on {where}"
        tpot, ttft = f"{source} (median |TPOT error|)", f"{source} (median |TTFT error|)"
        if mode == "agg":
            # overheads.yaml's own step_ms, whether or not a fitted file is there yet
            shipped = load_overheads(backend, version, system).shipped_step_ms
            entry = {"graph_kernel_scale": {"value": round(c["graph_kernel_scale"], 2), "source": tpot},
                     "request_ms": {"value": round(c["request_ms"], 3), "source": ttft},
                     "first_token_steps": {"value": c["first_token_steps"], "source": ttft},
                     "prompt_token_us": {"value": c["prompt_token_us"], "source": ttft},
                     "step_ms": {"value": round(shipped + c["step_ms"], 4),
                                 "source": f"{source} (the shipped {shipped} + {c['step_ms']:.4f}, "
                                           f"median |TPOT error|)"}}
        else:
            entry = {"handoff_ms": {"value": round(c["handoff_ms"], 3), "source": ttft},
                     "handoff_steps": {"value": c["handoff_steps"], "source": ttft}}
        if system:
            slot.setdefault("systems", {}).setdefault(system, {}).update(entry)
        elif version:
            slot.setdefault("versions", {}).setdefault(version, {}).update(entry)
        else:
            slot.setdefault("default", {}).update(entry)
    header = (f"# Written by benchmarks/accuracy_silicon.py --fit --fit-on {','.join(fit_on)}; overrides "
              f"{OVERHEADS_FILE.name} field by field\n# (same schema). Refit rather than edit.\n")
    FITTED_FILE.write_text(header + yaml.safe_dump({"backends": backends}, sort_keys=True, width=200),
                           encoding="utf-8")
    return FITTED_FILE


def price_all(tc: Tracecost, rows: list[dict], mapped: list[MappedRow]) -> None:
    t0 = time.perf_counter()
    for i, (r, m) in enumerate(zip(rows, mapped), 1):
        if not m.no_layout:
            for key in ("tc_ttft_ms", "tc_tpot_ms", "tc_mode", "tc_reason", "tc_ingest_prompts", "tc_queue_ms",
                        "tc_rounds"):
                r.pop(key, None)
            r.update(price_tracecost(tc, m))
            for metric in ("ttft", "tpot"):
                if r.get(f"tc_{metric}_ms") is not None:
                    r[f"tc_{metric}_err"] = rel_err(r[f"tc_{metric}_ms"], r[f"{metric}_ms"])
        if i % 500 == 0 or i == len(rows):
            log(f"  tracecost: {i}/{len(rows)} rows, {time.perf_counter() - t0:.0f} s")


def fit_and_write(tc: Tracecost, rows: list[dict], mapped: list[MappedRow], fit_on: list[str]) -> dict:
    """Price every row with the shipped overheads alone, fit the constants on the fit rows, write the fitted file
    (the one `tracecost estimate` reads); the caller prices again with it. Returns the constants and each row's
    shipped-overhead figures (shipped_*)."""
    from costmodel import overheads
    overheads.FITTED_FILE.unlink(missing_ok=True)   # a refit starts from the shipped values
    overheads.reread()
    log("pricing with the scaled kernels left out (graph_kernel_scale and disagg_kernel_scale 0), to fit")
    probe = {scale: {"value": 0.0, "source": "accuracy_silicon.py, while fitting"}
             for scale in ("graph_kernel_scale", "disagg_kernel_scale")}
    overheads.FITTED_FILE.write_text(yaml.safe_dump(
        {"backends": {b: {"default": probe} for b in overheads.backend_names()}}))
    try:
        price_all(tc, rows, mapped)
    finally:   # never leave the probe where `tracecost estimate` reads the fitted values
        overheads.FITTED_FILE.unlink()
        overheads.reread()
        tc.estimators.clear()
    for r in rows:
        r["tc_ttft_nograph_ms"], r["tc_tpot_nograph_ms"] = r.get("tc_ttft_ms"), r.get("tc_tpot_ms")
    log("pricing with the shipped overheads, to fit")
    price_all(tc, rows, mapped)
    shipped = [{f"shipped_{m}_err": r.get(f"tc_{m}_err") for m in ("ttft", "tpot")} for r in rows]
    constants = fit_constants([r for r in rows if r["split"] == "fit"])
    write_fitted_overheads(constants, fit_on)
    overheads.reread()
    tc.estimators.clear()   # step pricers live as long as their estimators: new ones read the fitted file
    # a pool's queue is not linear in its scale (it saturates): the handoff is fitted on disagg rows priced at it
    log("pricing the disagg rows at the fitted pool scales, to fit the handoff")
    disagg = [i for i, m in enumerate(mapped) if m.mode == "disagg"]
    price_all(tc, [rows[i] for i in disagg], [mapped[i] for i in disagg])
    constants.update(fit_handoffs([rows[i] for i in disagg if rows[i]["split"] == "fit"]))
    path = write_fitted_overheads(constants, fit_on)
    overheads.reread()
    tc.estimators.clear()
    log(f"wrote {path}; pricing again with it")
    return {"constants": constants, "shipped": shipped, "path": path.relative_to(ROOT)}


# -- run -----------------------------------------------------------------------------------------------------------


def git_describe() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--tags"], capture_output=True,
                         text=True)
    return out.stdout.strip() or "unknown"


COLUMNS = ["id", "mode", "system", "backend", "backend_version", "table_version", "model_path", "model",
           "aic_table_version", "source_kind", "isl", "osl", "isl_used", "osl_used", "gemm_quant", "moe_quant", "quant",
           "concurrency", "layout", "launch", "rule", "split", "ttft_ms", "tpot_ms", "tc_mode", "tc_ttft_ms", "tc_tpot_ms",
           "tc_ttft_err", "tc_tpot_err", "aic_ttft_ms", "aic_tpot_ms", "aic_ttft_err", "aic_tpot_err",
           "shipped_ttft_err", "shipped_tpot_err", "tc_reason", "aic_reason"]


def layout_text(r: MappedRow) -> str:
    return " | ".join(f"{k} TP{v.tp} PP{v.pp} DP{v.dp} EP{v.ep} moeTP{v.moe_tp} B{v.batch}"
                      + (f" x{v.workers}w" if k != "agg" else "") for k, v in r.layouts.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", type=Path, default=None, help="silicon CSV (default: aiconfigurator-core's)")
    ap.add_argument("--limit", type=int, default=None, help="first N rows after the filters")
    ap.add_argument("--only-model", default=None, help="rows whose model_path contains TEXT (case-insensitive)")
    ap.add_argument("--mode", choices=("agg", "disagg"), default=None, help="only rows of this serving mode")
    ap.add_argument("--no-aic", action="store_true", help="skip aiconfigurator")
    ap.add_argument("--aic-refresh", action="store_true",
                    help=f"price every row with aiconfigurator again instead of reusing {AIC_CACHE.name}")
    ap.add_argument("--no-tracecost", action="store_true", help="skip tracecost (e.g. to fill the aic cache)")
    ap.add_argument("--fit-on", default=None, help="SYSTEM[,SYSTEM]: rows of these systems are fit rows; 'half': "
                    "the rows whose id's CRC-32 is even")
    ap.add_argument("--fit", action="store_true", help="fit the engine overheads per backend, table version and "
                    "system (graph_kernel_scale, step_ms, request_ms, first_token_steps, prompt_token_us) and write "
                    "systems/engines/overheads.fitted.yaml")
    ap.add_argument("--out", default="accuracy_silicon", help="file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.fit and not args.fit_on:
        ap.error("--fit needs --fit-on SYSTEMS (constants are fitted on one part and reported on the rest)")
    if args.fit and args.no_tracecost:
        ap.error("--fit fits tracecost's constants; it cannot run with --no-tracecost")
    path = args.csv or silicon_csv()
    if not path.exists():
        ap.error(f"no silicon CSV at {path}")
    start = time.perf_counter()
    raw = read_rows(path)
    mapped = [with_launch(map_row(row), row) for row in raw]
    log(f"{mark_duplicates(mapped)} rows repeat another's run: rule 'duplicate'")
    if args.only_model:
        mapped = [m for m in mapped if args.only_model.lower() in m.model_path.lower()]
    if args.mode:
        mapped = [m for m in mapped if m.mode == args.mode]
    if args.limit:
        mapped = mapped[:args.limit]
    fit_on = [s.strip() for s in args.fit_on.split(",")] if args.fit_on else []
    log(f"{len(mapped)} of {len(raw)} rows of {path}")

    tc = Tracecost()
    rows: list[dict] = []
    for m in mapped:
        without_fp4(m)
        r = {k: getattr(m, k) for k in COLUMNS if hasattr(m, k) and k not in ("layouts",)}
        r["layout"] = layout_text(m)
        r["split"] = ("fit" if is_fit_row(m, fit_on) else "held-out") if fit_on else ""
        if m.no_layout:
            r["tc_reason"] = r["aic_reason"] = m.no_layout
        elif args.no_tracecost:
            r["tc_reason"] = "skipped (--no-tracecost)"
        rows.append(r)
    t0 = time.perf_counter()
    fit = {}
    if not args.no_tracecost:
        if args.fit:
            fit = fit_and_write(tc, rows, mapped, fit_on)
        price_all(tc, rows, mapped)
    tc_s = time.perf_counter() - t0

    aic_s = 0.0
    if not args.no_aic:
        t0 = time.perf_counter()
        todo = []
        for r, m in zip(rows, mapped):
            if "aic_reason" in r:
                continue
            try:
                todo.append((r, m, r.get("table_version") or tc.table_version(m.system, m.backend, m.backend_version)))
            except UserError as exc:
                r["aic_reason"] = str(exc).splitlines()[0][:200]
        price_aic(todo, args.aic_refresh)
        aic_s = time.perf_counter() - t0
    else:
        for r in rows:
            r.setdefault("aic_reason", "skipped (--no-aic)")

    for r in rows:
        for tool in ("tc", "aic"):
            for metric in ("ttft", "tpot"):
                if r.get(f"{tool}_{metric}_ms") is not None:
                    r[f"{tool}_{metric}_err"] = rel_err(r[f"{tool}_{metric}_ms"], r[f"{metric}_ms"])

    if fit:
        for r, before in zip(rows, fit["shipped"]):
            r.update(before)

    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / f"{args.out}_rows.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    md = summary(rows, args, path, fit_on, fit, tc_s, aic_s, time.perf_counter() - start)
    md_path = RESULTS / f"{args.out}.md"
    md_path.write_text(md, encoding="utf-8")
    print(md)
    log(f"wrote {csv_path} and {md_path}")


def summary(rows, args, path, fit_on, fit, tc_s, aic_s, total_s) -> str:
    import transformers
    tc_modes = Counter(r.get("tc_mode") for r in rows if r.get("tc_mode"))
    lines = [
        "# Accuracy against silicon: tracecost and aiconfigurator beside measured runs", "",
        f"- ground truth: {path.name} of aiconfigurator-core ({len(rows)} rows selected: "
        f"{' '.join(a for a in sys.argv[1:]) or 'all'})",
        f"- tracecost {git_describe()} (serving mode used: "
        f"{', '.join(f'{k} {v}' for k, v in tc_modes.items()) or 'none'}), aiconfigurator "
        f"{'skipped' if args.no_aic else aic_version()}, transformers {transformers.__version__}",
        f"- runtime: {total_s:.0f} s in all, tracecost {tc_s:.0f} s, aiconfigurator {aic_s:.0f} s",
        "- error = (predicted - measured) / measured; cells are median / p90 of |error|; 'both' = rows both tools "
        "priced, 'each' = every row that tool priced",
        "- InferenceX rows (random range ratio 0.8) are priced at mean lengths 0.9 x ISL and 0.9 x OSL; "
        f"{sum(r['source_kind'] == 'inferencex' for r in rows)} such rows",
        "",
    ]
    ruled = [r for r in rows if r["rule"]]
    clean = [r for r in rows if not r["rule"]]
    lines += ["## Overall", "", FIGURE_HEADER, figure_line("rows within the rules", figures(clean)),
              figure_line("with the rule-excluded rows", figures(rows))]
    if fit_on:
        for split in ("fit", "held-out"):
            lines.append(figure_line(f"{split} ({'' if split == 'fit' else 'not '}{split_text(fit_on)}), "
                                     f"within the rules", figures([r for r in clean if r["split"] == split])))
        for mode in ("agg", "disagg"):
            lines.append(figure_line(f"{mode}, held-out, within the rules",
                                     figures([r for r in clean if r["split"] == "held-out" and r["mode"] == mode])))
    spec = [r for r in rows if r.get("tc_mode") == "agg" and "speculative decoding (mtp" in r["rule"]
            and "or none" not in r["rule"]]
    lines.append(figure_line("agg runs with MTP speculative decoding (launch rule), priced with it at acceptance "
                             f"{DEFAULT_ACCEPTANCE} per drafted token", figures(spec)))
    lines += repeat_lines(clean)
    if fit_on:
        lines += calibration_lines(clean)
    lines += ["", "## Rows not priced, by reason", "", "| tool | reason | rows |", "|---|---|---|"]
    for tool in ("tc", "aic"):
        reasons = Counter(_reason_class(r[f"{tool}_reason"]) for r in rows if r.get(f"{tool}_reason"))
        for reason, n in reasons.most_common():
            lines.append(f"| {'tracecost' if tool == 'tc' else 'aiconfigurator'} | {reason} | {n} |")
    neither = Counter(_reason_class(r["tc_reason"]) for r in rows if r.get("tc_reason") and r.get("aic_reason")
                      and not r["aic_reason"].startswith("skipped") and not r["tc_reason"].startswith("skipped"))
    for reason, n in neither.most_common():
        lines.append(f"| neither | {reason} | {n} |")
    lines += ["", "## Rows set apart by a written rule (benchmarks/silicon_rows.py); priced anyway, shown above",
              "", "| rule | rows |", "|---|---|"]
    for reason, n in Counter(_reason_class(r["rule"]) for r in ruled).most_common():
        lines.append(f"| {reason} | {n} |")
    lines += ["", "## By (mode, system, backend, model), rows within the rules", "", FIGURE_HEADER]
    groups = defaultdict(list)
    for r in clean:
        groups[(r["mode"], r["system"], r["backend"], r["model_path"])].append(r)
    by_group = {key: figures(rows) for key, rows in sorted(groups.items())}
    for key, f in by_group.items():
        lines.append(figure_line(" ".join(key), f))
    big = {key: f for key, f in by_group.items() if f["n_both"] >= MIN_GROUP_ROWS}
    lost = {m: {key for key, f in big.items() if not f[f"tc_{m}_both"][0] < f[f"aic_{m}_both"][0]}
            for m in ("ttft", "tpot")}
    lines += ["", f"## Groups of {MIN_GROUP_ROWS} or more rows both tools price", "",
              f"tracecost's median |error| is the lower in {len(big) - len(lost['ttft'])} of {len(big)} groups for "
              f"TTFT and {len(big) - len(lost['tpot'])} of {len(big)} for TPOT (unrounded medians). The groups where "
              "it is not, with the metrics it loses on:", "", FIGURE_HEADER]
    for key in sorted(lost["ttft"] | lost["tpot"]):
        metrics = "/".join(m.upper() for m in ("ttft", "tpot") if key in lost[m])
        lines.append(figure_line(f"{' '.join(key)} ({metrics})", big[key]))
    if fit:
        lines += ["", f"## Fitted engine overheads ({split_text(fit_on)}), written to {fit['path']}", "",
                  "Agg's decode steps run as CUDA graphs take graph_kernel_scale of their kernels' summed timings; the "
                  "step_ms addition goes to every engine step (so to TPOT); request_ms + first_token_steps x TPOT + "
                  "prompt_token_us x ISL x the prompts it waits for at the front end ((C + 1) / 2 in a benchmark's "
                  "first round, its own alone in the steady rounds after it) is added to every agg and disagg TTFT. "
                  "Figures above are tracecost with them, as `tracecost estimate` "
                  "now prices. A table version or system gets its own entry with "
                  f"{MIN_VERSION_ROWS} or {MIN_SYSTEM_ROWS} fit rows of {MIN_MODELS} models or more. "
                  "Fitted on agg rows ('rows' counts them):",
                  "", "| backend | table version or system | rows | graph_kernel_scale | step_ms added | request_ms "
                  "| first_token_steps | prompt_token_us |", "|---|---|---|---|---|---|---|---|"]
        for (mode, b, v), c in fit["constants"].items():
            if mode == "agg":
                lines.append(f"| {b} | {v} | {c['rows']} | {c['graph_kernel_scale']:.2f} | {c['step_ms']:.3f} "
                             f"| {c['request_ms']:.1f} | {c['first_token_steps']:g} | {c['prompt_token_us']:g} |")
        lines += ["", "A disagg worker's steps, prefill and decode pools alike, take disagg_kernel_scale of their "
                  "kernels' summed timings (the decode pools' host time per step as shipped), fitted per GPU "
                  "architecture on TPOT (written to each system of it; the others keep the shipped 1.0); "
                  "handoff_ms + handoff_steps x TPOT is added to "
                  "every disagg TTFT (where a pool sets the pace, it shortens the queue instead), fitted on the rows "
                  "priced again at those scales, a backend's default entry fitted with "
                  f"{MIN_DISAGG_ROWS} fit rows or more, else taking the fit pooled over every backend's rows "
                  f"('{ANY_BACKEND}'). Fitted on disagg rows:", "",
                  "| backend | table version, system or architecture | rows | disagg_kernel_scale | handoff_ms "
                  "| handoff_steps |", "|---|---|---|---|---|---|"]
        for (mode, b, v), c in fit["constants"].items():
            if mode == "disagg" and "disagg_kernel_scale" in c:
                lines.append(f"| {b} | {v} | {c['rows']} | {c['disagg_kernel_scale']:.2f} | - | - |")
            elif mode == "disagg":
                lines.append(f"| {b} | {v} | {c['rows']} | - | {c['handoff_ms']:.1f} | {c['handoff_steps']:g} |")
        lines += ["", "| rows (within the rules) | n | TTFT shipped overheads | TTFT fitted | TPOT shipped overheads "
                  "| TPOT fitted |", "|---|---|---|---|---|---|"]
        for split in ("fit", "held-out"):
            sub = [r for r in clean if r["split"] == split and r.get("tc_ttft_err") is not None
                   and r.get("shipped_ttft_err") is not None]
            cells = []
            for metric in ("ttft", "tpot"):
                for key in (f"shipped_{metric}_err", f"tc_{metric}_err"):
                    errs = [abs(r[key]) for r in sub]
                    cells.append(fmt((pct(errs, .5), pct(errs, .9))))
            lines.append(f"| {split} | {len(sub)} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    return "\n".join(lines) + "\n"


REPEAT_KEY = ("mode", "system", "backend", "model_path", "isl", "osl", "gemm_quant", "moe_quant", "layout",
              "concurrency")   # what a row records of its run, and all a predictor is given


def repeat_lines(rows: list[dict]) -> list[str]:
    """Runs the CSV records alike (REPEAT_KEY) but measured differently: how far apart (max / min - 1) the copies'
    TTFT and TPOT lie, a floor under any predictor's error on them (rows that repeat one measurement count once)."""
    runs = defaultdict(set)
    for r in rows:
        if r.get("tc_ttft_ms") is None:   # unpriced rows: many lack the layout that would tell their runs apart
            continue
        runs[tuple(r[k] for k in REPEAT_KEY)].add((float(r["ttft_ms"]), float(r["tpot_ms"])))
    repeated = [v for v in runs.values() if len(v) > 1]
    if not repeated:
        return []
    spread = {m: [max(x[i] for x in v) / min(x[i] for x in v) - 1 for v in repeated]
              for i, m in enumerate(("ttft", "tpot"))}
    return ["", "## Runs recorded alike but measured differently", "",
            f"{len(repeated)} of {len(runs)} distinct recorded runs that tracecost prices within the rules "
            f"({sum(map(len, repeated))} "
            f"measurements) carry more than one measurement; the spread max / min - 1 of their TTFT is "
            f"{fmt((pct(spread['ttft'], 0.5), pct(spread['ttft'], 0.9)))} (median / p90), of their TPOT "
            f"{fmt((pct(spread['tpot'], 0.5), pct(spread['tpot'], 0.9)))}. The CSV does not say what differs "
            "(an engine flag, speculative decoding, the engine's build)."]


BOUND_KEY = ("mode", "backend", "system", "backend_version", "model_path", "source_kind")   # one run series
MIN_BOUND_ROWS = 3   # fit rows a series needs for its own shift in calibration_lines


def calibration_lines(rows: list[dict]) -> list[str]:
    """A bound on what constants can do, not a model: each series of runs (BOUND_KEY: one model on one engine
    version, system and benchmark source) takes its own TTFT shift, of either sign, fitted on its fit rows (at least
    MIN_BOUND_ROWS) as fit_group fits request_ms; its held-out rows are scored with it. A per-model constant breaks
    #14's rules, so these figures only say how much of the held-out error any constant could remove; the rest
    varies within a series (with concurrency, lengths, layout)."""
    series = defaultdict(list)
    for r in rows:
        if r.get("tc_ttft_ms") is not None:
            series[tuple(r[k] for k in BOUND_KEY)].append(r)
    out = defaultdict(lambda: ([], []))   # mode -> (|error| as priced, |error| shifted), held-out rows
    for members in series.values():
        fit = [r for r in members if r["split"] == "fit"]
        shift = (best_shift(_column(fit, "tc_ttft_ms"), _column(fit, "ttft_ms"), least=-math.inf)[0]
                 if len(fit) >= MIN_BOUND_ROWS else 0.0)
        for r in members:
            if r["split"] == "held-out":
                out[r["mode"]][0].append(abs(r["tc_ttft_err"]))
                out[r["mode"]][1].append(abs(rel_err(r["tc_ttft_ms"] + shift, r["ttft_ms"])))
    lines = ["", "## How far constants reach: one TTFT shift per run series (a bound, not a model)", "",
             f"Each series of runs ({', '.join(BOUND_KEY)}) takes its own TTFT shift fitted on its fit rows "
             f"({MIN_BOUND_ROWS} or more), a per-model constant the fit may not use; held-out rows within the "
             "rules, TTFT median / p90 of |error|:", "", "| mode | n | as priced | with a shift per series |",
             "|---|---|---|---|"]
    for mode in ("agg", "disagg"):
        priced, shifted = out[mode]
        if priced:
            lines.append(f"| {mode} | {len(priced)} | {pct(priced, .5):.1%} / {pct(priced, .9):.1%} "
                         f"| {pct(shifted, .5):.1%} / {pct(shifted, .9):.1%} |")
    return lines


def _reason_class(reason: str) -> str:
    """A reason without its row-specific numbers and ids, so the counts group."""
    text = re.sub(f"({re.escape(DUPLICATE_RULE)})[^;]+", r"\1another row", reason or "")
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:140]


if __name__ == "__main__":
    main()
