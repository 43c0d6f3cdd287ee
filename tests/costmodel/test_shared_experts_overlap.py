"""Shared experts beside the routed experts: DeepSeek-V3's dense branch is tagged, and a decode step the engine
runs on two streams costs the slower stream, not the sum."""
from __future__ import annotations

import pytest

from core.ops import Gemm, MemoryBound
from costmodel.parallel import Plan

EXPERTS = "model.layers.1.mlp.experts"


@pytest.fixture
def deepseek(deepseek_v3_h200):
    return deepseek_v3_h200


def test_shared_experts_are_tagged_the_router_is_not(deepseek):
    beside = [op for op in deepseek.base["prefill"] if op.concurrent_with]
    assert {(op.n, op.k) for op in beside if isinstance(op, Gemm)} == {(4096, 7168), (7168, 2048)}  # gate+up, down
    assert [op.what for op in beside if isinstance(op, MemoryBound)] == ["activation"]
    assert {op.concurrent_with for op in beside} == {EXPERTS} and {op.count for op in beside} == {58}
    router = [op for op in deepseek.base["prefill"] if isinstance(op, Gemm) and op.n == 256]
    assert router and not router[0].concurrent_with


def test_decode_step_takes_the_slower_stream(deepseek):
    """TP8 EP8, B = 4 (trtllm overlaps steps up to 128 tokens): per MoE layer the routed experts take 0.09226 ms and
    the shared experts 0.0121 (gate+up, n = 512) + 0.00505 (down, k = 256) + 0.0025 (activation) = 0.01965 ms, so
    the 58 layers save 58 x 0.01965 = 1.140 ms of the 10.454 ms serial sum. At B = 256 nothing overlaps."""
    plan = Plan(tp=8, pp=1, ep=8, dp=1)
    ops = deepseek.decode_split(plan)[0]

    def serial(batch):
        sizes = {"B": batch, "S": 1, "L": 1024}
        return sum(deepseek.pricer.price(op, sizes).latency_ms * op.count for op in ops)

    assert serial(4) == pytest.approx(10.4539, rel=1e-4)
    assert deepseek._const_ms(plan, 4) == pytest.approx(10.4539 - 58 * 0.01965, rel=1e-4)
    assert deepseek._const_ms(plan, 256) == pytest.approx(serial(256), rel=1e-12)


def test_breakdown_shows_the_shared_experts_hidden(deepseek):
    """The estimate's per-op breakdown counts the step as priced: the shared experts' 58 x 0.01965 ms run hidden
    beside the routed experts (0 ms of the step, their own 1.140 ms kept as own_ms), so the decode total is the
    step's kernel time, not the serial sum."""
    r = deepseek.estimate(Plan(tp=8, ep=8), 4, 1024, 128)
    rows = r["breakdown"]["decode"]["ops"]
    hidden = [row for row in rows if row["hidden"]]
    assert {row["module"] for row in hidden} == {"model.layers.1.mlp.shared_experts",
                                                 "model.layers.1.mlp.shared_experts.down_proj"}
    assert all(row["ms"] == 0.0 and row["share"] == 0.0 for row in hidden)
    assert sum(row["own_ms"] for row in hidden) == pytest.approx(58 * 0.01965, rel=1e-3)
    assert r["breakdown"]["decode"]["total_ms"] == pytest.approx(sum(row["ms"] for row in rows), rel=1e-12)
    assert not any(row["hidden"] for row in r["breakdown"]["prefill"]["ops"])   # 4096 tokens: one stream
