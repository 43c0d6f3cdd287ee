"""One formula per fact: the cost ops' own formulas (core.ops), the context lengths (core.context), and the places
that used to restate them (the database's roofline, the estimate, the KV report, the trace summary)."""
from __future__ import annotations

import pytest
import yaml

from core.context import context_length, layer_window, mid_decode_context, sliding_windows
from core.errors import UserError
from core.ops import (Attention, Gemm, MoE, MoEShard, Scan, causal_pairs, dispatch_ranks, expert_slots,
                      pipeline_stages, redundant_experts)
from costmodel import systems
from costmodel.database import COMPUTE_EFFICIENCY, MEMORY_EFFICIENCY, Database
from costmodel.kv import _stages
from graph.summary import phase_sizes


def _attention(**kw):
    fields = dict(module="model.layers.0.self_attn", layer_kind=0, count=1, phase="context", batch="B", q_len="S",
                  kv_len="S", q_heads=32, kv_heads=8, head_dim=128, v_head_dim=128)
    return Attention(**{**fields, **kw})


def _mi300x_roofline_ms(flops, nbytes):
    spec = yaml.safe_load((systems.SYSTEMS_DIR / "mi300x.yaml").read_text())
    return max(flops / (spec["bf16_dense_flops_per_s"] * COMPUTE_EFFICIENCY),
               nbytes / (spec["hbm_bandwidth_bytes_per_s"] * MEMORY_EFFICIENCY)) * 1e3


def test_windowed_causal_attention_flops_agree_with_the_roofline():
    # a prefill of 8192 tokens with a 4096 window: the first 4096 tokens see 1..4096 keys, the rest 4096 each
    assert causal_pairs(8192, 4096) == 4096 * 4097 / 2 + 4096 * 4096 == 25_167_872
    assert causal_pairs(8192, 0) == 8192 * 8193 / 2 == 33_558_528
    op = _attention(window=4096)
    sizes = {"B": 1, "S": 8192, "L": 0}
    flops = 2 * 32 * 25_167_872 * 256
    assert op.flops(sizes) == flops == 412_350_414_848   # was q * w pairs: 549,755,813,888
    # the perf database's roofline (mi300x has no tables) counts the same FLOPs, plus the cache write
    price = Database("mi300x").context_attention(1, 8192, 32, 8, 128, window=4096)
    nbytes = 8192 * (2 * 32 * 128 * 2 + 4 * 8 * 128 * 2)
    assert price.provenance == "roofline"
    assert price.latency_ms == pytest.approx(_mi300x_roofline_ms(flops, nbytes))


def test_prefill_over_a_cached_prefix_counts_its_pairs():
    # 4 new tokens after 6 cached ones: they see 7, 8, 9 and 10 keys
    op = _attention(q_len="S", kv_len="S + L")
    assert op.flops({"B": 1, "S": 4, "L": 6}) == 2 * 32 * (7 + 8 + 9 + 10) * 256
    assert _attention(q_len="S", kv_len="S + L", window=8).flops({"B": 1, "S": 4, "L": 6}) == 2 * 32 * 31 * 256


def test_mid_generation_context_is_one_definition():
    # decode steps see 1024 .. 1024 + OSL - 1 cached tokens; the middle one, rounded up
    assert [mid_decode_context(1024, osl) for osl in (1, 2, 6, 7, 128)] == [1024, 1025, 1027, 1027, 1088]
    assert phase_sizes("decode", 4, 1024, 2) == {"B": 4, "S": 1, "L": 1025}
    assert phase_sizes("decode", 4, 1024, 6)["L"] == 1027


def test_moe_bytes_one_formula_for_the_op_its_shard_and_the_roofline():
    moe = MoE(module="model.layers.0.mlp.experts", layer_kind=0, count=1, tokens="B", hidden=2048, inter=768,
              topk=8, experts=128)
    # 4 tokens x top-8 = 32 routed rows reach 32 of the 128 experts: their weights, and per row its input, its
    # output and its intermediate (written and read)
    assert moe.bytes({"B": 4}) == 32 * 2048 * 768 * 3 * 2 + 32 * (2048 * 4 + 768 * 4) == 302_350_336
    shard = MoEShard(**{k: getattr(moe, k) for k in ("module", "layer_kind", "count", "tokens", "hidden", "inter",
                                                     "topk", "experts")}, tp=2, ep=4)
    # on one GPU of EP4 x TP2: 8 routed rows, 8 of its 32 experts, each expert's inter halved
    assert shard.bytes({"B": 4}) == 8 * 2048 * 384 * 3 * 2 + 8 * (2048 * 4 + 384 * 4) == 37_826_560
    assert shard.flops({"B": 4}) == 2 * 8 * 2048 * 384 * 3 == moe.flops({"B": 4}) / 8
    price = Database("mi300x").moe(4, 2048, 768, 8, 128, tp=2, ep=4)
    assert price.latency_ms == pytest.approx(_mi300x_roofline_ms(37_748_736, 37_826_560))


