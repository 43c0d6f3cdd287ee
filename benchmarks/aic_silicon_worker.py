"""aiconfigurator's TTFT and TPOT for many silicon rows in one process (benchmarks/accuracy_silicon.py runs it).

    /tmp/aic-venv/bin/python benchmarks/aic_silicon_worker.py REQUESTS.jsonl ANSWERS.jsonl

Runs under aiconfigurator's own venv and is never imported by the project. Each request line is
{"id": ROW_ID, "estimate": {...}}, the keyword arguments of aiconfigurator.cli.api.cli_estimate, the function
`aiconfigurator cli estimate` calls with its parsed options (the options it leaves unset take the same defaults
there). Each answer line is {"id", "version", "ttft_ms", "tpot_ms"} or {"id", "version", "reason"}, `version` being
the perf database version priced. aiconfigurator keeps its perf databases and system specs per process, so the
import and each (system, backend, version) load are paid once, not once per row. A request without a
backend_version gets aiconfigurator's default, resolved here once per (system, backend) by the function
cli_estimate calls for it (which re-reads every database's metadata, about 3 s, on each call). The environment is
the caller's (HF_HUB_OFFLINE, AIC_ALLOW_UNLISTED_VERSIONS).
"""
from __future__ import annotations

import functools
import json
import logging
import sys
import time


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: aic_silicon_worker.py REQUESTS.jsonl ANSWERS.jsonl")
    from aiconfigurator.cli.api import cli_estimate
    from aiconfigurator.logging_utils import setup_logging
    from aiconfigurator.sdk.perf_database import get_latest_database_version

    @functools.cache
    def default_version(system: str, backend: str) -> str | None:
        return get_latest_database_version(system=system, backend=backend)

    setup_logging(level=logging.ERROR, no_color=True)  # as `cli estimate --log-level ERROR --no-color`
    with open(sys.argv[1], encoding="utf-8") as fh:
        requests = [json.loads(line) for line in fh if line.strip()]
    start = time.perf_counter()
    with open(sys.argv[2], "w", encoding="utf-8") as out:
        for i, req in enumerate(requests, 1):
            est = dict(req["estimate"])
            if est.get("backend_version") is None:
                est["backend_version"] = default_version(est["system_name"], est["backend_name"])
            answer = {"id": req["id"], "version": est["backend_version"]}
            try:
                res = cli_estimate(**est)
                answer.update(ttft_ms=float(res.ttft), tpot_ms=float(res.tpot))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # one row's failure (a Rust panic too) is its reason, like a CLI exit
                first = (str(exc).strip().splitlines() or [""])[0]
                answer["reason"] = f"{type(exc).__name__}: {first}"[:300]
            out.write(json.dumps(answer) + "\n")
            out.flush()
            if i % 100 == 0 or i == len(requests):
                print(f"  aiconfigurator worker: {i}/{len(requests)} rows, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
