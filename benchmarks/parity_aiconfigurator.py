"""Parity with NVIDIA aiconfigurator 0.12: TTFT and TPOT of the same cases, side by side.

    .venv/bin/python benchmarks/parity_aiconfigurator.py [--points 1x1024x128,16x4096x512] [--only NAME]

aiconfigurator is installed only for this benchmark, into its own venv (/tmp/aic-venv, created if missing:
``python3 -m venv /tmp/aic-venv && /tmp/aic-venv/bin/pip install aiconfigurator==0.12.0 torch==2.13.0``). Each case
runs ``aiconfigurator cli estimate --estimate-mode static`` (one batch, no in-flight batching: the same definition
as tracecost's estimate) with ``--detail time`` for its per-op breakdown, and tracecost's ``estimate`` on the same
model, system (h200_sxm), backend (trtllm) and backend version (the one aiconfigurator reports), batch, ISL, OSL and
parallelism. For a difference over 15% the output lists, per op category (GEMM, attention, MoE, communication,
memory-bound), aiconfigurator's and tracecost's milliseconds, so the ops that cause it are visible.

Whole-process time: for the first case it also times ``python -c '<trace + estimate>'`` of tracecost (trace cache
warm, a fresh interpreter) against the aiconfigurator process.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from costmodel.parallel import block_of  # noqa: E402

AIC_VENV = Path("/tmp/aic-venv")
AIC_VERSION = "0.12.0"
THRESHOLD = 0.15

# name, tracecost model, aiconfigurator model, plan (tp, pp, ep, dp), dense?
CASES = [
    ("Llama-3.1-8B TP1", "meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B", (1, 1, 1, 1), True),
    ("Qwen3-32B TP2", "Qwen/Qwen3-32B", "Qwen/Qwen3-32B", (2, 1, 1, 1), True),
    ("Mixtral-8x7B TP4", "mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-v0.1", (4, 1, 1, 1), False),
    ("Qwen3-30B-A3B TP1", "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-30B-A3B", (1, 1, 1, 1), False),
    ("DeepSeek-V3 TP8 EP8", "deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3", (8, 1, 8, 1), False),
    ("gpt-oss-120b TP1", "openai/gpt-oss-120b", "openai/gpt-oss-120b", (1, 1, 1, 1), False),
]
CATEGORIES = ("gemm", "attention", "moe", "comm", "memory")


def ensure_aiconfigurator() -> Path:
    exe = AIC_VENV / "bin" / "aiconfigurator"
    if exe.exists():
        return exe
    print(f"installing aiconfigurator=={AIC_VERSION} into {AIC_VENV} ...", flush=True)
    subprocess.run([sys.executable if not shutil.which("python3") else "python3", "-m", "venv", str(AIC_VENV)],
                   check=True)
    subprocess.run([str(AIC_VENV / "bin" / "pip"), "install", "-q", f"aiconfigurator=={AIC_VERSION}",
                    "torch==2.13.0"], check=True)
    return exe


# -- aiconfigurator -----------------------------------------------------------------------------------------------


def aic_model_dir(model: str) -> str:
    """A local folder holding the config aiconfigurator bundles for `model` (it otherwise tries the hub for names
    missing from its support list, which fails offline); the model id itself when it bundles none."""
    stem = model.replace("/", "--")
    found = sorted(AIC_VENV.glob(f"lib/python*/site-packages/aiconfigurator_core/model_configs/{stem}_config.json"))
    if not found:
        return model
    folder = Path("/tmp/aic-models") / stem
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(found[0], folder / "config.json")
    quant = found[0].with_name(f"{stem}_hf_quant_config.json")
    if quant.exists():
        shutil.copyfile(quant, folder / "hf_quant_config.json")
    return str(folder)


def run_aic(exe: Path, model: str, plan, batch: int, isl: int, osl: int) -> dict:
    tp, pp, ep, dp = plan
    moe_tp = tp * dp // ep
    cmd = [str(exe), "cli", "estimate", "--model-path", aic_model_dir(model), "--system", "h200_sxm", "--backend", "trtllm",
           "--estimate-mode", "static", "--batch-size", str(batch), "--isl", str(isl), "--osl", str(osl),
           "--tp-size", str(tp), "--pp-size", str(pp), "--attention-dp-size", str(dp),
           "--moe-tp-size", str(moe_tp), "--moe-ep-size", str(ep), "--detail", "time", "--no-color",
           "--log-level", "WARNING"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    out = proc.stdout + proc.stderr
    ttft = re.search(r"TTFT:\s+([\d.]+) ms", out)
    tpot = re.search(r"TPOT:\s+([\d.]+) ms", out)
    version = re.search(r"Backend:\s+trtllm \(([^)]+)\)", out)
    if proc.returncode or not ttft or not tpot:
        tail = "\n".join(out.strip().splitlines()[-5:])
        return {"error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    phases = {"context": {}, "generation": {}}
    current = None
    for line in out.splitlines():
        m = re.match(r"(Context|Generation) phase \(total", line.strip())
        if m:
            current = m.group(1).lower()
            continue
        m = re.match(r"\s+((?:context|generation)_\S+)\s+([\d.]+) ms", line)
        if m and current:
            phases[current][m.group(1)] = float(m.group(2))
    steps = max(osl - 1, 1)
    phases["generation"] = {k: v / steps for k, v in phases["generation"].items()}  # totals over OSL-1 steps
    return {"ttft_ms": float(ttft.group(1)), "tpot_ms": float(tpot.group(1)),
            "version": version.group(1) if version else None, "ops": phases, "wall_s": wall}


def aic_category(name: str) -> str:
    n = name.split("_", 1)[1]
    if re.search(r"(^|_)ar(_|$)|allreduce|all_reduce|p2p|alltoall|a2a|dispatch|combine|allgather|reduce_scatter", n):
        return "comm"
    if "gemm" in n or "bmm" in n:
        return "gemm"
    if "moe" in n or "expert" in n:
        return "moe"
    if "attention" in n or "mla" in n or "fmha" in n:
        return "attention"
    return "memory"


def ours_category(row: dict, fold: dict) -> str:
    """Our op's category. fold maps a block (as parallel.block_of names it) to a category when aiconfigurator
    prices that block as one op: its MLA module (projections included) or its overlapped MoE (shared experts and
    router included)."""
    t = row["type"]
    if t.startswith("Comm"):
        return "comm"
    folded = fold.get((row["layer_kind"], block_of(row["module"])))
    if folded and t != "Embedding":
        return folded
    return {"Gemm": "gemm", "Attention": "attention", "MLA": "attention", "MoE": "moe"}.get(t, "memory")


def folding(phase_ours: dict, phase_aic: dict) -> dict:
    fold = {}
    names = " ".join(phase_aic)
    for row in phase_ours["ops"]:
        block = (row["layer_kind"], block_of(row["module"]))
        if row["type"] in ("MLA", "Attention") and ("mla_block" in names or "attention_module" in names):
            fold[block] = "attention"
        if row["type"] == "MoE" and "moe_overlap" in names:
            fold[block] = "moe"
    return fold


# -- tracecost -----------------------------------------------------------------------------------------------------


def run_ours(model: str, plan, batch, isl, osl, version):
    from costmodel.estimate import Estimator
    from costmodel.parallel import Plan
    from graph.model_graph import trace_model

    key = (model, version)
    est = _ESTIMATORS.get(key)
    if est is None:
        est = _ESTIMATORS[key] = Estimator(trace_model(model), system="h200_sxm", backend="trtllm", version=version)
    tp, pp, ep, dp = plan
    plan = Plan(tp=tp, pp=pp, ep=ep, dp=dp)
    r = est.estimate(plan, batch, isl, osl)
    # decode copies whose bytes grow with the context: the HF cache's torch.cat left as a copy by the matcher
    copies = [op for op in est.decode_split(plan)[1] if getattr(op, "what", "") == "copy"]
    points = est.decode_points(isl, osl)
    r["cache_copy_ms"] = sum(est.pricer.price(op, {"B": batch, "S": 1, "L": round(L)}).latency_ms * op.count
                             for op in copies for L in points) / len(points)
    return r


_ESTIMATORS: dict = {}


def whole_process_ours(model: str, version: str | None) -> float:
    code = ("from graph.model_graph import trace_model; from costmodel.estimate import estimate; from render import format_estimate; "
            f"print(format_estimate(estimate(trace_model({model!r}), system='h200_sxm', backend='trtllm', "
            f"version={version!r}, batch=1, isl=1024, osl=128)))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True)  # warm the trace cache
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - start


# -- report --------------------------------------------------------------------------------------------------------


def diff(ours: float, theirs: float) -> float:
    return (ours - theirs) / theirs if theirs else float("inf")


def explain(phase_ours: dict, phase_aic: dict, per_step: bool) -> list[str]:
    mine = {c: 0.0 for c in CATEGORIES}
    fold = folding(phase_ours, phase_aic)
    for row in phase_ours["ops"]:
        mine[ours_category(row, fold)] += row["ms"]
    theirs = {c: 0.0 for c in CATEGORIES}
    names = {c: [] for c in CATEGORIES}
    for name, ms in phase_aic.items():
        c = aic_category(name)
        theirs[c] += ms
        names[c].append(f"{name.split('_', 1)[1]} {ms:.3f}")
    lines = [f"      {'category':<10} {'aiconfigurator':>14} {'tracecost':>10} {'diff ms':>9}   (ms{' per step' if per_step else ''})"]
    order = sorted(CATEGORIES, key=lambda c: -abs(mine[c] - theirs[c]))
    for c in order:
        if mine[c] == 0 and theirs[c] == 0:
            continue
        lines.append(f"      {c:<10} {theirs[c]:>14.3f} {mine[c]:>10.3f} {mine[c] - theirs[c]:>+9.3f}")
    for c in order[:2]:
        if abs(mine[c] - theirs[c]) < 0.02 * max(sum(theirs.values()), 1e-9):
            continue
        ours_rows = [r for r in phase_ours["ops"] if ours_category(r, fold) == c][:5]
        lines.append(f"      {c}: aiconfigurator {', '.join(names[c]) or '-'}")
        lines.append(f"      {c}: tracecost " + ", ".join(
            f"{r['module']} {r['shape']} x{r['count']} = {r['ms']:.3f} ({r['provenance']})" for r in ours_rows))
    return lines


NOTES = {
    "memory": "memory-bound work: aiconfigurator prices add+norm and activation kernels from its empirical model; "
              "tracecost prices every fused memory-bound group of the trace by roofline (norms and activations at "
              "least one 2.5 us launch)",
    "attention": "attention: where aiconfigurator prices a whole MLA block from its module table (projections "
                 "included), tracecost sums the block's own kernels (latent projections as GEMMs, the MLA kernel, "
                 "absorbed BMMs, norms) from the op tables; for standard attention both use the same attention tables",
    "comm": "communication: tracecost prices two all-reduces per layer (attention and MoE/MLP block outputs) from "
            "trtllm's custom all-reduce table; aiconfigurator's breakdown for this case shows no separate all-reduce",
    "moe": "MoE: both from moe_perf (tracecost picks power_law_1.01 routing where measured); aiconfigurator's "
           "'moe_overlap' runs the shared experts concurrently with the routed ones, tracecost adds them (router, "
           "shared-expert GEMMs and activation) in sequence",
    "gemm": "GEMMs: the same gemm table; MLA's absorbed per-head BMMs are one batched GEMM in tracecost",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", default="1x1024x128,16x4096x512", help="BATCHxISLxOSL,...")
    ap.add_argument("--only", default=None, help="substring of a case name")
    args = ap.parse_args()
    points = [tuple(int(x) for x in p.split("x")) for p in args.points.split(",")]
    exe = ensure_aiconfigurator()
    print(f"tracecost vs aiconfigurator {AIC_VERSION} (estimate-mode static), h200_sxm, trtllm; diff = "
          f"(tracecost - aiconfigurator) / aiconfigurator; * = over {THRESHOLD:.0%}\n")
    header = (f"{'case':<22} {'B x ISL x OSL':>15} {'TTFT aic':>9} {'ours':>9} {'diff':>7}   "
              f"{'TPOT aic':>9} {'ours':>9} {'diff':>7}")
    print(header)
    print("-" * len(header))
    summary = []
    first_wall = None
    for name, ours_model, aic_model, plan, dense in CASES:
        if args.only and args.only.lower() not in name.lower():
            continue
        for batch, isl, osl in points:
            aic = run_aic(exe, aic_model, plan, batch, isl, osl)
            label = f"{batch}x{isl}x{osl}"
            if "error" in aic:
                print(f"{name:<22} {label:>15}   aiconfigurator failed: {aic['error']}")
                continue
            if first_wall is None:
                first_wall = (ours_model, aic["version"], aic["wall_s"])
            r = run_ours(ours_model, plan, batch, isl, osl, aic["version"])
            d_ttft, d_tpot = diff(r["ttft_ms"], aic["ttft_ms"]), diff(r["tpot_ms"], aic["tpot_ms"])
            flag = lambda d: "*" if abs(d) > THRESHOLD else " "  # noqa: E731
            print(f"{name:<22} {label:>15} {aic['ttft_ms']:>9.3f} {r['ttft_ms']:>9.3f} {d_ttft:>+6.1%}{flag(d_ttft)}  "
                  f"{aic['tpot_ms']:>9.3f} {r['tpot_ms']:>9.3f} {d_tpot:>+6.1%}{flag(d_tpot)}")
            summary.append((name, dense, d_ttft, d_tpot))
            for metric, d, ours_phase, aic_phase in (("TTFT", d_ttft, "prefill", "context"),
                                                     ("TPOT", d_tpot, "decode", "generation")):
                if abs(d) > THRESHOLD:
                    print(f"    {metric} differs by {d:+.1%}; by op category:")
                    lines = explain(r["breakdown"][ours_phase], aic["ops"][aic_phase], metric == "TPOT")
                    print("\n".join(lines))
                    worst = [ln.split()[0] for ln in lines[1:3] if ln.split() and ln.split()[0] in NOTES]
                    for c in worst:
                        print(f"      note: {NOTES[c]}")
                    if metric == "TPOT" and r.get("cache_copy_ms", 0) > 0.05 * r["tpot_ms"]:
                        fixed = r["tpot_ms"] - r["cache_copy_ms"]
                        print(f"      note: {r['cache_copy_ms']:.3f} ms of the step are copies of the whole HF cache "
                              f"(torch.cat, bytes ~ B x L) that the matcher left as memory-bound ops; a serving "
                              f"engine appends the new token in place. Without them TPOT = {fixed:.3f} ms "
                              f"({diff(fixed, aic['tpot_ms']):+.1%}).")
    dense = [max(abs(a), abs(b)) for _, is_dense, a, b in summary if is_dense]
    if dense:
        print(f"\ndense models: largest |diff| {max(dense):.1%} (target 15%)")
    allmax = [max(abs(a), abs(b)) for _, _, a, b in summary]
    if allmax:
        print(f"all cases: {sum(d <= THRESHOLD for d in allmax)} of {len(allmax)} within 15% on both TTFT and TPOT")
    if first_wall:
        model, version, aic_wall = first_wall
        ours_wall = whole_process_ours(model, version)
        print(f"\nwhole process, {model} batch 1 ISL 1024 OSL 128: tracecost trace+estimate (warm trace cache) "
              f"{ours_wall:.2f} s vs aiconfigurator cli estimate {aic_wall:.2f} s ({ours_wall / aic_wall:.0%})")


if __name__ == "__main__":
    main()
