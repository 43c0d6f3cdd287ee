"""Speculative decoding with the model's own MTP layers: the count a config declares, the MTP layer's ops derived
from the trace, the step and TPOT formulas, and bad input."""
from __future__ import annotations

import json

import pytest

from cli import main
from conftest import shared_config
from core.errors import UserError
from core.ops import MLA, Gemm, MemoryBound, MoE
from costmodel.estimate import Estimator
from costmodel import serving
from costmodel.parallel import Plan
from costmodel.speculative import DEFAULT_ACCEPTANCE, Speculation, mtp_layers, mtp_ops, speculative_estimate


@pytest.fixture
def deepseek(deepseek_v3_h200):
    return deepseek_v3_h200


def test_mtp_layers_from_real_configs_and_keys():
    load = lambda name: json.loads(shared_config(name).read_text())  # noqa: E731
    assert mtp_layers(load("deepseek-ai--DeepSeek-V3")) == 1          # num_nextn_predict_layers: 1
    assert mtp_layers(load("moonshotai--Kimi-K2-Instruct")) == 0      # num_nextn_predict_layers: 0
    assert mtp_layers(load("meta-llama--Llama-3.1-8B")) == 0
    assert mtp_layers({"mtp_num_hidden_layers": 1}) == 1              # Qwen3.5's key
    assert mtp_layers({"text_config": {"num_mtp_modules": 3}}) == 3  # MiniMax-M2.5's, in a composite


def test_tokens_per_step_and_bad_acceptance():
    assert Speculation(1, 0.85).tokens_per_step == pytest.approx(1.85)
    assert Speculation(3, 0.5).tokens_per_step == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert Speculation().acceptance == DEFAULT_ACCEPTANCE == 0.85
    for bad in (-0.1, 1.5):
        with pytest.raises(UserError, match="must lie in"):
            Speculation(1, bad)


def test_mtp_layer_is_the_last_layer_kind_plus_its_projection(deepseek):
    """DeepSeek-V3's MTP layer: one MoE layer (its last kind, layers 3-60) + eh_proj [2 x 7168 -> 7168] + 3 norms
    + the shared LM head."""
    plan = Plan(tp=8, ep=8)
    ops = mtp_ops(deepseek, plan, "decode")
    assert sum(op.count for op in ops if isinstance(op, MLA)) == 1
    moe = [op for op in ops if isinstance(op, MoE)]
    assert len(moe) == 1 and moe[0].count == 1 and moe[0].experts == 256
    eh = next(op for op in ops if op.module == "mtp.eh_proj")
    assert (eh.n, eh.k) == (7168, 14336) and eh.flops({"B": 4, "S": 1, "L": 0}) == 2 * 4 * 7168 * 14336
    assert next(op for op in ops if isinstance(op, MemoryBound) and op.what == "norm" and op.layer_kind is None).count == 3
    head = next(op for op in ops if isinstance(op, Gemm) and op.module == "lm_head")
    assert head.n == 129280 // 8   # the vocab, split over TP8 as the model's own head


def test_static_tpot_is_step_over_expected_tokens(deepseek):
    plan, spec = Plan(tp=8, ep=8), Speculation(2, 0.8)
    r = speculative_estimate(deepseek, "static", plan, 4, 4000, 500, spec)
    s = r["speculative"]
    # verify: the decode step at 4 requests x 3 tokens; step = verify + 2 drafts; tokens per step 1 + 0.8 + 0.64
    assert s["verify_ms"] == pytest.approx(deepseek.tpot_ms(plan, 12, 4000, 500))
    assert s["step_ms"] == pytest.approx(s["verify_ms"] + 2 * s["draft_ms"])
    assert r["tpot_ms"] == pytest.approx(s["step_ms"] / 2.44)
    assert s["tpot_without_ms"] == pytest.approx(deepseek.tpot_ms(plan, 4, 4000, 500))
    assert r["request_latency_ms"] == pytest.approx(r["ttft_ms"] + 499 * r["tpot_ms"])


