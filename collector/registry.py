"""One registry of collectors, filled by a decorator (as torch/utils/flop_counter.py registers formulas).

A collector is a function ``(case: dict, ctx: Context) -> float`` (latency in ms) for one table, described by
its TableSpec (costmodel.tables.specs, the schema the database reads): the file name and family folder, the
columns written (``spec.schema``) and the columns that identify a point (``spec.key``, for --resume and for
replacing a point measured again). The case is a plain dict; ``row(case, ctx)`` (the collector's normaliser)
turns it into the table's row without the latency: ``op_name``, ``kernel_source`` and the spec's columns.

    @collector("gemm", spec=GEMM)
    def gemm(case, ctx) -> float: ...

    @gemm.normalizer
    def _(case, ctx) -> dict: ...

A collector that must run its cases together (NCCL: one process group per GPU count) registers a ``batch``
function ``(cases, ctx) -> list[float | BaseException]`` instead of measuring one case at a time. The modules
that register collectors are imported by collector.catalog, which this module does not import.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from costmodel.tables.specs import OWN_BACKEND, TableSpec


@dataclass
class Collector:
    name: str  # registry name, e.g. "context_attention"
    group: str  # what --ops selects, e.g. "attention"
    spec: TableSpec  # the table it writes
    measure: Callable | None = None
    batch: Callable | None = None
    normalize: Callable | None = field(default=None, repr=False)
    backend: Callable | None = field(default=None, repr=False)  # ctx -> (backend folder, version); default torch

    def normalizer(self, fn: Callable) -> Callable:
        self.normalize = fn
        return fn

    @property
    def table(self) -> str:
        return self.spec.name

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def key(self) -> tuple[str, ...]:
        return self.spec.key

    @property
    def column_order(self) -> list[str]:
        return self.spec.column_order

    def backend_version(self, ctx) -> tuple[str, str]:
        return self.backend(ctx) if self.backend else (OWN_BACKEND, ctx.torch_version)

    def row(self, case: dict, ctx) -> dict:
        row = self.normalize(case, ctx) if self.normalize else dict(case)
        columns = ("op_name", "kernel_source", *self.spec.schema)
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"{self.name} case lacks {', '.join(missing)}: {case}")
        return {c: row[c] for c in columns}

    def key_of(self, row: dict) -> tuple:
        return tuple(_plain(row[c]) for c in self.key)


COLLECTORS: dict[str, Collector] = {}


def collector(name: str, *, spec: TableSpec, group: str | None = None, batch: bool = False,
              backend: Callable | None = None):
    """Register the decorated function as the collector `name` (writing the table `spec` describes)."""

    def register(fn: Callable) -> Collector:
        if name in COLLECTORS:
            raise ValueError(f"collector {name!r} registered twice")
        c = Collector(name=name, group=group or name, spec=spec, backend=backend)
        if batch:
            c.batch = fn
        else:
            c.measure = fn
        COLLECTORS[name] = c
        return c

    return register


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
