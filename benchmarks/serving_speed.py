"""Serving-mode speed: one agg estimate (warm: trace cached, tables loaded) and agg sweep points per second.

    .venv/bin/python benchmarks/serving_speed.py [MODEL] [--system h200_sxm]

Traces the model once (or reads the trace cache) and matches it once. Times one full agg `estimate` (the steady
state plus the static breakdown, memory and largest batch) on a fresh Estimator after the tables are loaded
(median of 5 on fresh Estimators, then warm), then `sweep --mode agg` over 8 concurrencies x 5 ISLs x 5 OSLs x
4 TPs (800 points) on a fresh Estimator, cold pricing caches: every table lookup it needs is inside the timed region.
Then disagg: the same concurrencies and lengths (200 points) for one (prefill plan, decode plan) pair, and one full
disagg estimate warm. Also prints, for reference, the simulation's time for the agg point.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_args import model_arguments  # noqa: E402  (beside this script)


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0])

    from costmodel import serving
    from costmodel.estimate import Estimator, sweep
    from costmodel.parallel import Plan
    from graph.match import match_model
    from graph.model_graph import trace_model

    mg = trace_model(args.model)
    matched = match_model(mg)

    def fresh() -> Estimator:
        est = Estimator(mg, system=args.system, backend=args.backend, matched=matched)
        est.estimate(Plan(), 3, 100, 10)   # load the tables (lazy parquet reads) at a point off the grid
        est.pricer._cache.clear()
        return est

    cold = []
    for _ in range(5):
        est = fresh()
        t = time.perf_counter()
        serving.mode_estimate(est, "agg", Plan(), 64, 1024, 128)
        cold.append(time.perf_counter() - t)
    t = time.perf_counter()
    serving.mode_estimate(est, "agg", Plan(), 64, 1024, 128)
    warm = time.perf_counter() - t
    t = time.perf_counter()
    serving.simulate_agg(serving.step_pricer(est, Plan()), 64, 1024, 128)
    simulated = time.perf_counter() - t

    grid = dict(batches=[1, 2, 4, 8, 16, 32, 64, 128], isls=[256, 512, 1024, 2048, 4096],
                osls=[32, 64, 128, 256, 512], tps=[1, 2, 4, 8])
    est = fresh()
    t = time.perf_counter()
    rows = sweep(mg, **grid, system=args.system, estimator=est, mode="agg")
    swept = time.perf_counter() - t
    ok = sum("error" not in r for r in rows)
    # disagg: one (prefill plan, decode plan) pair, the same grid of concurrencies and lengths
    est = fresh()
    disagg_grid = [(b, i, o) for b in grid["batches"] for i in grid["isls"] for o in grid["osls"]]
    t = time.perf_counter()
    for b, i, o in disagg_grid:
        serving.disagg_estimate(est, Plan(tp=2), Plan(tp=4), b, i, o, prefill_workers=2, full=False)
    disagg_s = time.perf_counter() - t
    t = time.perf_counter()
    serving.mode_estimate(est, "disagg", Plan(tp=4), 64, 1024, 128, prefill_plan=Plan(tp=2), prefill_workers=2)
    disagg_one = time.perf_counter() - t
    print(f"{args.model} on {args.system}, backend {est.db.backend} {est.db.version}")
    print(f"agg estimate (C=64, ISL 1024, OSL 128): {statistics.median(cold) * 1e3:.1f} ms on a fresh Estimator "
          f"(tables loaded, pricing caches cold), {warm * 1e3:.1f} ms warm")
    print(f"simulate_agg, same point (reference, 256 requests): {simulated * 1e3:.1f} ms")
    print(f"sweep --mode agg: {len(rows)} points ({ok} priced) in {swept:.2f} s = {len(rows) / swept:,.0f} points/s "
          f"(cold pricing caches)")
    print(f"disagg (prefill 2 x TP2, decode TP4): {len(disagg_grid)} points in {disagg_s:.2f} s = "
          f"{len(disagg_grid) / disagg_s:,.0f} points/s (cold pricing caches); one full estimate "
          f"{disagg_one * 1e3:.1f} ms warm")


if __name__ == "__main__":
    main()