def test_agg_decodes_in_fewer_steps(deepseek):
    r = speculative_estimate(deepseek, "agg", Plan(tp=8, ep=8), 1, 4000, 500, Speculation(1, 0.85))
    # one request: a prefill step, then 499 decode tokens in 499 / 1.85 steps (a verify of 2 tokens + 1 draft each)
    steps = r["serving"]["steps"]
    assert steps["decode_only"]["count"] + steps["mixed"]["count"] == pytest.approx(1 + 499 / 1.85)
    assert r["tpot_ms"] < r["speculative"]["tpot_without_ms"]


def _error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tracecost: error: ")
    return err[0]


def test_bad_input_one_line(capsys, deepseek):
    assert "[0, 1]" in _error(capsys, "estimate", "x", "--speculative", "mtp", "--acceptance", "1.2")
    assert "need --speculative" in _error(capsys, "estimate", "x", "--draft-tokens", "2")
    with pytest.raises(UserError, match="not disagg"):
        speculative_estimate(deepseek, "disagg", Plan(tp=8), 1, 128, 16, Speculation())
    with pytest.raises(UserError, match="declares no MTP layers"):
        from graph.model_graph import trace_model

        speculative_estimate(Estimator(trace_model(str(shared_config("meta-llama--Llama-3.1-8B"))),
                                       system="h200_sxm"), "static", Plan(), 1, 128, 16, Speculation())


def test_plan_with_mtp_prices_agg_candidates_speculatively(deepseek):
    """plan --speculative mtp: every agg candidate is the speculative agg point (TPOT per token = step time over
    1.85 tokens per step at the default acceptance); disagg is not searched; a model without MTP is one line."""
    from costmodel import planner
    from costmodel.speculative import agg_point

    spec = Speculation()
    report, cands = planner.plan_deployment(deepseek.model, deepseek.matched, system="h200_sxm", gpus=8, isl=1024,
                                            osl=256, modes=("agg", "disagg"), speculation=spec)
    assert report["modes"] == ["agg"] and report["speculative"]["tokens_per_step"] == pytest.approx(1.85)
    assert {c["mode"] for c in cands} == {"agg"}
    c = next(c for c in cands if c["plan"]["tp"] == 8 and c["plan"]["ep"] == 8 and c["batch_per_rank"] == 16)
    est = next(e for e in planner.estimators(deepseek.model, deepseek.matched, system="h200_sxm")
               if e.quant.mode == c["quant"])
    point = agg_point(est, Plan(tp=8, ep=8), 16, 1024, 256, spec)
    assert c["tpot_ms"] == pytest.approx(point["tpot_ms"]) and c["ttft_ms"] == pytest.approx(point["ttft_ms"])
    plain = serving.agg_point(est, Plan(tp=8, ep=8), 16, 1024, 256)
    assert c["tpot_ms"] < plain["tpot_ms"]   # 1.85 tokens per step for one verify of 2 tokens and one draft
    with pytest.raises(UserError, match="agg mode only"):
        planner.plan_deployment(deepseek.model, deepseek.matched, system="h200_sxm", gpus=8, isl=1024, osl=256,
                                modes=("disagg",), speculation=spec)


def test_agg_takes_the_requests_of_the_benchmark(deepseek):
    """--requests reaches the speculative agg point: one round of 4 requests is the first round alone, so TTFT is
    that round's mean plus the engine's delivery at the speculative step."""
    plan, spec = Plan(tp=8, ep=8), Speculation()
    one = speculative_estimate(deepseek, "agg", plan, 4, 4000, 500, spec, bench=serving.Benchmark(4))
    ten = speculative_estimate(deepseek, "agg", plan, 4, 4000, 500, spec)
    assert one["serving"]["requests"] == 4 and ten["serving"]["requests"] == 40
    step = one["tpot_ms"] * spec.tokens_per_step
    ov = serving.step_pricer(deepseek, plan).ov
    delivery = ov.first_token_ms(step) + ov.ingest_ms(4000, 2.5)   # one round: 4 prompts together
    assert one["ttft_ms"] == pytest.approx(one["serving"]["steps"]["burst"]["ttft_ms"] + delivery, rel=1e-9)
    assert one["ttft_ms"] > ten["ttft_ms"]
