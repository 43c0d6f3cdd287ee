"""Run collectors over built-in grids and case files, and write the tables.

``run_collect(ops, *, system, device, dry_run, cases_file, out_dir, resume, progress) -> summary dict``

Output: ``<out>/<system>/<family>/<backend>/<version>/<table>.parquet`` with a ``collection_meta.yaml``
beside it; ``<out>`` is ``out_dir`` or this repo's ``systems/data`` (a dry run with no ``out_dir`` writes
to a fresh temp dir, never into systems/data; a CPU run that is not a dry run needs ``out_dir``). backend is
"torch" and version ``torch.__version__``, except for NCCL tables (``comm/nccl/<NCCL version>``, the folder
the database's nccl queries read) and gloo dry-runs (``comm/gloo/<torch version>``). Columns: framework
("torch"), version, device (GPU name), op_name, kernel_source, the table's variant and axis columns, latency
(ms): each table's TableSpec (costmodel.tables.specs), the aiconfigurator-core schema for the tables it has.

An existing table is merged: rows measured again replace the old ones (by the table's key columns), other
rows stay; with ``resume`` the points already present are not measured again. A case that fails (bad
shapes, an op the device lacks, out of memory) is recorded, in the summary and in collection_meta.yaml
(``failures``), and the run goes on. Tables are flushed after each collector and every FLUSH_S seconds, so a
killed run keeps what it measured and ``resume`` picks up from there.
"""
from __future__ import annotations

import gc
import json
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

SUMMARY_SCHEMA = "tracecost.collect-summary/1"
CASE_SCHEMA = "tracecost.collector-case/1"
FLUSH_S = 60.0
MAX_ERROR_CHARS = 500


@dataclass
class _Table:
    collector: object
    family: str
    backend: str
    version: str
    path: Path
    existing: object = None  # DataFrame or None
    keys: set = field(default_factory=set)
    new_rows: list = field(default_factory=list)
    measured: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list = field(default_factory=list)
    dirty: bool = False


def _user_error(message: str):
    from core.errors import UserError

    return UserError(message)


