"""Parallel plans, op pricing and the serving estimate, on real aiconfigurator-core table rows and real configs."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from conftest import session_trace_cache
from costmodel import database
from costmodel.database import Database
from costmodel.tables.roots import aiconfigurator_data_root
from costmodel.tables.specs import GEMM
from costmodel.estimate import Estimator, estimate, sweep
from render import format_estimate
from core.ops import MLA, Attention, Gemm, MoE, MoEShard
from core.ops import Comm
from costmodel.parallel import Plan, apply, gemm_roles
from costmodel.overheads import load_overheads
from costmodel.pricing import Pricer, resolve_quant
from core.errors import UserError

pytestmark = pytest.mark.skipif(aiconfigurator_data_root() is None, reason="aiconfigurator-core not installed")


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """trace_model through the session's trace cache (shared with the other files), one model object per model
    for the whole module."""
    from graph.model_graph import trace_model

    cache = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACECOST_CACHE", str(session_trace_cache(tmp_path_factory)))
        mp.setenv("HF_HUB_OFFLINE", "1")

        def get(name):
            if name not in cache:
                cache[name] = trace_model(name)
            return cache[name]

        yield get


@pytest.fixture(scope="module")
def db():
    return Database("h200_sxm", backend="trtllm")


@pytest.fixture(scope="module")
def pricer(db):
    return Pricer(db, resolve_quant({}))


def _gemm_rows(db):
    path = db.table_files(GEMM)[0].path
    df = pd.read_parquet(path)
    df = df[df.gemm_dtype == "bfloat16"]
    return df.groupby(["n", "k", "m"], as_index=False)["latency"].min()


def _gemm_op(m, n, k):
    return Gemm(module="model.layers.0.mlp", layer_kind=0, count=1, m=m, n=n, k=k)


# -- pricing on table rows -------------------------------------------------------------------------------------------


def test_gemm_op_on_a_grid_point_is_the_table_row(db, pricer):
    rows = _gemm_rows(db)
    for _, r in rows.sample(10, random_state=1).iterrows():
        # m as an expression in B and S, as the matcher writes it
        op = _gemm_op("(B)*(S)", int(r.n), int(r.k))
        price = pricer.price(op, {"B": 1, "S": int(r.m), "L": 0})
        assert price.latency_ms == r.latency
        assert price.provenance == "exact"
        assert "gemm/trtllm" in price.source and price.source.endswith("gemm_perf.parquet")


def test_gemm_op_between_rows_lies_between(db, pricer):
    rows = _gemm_rows(db)
    n, k = 4096, 4096
    ms = sorted(rows[(rows.n == n) & (rows.k == k)].m)
    lo, hi = next((a, b) for a, b in zip(ms, ms[1:]) if b - a >= 2 and a >= 64)
    mid = (lo + hi) // 2
    lat = {m: rows[(rows.n == n) & (rows.k == k) & (rows.m == m)].latency.iloc[0] for m in (lo, hi)}
    price = pricer.price(_gemm_op("B", n, k), {"B": mid, "S": 1, "L": 0})
    assert min(lat.values()) <= price.latency_ms <= max(lat.values())
    assert price.provenance == "interpolated"


def test_attention_and_moe_ops_reach_their_tables(pricer):
    ctx = Attention(module="a", layer_kind=0, count=1, phase="context", batch="B", q_len="S", kv_len="S", q_heads=32,
                    kv_heads=8, head_dim=128, v_head_dim=128)
    gen = Attention(module="a", layer_kind=0, count=1, phase="generation", batch="B", q_len="1", kv_len="L + 1",
                    q_heads=32, kv_heads=8, head_dim=128, v_head_dim=128)
    moe = MoE(module="m", layer_kind=0, count=1, tokens="B*S", hidden=4096, inter=14336, topk=2, experts=8)
    mla = MLA(module="a", layer_kind=0, count=1, phase="generation", batch="B", q_len="1", kv_len="L + 1", heads=16,
              kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    for op, sizes, table in [(ctx, {"B": 1, "S": 1024, "L": 0}, "attention"),
                             (gen, {"B": 8, "S": 1, "L": 1023}, "attention"),
                             (moe, {"B": 1, "S": 1024, "L": 0}, "moe"),
                             (mla, {"B": 8, "S": 1, "L": 1023}, "mla")]:
        price = pricer.price(op, sizes)
        assert price.provenance != "roofline", (op, price)
        assert f"/{table}/trtllm/" in price.source
        assert price.latency_ms > 0
    # the op's kv_len counts the new token; the table's step does not
    assert pricer.price(gen, {"B": 8, "S": 1, "L": 1023}) == pricer.db.generation_attention(8, 1023, 32, 8, 128)


def test_quantization_from_config_and_override():
    q = resolve_quant({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})
    assert (q.mode, q.gemm, q.moe) == ("fp8_block", "fp8_block", "fp8_block")
    q = resolve_quant({"quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert":
                                               ["model.layers.*.self_attn", "lm_head"]}})
    assert q.moe == "w4a16_mxfp4" and q.excluded("model.layers.3.self_attn.o_proj") and q.excluded("lm_head")
    assert not q.excluded("model.layers.3.mlp.experts")
    q = resolve_quant({"quantization_config": {"quant_method": "awq", "bits": 4}})
    assert q.mode == "int4_wo" and q.weight_bytes < 0.6
    q = resolve_quant({"quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4",
                                               "kv_cache_quant_algo": "FP8"}})
    assert (q.mode, q.kv_dtype) == ("nvfp4", "fp8")
    assert resolve_quant({}, quant="fp8", kv_dtype="fp8").to_json()["source"] == "--quant"
    with pytest.raises(UserError, match="unknown --quant"):
        resolve_quant({}, quant="fp3")
    with pytest.raises(UserError, match="unknown --kv-dtype"):
        resolve_quant({}, kv_dtype="int2")


def test_fp8_over_a_block_fp8_checkpoint_prices_its_block_kernels():
    # a block-scaled fp8 checkpoint (MiniMax-M2.5's quantization_config) asked for as plain fp8 keeps its block
    # format and its exclusions: bare names exclude every module of that name, not its prefixed siblings
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
                                      "modules_to_not_convert": ["gate", "lm_head"]}}
    q = resolve_quant(config, quant="fp8")
    assert (q.mode, q.moe) == ("fp8_block", "fp8_block") and q.source == "--quant fp8 (config: fp8)"
    assert q.excluded("model.layers.3.mlp.gate") and q.excluded("lm_head")
    assert not q.excluded("model.layers.3.mlp.gate_proj") and not q.excluded("model.layers.3.mlp.experts")
    assert resolve_quant({}, quant="fp8").mode == "fp8"  # a bf16 checkpoint quantized online: per-tensor
    # its experts at 4 tokens, moe_tp 4: the fp8_block row of vllm 0.24.0 h200_sxm (power_law_1.01), the newest
    # release that measured this shape (0.19.0's row reads 0.058771 ms), not the per-tensor fp8 rows extrapolated
    # from inter 1024 (0.32 ms)
    price = Database("h200_sxm", backend="vllm", version="0.24.0").moe(4, 3072, 1536, 8, 256, tp=4, quant=q.moe)
    assert price.provenance == "exact" and price.latency_ms == pytest.approx(0.063277, abs=1e-6)
    assert price.source.endswith("h200_sxm/moe/vllm/0.24.0/moe_perf.parquet")


def test_mxfp4_experts_take_the_engines_activations_on_fp4_gpus():
    """An mxfp4 checkpoint asked as nvfp4 keeps its own weights (engines do not requantize it) and exclusions. On
    B200 TensorRT-LLM feeds its experts mxfp8 activations (its GPT-OSS deployment guide): the w4a8 lane, 0.0506 ms
    for 4 tokens of 128 experts 2880 x 2880 top 4 against 0.1774 ms weight-only; H200 has no FP4, so bf16."""
    config = {"quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["lm_head"]}}
    q = resolve_quant(config, quant="nvfp4")
    assert (q.mode, q.exclude, q.source) == ("mxfp4", ("lm_head",), "--quant nvfp4 (config: mxfp4)")
    b200 = Database("b200_sxm", backend="trtllm")
    assert Pricer(b200, q, "mxfp8").moe_quant == "w4a8_mxfp4_mxfp8"
    assert Pricer(b200, q, "bf16").moe_quant == "w4a16_mxfp4"
    assert Pricer(Database("h200_sxm", backend="trtllm"), q, "mxfp8").moe_quant == "w4a16_mxfp4"
    price = b200.moe(4, 2880, 2880, 4, 128, tp=1, quant="w4a8_mxfp4_mxfp8")
    assert price.provenance == "exact" and price.latency_ms == pytest.approx(0.050630, abs=1e-6)
    assert b200.moe(4, 2880, 2880, 4, 128, tp=1, quant="w4a16_mxfp4").latency_ms == pytest.approx(0.177370, abs=1e-6)


def test_block_fp8_experts_on_blackwell_vllm_take_its_flashinfer_kernels():
    """vLLM runs block-FP8 experts on Blackwell with FlashInfer's TRT-LLM kernels (overheads.yaml moe_kernels); the
    0.19.0 tables measured another kernel (vllm_fused_moe, 0.5248 ms for 256 tokens of MiniMax-M2.5's 256 experts
    3072 x 1536 top 8 at moe_tp 2), 0.24.0's measure FlashInfer's (0.3087 ms): a 0.19.0 engine is priced with those.
    TensorRT-LLM's tables measure the kernels its engine runs: no entry."""
    kernels = load_overheads("vllm", "0.19.0", "b200_sxm").moe_kernels
    assert kernels == (("fp8_block", "flashinfer_trtllm"),)
    assert load_overheads("trtllm", None, "b200_sxm").moe_kernels == ()
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    moe = MoEShard(module="m", layer_kind=0, count=1, tokens="B*S", hidden=3072, inter=1536, topk=8, experts=256,
                   tp=2)
    sizes = {"B": 1, "S": 256, "L": 0}
    db = Database("b200_sxm", backend="vllm", version="0.19.0")
    engine = Pricer(db, resolve_quant(config), "bf16", kernels).price(moe, sizes)
    assert engine.latency_ms == pytest.approx(0.308710, abs=1e-6)
    assert engine.source.endswith("b200_sxm/moe/vllm/0.24.0/moe_perf.parquet")
    table = Pricer(db, resolve_quant(config)).price(moe, sizes)
    assert table.latency_ms == pytest.approx(0.524794, abs=1e-6)
    assert table.source.endswith("vllm/0.19.0/moe_perf.parquet")
    # a family no version measured leaves the table's own lane
    assert db.moe(256, 3072, 1536, 8, 256, tp=2, quant="fp8_block", family="no_such_kernel") == table