def test_a_dispatch_sends_a_token_once_to_each_gpu_of_its_experts():
    """DeepSeek's top-8 of 256 experts: over EP 2 nearly every token needs both GPUs (1 - C(128, 8) / C(256, 8) of
    the time each), over EP 256 (one expert a GPU) exactly its 8; one expert per token needs one GPU; EP 1 sends
    nothing further than its own GPU."""
    from math import comb
    assert dispatch_ranks(256, 8, 2) == pytest.approx(2 * (1 - comb(128, 8) / comb(256, 8)), rel=1e-12)
    assert dispatch_ranks(256, 8, 2) == pytest.approx(1.9930, abs=1e-4)
    assert dispatch_ranks(256, 8, 8) == pytest.approx(8 * (1 - comb(224, 8) / comb(256, 8)), rel=1e-12)
    assert dispatch_ranks(256, 8, 256) == pytest.approx(8.0, rel=1e-12)
    assert dispatch_ranks(128, 1, 4) == pytest.approx(1.0, rel=1e-12)
    assert dispatch_ranks(256, 8, 1) == 1.0


def test_an_ep_that_does_not_divide_the_experts_holds_redundant_slots():
    # DeepSeek's 256 experts over EP 48: 6 slots per GPU (288 in all, 32 redundant copies), the weights of 6
    assert expert_slots(256, 48) == 6 and expert_slots(256, 32) == 8 and expert_slots(8, 8) == 1
    assert redundant_experts(256, 48) == 32 and redundant_experts(256, 32) == 0 and redundant_experts(8, 3) == 1
    moe = MoE(module="model.layers.1.mlp.experts", layer_kind=1, count=1, tokens="B", hidden=7168, inter=2048,
              topk=8, experts=256)
    moe.check_split(tp=1, ep=48, dp=48)
    assert moe.weight_share(tp=1, ep=48, dp=48) == 6 / 256 and moe.weight_share(tp=1, ep=32, dp=32) == 1 / 32
    # 1024 tokens x top-8 over 48 GPUs: 170.7 routed rows reach all 6 slots of one GPU
    shard = MoEShard(**{k: getattr(moe, k) for k in ("module", "layer_kind", "count", "tokens", "hidden", "inter",
                                                     "topk", "experts")}, tp=1, ep=48)
    rows = 1024 * 8 / 48
    assert shard.bytes({"B": 1024}) == pytest.approx(6 * 7168 * 2048 * 3 * 2 + rows * (7168 * 4 + 2048 * 4))
    with pytest.raises(UserError, match="ep=512 exceeds the 256 experts"):
        moe.check_split(tp=1, ep=512, dp=512)


def test_pipeline_stages_are_one_layout():
    assert pipeline_stages(61, 4) == [16, 15, 15, 15]
    stages, layout = _stages([{"kind": 0, "count": 3, "layers": [0, 1, 2]},
                              {"kind": 1, "count": 58, "layers": list(range(3, 61))}], 61, 4)
    assert [sum(s.values()) for s in stages] == [16, 15, 15, 15] and stages[0] == {0: 3, 1: 13}


def test_context_length_and_windows_from_one_place():
    config = {"max_position_embeddings": 131072, "seq_length": 8192, "sliding_window": 4096}
    assert context_length(config) == 8192
    assert sliding_windows(config) == {"sliding_window": 4096}
    assert layer_window(config, "sliding_attention") == (4096, "sliding_window")
    assert layer_window(config, "full_attention") is None
    chunked = {"max_position_embeddings": 10485760, "attention_chunk_size": 8192}
    assert layer_window(chunked, "chunked_attention") == (8192, "attention_chunk_size")
    # a window at least as long as the context never binds
    assert layer_window({"max_position_embeddings": 4096, "sliding_window": 4096}, "sliding_attention") is None


def test_shape_text_is_the_ops_own():
    gemm = Gemm(module="model.layers.0.mlp.down_proj", layer_kind=0, count=32, m="(B)*(S)", n=4096, k=14336)
    assert gemm.shape_text() == "m=(B)*(S), n=4096, k=14336, dtype=bfloat16, operand=weight, batch=1"
    assert gemm.shape_text({"B": 2, "S": 8, "L": 0}) == \
        "m=16, n=4096, k=14336, dtype=bfloat16, operand=weight, batch=1"


def test_a_batch_tp_cannot_split_runs_whole():
    # an indexer's scores: one product per token (batch B), its 64 heads in n; engines replicate it
    scores = Gemm(module="model.layers.0.self_attn.indexer", layer_kind=0, count=1, m="L + 1", n=64, k=128,
                  operand="activation", batch="(B)")
    assert scores.split(8, role="heads") is scores
    absorbed = Gemm(module="model.layers.0.self_attn.kv_b_proj", layer_kind=0, count=1, m="(B)", n=512, k=128,
                    batch="128")
    assert absorbed.split(8, role="heads").batch == "(128)/8"


def test_a_scan_without_per_head_state_splits_its_channels():
    scan = Scan(module="model.layers.0.mixer", layer_kind=0, count=1, variant="recurrence", batch="B", length="S",
                heads=1, head_dim=1, state=1, flops_expr="4096*B*S", bytes_expr="8192*B*S")
    scan.check_split(2)   # no refusal: a state of one channel dim splits over the ranks
    half = scan.split(2)
    assert half.heads == 1 and half.flops({"B": 1, "S": 10, "L": 0}) == 4096 * 10 / 2
    with pytest.raises(UserError, match="tp=4 does not divide the 6 heads of the scan"):
        Scan(**{**scan.__dict__, "heads": 6}).check_split(4)
