"""One registry of collectors, filled by a decorator (as torch/utils/flop_counter.py registers formulas).

A collector is a function ``(case: dict, ctx: Context) -> float`` (latency in ms) for one table. The case
is a plain dict; ``row(case, ctx)`` (the collector's normaliser) turns it into the table's row without the
latency: the variant and axis columns, ``kernel_source`` and ``op_name``. Rows are keyed by the columns in
``key`` (for --resume and for replacing a point measured again).

    @collector("gemm", table="gemm_perf", family="gemm", columns=(...), key=(...))
    def gemm(case, ctx) -> float: ...

    @gemm.normalizer
    def _(case, ctx) -> dict: ...

A collector that must run its cases together (NCCL: one process group per GPU count) registers a ``batch``
function ``(cases, ctx) -> list[float | BaseException]`` instead of measuring one case at a time.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

COMMON_COLUMNS = ("framework", "version", "device", "op_name", "kernel_source")


@dataclass
class Collector:
    name: str  # registry name, e.g. "context_attention"
    group: str  # what --ops selects, e.g. "attention"
    table: str  # parquet file stem
    family: str  # op family folder under the system
    columns: tuple[str, ...]  # table columns after COMMON_COLUMNS, before "latency"
    key: tuple[str, ...]  # columns that identify a measured point
    measure: Callable | None = None
    batch: Callable | None = None
    normalize: Callable | None = field(default=None, repr=False)
    backend: Callable | None = field(default=None, repr=False)  # ctx -> (backend folder, version); default torch

    def normalizer(self, fn: Callable) -> Callable:
        self.normalize = fn
        return fn

    def backend_version(self, ctx) -> tuple[str, str]:
        return self.backend(ctx) if self.backend else ("torch", ctx.torch_version)

    def row(self, case: dict, ctx) -> dict:
        row = self.normalize(case, ctx) if self.normalize else dict(case)
        missing = [c for c in ("op_name", "kernel_source", *self.columns) if c not in row]
        if missing:
            raise ValueError(f"{self.name} case lacks {', '.join(missing)}: {case}")
        return {c: row[c] for c in ("op_name", "kernel_source", *self.columns)}

    def key_of(self, row: dict) -> tuple:
        return tuple(_plain(row[c]) for c in self.key)

    @property
    def column_order(self) -> list[str]:
        return [*COMMON_COLUMNS, *self.columns, "latency"]


COLLECTORS: dict[str, Collector] = {}


def collector(name: str, *, table: str, family: str, columns: tuple[str, ...], key: tuple[str, ...],
              group: str | None = None, batch: bool = False, backend: Callable | None = None):
    """Register the decorated function as the collector `name` (writing `table` under `family`)."""

    def register(fn: Callable) -> Collector:
        if name in COLLECTORS:
            raise ValueError(f"collector {name!r} registered twice")
        c = Collector(name=name, group=group or name, table=table, family=family, columns=tuple(columns),
                      key=tuple(key), backend=backend)
        if batch:
            c.batch = fn
        else:
            c.measure = fn
        COLLECTORS[name] = c
        return c

    return register


def load_all() -> dict[str, Collector]:
    """Import every collector module (each registers itself) and return the registry."""
    from collector import aten, attention, conv1d, gemm, memory, moe, nccl, scan  # noqa: F401

    return COLLECTORS


def groups() -> list[str]:
    load_all()
    return list(dict.fromkeys(c.group for c in COLLECTORS.values()))


def select(ops) -> list[Collector]:
    """Collectors for op names: a group ("attention") or a collector name ("context_attention")."""
    load_all()
    if ops is None:
        return list(COLLECTORS.values())
    if isinstance(ops, str):
        ops = [o for o in ops.split(",") if o.strip()]
    out: list[Collector] = []
    for op in ops:
        op = op.strip()
        hits = [c for c in COLLECTORS.values() if op in (c.group, c.name)]
        if not hits:
            from core.errors import UserError

            known = sorted({c.group for c in COLLECTORS.values()} | set(COLLECTORS))
            raise UserError(f"unknown collector op {op!r}; known: {', '.join(known)}")
        out.extend(c for c in hits if c not in out)
    return out


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
