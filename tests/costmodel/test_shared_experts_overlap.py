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
