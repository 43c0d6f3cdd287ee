"""`tracecost plan` side by side with NVIDIA aiconfigurator 0.12's `cli default` on the same cases.

    .venv/bin/python benchmarks/plan_vs_aiconfigurator.py [--only NAME] [--out benchmarks/results]

For each case (8 GPUs, ISL 4000, OSL 500, TTFT <= 1000 ms, TPOT <= 50 ms, backend trtllm) it runs
``aiconfigurator cli default`` (its own venv, /tmp/aic-venv, see parity_aiconfigurator.py) and ``tracecost plan``
as whole processes, tracecost with the quantization, KV dtype and table version aiconfigurator chose (read from its
saved exp_config.yaml) and its trace cache warm (one run first). It reports per mode the best tokens/s/GPU at the
SLA of each tool and the configuration chosen, the candidates each evaluated (aiconfigurator: the results its log
counts per experiment; tracecost: the candidates it priced), the whole-process times, and one plot per case with
both tools' Pareto fronts (matplotlib, the `plot` extra). Then `tracecost plan` on architectures aiconfigurator
refuses (a Mamba model, Gemma-3 with sliding windows), with the launch files it writes.

Results go to <out>/plan_vs_aiconfigurator.md and <out>/plan_vs_aiconfigurator_<case>.png. Text after the line
NOTES_MARK in an existing report (the explanation of the differences, written by hand) is kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parity_aiconfigurator import aic_model_dir, ensure_aiconfigurator  # noqa: E402  (beside this script)

SHARED = ROOT.parent / "shared" / "configs"
SLA = {"isl": 4000, "osl": 500, "ttft": 1000, "tpot": 50}
GPUS = 8
# name, tracecost model, aiconfigurator model, system
CASES = [
    ("DeepSeek-V3", "deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3", "h200_sxm"),
    ("Qwen3-32B", "Qwen/Qwen3-32B", "Qwen/Qwen3-32B", "h200_sxm"),
    ("Llama-3.1-70B", "meta-llama/Llama-3.1-70B", "meta-llama/Meta-Llama-3.1-70B", "h100_sxm"),
]
REFUSED = [
    ("Falcon-Mamba-7B", SHARED / "derived" / "tiiuae--falcon-mamba-7b.json"),
    ("Gemma-3-27B", SHARED / "google--gemma-3-27b-it.json"),
]
AIC_QUANT = {"bfloat16": "bf16", "fp8": "fp8", "fp8_block": "fp8_block", "nvfp4": "nvfp4", "int4_wo": "int4_wo"}
NOTES_MARK = "<!-- notes: kept when the report is written again -->"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


# -- aiconfigurator ------------------------------------------------------------------------------------------------


def _aic_cmd(exe: Path, model_dir: str, system: str, save: str) -> list[str]:
    return [str(exe), "cli", "default", "--model-path", model_dir, "--total-gpus", str(GPUS), "--system", system,
            "--backend", "trtllm", "--isl", str(SLA["isl"]), "--osl", str(SLA["osl"]), "--ttft", str(SLA["ttft"]),
            "--tpot", str(SLA["tpot"]), "--no-color", "--save-dir", save]


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def _aic_config(row: dict, mode: str) -> str:
    if mode == "agg":
        return f"{row['parallel']} bs {row['bs']} x {int(GPUS // int(row['num_total_gpus']))}, conc {row['concurrency']}"
    return (f"{row['(p)workers']} x prefill {row['(p)parallel']} (bs {row['(p)bs']}) + {row['(d)workers']} x decode "
            f"{row['(d)parallel']} (bs {row['(d)bs']}), conc {row['concurrency']}")


def run_aic(exe: Path, model: str, system: str) -> dict:
    save = tempfile.mkdtemp(prefix="aic-plan-")
    start = time.perf_counter()
    proc = subprocess.run(_aic_cmd(exe, aic_model_dir(model), system, save), capture_output=True, text=True,
                          env=_env())
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    counts = {m: int(n) for m, n in re.findall(r"Experiment (\w+) completed with (\d+) results", out)}
    found = sorted(Path(save).glob("*/"))
    if proc.returncode or not found:
        err = [l for l in out.splitlines() if "Error" in l or "error" in l or "not supported" in l.lower()]
        return {"error": (err or out.strip().splitlines() or ["no output"])[-1].split(" Supported ")[0][:300],
                "wall_s": wall}
    run_dir = found[0]
    result = {"wall_s": wall, "counts": counts, "best": {}, "front": {}, "quant": None}
    for mode in ("agg", "disagg"):
        top = _rows(run_dir / mode / "best_config_topn.csv")
        front = _rows(run_dir / mode / "pareto.csv")
        result["best"][mode] = ({"tokens_per_s_per_gpu": float(top[0]["tokens/s/gpu"]),
                                 "tokens_per_s_per_user": float(top[0]["tokens/s/user"]),
                                 "ttft_ms": float(top[0]["ttft"]), "tpot_ms": float(top[0]["tpot"]),
                                 "config": _aic_config(top[0], mode)} if top else None)
        result["front"][mode] = sorted((float(r["tokens/s/user"]), float(r["tokens/s/gpu"])) for r in front
                                       if float(r["ttft"]) <= SLA["ttft"])
        exp = run_dir / mode / "exp_config.yaml"
        if exp.exists() and result["quant"] is None:
            cfg = yaml.safe_load(exp.read_text())
            side = "" if mode == "agg" else "decode_"
            result["quant"] = {"gemm": cfg.get(f"{side}gemm_quant_mode"), "kv": cfg.get(f"{side}kvcache_quant_mode"),
                               "version": cfg.get(f"{side}backend_version")}
    return result


# -- tracecost -----------------------------------------------------------------------------------------------------


def _plan_cmd(model: str, system: str, extra: list[str]) -> list[str]:
    return [sys.executable, "cli.py", "plan", model, "--gpus", str(GPUS), "--system", system, "--isl", str(SLA["isl"]),
            "--osl", str(SLA["osl"]), "--ttft", str(SLA["ttft"]), "--tpot", str(SLA["tpot"]), "-q", "--json", *extra]


def run_ours(model: str, system: str, extra: list[str]) -> dict:
    cmd = _plan_cmd(model, system, extra)
    subprocess.run(cmd, cwd=ROOT, capture_output=True, env=_env())   # warm the trace cache
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    wall = time.perf_counter() - start
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1], "wall_s": wall}
    return {"report": json.loads(proc.stdout), "wall_s": wall, "command": "tracecost " + " ".join(cmd[2:])}


def _ours_best(report: dict, mode: str) -> dict | None:
    from render import describe

    c = report["best"].get(mode)
    return c and {**{k: c[k] for k in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "ttft_ms", "tpot_ms")},
                  "config": f"{describe(c)}, conc {c['concurrency']}"}


def plot_case(name: str, ours: dict, aic: dict, path: Path) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    from plot import plan_series, plot_fronts

    series = plan_series(ours["report"], prefix="tracecost ")
    for mode in ("agg", "disagg"):
        best = aic["best"].get(mode)
        series.append({"label": f"aiconfigurator {mode}", "points": aic["front"].get(mode, []),
                       "chosen": (best["tokens_per_s_per_user"], best["tokens_per_s_per_gpu"]) if best else None,
                       "style": "x--", "color": {"agg": "tab:green", "disagg": "tab:red"}[mode]})
    r = ours["report"]
    plot_fronts(series, str(path), title=f"{name} on {GPUS} x {r['system']} (trtllm {r['backend_version']}), ISL "
                f"{SLA['isl']} OSL {SLA['osl']}, TTFT <= {SLA['ttft']} ms", tpot_ms=SLA["tpot"])
    return True


# -- report --------------------------------------------------------------------------------------------------------


def _fmt(b: dict | None) -> str:
    if not b:
        return "none | - | -"
    return (f"{b['tokens_per_s_per_gpu']:.1f} | {b['tokens_per_s_per_user']:.1f} / {b['ttft_ms']:.0f} / "
            f"{b['tpot_ms']:.1f} | {b['config']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help="run only the case of this name")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe = ensure_aiconfigurator()
    lines = ["# `tracecost plan` vs aiconfigurator `cli default`", "",
             f"Generated by `benchmarks/plan_vs_aiconfigurator.py`: {GPUS} GPUs, ISL {SLA['isl']}, OSL {SLA['osl']}, "
             f"TTFT <= {SLA['ttft']} ms, TPOT <= {SLA['tpot']} ms, backend trtllm. tracecost runs with the "
             "quantization, KV dtype and trtllm table version aiconfigurator chose; both as whole processes on this "
             "machine's CPU (tracecost's trace cache warm). tokens/s/GPU is per GPU in use (aiconfigurator's "
             "`tokens/s/gpu` column); per user / TTFT ms / TPOT ms follow it.", ""]
    for name, model, aic_model, system in CASES:
        if args.only and args.only != name:
            continue
        print(f"{name}: aiconfigurator ...", flush=True)
        aic = run_aic(exe, aic_model, system)
        extra = ["--backend", "trtllm"]
        q = aic.get("quant") or {}
        if q.get("gemm") in AIC_QUANT:
            extra += ["--quant", AIC_QUANT[q["gemm"]]]
        if q.get("kv") in AIC_QUANT:
            extra += ["--kv-dtype", AIC_QUANT[q["kv"]]]
        if q.get("version"):
            extra += ["--backend-version", q["version"]]
        print(f"{name}: tracecost plan {' '.join(extra)} ...", flush=True)
        ours = run_ours(model, system, extra)
        lines += [f"## {name} on {GPUS} x {system}", ""]
        if "error" in aic or "error" in ours:
            lines += [f"aiconfigurator: {aic.get('error', 'ok')}; tracecost: {ours.get('error', 'ok')}", ""]
            continue
        r = ours["report"]
        n_aic = sum(aic["counts"].values())
        lines += [f"`{ours['command']}`", "",
                  "| mode | tool | best tok/s/GPU | tok/s/user / TTFT / TPOT | configuration |", "|---|---|---|---|---|"]
        for mode in ("agg", "disagg"):
            lines.append(f"| {mode} | aiconfigurator | {_fmt(aic['best'].get(mode))} |")
            lines.append(f"| {mode} | tracecost | {_fmt(_ours_best(r, mode))} |")
        ratio = ours["wall_s"] / aic["wall_s"]
        ours_counts = ", ".join(f"{m} {r['candidates'][m]}" for m in r["modes"])
        aic_counts = ", ".join(f"{m} {n}" for m, n in aic["counts"].items())
        lines += ["", f"- candidates: aiconfigurator {n_aic} ({aic_counts} results in its log); tracecost "
                      f"{r['candidates']['total']} ({ours_counts}), {r['candidates']['meeting_sla']} meeting the SLA",
                  f"- whole process: aiconfigurator {aic['wall_s']:.1f} s, tracecost {ours['wall_s']:.2f} s "
                  f"({ratio:.2f}x)",
                  f"- Pareto points (TTFT met): aiconfigurator agg {len(aic['front']['agg'])}, disagg "
                  f"{len(aic['front']['disagg'])}; tracecost agg {len(r['fronts']['agg'])}, disagg "
                  f"{len(r['fronts']['disagg'])}"]
        png = out / f"plan_vs_aiconfigurator_{name}.png"
        if plot_case(name, ours, aic, png):
            lines += ["", f"![{name}]({png.name})"]
        lines.append("")
    lines += ["## Architectures aiconfigurator refuses", "",
              "| model | aiconfigurator `cli default` | tracecost best (overall) | tok/s/GPU | launch files |",
              "|---|---|---|---|---|"]
    for name, config in REFUSED:
        if args.only and args.only != name:
            continue
        if not config.exists():
            lines.append(f"| {name} | - | {config} absent | - | - |")
            continue
        print(f"{name}: aiconfigurator, tracecost ...", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "config.json").write_text(config.read_text())
            aic = run_aic(exe, folder, "h200_sxm")
        save = tempfile.mkdtemp(prefix="plan-launch-")
        ours = run_ours(str(config), "h200_sxm", ["--save", save, "--force"])
        refused = aic.get("error", "accepted")
        if "error" in ours:
            lines.append(f"| {name} | {refused} | {ours['error']} | - | - |")
            continue
        best = ours["report"]["best"]["overall"]
        lines.append(f"| {name} | {refused} | {_ours_best(ours['report'], best['mode'])['config']} | "
                     f"{best['tokens_per_s_per_gpu']:.1f} | {', '.join(ours['report']['saved'])} |")
    lines += [""]
    report_path = out / "plan_vs_aiconfigurator.md"
    notes = ""
    if report_path.exists() and NOTES_MARK in report_path.read_text():
        notes = report_path.read_text().split(NOTES_MARK, 1)[1]
    report_path.write_text("\n".join(lines) + "\n" + NOTES_MARK + notes)
    print(f"wrote {report_path}")


if __name__ == "__main__":
    main()
