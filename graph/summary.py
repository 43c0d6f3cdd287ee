"""Per-phase totals of an op graph at concrete sizes: what `trace` prints and writes as JSON."""
from __future__ import annotations

from collections import defaultdict

from core.context import mid_decode_context
from core.expr import evaluate


def phase_sizes(phase: str, batch: int, isl: int, osl: int) -> dict[str, int]:
    """The (B, S, L) a phase is shown at: prefill of the whole input; decode at the middle of generation."""
    if phase == "prefill":
        return {"B": batch, "S": isl, "L": 0}
    return {"B": batch, "S": 1, "L": mid_decode_context(isl, osl)}


def op_table(g, sizes: dict[str, int]) -> list[dict]:
    """Rows per ATen op: count (nodes x layer repeats), FLOPs and bytes at the given sizes, largest FLOPs first."""
    rows: dict[str, dict] = defaultdict(lambda: {"count": 0, "flops": 0, "bytes": 0})
    for _, a in g.nodes(data=True):
        row = rows[a["op"]]
        row["category"] = a["category"]
        row["count"] += a["repeat"]
        row["flops"] += int(evaluate(a["flops"], **sizes)) * a["repeat"]
        row["bytes"] += int(evaluate(a["bytes"], **sizes)) * a["repeat"]
    table = [{"op": op, **row} for op, row in rows.items()]
    table.sort(key=lambda r: (-r["flops"], -r["bytes"], r["op"]))
    return table


def totals(table: list[dict]) -> dict[str, int]:
    return {"count": sum(r["count"] for r in table), "flops": sum(r["flops"] for r in table),
            "bytes": sum(r["bytes"] for r in table)}
