"""aiconfigurator's TTFT and TPOT for many silicon rows in one process (benchmarks/accuracy_silicon.py runs it).

    /tmp/aic-venv/bin/python benchmarks/aic_silicon_worker.py REQUESTS.jsonl ANSWERS.jsonl

Runs under aiconfigurator's own venv and is never imported by the project. Each request line is
{"id": ROW_ID, "estimate": {...}}, the keyword arguments of aiconfigurator.cli.api.cli_estimate, the function
`aiconfigurator cli estimate` calls with its parsed options (the options it leaves unset take the same defaults
there). Each answer line is {"id", "ttft_ms", "tpot_ms"} or {"id", "reason"}. aiconfigurator keeps its perf
databases and system specs per process, so the import and each (system, backend, version) load are paid once, not
once per row. The environment is the caller's (HF_HUB_OFFLINE, AIC_ALLOW_UNLISTED_VERSIONS).
"""
from __future__ import annotations

import json
import logging
import sys
import time


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: aic_silicon_worker.py REQUESTS.jsonl ANSWERS.jsonl")
    from aiconfigurator.cli.api import cli_estimate
    from aiconfigurator.logging_utils import setup_logging

    setup_logging(level=logging.ERROR, no_color=True)  # as `cli estimate --log-level ERROR --no-color`
    with open(sys.argv[1], encoding="utf-8") as fh:
        requests = [json.loads(line) for line in fh if line.strip()]
    start = time.perf_counter()
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for i, req in enumerate(requests, 1):
            try:
                res = cli_estimate(**req["estimate"])
                answer = {"id": req["id"], "ttft_ms": float(res.ttft), "tpot_ms": float(res.tpot)}
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # one row's failure (a Rust panic too) is its reason, like a CLI exit
                first = (str(exc).strip().splitlines() or [""])[0]
                answer = {"id": req["id"], "reason": f"{type(exc).__name__}: {first}"[:300]}
            out.write(json.dumps(answer) + "\n")
            out.flush()
            if i % 100 == 0 or i == len(requests):
                print(f"  aiconfigurator worker: {i}/{len(requests)} rows, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
