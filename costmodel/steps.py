"""A step's kernel time from its priced ops: one stream, every kernel in turn, except the work an engine runs on a
second stream beside the routed experts (ops tagged concurrent_with a MoE op by graph.patterns.beside_moe)."""
from __future__ import annotations

from collections import defaultdict


def step_ms(price, ops, sizes: dict, overheads) -> float:
    """The kernel time of a step's ops (price(op, sizes).latency_ms x count each). Where the engine runs the
    ops tagged concurrent_with a MoE op on a second stream at this step's tokens (B x S), that MoE op and they
    cost the slower of the two streams instead of their sum."""
    overlap = overheads.overlaps_shared_experts(sizes["B"] * sizes["S"])
    total, moe, beside = 0.0, {}, defaultdict(float)
    for op in ops:
        ms = price(op, sizes).latency_ms * op.count
        if overlap and op.concurrent_with:
            beside[(op.layer_kind, op.concurrent_with)] += ms
        elif overlap and op.expert_parallel:
            moe[(op.layer_kind, op.module)] = moe.get((op.layer_kind, op.module), 0.0) + ms
        else:
            total += ms
    for key, ms in moe.items():
        total += max(ms, beside.pop(key, 0.0))
    return total + sum(beside.values())
