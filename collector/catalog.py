"""Every collector, loaded: imports each module that registers one (collector.registry holds them) and selects
them by name or group for a run."""
from __future__ import annotations

import importlib
import pkgutil

from collector import kernels
from collector.registry import COLLECTORS, Collector
from core.errors import UserError

for _module in pkgutil.iter_modules(kernels.__path__):  # each registers itself
    importlib.import_module(f"{kernels.__name__}.{_module.name}")


def select(ops) -> list[Collector]:
    """Collectors for op names: a group ("attention") or a collector name ("context_attention")."""
    if ops is None:
        return list(COLLECTORS.values())
    if isinstance(ops, str):
        ops = [o for o in ops.split(",") if o.strip()]
    out: list[Collector] = []
    for op in ops:
        op = op.strip()
        hits = [c for c in COLLECTORS.values() if op in (c.group, c.name)]
        if not hits:
            known = sorted({c.group for c in COLLECTORS.values()} | set(COLLECTORS))
            raise UserError(f"unknown collector op {op!r}; known: {', '.join(known)}")
        out.extend(c for c in hits if c not in out)
    return out
