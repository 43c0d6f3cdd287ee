"""Read the collector's own tables back where the database has no query for them yet: aten_perf (ATen ops
replayed from collector cases)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _root_paths(db_roots) -> list[Path]:
    out = []
    for r in db_roots:
        path = getattr(r, "path", r)  # costmodel.database.DataRoot or a path
        out.append(Path(path).expanduser())
    return out


def _system_folders(system) -> list[str]:
    if isinstance(system, str):
        try:
            from costmodel.systems import load_system

            system = load_system(system)
        except Exception:
            return [system]
    return list(dict.fromkeys(f for f in (system.name, getattr(system, "aiconfigurator_name", None)) if f))


def table_files(db_roots, system, family: str, table: str, backend: str | None = "torch") -> list[Path]:
    """Files of one table, in precedence order: newest version first (PEP 440 order, as the database sorts),
    then root priority (the order of db_roots)."""
    from costmodel.database import version_key

    found = []
    for priority, root in enumerate(_root_paths(db_roots)):
        for folder in _system_folders(system):
            base = root / folder / family
            if not base.is_dir():
                continue
            for path in base.glob(f"*/*/{table}.parquet"):
                b, version = path.parts[-3], path.parts[-2]
                if backend is None or b == backend:
                    found.append((version, priority, path))
    found.sort(key=lambda x: x[1])
    found.sort(key=lambda x: version_key(x[0]), reverse=True)
    return [p for _, _, p in found]


def aten_latency(db_roots: Sequence, system, op: str, shapes, dtype: str | None = None) -> float | None:
    """Measured latency (ms) of an ATen op at exactly these input shapes, from aten_perf tables under
    db_roots (paths or costmodel.database.data_roots() entries), or None. dtype None matches any; several
    rows (dtypes, files) -> the first file in precedence order, then the fastest row."""
    import pandas as pd

    from collector.aten import shapes_key

    key = shapes_key(shapes)
    for path in table_files(db_roots, system, "aten", "aten_perf"):
        try:
            df = pd.read_parquet(path, columns=["op_name", "dtype", "shapes", "latency"])
        except Exception:
            continue
        hit = df[(df["op_name"] == op) & (df["shapes"] == key)]
        if dtype is not None:
            hit = hit[hit["dtype"] == dtype]
        hit = hit[hit["latency"] > 0]
        if len(hit):
            return float(hit["latency"].min())
    return None