def test_tensorrt_llm_moe_backend_prices_its_own_lane_at_every_token_count():
    """TensorRT-LLM's table times DeepSeek-R1's NVFP4 experts (7168 x 2048, top 8 of 256, moe_tp 4) with CUTLASS and
    with TRTLLM-Gen (the min-latency lane). Without a launch setting, the min-latency lane prices up to 128 tokens
    and CUTLASS above (as aiconfigurator does); a launched backend prices its own lane at every size."""
    db = Database("b200_sxm", backend="trtllm", version="1.3.0rc23")
    shape = dict(hidden=7168, inter=2048, topk=8, num_experts=256, tp=4, quant="nvfp4")
    assert db.moe(4, **shape).latency_ms == pytest.approx(0.047846, abs=1e-6)
    assert db.moe(8192, **shape).latency_ms == pytest.approx(2.098848, abs=1e-6)
    assert db.moe(8192, **shape, family="min_latency").latency_ms == pytest.approx(0.685862, abs=1e-6)
    assert db.moe(4, **shape, family="cutlass").latency_ms == pytest.approx(0.156077, abs=1e-6)


def test_block_fp8_experts_on_hopper_vllm_take_triton_under_tp_and_flashinfer_cutlass_under_ep():
    """On Hopper vLLM puts Triton first under TP and FlashInfer CUTLASS under EP. vLLM 0.18.0's tables on h200_sxm
    (and every older one) measured no block-FP8 experts: the newer releases' lanes of the engine's kernel price
    them, 0.19.0's Triton lane (vllm_fused_moe) under TP 8, 0.24.0's FlashInfer CUTLASS lane under EP 8, where the
    nearest newer release alone (0.19.0) has Triton's only."""
    kernels = load_overheads("vllm", "0.18.0", "h200_sxm").moe_kernels
    config = {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    db = Database("h200_sxm", backend="vllm", version="0.18.0")
    sizes = {"B": 1, "S": 64, "L": 0}
    shard = dict(module="m", layer_kind=0, count=1, tokens="B*S", hidden=3072, inter=1536, topk=8, experts=256)
    tp, ep = MoEShard(**shard, tp=8), MoEShard(**shard, ep=8)
    assert Pricer(db, resolve_quant(config)).price(ep, sizes).source.endswith("vllm/0.19.0/moe_perf.parquet")
    engine = Pricer(db, resolve_quant(config), "bf16", kernels)
    under_tp, under_ep = engine.price(tp, sizes), engine.price(ep, sizes)
    assert under_tp.source.endswith("h200_sxm/moe/vllm/0.19.0/moe_perf.parquet")
    assert under_tp == Database("h200_sxm", backend="vllm", version="0.19.0").moe(64, 3072, 1536, 8, 256, tp=8,
                                                                                    quant="fp8_block")
    assert under_ep.source.endswith("h200_sxm/moe/vllm/0.24.0/moe_perf.parquet")
    assert under_ep == Database("h200_sxm", backend="vllm", version="0.24.0").moe(
        64, 3072, 1536, 8, 256, ep=8, quant="fp8_block", kernel="vllm_fp8moe_flashinfer_cutlass_flashinferexperts")


# -- estimate ----------------------------------------------------------------------------------------------------------


def test_llama_8b_estimate_mostly_measured(traced):
    r = estimate(traced("meta-llama/Llama-3.1-8B"), system="h200_sxm", backend="trtllm", plan=Plan(), batch=1,
                 isl=1024, osl=128)
    assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0
    assert math.isclose(r["request_latency_ms"], r["ttft_ms"] + 127 * r["tpot_ms"])
    assert r["measured_share"]["prefill"] > 0.85 and r["measured_share"]["decode"] > 0.9
    assert math.isclose(r["tokens_per_s_per_user"], 1000 / r["tpot_ms"])
    # context grows: later decode steps cost more, and TPOT is their mean, not one step
    steps = [s["step_ms"] for s in r["decode_steps"]]
    assert len(steps) == 8 and steps == sorted(steps) and steps[0] < steps[-1]
    assert steps[0] < r["tpot_ms"] < steps[-1]
    # memory: bf16 weights of 8.03B params, 128 KiB of KV per token (32 layers x 8 heads x 128 x 2 x 2 bytes)
    m = r["memory"]
    assert m["kv_bytes_per_token"] == 32 * 8 * 128 * 2 * 2
    assert 15e9 < m["weights_bytes"] < 16.2e9
    assert m["fits"] and m["verdict"] == "fits" and m["max_batch"] > 100
    # shares sum to one, every op row says where its number came from
    for phase in ("prefill", "decode"):
        b = r["breakdown"][phase]
        assert math.isclose(sum(v["share"] for v in b["by_type"].values()), 1.0)
        assert all(row["provenance"] in database.PROVENANCES and row["source"] for row in b["ops"])
    json.dumps(r)  # JSON-ready
    text = format_estimate(r)
    assert "TTFT" in text and "FITS" in text


def test_engine_quantization_leaves_the_output_head(traced):
    """--quant fp8 on a bf16 checkpoint: the engine quantizes the layers' GEMMs, not the LM head (the GEMM that runs
    once per sequence). Llama-3.1-8B's weights: the layers' 6,979,321,856 GEMM parameters at 1 byte; the head and
    the embedding (128256 x 4096 each) and the 65 norms' 266,240 parameters at 2 bytes."""
    est = Estimator(traced("meta-llama/Llama-3.1-8B"), system="h200_sxm", backend="vllm", quant="fp8")
    assert est.quant.exclude == ("lm_head",)
    quants = {op.module: est.pricer.gemm_quant(op) for op in est.ops(Plan(), "decode") if isinstance(op, Gemm)}
    assert quants["lm_head"] == "bf16" and quants["model.layers.0.mlp.down_proj"] == "fp8"
    assert est.memory(Plan(), 1, 1024, 128)["weights_bytes"] == 6979321856 + 2 * (2 * 128256 * 4096 + 266240)


def test_batch_that_does_not_fit_is_a_verdict(traced):
    r = estimate(traced("meta-llama/Llama-3.1-8B"), system="h200_sxm", plan=Plan(), batch=4096, isl=8192, osl=1024)
    assert not r["memory"]["fits"] and r["memory"]["verdict"] == "does not fit"
    assert 0 < r["memory"]["max_batch"] < 4096
    ok = estimate(traced("meta-llama/Llama-3.1-8B"), system="h200_sxm", plan=Plan(),
                  batch=r["memory"]["max_batch"], isl=8192, osl=1024)
    assert ok["memory"]["fits"]


def test_qwen3_32b_tp2_splits_gemms_and_adds_all_reduces(traced):
    est = Estimator(traced("Qwen/Qwen3-32B"), system="h200_sxm", backend="trtllm")
    for phase in ("prefill", "decode"):
        one, two = est.ops(Plan(), phase), est.ops(Plan(tp=2), phase)
        gemms1 = {(g.module, g.m): g for g in one if isinstance(g, Gemm)}
        gemms2 = {(g.module, g.m): g for g in two if isinstance(g, Gemm)}
        assert gemms1.keys() == gemms2.keys()
        hidden = 5120
        for key, g in gemms1.items():
            h = gemms2[key]
            if g.n == hidden:       # row-parallel: o_proj, down_proj
                assert (h.n, h.k) == (g.n, g.k // 2), key
            else:                   # column-parallel: fused qkv, gate+up, lm_head
                assert (h.n, h.k) == (math.ceil(g.n / 2), g.k), key
        attn1 = next(o for o in one if isinstance(o, Attention))
        attn2 = next(o for o in two if isinstance(o, Attention))
        assert (attn2.q_heads, attn2.kv_heads) == (attn1.q_heads // 2, attn1.kv_heads // 2)
        comms = [o for o in two if isinstance(o, Comm)]
        assert not any(isinstance(o, Comm) for o in one)
        # one all-reduce after attention and one after the MLP, in each of the 64 layers
        assert sorted(c.collective for c in comms) == ["all_reduce", "all_reduce"]
        assert all(c.count == 64 and c.num_gpus == 2 for c in comms)
    r1 = est.estimate(Plan(), 8, 2048, 256)
    r2 = est.estimate(Plan(tp=2), 8, 2048, 256)
    assert r2["ttft_ms"] < r1["ttft_ms"] and r2["tpot_ms"] < r1["tpot_ms"]
    assert r2["memory"]["weights_bytes"] < 0.55 * r1["memory"]["weights_bytes"]
    assert "Comm:all_reduce" in r2["breakdown"]["decode"]["by_type"]


def test_kv_heads_replicated_below_tp(traced):
    est = Estimator(traced("Qwen/Qwen3-30B-A3B"), system="h200_sxm")   # 32 heads, 4 KV heads
    attn = next(o for o in est.ops(Plan(tp=8), "decode") if isinstance(o, Attention))
    assert (attn.q_heads, attn.kv_heads) == (4, 1)


def test_deepseek_v3_tp8_ep8(traced):
    est = Estimator(traced("deepseek-ai/DeepSeek-V3"), system="h200_sxm", backend="trtllm")
    assert est.quant.mode == "fp8_block"
    ops = est.ops(Plan(tp=8, ep=8), "decode")
    mla = next(o for o in ops if isinstance(o, MLA))
    moe = next(o for o in ops if isinstance(o, MoE))
    assert mla.heads == 16 and (moe.ep, moe.tp) == (8, 1)
    roles = gemm_roles(est.base["decode"], est.hidden)
    by_module = {(o.module, o.n): roles[i] for i, o in enumerate(est.base["decode"]) if isinstance(o, Gemm)}
    assert by_module[("model.layers.1.mlp.gate", 256)] == "replicated"        # router
    assert by_module[("model.layers.1.self_attn", 2112)] == "replicated"      # latent down-projection
    assert by_module[("model.layers.1.self_attn.o_proj", 7168)] == "row"
    r = est.estimate(Plan(tp=8, ep=8), 1, 1024, 128)
    assert r["measured_share"]["decode"] > 0.7   # the rest: small memory-bound kernels at the launch floor
    assert r["memory"]["fits"]   # 671B at fp8 over 8 GPUs


def test_bad_plans_raise_one_line(traced):
    llama = traced("meta-llama/Llama-3.1-8B")
    est = Estimator(llama, system="h200_sxm")
    cases = [(Plan(tp=3), "tp=3 does not divide the 32 attention heads"),
             (Plan(pp=33), "pp=33 exceeds the model's 32 layers"),
             (Plan(tp=2, ep=2), "ep=2 but the model has no routed experts")]
    for plan, message in cases:
        with pytest.raises(UserError, match=message) as info:
            est.ops(plan, "decode")
        assert "\n" not in str(info.value)
    mixtral = Estimator(traced("mistralai/Mixtral-8x7B-v0.1"), system="h200_sxm")
    with pytest.raises(UserError, match="ep=16 exceeds the 8 experts"):
        mixtral.ops(Plan(tp=16, ep=16), "decode")
    with pytest.raises(UserError, match="ep=4 must divide tp x dp = 2"):
        Plan(tp=2, ep=4)
    with pytest.raises(UserError, match="--tp must be a positive integer"):
        Plan(tp=0)
    with pytest.raises(UserError, match="--batch must be an integer"):
        est.estimate(Plan(), 0, 128, 128)


def test_an_ep_that_does_not_divide_the_experts_holds_redundant_slots(traced):
    """Mixtral's 8 experts over EP 6 (attention DP 6): 2 expert slots per GPU, 4 of the 12 redundant copies, so a
    GPU holds the expert weights EP 4 gives it and takes a sixth of the routed tokens; the estimate says so, and the
    planner, which searches what an engine runs without its load balancer, leaves the plan out."""
    from costmodel import planner
    est = Estimator(traced("mistralai/Mixtral-8x7B-v0.1"), system="h200_sxm")
    six, four = est.memory(Plan(dp=6, ep=6), 1, 128, 128), est.memory(Plan(dp=4, ep=4), 1, 128, 128)
    assert six["expert_slots"] == {"per_gpu": 2, "experts": 8, "redundant": 4} and "expert_slots" not in four
    assert six["weights_bytes"] == four["weights_bytes"]
    moe = [op for op in est.ops(Plan(dp=6, ep=6), "decode") if isinstance(op, MoEShard)]
    assert moe and moe[0].flops({"B": 6}) == 2 * 6 * 6 * 2 / 6 * 4096 * 14336 * 3   # 6 ranks' tokens x top-2 / 6
    text = format_estimate(est.estimate(Plan(dp=6, ep=6), 6, 128, 128))
    assert "EP 6 does not divide the 8 experts: 2 expert slots per GPU, 12 in all, 4 redundant copies" in text
    assert not planner._valid(est, Plan(dp=6, ep=6)) and planner._valid(est, Plan(dp=4, ep=4))


def test_kv_heads_that_neither_divide_nor_replicate(traced):
    est = Estimator(traced("meta-llama/Llama-3.1-8B"), system="h200_sxm")
    base = est.base["decode"]
    # a hypothetical 6-KV-head variant of the same op: TP=4 neither splits nor replicates them
    odd = [o if not isinstance(o, Attention) else Attention(**{**o.__dict__, "kv_heads": 6}) for o in base]
    with pytest.raises(UserError, match="6 KV heads"):
        apply(odd, Plan(tp=4), hidden=est.hidden)


def test_pipeline_adds_sends_and_splits_memory(traced):
    est = Estimator(traced("meta-llama/Llama-3.1-8B"), system="h200_sxm")
    ops = est.ops(Plan(pp=2), "prefill")
    sends = [o for o in ops if isinstance(o, Comm) and o.collective == "p2p"]
    assert len(sends) == 1 and sends[0].count == 1
    one, two = est.estimate(Plan(), 1, 1024, 16), est.estimate(Plan(pp=2), 1, 1024, 16)
    assert two["ttft_ms"] > one["ttft_ms"]  # the same layers plus a send
    assert two["memory"]["weights_bytes"] < 0.6 * one["memory"]["weights_bytes"]


def test_attention_dp_with_ep_uses_all_to_all(traced):
    est = Estimator(traced("Qwen/Qwen3-30B-A3B"), system="h200_sxm")
    ops = est.ops(Plan(tp=1, dp=4, ep=4), "decode")
    a2a = [o for o in ops if isinstance(o, Comm) and o.collective == "alltoall"]
    assert len(a2a) == 2 and all(o.num_gpus == 4 for o in a2a)
    moe = next(o for o in ops if isinstance(o, MoE))
    assert moe.tokens == "(B)*4" and moe.ep == 4
    # each rank sends a token once to each GPU holding one of its 8 experts (of 128, 32 a GPU): 3.629 of the 4 on
    # average, not 8 copies; bf16 activations of hidden 2048
    ranks = 4 * (1 - math.comb(96, 8) / math.comb(128, 8))
    assert a2a[0].bytes({"B": 10}) == pytest.approx(10 * ranks * 2048 * 2, rel=1e-9)
    assert ranks == pytest.approx(3.629, abs=1e-3)


def test_mi300x_is_roofline_everywhere(traced):
    r = estimate(traced("meta-llama/Llama-3.1-8B"), system="mi300x", plan=Plan(tp=2), batch=4, isl=512, osl=64)
    for phase in ("prefill", "decode"):
        assert {row["provenance"] for row in r["breakdown"][phase]["ops"]} == {"roofline"}
        assert r["breakdown"][phase]["measured_share"] == 0
    assert r["backend"] is None and r["ttft_ms"] > 0 and r["tpot_ms"] > 0


def test_sweep_reuses_one_trace_and_matches_estimate(traced):
    mg = traced("meta-llama/Llama-3.1-8B")
    rows = sweep(mg, batches=[1, 8], isls=[512, 2048], osls=[64, 256], tps=[1, 2, 3], system="h200_sxm")
    errors = [r for r in rows if "error" in r]
    assert len(errors) == 1 and errors[0]["tp"] == 3
    ok = [r for r in rows if "error" not in r]
    assert len(ok) == 2 * 2 * 2 * 2
    one = estimate(mg, system="h200_sxm", plan=Plan(tp=2), batch=8, isl=2048, osl=256)
    row = next(r for r in ok if (r["tp"], r["batch"], r["isl"], r["osl"]) == (2, 8, 2048, 256))
    for key in ("ttft_ms", "tpot_ms", "request_latency_ms", "tokens_per_s_per_gpu"):
        assert math.isclose(row[key], one[key], rel_tol=1e-12)


def test_decode_knot_interpolation_matches_direct_pricing(traced):
    """TPOT's context-dependent part is priced at knots 2^k - 1 and interpolated; at any L it stays within 2% of
    pricing every op at that L directly."""
    est = Estimator(traced("Qwen/Qwen3-32B"), system="h200_sxm")
    plan = Plan(tp=2)
    for batch, L in [(1, 1500), (16, 5000), (64, 777)]:
        direct = sum(p.latency_ms * op.count for op, p in est.priced_ops(plan, "decode", {"B": batch, "S": 1, "L": L}))
        assert math.isclose(est.decode_step_ms(plan, batch, L), direct, rel_tol=0.02)


def test_hybrid_mixers_reach_their_tables(traced):
    from tests.conftest import shared_config

    nxt = estimate(traced(str(shared_config("Qwen--Qwen3-Next-80B-A3B-Thinking"))), system="h200_sxm",
                   plan=Plan(tp=4), batch=8, isl=2048, osl=256)
    for phase in ("prefill", "decode"):
        rows = nxt["breakdown"][phase]["ops"]
        scans = [r for r in rows if r["type"] == "Scan"]
        assert scans and all("gdn_perf" in r["source"] and r["provenance"] != "roofline" for r in scans)
        # the delta rule's conv1d is measured with it in gdn_perf: not counted twice
        assert all(r["ms"] == 0 for r in rows if r["type"] == "Conv")
    nh = estimate(traced(str(shared_config("nvidia--Nemotron-H-56B-Base-8K"))), system="h200_sxm", plan=Plan(tp=2),
                  batch=8, isl=2048, osl=256)
    conv = next(r for r in nh["breakdown"]["decode"]["ops"] if r["type"] == "Conv")
    # the decode conv is the one-token state update (causal_conv1d_update), though HF convolves kernel + 1 columns
    assert "mamba2_perf" in conv["source"] and conv["ms_each"] < 0.02
    assert nh["memory"]["kv_bytes_per_sequence"] > nh["memory"]["kv_bytes_per_token"] * (2048 + 256)  # SSM state


def test_indexer_with_fewer_products_than_tp_runs_whole(traced):
    """DeepSeek-V3.2's indexer scores one product per token (its 64 index heads in n): under TP8 it runs whole on
    every rank, as engines replicate it, where splitting its tokens stopped the estimate ("n must be at least 1,
    got 0.125")."""
    est = Estimator(traced("deepseek-ai/DeepSeek-V3.2"), system="h200_sxm")

    def indexer(ops):
        return [o for o in ops if isinstance(o, Gemm) and o.operand == "activation" and "indexer" in o.module]

    assert indexer(est.ops(Plan(tp=8, ep=8), "decode")) == indexer(est.base["decode"]) != []
    r = est.estimate(Plan(tp=8, ep=8), 1, 1024, 128)
    assert r["tpot_ms"] > 0 and r["memory"]["fits"]


def test_a_tensorrt_llm_estimator_prices_fp8_gemms_at_the_checkpoints_static_input_scale(db):
    """The engine's fp8_input_scale reaches its Pricer: TensorRT-LLM's (static) takes the dynamic scale off the fp8
    lane, a Pricer of the table as timed does not."""
    fp8 = resolve_quant({"quantization_config": {"quant_method": "fp8"}})
    op, sizes = _gemm_op("(B)*(S)", 4096, 4096), {"B": 1, "S": 1, "L": 0}
    static = Pricer(db, fp8, fp8_input_scale=load_overheads("trtllm", None, "h200_sxm").fp8_input_scale)
    assert static.price(op, sizes).latency_ms == pytest.approx(
        db.gemm(1, 4096, 4096, "fp8").latency_ms - db.compute_scale(1, 4096).latency_ms, rel=1e-12)
    assert Pricer(db, fp8).price(op, sizes) == db.gemm(1, 4096, 4096, "fp8")