def read_cases(path) -> list[dict]:
    """Cases from a JSON file: a list of objects, each with "kind" (a collector name or group, "aten" for
    trace's cases) and its fields (at top level or under "params"), optionally "schema" = CASE_SCHEMA."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise _user_error(f"cases file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise _user_error(f"cannot read cases file {path}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("cases"), list):
        data = data["cases"]
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise _user_error(f"cases file {path} is not a JSON list of case objects")
    for i, case in enumerate(data):
        schema = case.get("schema")
        if schema is not None and schema != CASE_SCHEMA:
            raise _user_error(f"cases file {path}: case {i} has schema {schema!r}, expected {CASE_SCHEMA!r}")
        if not isinstance(case.get("kind"), str):
            raise _user_error(f"cases file {path}: case {i} has no \"kind\"")
    return data


def _case_params(case: dict) -> dict:
    params = dict(case.get("params") or {})
    for k, v in case.items():
        if k not in ("params", "schema", "kind"):
            params.setdefault(k, v)
    return params


def _collector_for_kind(kind: str, case: dict):
    from collector.registry import COLLECTORS

    if kind in COLLECTORS:
        return COLLECTORS[kind]
    if kind == "attention":  # group name: pick by phase
        phase = case.get("phase", "context")
        return COLLECTORS["generation_attention" if phase in ("generation", "decode") else "context_attention"]
    hits = [c for c in COLLECTORS.values() if c.group == kind]
    if len(hits) == 1:
        return hits[0]
    raise ValueError(f"unknown case kind {kind!r}; known: {', '.join(sorted(COLLECTORS))}")


def _short(case: dict, limit: int = 90) -> str:
    skip = {"schema", "symbolic_shapes", "sizes", "module", "model"}
    text = " ".join(f"{k}={v}" for k, v in case.items() if k not in skip)
    text = text.replace(" ", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    if "out of memory" in text.lower():
        text = "out of memory: " + text
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def _recover(ctx) -> None:
    gc.collect()
    if ctx.is_cuda:
        import torch

        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        torch.cuda.empty_cache()


def run_collect(
    ops=None,
    *,
    system: str = "h100_sxm",
    device: str = "cuda",
    dry_run: bool = False,
    cases_file=None,
    out_dir=None,
    resume: bool = False,
    progress: Callable | None = None,
) -> dict:
    """Measure the built-in grids of `ops` (names or groups, a list or a comma string; None = every collector
    when no cases_file is given, none when one is) and the cases of `cases_file`, on `device` ("cuda",
    "cuda:N" or "cpu"), writing tables for `system`. progress(done, total, eta_s, label) is called before
    each case and once at the end (eta_s None until one case has finished)."""
    from collector import catalog, grids
    from collector.timing import environment, make_context
    from costmodel.systems import load_system
    from costmodel.tables.roots import OWN_DATA_ROOT

    t_start = time.monotonic()
    sys_spec = load_system(system)
    if out_dir is None:
        if dry_run:
            out_root = Path(tempfile.mkdtemp(prefix="tracecost-collect-dry-run-"))
        elif device == "cpu":
            raise _user_error("a CPU run that is not --dry-run measures the CPU, not the system's GPU: give --out DIR")
        else:
            out_root = OWN_DATA_ROOT
    else:
        out_root = Path(out_dir).expanduser()
        if out_root.exists() and not out_root.is_dir():
            raise _user_error(f"--out {out_root} is not a directory")
    selected = catalog.select(ops) if ops is not None else ([] if cases_file else catalog.select(None))
    file_cases = read_cases(cases_file) if cases_file else []
    ctx = make_context(device, dry_run, sys_spec.l2_bytes)
    env = environment(ctx)

    tables: dict[str, _Table] = {}
    failures: list[dict] = []
    work: dict[str, list[tuple[dict, dict]]] = {}  # collector name -> [(case, row)]

    def table_for(col) -> _Table:
        tab = tables.get(col.name)
        if tab is None:
            backend, version = col.backend_version(ctx)
            path = out_root / sys_spec.name / col.family / backend / version / f"{col.table}.parquet"
            tab = tables[col.name] = _Table(col, col.family, backend, version, path)
            if path.exists():
                import pandas as pd

                try:
                    tab.existing = pd.read_parquet(path)
                except Exception as exc:
                    raise _user_error(f"corrupt table {path}: {exc}") from None
                missing = [c for c in col.key if c not in tab.existing.columns]
                if missing:
                    raise _user_error(f"table {path} lacks key column(s) {', '.join(missing)}")
                tab.keys = {col.key_of(r) for r in tab.existing[list(col.key)].to_dict("records")}
        return tab

    def fail(col, case, exc, tab=None):
        entry = {"collector": col.name if col else None, "table": col.table if col else None,
                 "case": _short(case, 400), "error": _error_text(exc)}
        failures.append(entry)
        if tab is not None:
            tab.failed += 1
            tab.failures.append(entry)

    seen: set = set()

    def add(col, case):
        try:
            row = col.row(case, ctx)
        except Exception as exc:
            fail(col, case, exc, table_for(col))
            return
        tab = table_for(col)
        key = col.key_of(row)
        if (col.name, key) in seen:
            return
        seen.add((col.name, key))
        if resume and key in tab.keys:
            tab.skipped += 1
            return
        work.setdefault(col.name, []).append((case, row))

    for col in selected:
        for case in grids.builtin(col.name, ctx):
            add(col, case)
    for raw in file_cases:
        case = _case_params(raw)
        try:
            col = _collector_for_kind(raw["kind"], case)
        except ValueError as exc:
            fail(None, raw, exc)
            continue
        add(col, case)

    total = sum(len(v) for v in work.values())
    done = 0
    t_run = time.monotonic()
    last_flush = time.monotonic()

    def tick(label: str):
        if progress is None:
            return
        elapsed = time.monotonic() - t_run
        eta = elapsed / done * (total - done) if done else None
        progress(done, total, eta, label)

    def record(tab, row, latency_ms):
        import math

        if not isinstance(latency_ms, (int, float)) or not math.isfinite(latency_ms) or latency_ms <= 0:
            raise RuntimeError(f"no valid latency measured ({latency_ms!r})")
        tab.new_rows.append({"framework": "torch", "version": tab.version, "device": ctx.device_name, **row,
                             "latency": float(latency_ms)})
        tab.measured += 1
        tab.dirty = True

    try:
        for name, items in work.items():
            col = catalog.COLLECTORS[name]
            tab = tables[name]
            if col.batch is not None:
                tick(f"{name}: {len(items)} cases")
                try:
                    results = col.batch([c for c, _ in items], ctx)
                except Exception as exc:
                    results = [exc] * len(items)
                for (case, row), result in zip(items, results):
                    try:
                        if isinstance(result, BaseException):
                            raise result
                        record(tab, row, result)
                    except Exception as exc:
                        fail(col, case, exc, tab)
                    done += 1
            else:
                for case, row in items:
                    tick(f"{name} {_short(row, 70)}")
                    try:
                        record(tab, row, col.measure(case, ctx))
                    except Exception as exc:
                        if _is_oom(exc) or ctx.is_cuda:
                            _recover(ctx)
                        fail(col, case, exc, tab)
                        if os.environ.get("TRACECOST_COLLECT_DEBUG"):
                            traceback.print_exc(file=sys.stderr)
                    done += 1
                    if time.monotonic() - last_flush > FLUSH_S:
                        _flush(tables, ctx, env, sys_spec, dry_run)
                        last_flush = time.monotonic()
            _flush(tables, ctx, env, sys_spec, dry_run)
    finally:
        _flush(tables, ctx, env, sys_spec, dry_run, final=True)
    tick("done")

    table_rows = []
    for tab in tables.values():
        rows = len(tab.keys | {tab.collector.key_of(r) for r in tab.new_rows}) if (tab.new_rows or tab.existing is not None) else 0
        table_rows.append({"collector": tab.collector.name, "table": tab.collector.table, "family": tab.family,
                           "backend": tab.backend, "version": tab.version, "path": str(tab.path),
                           "written": tab.path.exists(), "rows": rows, "measured": tab.measured,
                           "skipped": tab.skipped, "failed": tab.failed})
    return {
        "schema": SUMMARY_SCHEMA,
        "system": sys_spec.name,
        "device": str(ctx.device),
        "device_name": ctx.device_name,
        "dry_run": dry_run,
        "torch": ctx.torch_version,
        "out_dir": str(out_root),
        "ops": [c.name for c in selected],
        "cases_file": str(cases_file) if cases_file else None,
        "cases_in_file": len(file_cases),
        "tables": table_rows,
        "total": total,
        "measured": sum(t.measured for t in tables.values()),
        "skipped": sum(t.skipped for t in tables.values()),
        "failed": len(failures),
        "failures": failures,
        "timing_methods": dict(ctx.methods),
        "features": dict(ctx.features),
        "seconds": round(time.monotonic() - t_start, 3),
    }


def _flush(tables: dict, ctx, env: dict, sys_spec, dry_run: bool, final: bool = False) -> None:
    import pandas as pd

    by_dir: dict[Path, list[_Table]] = {}
    for tab in tables.values():
        if tab.dirty or (final and tab.failures):
            by_dir.setdefault(tab.path.parent, []).append(tab)
    for directory, tabs in by_dir.items():
        directory.mkdir(parents=True, exist_ok=True)
        for tab in tabs:
            if not tab.dirty:
                continue
            col = tab.collector
            new = pd.DataFrame(tab.new_rows)
            frames = []
            if tab.existing is not None and len(tab.existing):
                replaced = {col.key_of(r) for r in tab.new_rows}
                old = tab.existing
                keep = [col.key_of(r) not in replaced for r in old[list(col.key)].to_dict("records")]
                frames.append(old[keep])
            frames.append(new)
            df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else new
            ordered = [c for c in col.column_order if c in df.columns]
            df = df[ordered + [c for c in df.columns if c not in ordered]]
            tmp = tab.path.with_name(f".{tab.path.name}.tmp")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, tab.path)
            tab.existing, tab.new_rows, tab.dirty = df, [], False
            tab.keys = {col.key_of(r) for r in df[list(col.key)].to_dict("records")}
        _write_meta(directory, tabs, ctx, env, sys_spec, dry_run)


def _write_meta(directory: Path, tabs: list, ctx, env: dict, sys_spec, dry_run: bool) -> None:
    import yaml

    path = directory / "collection_meta.yaml"
    meta = {}
    if path.exists():
        try:
            meta = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            meta = {}
    backend, version = tabs[0].backend, tabs[0].version
    meta["schema_version"] = 1
    meta["provenance"] = "dry-run" if dry_run else "collected"
    meta["runtime"] = {"framework": "torch", "version": ctx.torch_version,
                       **({"collective_backend": backend, "collective_version": version}
                          if backend != "torch" else {})}
    meta["collector"] = {"tool": "tracecost collect", "system": sys_spec.name, "dry_run": dry_run,
                         "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    meta["environment"] = env
    meta["environment"]["timing_methods"] = dict(ctx.methods)
    tables = meta.setdefault("tables", {})
    failures = [f for f in meta.get("failures", []) if f.get("table") not in {t.collector.table for t in tabs}]
    for tab in tabs:
        rows = len(tab.existing) if tab.existing is not None else 0
        tables[tab.collector.table] = {"status": "partial" if tab.failures else "complete", "rows": rows,
                                       "measured_last_run": tab.measured, "failed_last_run": tab.failed,
                                       "kernel_sources": sorted(set(tab.existing["kernel_source"]))
                                       if tab.existing is not None and len(tab.existing) else []}
        failures.extend(tab.failures)
    meta["failures"] = failures
    tmp = path.with_name(".collection_meta.yaml.tmp")
    tmp.write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=False))
    os.replace(tmp, path)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_bar(stream=None, width: int = 28) -> Callable:
    """A progress callback drawing one updating line: bar, done/total, ETA, current case."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    state = {"last": 0.0}

    def show(done: int, total: int, eta_s, label: str) -> None:
        now = time.monotonic()
        final = done >= total
        if not tty and not final and now - state["last"] < 5.0:
            return
        state["last"] = now
        filled = int(width * done / total) if total else width
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ETA {_duration(eta_s)}  {label}"
        if tty:
            stream.write("\r\x1b[2K" + line[:160] + ("\n" if final else ""))
        else:
            stream.write(line[:200] + "\n")
        stream.flush()

    return show


