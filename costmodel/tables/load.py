"""Read a spec's table files into one indexed Table (variant + kernel -> rows; grids built on first use)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from core.errors import UserError
from costmodel.tables.interpolate import build_grid
from costmodel.tables.roots import AICONFIGURATOR_ROOT_LABEL, TableFile
from costmodel.tables.specs import TableSpec

# kernel_source filters a query may ask for (strings so they can key caches); any other string names a kernel
# family: the lanes whose kernel_source contains it, or one of its |-separated names (lane_filter)
KERNEL_FILTERS: dict[str | None, Callable[[str], bool]] = {
    None: lambda k: True,
    "gated": lambda k: "nongated" not in k,
    "nongated": lambda k: "nongated" in k,
    "min_latency": lambda k: "min_latency" in k,
    "conv1d": lambda k: "conv1d" in k,
    "delta_rule": lambda k: "conv1d" not in k,
}


def lane_filter(kernel_filter: str | None) -> Callable[[str], bool]:
    if kernel_filter in KERNEL_FILTERS:
        return KERNEL_FILTERS[kernel_filter]
    names = kernel_filter.split("|")
    return lambda k: any(n in k for n in names)


def read_file(spec: TableSpec, file: TableFile, index: int):
    import pandas as pd
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(file.path).names)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise UserError(f"corrupt perf table {file.path}: {exc}") from exc
    required = spec.required()
    missing = [c for c in required if c not in names]
    if missing:
        raise UserError(f"perf table {file.path} lacks column(s) {', '.join(missing)} expected in {spec.name}")
    wanted = list(dict.fromkeys([*required, *(c for c, _ in spec.optional if c in names)]))
    try:
        df: pd.DataFrame = pq.read_table(file.path, columns=wanted).to_pandas()
    except Exception as exc:
        raise UserError(f"corrupt perf table {file.path}: {exc}") from exc
    for column, default in spec.optional:
        if column not in df.columns:
            df[column] = default
    for column, value in spec.fixed:
        df = df[df[column] == value]
    df = df.copy()
    if spec.derive is not None:
        spec.derive(df)
    numeric = [*spec.axes, "latency"]
    try:
        values = df[numeric].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"perf table {file.path} has non-numeric values in {', '.join(numeric)}") from exc
    keep = np.isfinite(values).all(axis=1) & (values > 0).all(axis=1)
    df = df[keep]
    # a lane that timed its host prices nothing (TableSpec.host_timed); tracecost's collector times kernels alone
    if spec.host_timed is not None and file.label.startswith(AICONFIGURATOR_ROOT_LABEL) and len(df):
        work, ratio = spec.host_timed
        small = df["latency"].where(df[list(spec.axes)].prod(axis=1) <= work)
        fastest = small.groupby([df[c] for c in (*spec.variants, "kernel_source")]).transform("min")
        df = df[~(fastest > ratio * small.min())]   # a lane without such rows is not judged (NaN)
    df["_file"] = index
    return df[[*spec.variants, "kernel_source", *spec.axes, "latency", "_file"]]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class Table:
    """One table (possibly several version files), indexed by variant + kernel; grids built lazily."""

    def __init__(self, spec: TableSpec, files: Sequence[TableFile]):
        import pandas as pd

        self.spec = spec
        self.labels = [f.label for f in files]
        frames = [read_file(spec, f, i) for i, f in enumerate(files)]
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
        self._axes = df[list(spec.axes)].to_numpy(dtype=np.float64)
        self._latency = df["latency"].to_numpy(dtype=np.float64)
        self._file = df["_file"].to_numpy(dtype=np.int64)
        keys = [*spec.variants, "kernel_source"]
        self._rows: dict[tuple, np.ndarray] = {}
        self.kernel_counts: dict[tuple, dict[str, int]] = {}
        if len(df):
            for key, idx in df.groupby(keys, sort=False).indices.items():
                key = tuple(_plain(v) for v in (key if isinstance(key, tuple) else (key,)))
                self._rows[key] = idx
                self.kernel_counts.setdefault(key[:-1], {})[key[-1]] = len(idx)
        self._grids: dict[tuple, object] = {}
        self._lane_shapes: dict[tuple, dict[tuple, int]] = {}

    def variants(self) -> list[tuple]:
        return list(self.kernel_counts)

    def default_kernel(self, variant: tuple, kernel_filter: str | None, shape: tuple | None = None) -> str | None:
        """The kernel lane that prices a query. shape (the query's values on every axis but the last, the swept
        size) narrows the lanes to those of the newest file that measured that shape exactly: a framework release
        often renames its lanes, and the older release's lane, with more rows over all shapes, must not outvote the
        newer measurement of the same shape. Among the lanes left: most rows = the framework's main lane; ties go
        to CUDA-graph lanes, which serving uses."""
        accept = lane_filter(kernel_filter)
        counts = {k: n for k, n in self.kernel_counts.get(variant, {}).items() if accept(k)}
        if not counts:
            return None
        if shape is not None and len(counts) > 1:
            newest = {k: self._shapes(variant, k).get(tuple(float(x) for x in shape)) for k in counts}
            measured = [f for f in newest.values() if f is not None]
            if measured:
                counts = {k: n for k, n in counts.items() if newest[k] == min(measured)}
        return min(counts, key=lambda k: (-counts[k], "graph" not in k.lower(), k))

    def _shapes(self, variant: tuple, kernel: str) -> dict[tuple, int]:
        """A lane's measured shapes (every axis but the last) -> the newest file (lowest index) holding each."""
        key = (*variant, kernel)
        shapes = self._lane_shapes.get(key)
        if shapes is None:
            shapes = self._lane_shapes[key] = {}
            idx = self._rows[key]
            for row, file in zip(map(tuple, self._axes[idx, :-1].tolist()), self._file[idx].tolist()):
                if shapes.get(row, file + 1) > file:
                    shapes[row] = file
        return shapes

    def grid(self, variant: tuple, kernel: str):
        key = (*variant, kernel)
        grid = self._grids.get(key)
        if grid is None:
            idx = self._rows.get(key)
            if idx is None:
                return None
            grid = self._grids[key] = build_grid(self._axes[idx], self._latency[idx], self._file[idx])
        return grid


TABLE_CACHE: dict[tuple, Table] = {}


def load_table(spec: TableSpec, files: Sequence[TableFile]) -> Table:
    stamp = []
    for f in files:
        try:
            st = f.path.stat()
        except OSError as exc:
            raise UserError(f"cannot read perf table {f.path}: {exc.strerror}") from exc
        stamp.append((str(f.path), st.st_mtime_ns, st.st_size, f.label))
    key = (spec, tuple(stamp))
    table = TABLE_CACHE.get(key)
    if table is None:
        table = TABLE_CACHE[key] = Table(spec, files)
    return table
