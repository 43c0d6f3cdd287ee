"""What `trace` shows of the matched graph: cost ops per phase, and the unsupported-op report with the collector
case that would measure each unsupported op."""
from __future__ import annotations

from collections import defaultdict

from core.expr import evaluate

CASE_SCHEMA = "tracecost.collector-case/1"


def cost_op_rows(matched, sizes: dict) -> list[dict]:
    """One row per distinct cost op (type + shape), with its total count and FLOPs / bytes at `sizes`."""
    rows: dict[tuple, dict] = {}
    for op in matched.ops:
        key = (op.kind, op.shape_text())
        row = rows.setdefault(key, {"type": op.kind, "shape": op.shape_text(), "module": op.module, "count": 0,
                                    "flops": 0, "bytes": 0})
        row["count"] += op.count
        row["flops"] += int(op.flops(sizes) * op.count)
        row["bytes"] += int(op.bytes(sizes) * op.count)
    return sorted(rows.values(), key=lambda r: (-r["flops"], -r["bytes"]))


def unsupported_rows(model_graph, matched_by_phase: dict, sizes_by_phase: dict) -> list[dict]:
    """Unsupported ops grouped by (phase, op, module, input shapes), with count, share of the phase's FLOPs and
    bytes, and a collector case (one per shape: each is measured)."""
    rows: dict[tuple, dict] = defaultdict(dict)
    for phase, matched in matched_by_phase.items():
        sizes = sizes_by_phase[phase]
        g = model_graph.phases[phase]
        total_flops = sum(evaluate(a["flops"], **sizes) * a["repeat"] for _, a in g.nodes(data=True)) or 1
        total_bytes = sum(evaluate(a["bytes"], **sizes) * a["repeat"] for _, a in g.nodes(data=True)) or 1
        for op in matched.unsupported:
            row = rows[(phase, op.op, op.module, repr(op.shapes), repr(op.consts))]
            if not row:
                row.update(phase=phase, op=op.op, module=op.module, count=0, shapes=op.shapes, flops=0, bytes=0,
                           case=collector_case(op, model_graph, phase, sizes))
            row["count"] += op.count
            row["flops"] += int(op.flops(sizes) * op.count)
            row["bytes"] += int(op.bytes(sizes) * op.count)
            row["flops_share"] = row["flops"] / total_flops
            row["bytes_share"] = row["bytes"] / total_bytes
    return sorted(rows.values(), key=lambda r: (-r["flops"], -r["bytes"]))


def collector_case(op, model_graph, phase: str, sizes: dict) -> dict:
    """A case `tracecost collect --cases` accepts: the ATen op with concrete input shapes at the sizes shown and
    its constant arguments, plus the symbolic shapes so the collector can sweep B, S and L."""
    concrete = [[int(evaluate(d, **sizes)) for d in shape] for shape in op.shapes]
    return {"schema": CASE_SCHEMA, "kind": "aten", "op": op.op, "phase": phase, "model": model_graph.name,
            "module": op.module, "dtype": model_graph.dtype, "shapes": concrete, "args": op.consts,
            "symbolic_shapes": op.shapes, "sizes": sizes}
