"""Coverage: does every architecture trace?

Rows: every model type in transformers' causal-LM mapping (its default config) and every real config in
../shared/configs (skipped when that folder is absent). Each row runs `tracecost trace --json` in its own process
with a time limit, so one crash or hang cannot stop the run. Prints OK / FAILED-with-reason per row and the totals.

    python benchmarks/coverage.py [--jobs 2] [--timeout 300] [--only types|configs] [--match TEXT] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_CONFIGS = ROOT.parent / "shared" / "configs"


def model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def shared_configs() -> list[str]:
    if not SHARED_CONFIGS.is_dir():
        return []
    return sorted(str(p) for p in SHARED_CONFIGS.rglob("*.json"))  # derived/ included


def run_one(target: str, timeout: float, cache: str) -> dict:
    """Trace one row. A bare model type is traced as `tracecost trace <type>` traces it: its default config, with
    tracecost's own repairs (tracer.source), which the row reports."""
    env = dict(os.environ, TRACECOST_CACHE=cache, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return _run_cli(target, timeout, env)


def _repairs(data: dict) -> list[str]:
    """What tracecost repaired in a default config: the origin's "(repaired: ...)" and the note's part that says so."""
    found = re.findall(r"\(repaired: (.*)\)$", data["source"]["origin"])
    found += [part.split(": ", 1)[1] for part in (data.get("note") or "").split("; ")
              if part.startswith("default config repaired")]
    return found


def _run_cli(target: str, timeout: float, env: dict) -> dict:
    cmd = [sys.executable, str(ROOT / "cli.py"), "trace", target, "--json", "-q", "--no-cache"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"target": target, "ok": False, "reason": f"timed out after {timeout:.0f} s", "seconds": timeout}
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit {proc.returncode}"
        return {"target": target, "ok": False, "reason": reason.replace("tracecost: error: ", ""),
                "seconds": seconds}
    data = json.loads(proc.stdout)
    share = min(p["matched_flops_share"] for p in data["phases"].values())
    unsupported = sorted({row["op"] for row in data["unsupported"]})
    return {"target": target, "ok": True, "seconds": seconds, "model_type": data["model_type"],
            "param_count": data["param_count"], "kinds": len(data["layer_plan"]),
            "prefill_flops": data["phases"]["prefill"]["total"]["flops"], "matched_share": share,
            "unsupported": unsupported, "default_config_fixed": _repairs(data)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--only", choices=["types", "configs"])
    ap.add_argument("--match", default="", help="only rows whose name contains this text")
    ap.add_argument("--json", dest="json_out", help="also write the rows as JSON to this file")
    args = ap.parse_args()
    targets = []
    if args.only != "configs":
        targets += [("type", t) for t in model_types()]
    if args.only != "types":
        targets += [("config", c) for c in shared_configs()]
    targets = [(k, t) for k, t in targets if args.match in t]
    with tempfile.TemporaryDirectory() as cache, ThreadPoolExecutor(args.jobs) as pool:
        futures = [(kind, pool.submit(run_one, t, args.timeout, cache)) for kind, t in targets]
        rows = []
        for kind, fut in futures:
            row = {"kind": kind, **fut.result()}
            rows.append(row)
            name = Path(row["target"]).stem if kind == "config" else row["target"]
            fixed = f"  (default config fixed: {', '.join(row['default_config_fixed'])})" \
                if row.get("default_config_fixed") else ""
            if row["ok"]:
                print(f"OK      {kind:<7}{name:<48}{row['param_count']:>18,} params  {row['kinds']} kinds  "
                      f"{row['seconds']:5.1f} s  FLOPs matched {100 * row['matched_share']:6.2f}%  "
                      f"unsupported: {', '.join(row['unsupported']) or '-'}{fixed}", flush=True)
            else:
                print(f"FAILED  {kind:<7}{name:<48}{row['reason'][:200]}{fixed}", flush=True)
    for kind in ("type", "config"):
        sub = [r for r in rows if r["kind"] == kind]
        if sub:
            ok = sum(r["ok"] for r in sub)
            print(f"total {kind}s: {ok}/{len(sub)} traced ({100 * ok / len(sub):.1f}%)")
            traced = [r for r in sub if r["ok"]]
            if traced:
                full = sum(r["matched_share"] >= 1.0 - 1e-9 for r in traced)
                worst = min(traced, key=lambda r: r["matched_share"])
                print(f"  of those traced, 100% of FLOPs matched to cost ops: {full}/{len(traced)} "
                      f"({100 * full / len(traced):.1f}%); lowest {100 * worst['matched_share']:.2f}% "
                      f"({Path(worst['target']).stem}); everything unmatched is in the unsupported report")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
