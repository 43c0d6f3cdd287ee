"""A step's kernel time from its priced ops: one stream, every kernel in turn, except the work an engine runs on a
second stream beside the routed experts (ops tagged concurrent_with a MoE op by graph.patterns.beside_moe)."""
from __future__ import annotations

from collections import defaultdict


def op_ms(ops, latencies_ms, sizes: dict, overheads) -> list[float]:
    """Each op's time in the step: its latency x count, except that where the engine runs the ops tagged
    concurrent_with a MoE op on a second stream at this step's tokens (B x S), the shorter of the two streams (that
    MoE op, or the ops beside it) takes no time of the step: it runs hidden behind the longer."""
    times = [ms * op.count for op, ms in zip(ops, latencies_ms)]
    if not overheads.overlaps_shared_experts(sizes["B"] * sizes["S"]):
        return times
    moe, beside = defaultdict(list), defaultdict(list)
    for i, op in enumerate(ops):
        if op.concurrent_with:
            beside[(op.layer_kind, op.concurrent_with)].append(i)
        elif op.expert_parallel:
            moe[(op.layer_kind, op.module)].append(i)
    for key, routed in moe.items():
        shared = beside.get(key)
        if shared:
            hidden = shared if sum(times[i] for i in shared) <= sum(times[i] for i in routed) else routed
            for i in hidden:
                times[i] = 0.0
    return times


def step_ms(price, ops, sizes: dict, overheads) -> float:
    """The kernel time of a step's ops, priced by price(op, sizes) (op_ms summed)."""
    return sum(op_ms(ops, [price(op, sizes).latency_ms for op in ops], sizes, overheads))
