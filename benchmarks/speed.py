"""Sweep speed: (batch, ISL, OSL, TP) points priced per second after one trace, and one whole estimate.

    .venv/bin/python benchmarks/speed.py [MODEL] [--system h200_sxm]

Traces the model once (or reads the trace cache), matches it once, then times `costmodel.estimate.sweep` over a
grid of 10 batches x 10 ISLs x 25 OSLs x 4 TPs (10,000 points) with a cold pricing cache: every table lookup it
needs is made inside the timed region. Also times a second sweep on the warm caches and one full `estimate`
(breakdown, memory, largest batch) for reference.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_args import model_arguments  # noqa: E402  (beside this script)


def main() -> None:
    args = model_arguments(__doc__.splitlines()[0])

    from costmodel.estimate import Estimator, sweep
    from costmodel.parallel import Plan
    from graph.match import match_model
    from graph.model_graph import trace_model

    t0 = time.perf_counter()
    mg = trace_model(args.model)
    t1 = time.perf_counter()
    matched = match_model(mg)
    t2 = time.perf_counter()
    est = Estimator(mg, system=args.system, backend=args.backend, matched=matched)
    # load the tables outside the timed region (lazy parquet reads), at a point off the grid
    est.estimate(Plan(), 3, 100, 10)
    est.pricer._cache.clear()
    for cache in (est._prefill, est._decode_const, est._decode_var):
        cache.clear()
    t3 = time.perf_counter()

    grid = dict(batches=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                isls=[128, 256, 512, 1024, 2048, 3000, 4096, 8192, 16384, 32768],
                osls=[16, 32, 64, 100, 128, 200, 256, 300, 500, 600, 768, 1000, 1024, 1500, 2000, 2048, 3000,
                      4096, 5000, 6000, 8192, 10000, 12000, 16384, 20000],
                tps=[1, 2, 4, 8])
    n_points = 10 * 10 * 25 * 4
    start = time.perf_counter()
    rows = sweep(mg, **grid, system=args.system, estimator=est)
    cold = time.perf_counter() - start
    assert len(rows) == n_points and not any("error" in r for r in rows), rows[:1]
    start = time.perf_counter()
    sweep(mg, **grid, system=args.system, estimator=est)
    warm = time.perf_counter() - start
    start = time.perf_counter()
    est.estimate(Plan(tp=2), 8, 4096, 1024)
    one = time.perf_counter() - start

    print(f"model {args.model} on {args.system}: trace {t1 - t0:.2f} s ({'cache' if mg.from_cache else 'traced'}), "
          f"match {t2 - t1:.2f} s, database open + table load {t3 - t2:.2f} s")
    print(f"sweep of {n_points} (batch, ISL, OSL, TP) points, cold pricing caches: {cold:.3f} s = "
          f"{n_points / cold:,.0f} points/s")
    print(f"same sweep again, warm caches: {warm:.3f} s = {n_points / warm:,.0f} points/s")
    print(f"one full estimate (breakdown, memory, largest batch): {one * 1e3:.1f} ms")
    print(f"cached queries: {len(est.pricer._cache)}")


if __name__ == "__main__":
    main()
