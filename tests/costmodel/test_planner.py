"""The deployment planner (costmodel.planner): its plan space, worker ratios, Pareto front and SLA choice, and that
every candidate's figures are costmodel.serving's own."""
from __future__ import annotations

import pytest

from conftest import tiny_config, write_config
from core.errors import UserError
from costmodel import planner
from costmodel.parallel import Plan
from costmodel.serving import agg_point, disagg_estimate

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, vocab_size=1000,
             num_hidden_layers=4)


_TRACED: dict = {}


@pytest.fixture
def traced(tmp_path_factory):
    """The tiny model traced once per module, in the session's isolated trace cache (conftest)."""
    from graph.match import match_model
    from graph.model_graph import trace_model

    if not _TRACED:
        d = tmp_path_factory.mktemp("tiny-llama")
        write_config(d, tiny_config("llama", **SMALL))
        mg = trace_model(str(d))
        _TRACED["graph"] = mg, match_model(mg)
    return _TRACED["graph"]


def _tps(plans):
    return [(p.tp, p.pp, p.ep, p.dp) for p in plans]


def test_dense_plan_space_on_eight_gpus():
    assert _tps(planner.plan_space(8, experts=False, gpus_per_node=8)) == [
        (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (4, 1, 1, 1), (2, 2, 1, 1), (1, 4, 1, 1),
        (8, 1, 1, 1), (4, 2, 1, 1), (2, 4, 1, 1), (1, 8, 1, 1)]


def test_expert_plan_space_adds_attention_dp_and_ep():
    plans = planner.plan_space(4, experts=True, gpus_per_node=8)
    # TP x PP as dense (6 plans) with EP over the TP GPUs: 1 + 2 + 1 + 3 + 2 + 1 = 10; attention DP (TP 1):
    # DP2 PP1 (EP 1, 2), DP2 PP2 (EP 1, 2), DP4 PP1 (EP 1, 2, 4) = 7
    assert len(plans) == 17
    assert Plan(tp=1, pp=1, ep=4, dp=4) in plans and Plan(tp=4, pp=1, ep=4, dp=1) in plans
    assert all(p.tp == 1 for p in plans if p.dp > 1)
    assert all((p.tp * p.dp) % p.ep == 0 and p.gpus <= 4 for p in plans)


def test_worker_ratios_fill_the_budget_without_multiples():
    # x prefill workers of 1 GPU and y decode workers of 2 GPUs whose x + 2y GPUs divide 8, gcd(x, y) = 1
    assert planner._ratios(8, 1, 2) == [(2, 1), (2, 3), (6, 1)]
    # pools of 2 GPUs each in 12: x + y divides 6
    assert planner._ratios(12, 2, 2) == [(1, 1), (1, 2), (1, 5), (2, 1), (5, 1)]


def _cand(gpu, user, ttft, tpot, mode="agg"):
    return {"mode": mode, "tokens_per_s_per_gpu": gpu, "tokens_per_s_per_user": user, "ttft_ms": ttft,
            "tpot_ms": tpot}


def test_front_and_choice_at_the_sla():
    a = _cand(700.0, 20.0, 900.0, 50.0)      # meets both limits at the most tokens/s/GPU
    b = _cand(800.0, 15.0, 950.0, 66.7)      # more per GPU but TPOT over 50 ms: on the front, not chosen
    c = _cand(650.0, 18.0, 800.0, 55.6)      # dominated by a
    d = _cand(900.0, 25.0, 1200.0, 40.0)     # TTFT over: off the front
    e = _cand(300.0, 60.0, 300.0, 16.7, mode="disagg")
    r = planner.choose([a, b, c, d, e], ttft_ms=1000.0, tpot_ms=50.0)
    assert r["best"]["agg"] is a and r["best"]["disagg"] is e and r["best"]["overall"] is a
    assert r["fronts"]["agg"] == [b, a]
    assert r["candidates"] == {"total": 5, "agg": 4, "disagg": 1, "meeting_sla": 2}
    assert r["closest"] == []


def test_nothing_meets_the_sla_gives_the_closest_and_their_miss():
    a = _cand(700.0, 20.0, 1200.0, 50.0)     # misses TTFT by 20%
    b = _cand(800.0, 15.0, 1000.0, 80.0)     # misses TPOT by 60%
    r = planner.choose([b, a], ttft_ms=1000.0, tpot_ms=50.0, modes=("agg",))
    assert r["best"]["overall"] is None
    assert [c["tokens_per_s_per_gpu"] for c in r["closest"]] == [700.0, 800.0]
    assert r["closest"][0]["miss"] == pytest.approx({"ttft": 0.2, "tpot": 0.0})
    assert r["closest"][1]["miss"] == pytest.approx({"ttft": 0.0, "tpot": 0.6})


def test_candidates_are_the_serving_models_figures(traced):
    mg, matched = traced
    report, cands = planner.plan_deployment(mg, matched, system="h200_sxm", gpus=2, isl=256, osl=32)
    est = planner.estimators(mg, matched, system="h200_sxm")[0]
    agg = next(c for c in cands if c["mode"] == "agg" and c["plan"] == {"tp": 2, "pp": 1, "ep": 1, "dp": 1}
               and c["concurrency"] == 16)
    assert agg["tokens_per_s_per_gpu"] == agg_point(est, Plan(tp=2), 16, 256, 32)["tokens_per_s_per_gpu"]
    dis = next(c for c in cands if c["mode"] == "disagg" and c["concurrency"] == 8)
    row = disagg_estimate(est, Plan(), Plan(), 8, 256, 32, prefill_batch=dis["prefill"]["batch"], full=False)
    assert (dis["ttft_ms"], dis["tpot_ms"]) == (row["ttft_ms"], row["tpot_ms"])
    # the tiny model fits any concurrency: every plan of 1-2 GPUs (TP1, TP2, PP2) at every concurrency, and one
    # disagg pool pair (1 + 1 GPUs, x:y = 1:1) at every prompt batch (1, 2, 4 and the 32 prompts of 256 tokens
    # TensorRT-LLM's 8192-token budget fits) and decode concurrency
    n = len(planner.CONCURRENCY)
    assert report["searched"]["prefill_batches"] == [1, 2, 4, 32]
    assert report["candidates"] == {"total": 3 * n + 4 * n, "agg": 3 * n, "disagg": 4 * n,
                                    "meeting_sla": 7 * n}
    assert report["best"]["overall"]["tokens_per_s_per_gpu"] == max(c["tokens_per_s_per_gpu"] for c in cands)


def test_a_budget_below_the_smallest_plan_is_one_error(traced):
    mg, matched = traced
    # KV per token: 4 layers x (K + V) x 2 heads x 32 dims x 2 bytes = 1 KiB; 160M tokens = 152.6 GiB > 141 GiB; TP2 holds
    # one KV head per GPU, half of it
    with pytest.raises(UserError, match=r"smallest plan that fits needs 2 GPUs \(TP2 PP1 EP1 DP1\)"):
        planner.plan_deployment(mg, matched, system="h200_sxm", gpus=1, isl=160_000_000, osl=1, modes=("agg",))
