"""Accuracy against real GPUs: tracecost and aiconfigurator 0.12 beside aiconfigurator-core's silicon_sample.csv.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/accuracy_silicon.py [--only-model TEXT] [--mode agg|disagg]
        [--limit N] [--no-aic | --aic-refresh] [--no-tracecost] [--fit-on SYSTEM[,SYSTEM]] [--fit]

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

Fitting split: --fit-on SYSTEMS marks the rows of those systems as fit rows, the rest as held out; figures are shown
for both. --fit fits ONE per-step overhead in ms per (backend, engine version, system) of the fit rows (added to
every decode step, so to TPOT; the value minimising the median |TPOT error| of tracecost over those rows, >= 0),
writes it to benchmarks/results/engine_overhead_fit.yaml and reports held-out rows with it: a held-out row takes its
own key's constant, else the median of its (backend, version)'s constants on the fit systems, else none.

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
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from core.errors import UserError  # noqa: E402
from silicon_rows import MappedRow, map_row, read_rows, silicon_csv  # noqa: E402

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
    """One trace and match per model, one Estimator per (model, system, backend, table version, quant)."""

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
        key = (r.model, r.system, r.backend, version, quant)
        est = self.estimators.get(key)
        if est is None:
            from costmodel.estimate import Estimator
            mg, matched = self.graph(r.model)
            est = self.estimators[key] = Estimator(mg, system=r.system, backend=r.backend, version=version,
                                                   quant=quant, matched=matched)
        return est


def without_fp4(r: MappedRow) -> None:
    """nvfp4 named on a GPU without FP4 tensor cores (gpt-oss on Hopper: its checkpoint is mxfp4, which Hopper runs
    weight-only): tracecost prices the config's own quantization and the row carries the rule."""
    from costmodel.systems import load_system
    if r.quant == "nvfp4" and load_system(r.system).fp4_dense_flops_per_s is None:
        r.quant = CONFIG_QUANT
        r.rule = "; ".join(filter(None, [r.rule, "quant: nvfp4 on a GPU without FP4; priced at the config's own"]))


def _plan(lay):
    from costmodel.parallel import Plan
    return Plan(tp=lay.tp, pp=lay.pp, ep=lay.ep, dp=lay.dp)


def tracecost_ms(est, r: MappedRow) -> tuple[float, float, str]:
    """TTFT and TPOT of row `r`, priced in the row's serving mode at its concurrency."""
    from costmodel.serving import mode_estimate

    isl, osl = r.isl_used, r.osl_used
    if r.mode == "agg":
        out = mode_estimate(est, "agg", _plan(r.layouts["agg"]), r.concurrency, isl, osl)
    else:
        pre, dec = r.layouts["prefill"], r.layouts["decode"]
        out = mode_estimate(est, "disagg", _plan(dec), r.concurrency, isl, osl, prefill_plan=_plan(pre),
                            prefill_workers=pre.workers, decode_workers=dec.workers, prefill_batch=pre.batch)
    return out["ttft_ms"], out["tpot_ms"], r.mode


def price_tracecost(tc: Tracecost, r: MappedRow) -> dict:
    try:
        version = tc.table_version(r.system, r.backend, r.backend_version)
        est = tc.estimator(r, version)
        ttft, tpot, mode = tracecost_ms(est, r)
    except UserError as exc:
        return {"tc_reason": str(exc).splitlines()[0][:200]}
    return {"tc_ttft_ms": ttft, "tc_tpot_ms": tpot, "tc_mode": mode, "table_version": version}


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
    (aic_table_version says which was priced). Answers come from AIC_CACHE where it holds the same request under the same
    aiconfigurator version (unless `refresh`), else from one worker process; AIC_CACHE is updated."""
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


# -- fitting -------------------------------------------------------------------------------------------------------


def fit_key(r: dict) -> tuple:
    return (r["backend"], r["backend_version"] or "unknown", r["system"])


def fit_overhead(rows: list[dict]) -> float:
    """The per-step overhead c >= 0 (ms) minimising the median of |(tpot + c - meas) / meas|. The median of these
    piecewise-linear terms is smallest at a point where one term is zero (c = meas - tpot) or at c = 0."""
    pairs = [(r["tc_tpot_ms"], r["tpot_ms"]) for r in rows]
    candidates = sorted({0.0} | {max(m - p, 0.0) for p, m in pairs})
    return min(candidates, key=lambda c: (statistics.median(abs(p + c - m) / m for p, m in pairs), c))


def fit_constants(fit_rows: list[dict]) -> dict:
    groups = defaultdict(list)
    for r in fit_rows:
        if r.get("tc_tpot_ms") is not None and not r["rule"]:
            groups[fit_key(r)].append(r)
    return {k: {"step_overhead_ms": fit_overhead(v), "rows": len(v)} for k, v in sorted(groups.items())}


def apply_constants(rows: list[dict], constants: dict) -> Counter:
    """Add each row's constant to its tracecost TPOT (fields tc_fit_*); counts how each row found its constant."""
    by_version = defaultdict(list)
    for (backend, version, _), c in constants.items():
        by_version[(backend, version)].append(c["step_overhead_ms"])
    how = Counter()
    for r in rows:
        if r.get("tc_tpot_ms") is None:
            continue
        key = fit_key(r)
        if key in constants:
            c, src = constants[key]["step_overhead_ms"], "own (backend, version, system)"
        elif key[:2] in by_version:
            c, src = statistics.median(by_version[key[:2]]), "same (backend, version), fit systems' median"
        else:
            how["no constant for its (backend, version)"] += 1
            continue
        how[src] += 1
        r["tc_fit_tpot_ms"] = r["tc_tpot_ms"] + c
        r["tc_fit_tpot_err"] = rel_err(r["tc_fit_tpot_ms"], r["tpot_ms"])
    return how


