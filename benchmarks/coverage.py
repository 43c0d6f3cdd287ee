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


def fix_default_config(config: dict) -> list[str]:
    """Repair, in place, what transformers' default config of a bare model type leaves invalid, generically: a size
    left None that transformers' own model code needs as a number and whose meaning is fixed by the other fields
    (head_dim = hidden_size // num_attention_heads; num_key_value_heads = num_attention_heads, plain multi-head
    attention). Applied to sub-configs too. Returns what was changed ("" for nothing). Real configs are never
    touched: this is the benchmark's handling of bare model types only."""
    fixed = []

    def walk(cfg: dict, where: str):
        hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
        if type(hidden) is int and type(heads) is int and heads > 0:
            if "head_dim" in cfg and cfg["head_dim"] is None and hidden % heads == 0:
                cfg["head_dim"] = hidden // heads
                fixed.append(f"{where}head_dim=None->{cfg['head_dim']}")
            if "num_key_value_heads" in cfg and cfg["num_key_value_heads"] is None:
                cfg["num_key_value_heads"] = heads
                fixed.append(f"{where}num_key_value_heads=None->{heads}")
        for key, value in cfg.items():
            if isinstance(value, dict):
                walk(value, f"{where}{key}.")

    walk(config, "")
    return fixed


def default_config_target(model_type: str, folder: str) -> tuple[str, list[str]]:
    """What to trace for a bare model type: the type itself, or a config.json of its repaired default config."""
    from transformers import AutoConfig

    from tracer.source import repair_default_config

    try:
        default = AutoConfig.for_model(model_type)
    except Exception:
        return model_type, []  # tracecost reports why
    config = default.to_dict()
    # tracecost's own repairs of bare model types (as `tracecost trace <model_type>` applies them), then ours
    fixed = repair_default_config(default, config) + fix_default_config(config)
    if not fixed:
        return model_type, []
    path = Path(folder) / "default-configs" / model_type / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, default=str))
    return str(path.parent), fixed


def run_one(target: str, timeout: float, cache: str, traced: str | None = None, fixed: list[str] = ()) -> dict:
    """Trace one row; `traced` is what tracecost is given when it differs from the row's name (a repaired
    default config)."""
    env = dict(os.environ, TRACECOST_CACHE=cache, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    row = _run_cli(target, traced or target, timeout, env)
    if fixed:
        row["default_config_fixed"] = fixed
    return row


def _run_cli(target: str, traced: str, timeout: float, env: dict) -> dict:
    cmd = [sys.executable, str(ROOT / "cli.py"), "trace", traced, "--json", "-q", "--no-cache"]
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
            "unsupported": unsupported}


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
        # default configs are built here, in one thread: transformers' lazy imports are not thread-safe
        plans = [(kind, t, *(default_config_target(t, cache) if kind == "type" else (t, []))) for kind, t in targets]
        futures = [(kind, pool.submit(run_one, t, args.timeout, cache, traced, fixed))
                   for kind, t, traced, fixed in plans]
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