def format_summary(summary: dict) -> str:
    """The run in a few lines: where tables went, per table rows measured / skipped / failed, failures."""
    mode = " (dry run)" if summary.get("dry_run") else ""
    lines = [
        f"collected for {summary['system']} on {summary['device_name']} ({summary['device']}){mode}, "
        f"torch {summary['torch']}, in {_duration(summary.get('seconds'))}",
        f"output: {summary['out_dir']}",
    ]
    tables = summary.get("tables", [])
    if tables:
        w = max(len(t["table"]) for t in tables)
        lines.append(f"  {'table':<{w}}  {'backend/version':<24} {'rows':>6} {'new':>6} {'skipped':>7} {'failed':>6}")
        for t in tables:
            bv = f"{t['backend']}/{t['version']}"
            lines.append(f"  {t['table']:<{w}}  {bv:<24} {t['rows']:>6} {t['measured']:>6} {t['skipped']:>7} "
                         f"{t['failed']:>6}")
    else:
        lines.append("  nothing to measure")
    lines.append(f"measured {summary['measured']}, skipped {summary['skipped']} (already measured), "
                 f"failed {summary['failed']}")
    methods = summary.get("timing_methods") or {}
    if methods:
        lines.append("timing: " + ", ".join(f"{k} x{v}" for k, v in sorted(methods.items())))
    failures = summary.get("failures", [])
    for f in failures[:10]:
        lines.append(f"  failed: {f.get('collector') or '?'}: {f['case']}: {f['error']}")
    if len(failures) > 10:
        lines.append(f"  ... {len(failures) - 10} more failures (collection_meta.yaml lists them)")
    return "\n".join(lines)