def write_fit_yaml(path: Path, constants: dict, fit_on: list[str]) -> None:
    lines = ["# Engine overhead per decode step, fitted by benchmarks/accuracy_silicon.py --fit on the silicon rows of",
             f"# systems {', '.join(fit_on)} (aiconfigurator-core systems/silicon_sample.csv): the value minimising the",
             "# median |TPOT error| of tracecost's prediction; one constant per (backend, engine version, system).",
             "step_overhead_ms:"]
    for (backend, version, system), c in constants.items():
        lines.append(f"  - {{backend: {backend}, version: '{version}', system: {system}, "
                     f"ms: {c['step_overhead_ms']:.4f}, rows: {c['rows']}}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- run -----------------------------------------------------------------------------------------------------------


def git_describe() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--tags"], capture_output=True,
                         text=True)
    return out.stdout.strip() or "unknown"


COLUMNS = ["id", "mode", "system", "backend", "backend_version", "table_version", "model_path", "model",
           "aic_table_version", "source_kind", "isl", "osl", "isl_used", "osl_used", "gemm_quant", "moe_quant", "quant", "concurrency",
           "layout", "rule", "split", "ttft_ms", "tpot_ms", "tc_mode", "tc_ttft_ms", "tc_tpot_ms", "tc_ttft_err",
           "tc_tpot_err", "aic_ttft_ms", "aic_tpot_ms", "aic_ttft_err", "aic_tpot_err", "tc_fit_tpot_ms",
           "tc_fit_tpot_err", "tc_reason", "aic_reason"]


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
    ap.add_argument("--fit-on", default=None, help="SYSTEM[,SYSTEM]: rows of these systems are fit rows")
    ap.add_argument("--fit", action="store_true", help="fit one step overhead per (backend, version, system)")
    ap.add_argument("--out", default="accuracy_silicon", help="file stem under benchmarks/results/")
    args = ap.parse_args()
    if args.fit and not args.fit_on:
        ap.error("--fit needs --fit-on SYSTEMS (constants are fitted on one part and reported on the rest)")
    path = args.csv or silicon_csv()
    if not path.exists():
        ap.error(f"no silicon CSV at {path}")
    start = time.perf_counter()
    raw = read_rows(path)
    mapped = [map_row(row) for row in raw]
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
    t0 = time.perf_counter()
    for i, m in enumerate(mapped, 1):
        without_fp4(m)
        r = {k: getattr(m, k) for k in COLUMNS if hasattr(m, k) and k not in ("layouts",)}
        r["layout"] = layout_text(m)
        r["split"] = ("fit" if m.system in fit_on else "held-out") if fit_on else ""
        if m.no_layout:
            r["tc_reason"] = r["aic_reason"] = m.no_layout
        elif args.no_tracecost:
            r["tc_reason"] = "skipped (--no-tracecost)"
        else:
            r.update(price_tracecost(tc, m))
        rows.append(r)
        if i % 250 == 0 or i == len(mapped):
            log(f"  tracecost: {i}/{len(mapped)} rows, {time.perf_counter() - t0:.0f} s")
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

    constants, how = {}, Counter()
    if args.fit:
        constants = fit_constants([r for r in rows if r["split"] == "fit"])
        how = apply_constants(rows, constants)
        write_fit_yaml(RESULTS / "engine_overhead_fit.yaml", constants, fit_on)

    RESULTS.mkdir(parents=True, exist_ok=True)
    csv_path = RESULTS / f"{args.out}_rows.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    md = summary(rows, args, path, fit_on, constants, how, tc_s, aic_s, time.perf_counter() - start)
    md_path = RESULTS / f"{args.out}.md"
    md_path.write_text(md, encoding="utf-8")
    print(md)
    log(f"wrote {csv_path} and {md_path}")


def summary(rows, args, path, fit_on, constants, how, tc_s, aic_s, total_s) -> str:
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
            lines.append(figure_line(f"{split} ({'on ' if split == 'fit' else 'not '}{','.join(fit_on)}), "
                                     f"within the rules", figures([r for r in clean if r["split"] == split])))
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
    for key in sorted(groups):
        lines.append(figure_line(" ".join(key), figures(groups[key])))
    if constants:
        lines += ["", "## Fitted step overhead (tracecost TPOT + c), fit on " + ", ".join(fit_on), "",
                  "| backend | version | system | c ms | rows |", "|---|---|---|---|---|"]
        for (b, v, s), c in constants.items():
            lines.append(f"| {b} | {v} | {s} | {c['step_overhead_ms']:.3f} | {c['rows']} |")
        lines += ["", "How rows found their constant: " + "; ".join(f"{k}: {v}" for k, v in how.items()), "",
                  "| rows | n with a constant | TPOT tc | TPOT tc + c |", "|---|---|---|---|"]
        for split in ("fit", "held-out"):
            sub = [r for r in clean if r["split"] == split and r.get("tc_fit_tpot_err") is not None]
            before = [abs(r["tc_tpot_err"]) for r in sub]
            after = [abs(r["tc_fit_tpot_err"]) for r in sub]
            lines.append(f"| {split} | {len(sub)} | {fmt((pct(before, .5), pct(before, .9)))} | "
                         f"{fmt((pct(after, .5), pct(after, .9)))} |")
    return "\n".join(lines) + "\n"


def _reason_class(reason: str) -> str:
    """A reason without its row-specific numbers, so the counts group."""
    text = re.sub(r"\d+(\.\d+)?", "N", reason or "")
    return text[:140]


if __name__ == "__main__":
    main()
