"""Whole-process `tracecost trace` time, cold (trace cache empty) and warm, and what depth costs.

    python benchmarks/trace_speed.py [--repeat 1]

Prints, for DeepSeek-V3 (bundled config, 61 layers, 256 experts) and Llama-3.1-405B: the wall time of a new
`tracecost trace MODEL --json` process with an empty cache and again with it warm (targets: cold <= 8 s,
warm <= 3 s). Then the same config at 2 and at 128 layers (Llama-3.1-8B's, built with transformers' default
layer fields), cold, and their ratio (target <= 1.3), with a check that the 128-layer per-phase totals are 64x
the 2-layer ones for the per-layer ops.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("deepseek-ai/DeepSeek-V3", "meta-llama/Llama-3.1-405B")


def run_trace(target: str, cache: str) -> tuple[float, dict]:
    env = dict(os.environ, TRACECOST_CACHE=cache, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), "trace", target, "--json", "-q"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"trace {target} failed: {proc.stderr.strip()}")
    return wall, json.loads(proc.stdout)


def depth_config(layers: int, folder: Path) -> Path:
    from tracer.source import resolve

    config = dict(resolve("meta-llama/Llama-3.1-8B").config, num_hidden_layers=layers)
    path = folder / f"llama-{layers}-layers.json"
    path.write_text(json.dumps(config))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs per figure; the best is printed")
    args = ap.parse_args()
    print(f"{'model':<32}{'cold s':>8}{'warm s':>8}")
    for model in MODELS:
        colds, warms = [], []
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as cache:
                colds.append(run_trace(model, cache)[0])
                warms.append(run_trace(model, cache)[0])
        print(f"{model:<32}{min(colds):>8.2f}{min(warms):>8.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {}
        for layers in (2, 128):
            path = depth_config(layers, folder)
            times = []
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as cache:
                    wall, data = run_trace(str(path), cache)
                    times.append(wall)
            results[layers] = (min(times), data)
    (t2, d2), (t128, d128) = results[2], results[128]
    print(f"\ndepth: 2 layers {t2:.2f} s, 128 layers {t128:.2f} s, ratio {t128 / t2:.2f} (target <= 1.3)")
    for phase in ("prefill", "decode"):
        f2, f128 = d2["phases"][phase]["total"]["flops"], d128["phases"][phase]["total"]["flops"]
        print(f"  {phase} FLOPs at the default sizes: 2 layers {f2:,}  128 layers {f128:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
