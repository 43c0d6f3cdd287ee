"""Serving modes (costmodel.serving): agg's steady state against the request-level simulation and the static
estimate, a mixed step's shapes, disagg's KV transfer, the overheads file, and bad input."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
from click.testing import CliRunner

from cli import main
from conftest import session_trace_cache, tiny_config, write_config
from core.errors import UserError
from costmodel import overheads, serving
from costmodel.estimate import Estimator, sweep
from costmodel.parallel import Plan

# trtllm's initial values in systems/engines/overheads.yaml (before the fitted file)
STEP_MS, PER_SEQ_MS, EAGER_MS = 0.3, 0.002, 1.0
# Llama-3.1-8B KV per token: 32 layers x (K + V) x 8 heads x 128 dims x 2 bytes (bf16)
KV_BYTES_PER_TOKEN = 32 * 2 * 8 * 128 * 2


@pytest.fixture(scope="module")
def est(tmp_path_factory):
    from graph.model_graph import trace_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACECOST_CACHE", str(session_trace_cache(tmp_path_factory)))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return Estimator(trace_model("meta-llama/Llama-3.1-8B"), system="h200_sxm", backend="trtllm")


def test_overheads_are_the_files_values(est, monkeypatch, tmp_path):
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "none.yaml")   # the shipped file alone
    ov = overheads.load_overheads("trtllm", est.db.version)
    assert (ov.request_ms, ov.first_token_steps) == (0.0, 0.0)
    assert (ov.step_ms, ov.per_sequence_ms, ov.eager_step_ms, ov.max_tokens_per_step) == (STEP_MS, PER_SEQ_MS,
                                                                                           EAGER_MS, 8192)
    assert ov.graph_sizes == tuple(range(1, 33)) + (64, 128)    # TensorRT-LLM's default capture list
    assert ov.graph_batch(33) == 64 and ov.graph_batch(129) is None
    assert ov.prompt_token_us == 0.0 and ov.graph_kernel_scale == 1.0
    assert all(ov.sources[f] for f in overheads.FIELDS)


def test_overheads_differ_by_gpu_where_the_engine_does(monkeypatch, tmp_path):
    """SGLang sizes its chunk and CUDA graphs by GPU memory: 8192 tokens and graphs to 256 on H200, 16384 and 512
    on the GPUs of >= 160 GiB (one entry in the file shared by B200, B300, GB200, GB300)."""
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "none.yaml")
    hopper, blackwell = (overheads.load_overheads("sglang", None, s) for s in ("h200_sxm", "b300_sxm"))
    assert (hopper.max_tokens_per_step, hopper.graph_sizes[-1], len(hopper.graph_sizes)) == (8192, 256, 36)
    assert (blackwell.max_tokens_per_step, blackwell.graph_sizes[-1], len(blackwell.graph_sizes)) == (16384, 512, 52)


def test_launch_settings_override_the_defaults(monkeypatch, tmp_path):
    """A CUDA-graph max batch extends or cuts the engine's own capture rule: vLLM's sizes go on by 16 past 512
    (32 more to 1024); a cap of 64 keeps 1, 2, 4 and 8 to 64 by 8; a cap between sizes is captured itself."""
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "none.yaml")
    vllm = overheads.load_overheads("vllm")
    wide = vllm.with_settings(overheads.EngineSettings(cuda_graph_max_batch=1024, max_num_seqs=300))
    assert (len(wide.graph_sizes), wide.graph_sizes[-2:], wide.max_num_seqs) == (83, (1008, 1024), 300)
    assert wide.sources["max_num_seqs"] == "launch setting" and wide.step_ms == vllm.step_ms
    narrow = vllm.with_settings(overheads.EngineSettings(cuda_graph_max_batch=64))
    assert narrow.graph_sizes == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64) and narrow.graph_batch(65) is None
    assert vllm.with_settings(overheads.EngineSettings(cuda_graph_max_batch=100)).graph_sizes[-2:] == (96, 100)
    assert vllm.with_settings(overheads.EngineSettings()) is vllm


def test_prompts_queue_in_the_front_end(est):
    """A prompt waits at the front end for the prompts that came with it and then its own, prompt_token_us x ISL
    each: 3 ms for 2000 tokens at 1.5 us a token. 7 clients: the first round's prompts come together (4 on average,
    12 ms), each of the 9 later rounds' one at a time (3 ms), 3.9 ms over the benchmark; clients that stay in
    lockstep (fixed lengths on an engine that prefills first) come together every round, 12 ms. One client: 3 ms."""
    sp = serving.step_pricer(est, Plan())
    fixed = serving.Benchmark(fixed_lengths=True)
    for mixed, bench, waits in ((True, serving.CLIENT, ((7, 3.9), (1, 3.0))), (False, fixed, ((7, 12.0), (1, 3.0)))):
        slow, quick = (serving.StepPricer(est, Plan(), dataclasses.replace(sp.ov, prompt_token_us=us,
                                                                          mixed_prefill=mixed)) for us in (1.5, 0.0))
        for clients, wait in waits:
            a, b = (serving.agg_benchmark(p, clients, 2000, 100, bench) for p in (slow, quick))
            assert a["ttft_ms"] - b["ttft_ms"] == pytest.approx(wait, rel=1e-9)
            assert a["tpot_ms"] == b["tpot_ms"]
            assert a["ingest_prompts"] == pytest.approx(wait / 3.0, rel=1e-9)


def test_agg_at_one_client_is_static_batch_one_plus_overheads(est):
    """C = 1, ISL 1024 within the 8192-token budget: the prefill is one step alone (eager), every decode step one
    request (a CUDA graph of batch 1); the first round is that same step."""
    plan = Plan()
    ov = serving.step_pricer(est, plan).ov
    static = est.point(plan, 1, 1024, 128)
    agg = serving.agg_point(est, plan, 1, 1024, 128)
    step = ov.step_ms + ov.per_sequence_ms
    assert math.isclose(agg["tpot_ms"], ov.graph_kernel_scale * static["tpot_ms"] + step, rel_tol=1e-12)
    delivery = ov.request_ms + ov.first_token_steps * agg["tpot_ms"] + ov.ingest_ms(1024, 1)
    assert math.isclose(agg["ttft_ms"], static["ttft_ms"] + step + ov.eager_step_ms + delivery, rel_tol=1e-12)
    assert math.isclose(agg["request_latency_ms"], agg["ttft_ms"] + 127 * agg["tpot_ms"], rel_tol=1e-12)


def test_static_mode_is_todays_estimate(est):
    plan = Plan()
    static = serving.mode_estimate(est, "static", plan, 8, 2048, 256)
    today = est.estimate(plan, 8, 2048, 256)
    assert static["mode"] == "static"
    for key in ("ttft_ms", "tpot_ms", "request_latency_ms", "tokens_per_s_per_gpu"):
        assert static[key] == today[key]


def test_mixed_step_prices_gemms_at_all_tokens(est, monkeypatch):
    """63 decodes + a 1024-token chunk: every layer GEMM at m = 1087, the LM head at the 64 sequences with a token."""
    fresh = Estimator(est.model, system="h200_sxm", backend="trtllm", matched=est.matched)
    sp = serving.step_pricer(fresh, Plan())
    seen = []
    real = fresh.db.gemm
    monkeypatch.setattr(fresh.db, "gemm", lambda m, n, k, q, **kw: (seen.append((m, n, k)), real(m, n, k, q, **kw))[1])
    sp.mixed_step_ms(63, 1024, 64, sp.chunk_attention_ms(0, 1024), 1024, 1151)
    assert {m for m, n, k in seen if n != 128256} == {1087}
    assert {(m, k) for m, n, k in seen if n == 128256} == {(64, 4096)}   # lm_head: vocab 128256 x hidden 4096
    assert {(n, k) for m, n, k in seen if n != 128256} == {(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)}


def test_chunks_add_up_to_the_prompts_attention(est):
    """Chunk attention over its cached prefix is attn(prefix + chunk) - attn(prefix): two 512-token chunks cost the
    1024-token prompt's attention, 32 layers of the context-attention table at S = 1024."""
    sp = serving.step_pricer(est, Plan())
    two = sp.chunk_attention_ms(0, 512) + sp.chunk_attention_ms(512, 512)
    table = est.db.context_attention(1, 1024, 32, 8, 128, 0, "bf16", "bf16").latency_ms
    assert math.isclose(two, 32 * table, rel_tol=1e-12)
    assert sp.chunk_attention_ms(512, 512) > sp.chunk_attention_ms(0, 512)   # the later chunk sees more keys


def test_decode_step_pads_to_the_captured_graph(est):
    sp = serving.step_pricer(est, Plan())
    ov = sp.ov
    assert ov.graph_batch(40) == 64 and ov.graph_batch(200) is None
    # a graph step takes graph_kernel_scale of its kernels' summed timings; an eager one all of it
    assert math.isclose(sp.decode_step_ms(40, 1024, 128),
                        ov.graph_kernel_scale * est.tpot_ms(Plan(), 64, 1024, 128) + ov.step_ms
                        + 40 * ov.per_sequence_ms, rel_tol=1e-12)
    assert math.isclose(sp.decode_step_ms(200, 1024, 128),   # above the largest captured batch (128): eager
                        est.tpot_ms(Plan(), 200, 1024, 128) + ov.step_ms + 200 * ov.per_sequence_ms
                        + ov.eager_step_ms, rel_tol=1e-12)


def shipped_pricer(est, budget, **settings):
    """A step pricer with the overheads file's own values (no fitted file): the checks against the simulation test
    the serving model's structure, which should not move with each refit of the fitted constants."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(overheads, "FITTED_FILE", overheads.FITTED_FILE.with_name("none.yaml"))
        ov = overheads.load_overheads(est.db.backend, est.db.version, est.db.system.name)
    return serving.StepPricer(est, Plan(), ov.with_settings(overheads.EngineSettings(max_tokens_per_step=budget,
                                                                                      **settings)))


@pytest.mark.parametrize("clients, isl, osl, budget", [
    (1, 1024, 128, None),      # one request at a time
    (8, 1024, 64, None),       # one prefill beside 7 decodes
    (4, 20000, 32, None),      # prompts chunked over 3 steps
    (128, 2048, 32, None),     # the budget, not the requests, sets the pace: requests wait to prefill
    (16, 1024, 64, 2048),      # a small budget
])
def test_steady_state_agrees_with_the_simulation(est, clients, isl, osl, budget):
    sp = shipped_pricer(est, budget)
    analytic = serving.agg_steady_state(sp, clients, isl, osl)
    simulated = serving.simulate_agg(sp, clients, isl, osl)
    for key in ("ttft_ms", "tpot_ms", "request_latency_ms"):
        assert math.isclose(analytic[key], simulated[key], rel_tol=0.05), (key, analytic[key], simulated[key])


@pytest.mark.parametrize("clients, isl, osl, budget, together", [
    (4, 1024, 256, 16384, 1.3),    # a prompt comes every ~70 steps: most wait the whole window alone
    (64, 1024, 128, 16384, 10.2),  # ~0.5 a step: the first of a cluster waits the window, the ~9 after it less
    (32, 1024, 256, 4096, 3.4),    # the threshold is 3686 tokens beside the decodes: 4 prompts
])
def test_held_prompts_agree_with_the_simulation(est, clients, isl, osl, budget, together):
    """TensorRT-LLM's batch waiting (20 steps, 90% of the budget, as InferenceX launches its 1k/1k runs) in the
    steady state (clients staggered, fixed lengths): prompts come at R / N a step and are let through in clusters
    (held_prompts), which prefill together; TTFT within 8% (the simulation's clusters are not all alike)."""
    sp = shipped_pricer(est, budget, batch_wait_steps=20, batch_wait_token_ratio=0.9)
    analytic = serving.agg_steady_state(sp, clients, isl, osl)
    simulated = serving.simulate_agg(sp, clients, isl, osl)
    assert analytic["steps"]["prompts_together"] == pytest.approx(together, abs=0.05)
    assert analytic["steps"]["held_steps"] < 20
    for key, tol in (("ttft_ms", 0.08), ("tpot_ms", 0.02), ("request_latency_ms", 0.04)):
        assert math.isclose(analytic[key], simulated[key], rel_tol=tol), (key, analytic[key], simulated[key])


def test_polling_every_n_steps_agrees_with_the_simulation(est):
    """SGLang launched with --scheduler-recv-interval 30 takes new requests in every 30th step: a prompt that comes
    while others decode waits 14.5 steps on average. The analytic model takes arrivals as random, 4 / 270 a step,
    so 1.4 prompts share a poll; the staggered simulation's 4 clients come evenly, ~68 steps apart, and never do:
    its TTFT is below the analytic one (by 15%; in a benchmark they agree: the test below)."""
    sp = shipped_pricer(est, None, recv_interval_steps=30)
    analytic = serving.agg_steady_state(sp, 4, 1024, 256)
    simulated = serving.simulate_agg(sp, 4, 1024, 256)
    assert analytic["steps"]["held_steps"] == 14.5
    assert analytic["steps"]["prompts_together"] == pytest.approx(1 + 29 * 4 / analytic["steps"]["cycle_steps"])
    assert 1.0 < analytic["ttft_ms"] / simulated["ttft_ms"] < 1.2
    for key, tol in (("tpot_ms", 0.02), ("request_latency_ms", 0.02)):
        assert math.isclose(analytic[key], simulated[key], rel_tol=tol), (key, analytic[key], simulated[key])


@pytest.mark.parametrize("clients, isl, osl, budget, settings, window", [
    (16, 1024, 1024, 16384, dict(batch_wait_steps=20, batch_wait_token_ratio=0.9), None),
    (128, 1024, 1024, 16384, dict(batch_wait_steps=20, batch_wait_token_ratio=0.9), None),
    (128, 1024, 1024, 8192, dict(batch_wait_steps=40, batch_wait_token_ratio=0.8), 40),   # 7 prompts reach 0.8
    (32, 1024, 256, 4096, dict(batch_wait_steps=20, batch_wait_token_ratio=0.9), 20),     # 4 prompts fill a step
    (128, 1024, 1024, 8192, dict(recv_interval_steps=30), None),
    (4, 1024, 1024, 8192, dict(recv_interval_steps=30), None),
])
def test_held_prompts_in_a_benchmark_agree_with_the_simulation(est, clients, isl, osl, budget, settings, window):
    """What holding prompts back adds to a benchmark's TTFT (the same runs without it subtracted), analytic against
    the request-level simulation of a benchmark client (all clients at once, 10 x C requests, lengths in
    [0.8 L, L]): within 25% (on a grid of C 4-256, windows 10-60, ratios 0.5-0.9, budgets 4096-16384, ISL
    1024-8192, OSL 256-1024, polls every 5-30 steps: within ~20% at OSL 1024 and ISL <= 4096, up to ~40% over at
    OSL 256-512 and ~50% over with 8192-token prompts, where the simulation's clusters are fewer). A prompt waits
    less than the window once others come in it (the cluster's later prompts wait less; 7 prompts at 0.8 of 8192
    close it early), but what the cluster's prefill adds brings it back near the window at 20 steps. Chunked prefill
    on: the whole prompts of TensorRT-LLM's default change which steps reach the threshold
    (test_a_hold_that_always_times_out_caps_the_prompts)."""
    base, held = shipped_pricer(est, budget, chunked_prefill=True), shipped_pricer(est, budget, chunked_prefill=True,
                                                                                   **settings)
    analytic = [serving.agg_benchmark(sp, clients, round(0.9 * isl), round(0.9 * osl),
                                      serving.Benchmark(10 * clients)) for sp in (base, held)]
    simulated = [serving.simulate_agg(sp, clients, isl, osl, 10 * clients, start="burst", range_ratio=0.8)
                 for sp in (base, held)]
    extra = analytic[1]["ttft_ms"] - analytic[0]["ttft_ms"]
    extra_simulated = simulated[1]["ttft_ms"] - simulated[0]["ttft_ms"]
    assert math.isclose(extra, extra_simulated, rel_tol=0.25), (extra, extra_simulated)
    if window:   # the threshold closes the window early: well under the whole window
        assert extra < 0.7 * window * simulated[0]["tpot_ms"]


def test_a_hold_that_always_times_out_caps_the_prompts(est):
    """Whole prompts of 1600 tokens: two fit a 4096-token step beside 31 decodes (3231 tokens), under 0.9 x 4096, so
    every new prompt is held the whole 20-step window and each release lets two through: at most 2 prompts per 21
    steps, 32 x 21 / 2 = 336 steps a cycle where 256 decode steps and a prefill would do. The steady state agrees
    with the request-level simulation (fixed lengths, every step scheduled)."""
    base = shipped_pricer(est, 4096)
    held = shipped_pricer(est, 4096, batch_wait_steps=20, batch_wait_token_ratio=0.9)
    assert not base.ov.chunked_prefill and serving.holds_to_timeout(held.ov, 32, 1600)
    assert not serving.holds_to_timeout(shipped_pricer(est, 4096, batch_wait_steps=20, batch_wait_token_ratio=0.9,
                                                       chunked_prefill=True).ov, 32, 1600)
    analytic = [serving.agg_steady_state(sp, 32, 1600, 256) for sp in (base, held)]
    simulated = [serving.simulate_agg(sp, 32, 1600, 256, 8 * 32) for sp in (base, held)]
    assert analytic[1]["steps"]["cycle_steps"] == pytest.approx(336)
    extra = [run[1]["ttft_ms"] - run[0]["ttft_ms"] for run in (analytic, simulated)]
    assert math.isclose(*extra, rel_tol=0.15), extra
    assert math.isclose(analytic[1]["request_latency_ms"], simulated[1]["request_latency_ms"], rel_tol=0.02)


def test_prompts_are_held_until_the_threshold_or_the_window():
    """needed = ceil((0.9 x 16384 - 63 decodes) / 1024) = 15 prompts; at 0.5 a step they gather in 28 steps, the
    first waiting 28, the 14 after it 14 on average: 28 x (1 + 7) / 15 steps; at 0.1 a step the 40-step window
    closes first with 4 more prompts: 40 x (1 + 2) / 5 = 24 steps; over two rounds, the mean of the two."""
    ov = overheads.load_overheads("trtllm").with_settings(overheads.EngineSettings(
        max_tokens_per_step=16384, batch_wait_steps=40, batch_wait_token_ratio=0.9))
    assert serving.held_prompts(ov, [0.5], 64, 1024) == pytest.approx((28 * 8 / 15, 15))
    assert serving.held_prompts(ov, [0.1], 64, 1024) == pytest.approx((24, 5))
    assert serving.held_prompts(ov, [0.5, 0.1], 64, 1024) == pytest.approx(((28 * 8 / 15 + 24) / 2, 10))
    assert serving.held_prompts(ov, [0.5], 64, 16384) == (0.0, 1.0)        # one prompt fills the step
    assert serving.held_prompts(ov, [0.5], 4, 1024) == pytest.approx((6 * 2.5 / 4, 4))   # all 4 waiting: released
    assert serving.held_prompts(ov.with_settings(overheads.EngineSettings(batch_wait_token_ratio=0.0)), [0.5], 64,
                                1024) == (0.0, 1.0)   # TensorRT-LLM lets prompts through at once unless both are set
    assert serving.held_prompts(ov, [0.5], 1, 1024) == (0.0, 1.0)          # nothing else runs: no holding
    polled = overheads.load_overheads("sglang").with_settings(overheads.EngineSettings(recv_interval_steps=30))
    assert serving.held_prompts(polled, [0.5], 64, 1024) == (14.5, 15.5)   # 14.5 steps, with 29 x 0.5 others
    with pytest.raises(UserError, match="batch-wait-token-ratio"):
        overheads.EngineSettings(batch_wait_token_ratio=1.5)


def test_attention_dp_ranks_wait_for_each_other():
    """Balancing 8 attention-DP ranks for up to 60 steps, a rank getting 0.016 prompts a step: the other 7 ranks
    have one each after 7 / (8 x 0.016) = 54.7 steps (the engine gets 8 x 0.016 a step); 0.875 more prompts come to
    the rank meanwhile, so a prompt waits 54.7 x (1 + 0.4375) / 1.875 steps. Batch waiting is off under attention
    DP (TensorRT-LLM applies one or the other), and one rank has nothing to wait for."""
    ov = overheads.load_overheads("trtllm").with_settings(overheads.EngineSettings(
        attention_dp_wait_steps=60, batch_wait_steps=20, batch_wait_token_ratio=0.9))
    window = 7 / (8 * 0.016)
    assert serving.held_prompts(ov, [0.016], 16, 1024, ranks=8) == pytest.approx(
        (window * 1.4375 / 1.875, 1.875))
    assert serving.held_prompts(ov, [0.001], 16, 1024, ranks=8) == pytest.approx((60 * 1.03 / 1.06, 1.06))
    no_balance = ov.with_settings(overheads.EngineSettings(attention_dp_wait_steps=0))
    assert serving.held_prompts(no_balance, [0.016], 16, 1024, ranks=8) == serving.held_prompts(no_balance, [0.016],
                                                                                                16, 1024)


def test_a_benchmarks_rounds_come_bunched():
    """OSL 900 drawn in [0.8 L, L]: each round adds a spread of 2 x 0.2 / 1.8 x 900 = 200 steps, so 64 prompts come
    in 200 steps in round 2 and sqrt(pi x 9 / 3) = 3.07 times as spread in round 10; the steady state spreads them
    over the cycle."""
    rates = serving.arrival_rates(64, 1000, 900, 10)
    assert len(rates) == 9 and rates[0] == pytest.approx(64 / 200 / math.sqrt(math.pi / 3))
    assert rates[-1] == pytest.approx(64 / (200 * math.sqrt(math.pi * 9 / 3)))
    assert serving.arrival_rates(64, 1000, 900, None) == [0.064]
    assert serving.arrival_rates(64, 150, 900, 10) == [64 / 150] * 9    # never more spread than the cycle


def benchmark_and_simulation(sp, clients: int, isl: int, osl: int) -> tuple[dict, dict, float]:
    """A benchmark client (all clients at once, 10 x C requests, lengths uniform in [0.8 L, L]): the analytic
    figures at the mean lengths, the request-level simulation's, and the analytic TTFT without what the engine adds
    outside its steps (which the simulation does not model)."""
    analytic = serving.agg_benchmark(sp, clients, round(0.9 * isl), round(0.9 * osl),
                                     serving.Benchmark(10 * clients))
    simulated = serving.simulate_agg(sp, clients, isl, osl, 10 * clients, start="burst", range_ratio=0.8)
    ttft = (analytic["ttft_ms"] - sp.ov.first_token_ms(analytic["tpot_ms"])
            - sp.ov.ingest_ms(round(0.9 * isl), analytic["ingest_prompts"]))
    return analytic, simulated, ttft


@pytest.mark.parametrize("clients, isl, osl, budget", [
    (8, 1024, 64, None),       # the first round's 8 prompts in one step
    (64, 1024, 64, None),      # the first round over 8 full steps
    (16, 1024, 256, 2048),     # a small budget
    (64, 1024, 1024, None),    # long generations: the first round weighs little
])
def test_benchmark_agrees_with_the_simulation(est, clients, isl, osl, budget):
    """A benchmark client (all clients at once, 10 x C requests, lengths uniform in [0.8 L, L]) simulated request
    by request, against the analytic first round + steady state at the mean lengths. The analytic model takes the
    requests after the first round as spread evenly; the simulation's stay somewhat bunched, so its TTFT runs up to
    ~30% above the analytic one and its TPOT up to ~10% below (measured on these cases: see the docstring)."""
    sp = shipped_pricer(est, budget)
    analytic, simulated, ttft = benchmark_and_simulation(sp, clients, isl, osl)
    assert 0.7 * simulated["ttft_ms"] <= ttft <= 1.05 * simulated["ttft_ms"], (ttft, simulated["ttft_ms"])
    assert math.isclose(analytic["tpot_ms"], simulated["tpot_ms"], rel_tol=0.12), (analytic, simulated)
    # the first round alone is what the steady state misses: with it the analytic TTFT is closer
    steady = serving.agg_steady_state(sp, clients, round(0.9 * isl), round(0.9 * osl))["ttft_ms"]
    assert abs(ttft - simulated["ttft_ms"]) < abs(steady - simulated["ttft_ms"])


def test_sglang_prefills_first_where_the_others_mix(monkeypatch, tmp_path):
    """SGLang runs waiting prompts in prefill-only steps unless launched with --enable-mixed-chunk; TensorRT-LLM
    and vLLM put prompt chunks into the running requests' decode steps."""
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "none.yaml")
    assert [overheads.load_overheads(b).mixed_prefill for b in ("sglang", "trtllm", "vllm")] == [False, True, True]
    mixed = overheads.load_overheads("sglang").with_settings(overheads.EngineSettings(mixed_prefill=True))
    assert mixed.mixed_prefill and mixed.sources["mixed_prefill"] == "launch setting"


def test_tensorrt_llm_takes_whole_prompts_where_the_others_chunk(est, monkeypatch, tmp_path):
    """TensorRT-LLM's chunked prefill is off by default: a step takes whole prompts, first come first served. At
    a 3556-token budget (aiconfigurator's generator: 8 + 2048 + 1500) the first round's 8 prompts of 2048 go one a
    step, 8 steps, request k's first token at step k; chunked, each step takes 3552 prompt tokens beside 4 decodes,
    ceil(8 x 2048 / 3552) = 5 steps, request k's at ceil(k x 2048 / 3552). In the steady state at 128 clients and
    the default 8192-token budget, three whole prompts (6144 tokens) fit beside the decodes where chunks fill the
    budget; both agree with the request-level simulation."""
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "none.yaml")
    assert [overheads.load_overheads(b).chunked_prefill for b in ("sglang", "trtllm", "vllm")] == [True, False, True]
    whole, chunked = shipped_pricer(est, 3556), shipped_pricer(est, 3556, chunked_prefill=True)
    assert chunked.ov.sources["chunked_prefill"] == "launch setting"
    t_decode = whole.decode_step_ms(8, 2048, 128)
    first = serving.agg_burst(whole, 8, 2048, 128, t_decode)
    assert first["steps"] == 8 and first["ttft_ms"] == pytest.approx(4.5 * first["step_ms"])
    assert first["step_ms"] == pytest.approx(whole.mixed_step_ms(4, 2048, 4 + 1, whole.prompt_attention_ms(2048),
                                                                 2048, 128))
    cut = serving.agg_burst(chunked, 8, 2048, 128, t_decode)
    assert cut["steps"] == 5
    assert cut["ttft_ms"] == pytest.approx(sum(math.ceil(k * 2048 / 3552) for k in range(1, 9)) / 8 * cut["step_ms"])
    for sp, tokens in ((shipped_pricer(est, None), 6144), (shipped_pricer(est, None, chunked_prefill=True), None)):
        analytic = serving.agg_steady_state(sp, 128, 2048, 32)
        simulated = serving.simulate_agg(sp, 128, 2048, 32)
        mixed = analytic["steps"]["mixed"]
        assert mixed["chunk_tokens"] == pytest.approx(tokens or 8192 - mixed["decodes"])
        for key in ("ttft_ms", "tpot_ms", "request_latency_ms"):
            assert math.isclose(analytic[key], simulated[key], rel_tol=0.05), (key, analytic[key], simulated[key])


@pytest.mark.parametrize("clients, isl, osl, budget", [
    (1, 1024, 128, None),      # one request at a time: its own prefill never interrupts its decodes
    (8, 1024, 64, None),       # a prompt every 9 decode steps, prefilled alone before the next one
    (4, 20000, 32, None),      # prompts chunked over 3 prefill-only steps
    (16, 1024, 64, 2048),      # a small budget
    (256, 1024, 1024, None),   # 1 prompt in 4 decode steps
])
def test_prefill_first_steady_state_agrees_with_the_simulation(est, clients, isl, osl, budget):
    """An engine that prefills first (SGLang): the steady state against the staggered simulation, within 1%."""
    sp = shipped_pricer(est, budget, mixed_prefill=False)
    analytic = serving.agg_steady_state(sp, clients, isl, osl)
    simulated = serving.simulate_agg(sp, clients, isl, osl)
    assert analytic["steps"]["decode_only"]["decodes"] == clients
    for key in ("ttft_ms", "tpot_ms", "request_latency_ms"):
        assert math.isclose(analytic[key], simulated[key], rel_tol=0.01), (key, analytic[key], simulated[key])


@pytest.mark.parametrize("clients, isl, osl, budget", [
    (64, 1024, 64, None),      # 8 full prefill steps, then 63 decode steps of 64
    (16, 1024, 256, 2048),     # a small budget: 8 steps of 2 prompts
    (128, 4096, 128, None),    # 64 steps
])
def test_prefill_first_with_fixed_lengths_is_lockstep(est, clients, isl, osl, budget):
    """Fixed lengths on an engine that prefills first: every client's request starts decoding once the last
    prompt is in, so all finish in the same step and every round is a burst, as the simulation of the benchmark
    finds (to 0.1%). Request k has its first token after ceil(k x ISL / K) full prefill steps, then waits out
    the rest of them before it decodes."""
    sp = shipped_pricer(est, budget, mixed_prefill=False)
    out = serving.agg_benchmark(sp, clients, isl, osl, serving.Benchmark(10 * clients, fixed_lengths=True))
    simulated = serving.simulate_agg(sp, clients, isl, osl, 10 * clients, start="burst")
    ttft = out["ttft_ms"] - sp.ov.first_token_ms(out["tpot_ms"]) - sp.ov.ingest_ms(isl, (clients + 1) / 2)
    assert math.isclose(ttft, simulated["ttft_ms"], rel_tol=1e-3), (ttft, simulated)
    assert math.isclose(out["tpot_ms"], simulated["tpot_ms"], rel_tol=1e-3), (out, simulated)
    per_step = (budget or 8192) // isl
    steps = clients // per_step
    first = sum(math.ceil(k / per_step) for k in range(1, clients + 1)) / clients
    t_step, t_decode = out["steps"]["prefill_only"]["step_ms"], out["steps"]["decode_only"]["step_ms"]
    assert out["steps"]["prefill_only"]["count"] == steps and out["steps"]["lockstep"]
    assert math.isclose(ttft, first * t_step, rel_tol=1e-12)
    assert math.isclose(out["tpot_ms"], t_decode + (steps - first) * t_step / (osl - 1), rel_tol=1e-12)


def test_prefill_first_with_one_output_token_prefills_round_after_round(est):
    """OSL 1 on an engine that prefills first: nothing decodes, every round's 16 prompts of 1024 tokens go
    through two full 8192-token prefill steps, the first 8 with their token after one, the rest after two."""
    sp = shipped_pricer(est, None, mixed_prefill=False)
    out = serving.agg_benchmark(sp, 16, 1024, 1)
    t_step = out["steps"]["prefill_only"]["step_ms"]
    assert out["tpot_ms"] == 0.0 and out["steps"]["prefill_only"]["count"] == 2
    assert math.isclose(out["ttft_ms"] - sp.ov.first_token_ms(0.0) - sp.ov.ingest_ms(1024, 8.5), 1.5 * t_step,
                        rel_tol=1e-12)


@pytest.mark.parametrize("clients, isl, osl, budget", [
    (8, 1024, 64, None),
    (64, 1024, 64, None),
    (16, 1024, 256, 2048),
    (128, 4096, 128, None),
])
def test_prefill_first_benchmark_agrees_with_the_simulation(est, clients, isl, osl, budget):
    """Lengths uniform in [0.8 L, L] on an engine that prefills first: the analytic first round + steady state
    (its prompts bunched as a benchmark's rounds come, arrival_rates) against the simulated benchmark. The
    simulation's rounds stay more bunched than the analytic ones, so its TTFT runs up to ~20% above and its TPOT
    up to ~12% below (on these cases)."""
    sp = shipped_pricer(est, budget, mixed_prefill=False)
    analytic, simulated, ttft = benchmark_and_simulation(sp, clients, isl, osl)
    assert 0.8 * simulated["ttft_ms"] <= ttft <= 1.0 * simulated["ttft_ms"], (ttft, simulated["ttft_ms"])
    assert 1.0 <= analytic["tpot_ms"] / simulated["tpot_ms"] <= 1.12, (analytic, simulated)


def test_disagg_ttft_is_prefill_plus_kv_transfer(est):
    """One client: no queue. TTFT = prefill + transfer + the handoff and delivery. The 1024-token KV cache (paged,
    16 tokens a page) moves over NVLink 4 at 450 GB/s x 0.7 link efficiency; 2 x TP4 + 1 x TP4 = 12 GPUs span two
    nodes: the 50 GB/s network, each rank its shard."""
    plan = Plan()
    r = serving.disagg_estimate(est, plan, plan, 1, 1024, 128)
    ov = serving.step_pricer(est, plan).ov
    nbytes = 1024 * KV_BYTES_PER_TOKEN
    assert r["serving"]["kv_transfer"]["bytes_per_rank"] == nbytes == 134217728
    prefill = (ov.disagg_kernel_scale * est.prefill_ms(plan, 1, 1024) + ov.step_ms + ov.per_sequence_ms
               + ov.eager_step_ms)
    step = ov.shipped_step_ms + ov.per_sequence_ms   # the pools' share of the kernels' sum, the shipped host time
    assert math.isclose(r["tpot_ms"], ov.disagg_kernel_scale * est.tpot_ms(plan, 1, 1024, 128) + step,
                        rel_tol=1e-12)
    delivery = ov.handoff(r["tpot_ms"]) + ov.first_token_ms(r["tpot_ms"]) + ov.ingest_ms(1024, 1)
    assert math.isclose(r["ttft_ms"], prefill + nbytes / (450e9 * 0.7) * 1e3 + delivery, rel_tol=1e-12)
    tp4 = Plan(tp=4)
    far = serving.disagg_estimate(est, tp4, tp4, 1, 1024, 128, prefill_workers=2)
    kv = far["serving"]["kv_transfer"]
    assert kv["cross_node"] and kv["bytes_per_rank"] == nbytes / 4
    assert math.isclose(kv["ms"], nbytes / 4 / (50e9 * 0.7) * 1e3, rel_tol=1e-12)


def _fitted(est, tmp_path, monkeypatch, fields: str):
    fitted = tmp_path / "overheads.fitted.yaml"
    fitted.write_text("backends:\n  trtllm:\n    default:\n" + fields)
    monkeypatch.setattr(overheads, "FITTED_FILE", fitted)
    overheads.reread()
    try:
        return overheads.load_overheads("trtllm", est.db.version, est.db.system.name)
    finally:
        overheads.reread()


def test_disagg_decode_steps_keep_the_shipped_host_time(est, tmp_path, monkeypatch):
    """The fitted step_ms goes with the fitted graph_kernel_scale (both from agg runs' TPOT): an agg decode step
    takes them, a disagg decode pool's step neither (its own disagg_kernel_scale of the kernels' sum, graph or not,
    the host's 0.3 ms of overheads.yaml)."""
    ov = _fitted(est, tmp_path, monkeypatch, "      step_ms: {value: 5.0, source: 'a test'}\n"
                 "      graph_kernel_scale: {value: 0.5, source: 'a test'}\n"
                 "      disagg_kernel_scale: {value: 0.8, source: 'a test'}\n")
    sp = serving.StepPricer(est, Plan(), ov)
    kernels = est.tpot_ms(Plan(), 8, 1024, 128)
    assert (ov.step_ms, ov.shipped_step_ms) == (5.0, STEP_MS)
    assert math.isclose(sp.decode_step_ms(8, 1024, 128), 0.5 * kernels + 5.0 + 8 * PER_SEQ_MS, rel_tol=1e-12)
    assert math.isclose(sp.decode_step_ms(8, 1024, 128, pool=True), 0.8 * kernels + STEP_MS + 8 * PER_SEQ_MS,
                        rel_tol=1e-12)
    eager = est.tpot_ms(Plan(), 200, 1024, 128)   # above the largest captured batch (128): no graph, the same share
    assert math.isclose(sp.decode_step_ms(200, 1024, 128, pool=True),
                        0.8 * eager + STEP_MS + 200 * PER_SEQ_MS + EAGER_MS, rel_tol=1e-12)


def test_the_handoff_adds_to_disagg_ttft_alone(est):
    """handoff_ms + handoff_steps x the decode pool's step goes into disagg TTFT (and the request's latency), and
    leaves TPOT and agg as they were."""
    plan = Plan()
    plain, handed = copy.copy(est), copy.copy(est)   # the same estimator, its overheads without and with a handoff
    plain.overheads = dataclasses.replace(est.overheads, handoff_ms=0.0, handoff_steps=0.0)
    handed.overheads = dataclasses.replace(est.overheads, handoff_ms=40.0, handoff_steps=3.0)
    before, after = (serving.disagg_estimate(e, plan, plan, 4, 1024, 128) for e in (plain, handed))
    step = after["tpot_ms"]
    assert step == before["tpot_ms"] and after["serving"]["handoff_ms"] == pytest.approx(40.0 + 3 * step)
    assert before["serving"]["queue_ms"] == pytest.approx(0, abs=1e-9)   # 4 clients: unsaturated
    assert after["serving"]["queue_ms"] == pytest.approx(0, abs=1e-9)
    assert after["ttft_ms"] == pytest.approx(before["ttft_ms"] + 40.0 + 3 * step)
    assert after["request_latency_ms"] == pytest.approx(before["request_latency_ms"] + 40.0 + 3 * step)
    agg_before, agg_after = (serving.agg_estimate(e, plan, 4, 1024, 128) for e in (plain, handed))
    assert (agg_after["ttft_ms"], agg_after["tpot_ms"]) == (agg_before["ttft_ms"], agg_before["tpot_ms"])


def test_disagg_throughput_is_the_slower_pools(est):
    plan = Plan()
    plain = copy.copy(est)   # no handoff: the clients' cycle is the pools' alone
    plain.overheads = dataclasses.replace(est.overheads, handoff_ms=0.0, handoff_steps=0.0)
    r = serving.disagg_estimate(plain, plan, plan, 64, 1024, 128)   # one prefill GPU feeding 64 decodes
    s = r["serving"]
    assert s["bottleneck"] == "prefill" and s["queue_ms"] > 0
    assert math.isclose(r["tokens_per_s"], s["prefill"]["requests_per_s"] * 128, rel_tol=1e-12)


def test_a_decode_pool_runs_what_the_prefill_pool_feeds_it(est):
    """One prefill GPU feeding 64 clients' decodes sets the pace: the decode rank runs the requests its rate feeds it,
    that rate x their 127 steps (Little's law), not its 64 slots, so TPOT is that batch's step and the clients wait in
    the queue instead."""
    plan = Plan()
    plain = copy.copy(est)   # no handoff: the clients' cycle is the pools' alone
    plain.overheads = dataclasses.replace(est.overheads, handoff_ms=0.0, handoff_steps=0.0)
    r = serving.disagg_estimate(plain, plan, plan, 64, 1024, 128)
    s, sp = r["serving"], serving.step_pricer(plain, plan)
    running, rate = s["decode"]["running_per_worker"], s["prefill"]["requests_per_s"] / 1e3
    assert s["bottleneck"] == "prefill" and s["decode"]["batch_per_worker"] == 64
    assert 1 < running < 64 and running == math.ceil(rate * 127 * r["tpot_ms"])
    assert r["tpot_ms"] == sp.decode_step_ms(running, 1024, 128, pool=True)
    assert r["tpot_ms"] < sp.decode_step_ms(64, 1024, 128, pool=True)
    unloaded = s["prefill"]["step_ms"] + s["kv_transfer"]["ms"] + 127 * r["tpot_ms"]
    assert s["queue_ms"] == pytest.approx(64 / rate - unloaded, rel=1e-9)


def test_clients_beyond_the_decode_pools_slots_wait_for_one(est):
    """A decode rank runs at most max_num_seqs requests: 96 clients on 2 decode workers of 32 wait in turn. Each
    rank decodes its 32 as an uncapped pool of 64 clients does, the pool finishes 64 requests per decode residence,
    and the 32 clients beyond the slots wait for them in TTFT (Little's law); the first round's 32 wait one
    residence."""
    plan = Plan()
    plain = copy.copy(est)   # no handoff: the clients' cycle is the pools' alone
    plain.overheads = dataclasses.replace(est.overheads, handoff_ms=0.0, handoff_steps=0.0)
    capped = serving.disagg_estimate(plain, plan, plan, 96, 512, 256, decode_workers=2, prefill_workers=4,
                                     engine=overheads.EngineSettings(max_num_seqs=32))
    full = serving.disagg_estimate(plain, plan, plan, 64, 512, 256, decode_workers=2, prefill_workers=4)
    s, step = capped["serving"], capped["tpot_ms"]
    assert (s["decode"]["batch_per_worker"], s["decode"]["slots"], s["bottleneck"]) == (32, 64, "decode")
    assert (s["requests"], s["rounds"]) == (960, 10.0)   # the default client: 10 rounds of its 96 clients
    assert step == full["tpot_ms"]
    residence = 255 * step
    assert s["decode"]["requests_per_s"] == pytest.approx(64 / residence * 1e3)
    assert capped["tokens_per_s"] == pytest.approx(64 / residence * 1e3 * 256)
    unloaded = s["prefill"]["step_ms"] + s["kv_transfer"]["ms"] + residence
    assert s["queue_ms"] == pytest.approx(96 * residence / 64 - unloaded, rel=1e-9)
    uncapped = serving.disagg_estimate(plain, plan, plan, 96, 512, 256, decode_workers=2, prefill_workers=4)
    assert uncapped["serving"]["decode"]["slots"] == 96   # the same prefill burst, every client decoding at once
    assert s["first_round_wait_ms"] - uncapped["serving"]["first_round_wait_ms"] == pytest.approx(32 / 96 * residence)


def test_a_prefill_worker_batches_the_prompts_that_came(est):
    """--prefill-batch caps a prefill worker's batch; it takes the prompts that came while its last batch ran. Two
    clients with long decodes send a prompt every ~4 s while a prefill takes ~0.1 s: one at a time, so TTFT after
    the first round is one prompt's prefill, not 32 prompts'. 256 clients keep it full. The first round still goes
    in full batches."""
    plan = Plan()
    light = serving.disagg_estimate(est, plan, plan, 2, 1024, 1024, prefill_batch=32)["serving"]["prefill"]
    assert light["steady_batch"] == 1 and light["step_ms"] < light["full_batch_ms"] / 20
    heavy = serving.disagg_estimate(est, plan, plan, 256, 1024, 128, prefill_batch=32)["serving"]["prefill"]
    assert heavy["steady_batch"] == 32 and heavy["step_ms"] == heavy["full_batch_ms"]


def test_a_prefill_worker_batches_what_its_token_budget_fits_by_default(est):
    """Without --prefill-batch a prefill worker takes the whole prompts its 8192-token budget fits: 8 of 1024 tokens,
    2 of 3000. Two clients' first round is one batch of two prompts, not a full batch of 8."""
    plan = Plan()
    r = serving.disagg_estimate(est, plan, plan, 256, 1024, 128)["serving"]["prefill"]
    assert (r["batch"], r["steady_batch"]) == (8, 8)
    assert serving.disagg_estimate(est, plan, plan, 256, 3000, 128)["serving"]["prefill"]["batch"] == 2
    two = serving.disagg_estimate(est, plan, plan, 2, 1024, 1024, bench=serving.Benchmark(requests=2))
    one_batch = serving.disagg_estimate(est, plan, plan, 2, 1024, 1024, prefill_batch=2,
                                        bench=serving.Benchmark(requests=2))
    assert two["ttft_ms"] == one_batch["ttft_ms"]   # the single round: a batch of the 2 prompts either way


def test_sweep_modes(est):
    rows = sweep(est.model, batches=[1, 64], isls=[1024], osls=[128], tps=[1], system="h200_sxm", estimator=est,
                 mode="agg")
    assert [r["mode"] for r in rows] == ["agg", "agg"]
    assert rows[0]["ttft_ms"] == serving.agg_point(est, Plan(), 1, 1024, 128)["ttft_ms"]
    big = sweep(est.model, batches=[100000], isls=[1024], osls=[128], tps=[1], system="h200_sxm", estimator=est,
                mode="agg")
    assert "does not fit" not in big[0]["error"] and "GiB per GPU" in big[0]["error"]


def test_fitted_file_overrides_field_by_field(tmp_path, monkeypatch):
    fitted = tmp_path / "overheads.fitted.yaml"
    fitted.write_text("backends:\n  vllm:\n    default:\n      step_ms: {value: 0.9, source: 'fitted on a test'}\n"
                      "    systems:\n      b200_sxm:\n        request_ms: {value: 12.5, source: 'fitted on b200'}\n")
    monkeypatch.setattr(overheads, "FITTED_FILE", fitted)
    ov = overheads.load_overheads("vllm", "0.24.0")
    assert ov.step_ms == 0.9 and ov.sources["step_ms"] == "fitted on a test"
    assert ov.per_sequence_ms == 0.003 and ov.max_tokens_per_step == 8192 and ov.request_ms == 0.0
    on_b200 = overheads.load_overheads("vllm", "0.24.0", "b200_sxm")   # the system's entry over the default's
    assert (on_b200.request_ms, on_b200.step_ms) == (12.5, 0.9) and on_b200.sources["request_ms"] == "fitted on b200"


@pytest.mark.parametrize("field, error", [
    # mixed_prefill read as "yes" would price an engine's order by a string's truth
    ("mixed_prefill: {value: 'yes', source: 'a test'}", "mixed_prefill is true or false, not 'yes'"),
    ("chunked_prefill: {value: 1, source: 'a test'}", "chunked_prefill is true or false, not 1"),
    ("moe_kernels: {value: {fp9: triton}, source: 'a test'}", "moe_kernels maps MoE table dtypes .* kernel families"),
    ("fp8_input_scale: {value: calibrated, source: 'a test'}", "fp8_input_scale is one of static, dynamic"),
])
def test_an_overheads_files_bad_value_is_one_clear_error(tmp_path, monkeypatch, field, error):
    fitted = tmp_path / "overheads.fitted.yaml"
    fitted.write_text(f"backends:\n  vllm:\n    default:\n      {field}\n")
    monkeypatch.setattr(overheads, "FITTED_FILE", fitted)
    with pytest.raises(UserError, match=error):
        overheads.load_overheads("vllm")


def test_a_launched_moe_kernel_replaces_the_backends_for_its_dtype():
    """vLLM on Hopper: Triton under TP, FlashInfer CUTLASS under EP by default; launched with fp8_block=triton it
    runs Triton under EP too, and the estimate's JSON says the setting came from the launch."""
    launched = overheads.load_overheads("vllm", None, "h200_sxm").with_settings(
        overheads.EngineSettings(moe_kernels=(("fp8_block", "triton"),)))
    assert launched.moe_kernels == (("fp8_block", "triton"),)
    assert launched.sources["moe_kernels"] == "launch setting"
    assert launched.to_json()["moe_kernels"] == {"fp8_block": "triton"}
    with pytest.raises(UserError, match="--moe-kernel maps MoE table dtypes"):
        overheads.EngineSettings(moe_kernels={"fp9": "triton"})
    # what prices the ops (an Estimator's part of the launch), apart from what shapes the steps
    launch = overheads.EngineSettings(max_num_seqs=4, mxfp4_moe_activation="mxfp8", moe_kernels={"fp8_block": "triton"},
                                      fp8_input_scale="dynamic")
    assert launch.kernel_choices() == overheads.EngineSettings(mxfp4_moe_activation="mxfp8",
                                                               moe_kernels=(("fp8_block", "triton"),),
                                                               fp8_input_scale="dynamic")


def test_cli_takes_the_fp8_input_scale_the_engine_was_launched_with(llama_dir):
    """TensorRT-LLM prices per-tensor FP8 GEMMs at a checkpoint's static input scale; --fp8-input-scale dynamic (a
    checkpoint without input scales) prices the fp8 lane as timed, so each step takes longer."""
    argv = ["estimate", str(llama_dir), "-q", "--backend", "trtllm", "--quant", "fp8", "--batch", "4", "--json"]
    results = {}
    for scale in ("static", "dynamic"):
        with CliRunner().isolation() as (out, err, _):
            assert main([*argv, "--fp8-input-scale", scale]) == 0, err.getvalue().decode()
        results[scale] = json.loads(out.getvalue().decode())
    with CliRunner().isolation() as (out, err, _):
        assert main(argv) == 0
    default = json.loads(out.getvalue().decode())
    assert default["tpot_ms"] == results["static"]["tpot_ms"] < results["dynamic"]["tpot_ms"]
    ov = results["dynamic"]["serving"]["overheads"]
    assert ov["fp8_input_scale"] == "dynamic" and ov["sources"]["fp8_input_scale"] == "launch setting"


# bad input ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    write_config(directory, tiny_config("llama", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=256, num_hidden_layers=2))
    return directory


BAD = [
    (["--mode", "continuous"], "unknown --mode 'continuous'; known: static, agg, disagg"),
    (["--max-tokens-per-step", "0"], "--max-tokens-per-step"),
    (["--mode", "disagg", "--decode-workers", "0"], "--decode-workers"),
    (["--mode", "disagg", "--prefill-workers", "-1"], "--prefill-workers"),
    (["--mode", "disagg", "--max-num-seqs", "0"], "--max-num-seqs"),   # a decode rank with no slot
    (["--chunked-prefill=no"], "'--chunked-prefill' does not take a value"),   # a flag: --whole-prompts says no
    (["--mode", "disagg", "--prefill-tp", "3"], "tp=3 does not divide"),
    (["--batch", "64", "--max-tokens-per-step", "32"], "--max-tokens-per-step 32 leaves no room"),
    # 4096 clients, 2048 of them running (trtllm's max_num_seqs, agg's and a disagg decode rank's): their KV cache
    # does not fit
    (["--batch", "4096", "--isl", "1000000"], "2048 requests of ISL 1000000 + OSL 1024 need"),
    (["--mode", "disagg", "--batch", "4096", "--isl", "1000000"], "disagg decode pool TP1: 2048 requests"),
    (["--moe-kernel", "fp8_block"], "--moe-kernel takes DTYPE=FAMILY (e.g. fp8_block=triton), not 'fp8_block'"),
    (["--moe-kernel", "fp9=triton"], "--moe-kernel maps MoE table dtypes"),
    (["--fp8-input-scale", "calibrated"], "Invalid value for '--fp8-input-scale'"),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line(llama_dir, argv, words):
    with CliRunner().isolation() as (out, err, _):
        code = main(["estimate", str(llama_dir), "-q", *argv])
    stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    lines = stderr.strip().splitlines()
    assert code == 2 and not stdout, (code, stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("tracecost: error: ") and words in lines[0], stderr


def test_cli_takes_the_prefill_order_and_the_benchmarks_lengths(llama_dir):
    """--prefill-first and --fixed-lengths reach the estimate: the JSON says the engine does not mix, the client
    sends fixed lengths, and the rounds run in lockstep; the rendered text says so too."""
    argv = ["estimate", str(llama_dir), "-q", "--batch", "16", "--isl", "64", "--osl", "8", "--prefill-first",
            "--fixed-lengths"]
    with CliRunner().isolation() as (out, err, _):
        code = main([*argv, "--json"])
    result = json.loads(out.getvalue().decode())
    assert code == 0, err.getvalue().decode()
    s = result["serving"]
    assert s["fixed_lengths"] and s["benchmark_range_ratio"] is None and s["steps"]["lockstep"]
    assert not s["overheads"]["mixed_prefill"] and s["overheads"]["sources"]["mixed_prefill"] == "launch setting"
    with CliRunner().isolation() as (out, err, _):
        assert main([*argv, "--chunked-prefill", "--json"]) == 0
    launched = json.loads(out.getvalue().decode())["serving"]["overheads"]
    assert launched["chunked_prefill"] and launched["sources"]["chunked_prefill"] == "launch setting"
    with CliRunner().isolation() as (out, err, _):
        assert main(argv) == 0
    assert "stay in lockstep" in out.getvalue().decode()


def test_cli_disagg_text_says_how_many_requests_a_decode_rank_runs(llama_dir):
    """The disagg text names the decode rank's slots and the requests it runs (the JSON's running_per_worker)."""
    argv = ["estimate", str(llama_dir), "-q", "--mode", "disagg", "--batch", "64", "--isl", "512", "--osl", "64"]
    with CliRunner().isolation() as (out, err, _):
        code = main([*argv, "--json"])
    assert code == 0, err.getvalue().decode()
    decode = json.loads(out.getvalue().decode())["serving"]["decode"]
    assert 1 <= decode["running_per_worker"] <= decode["batch_per_worker"] == 64
    with CliRunner().isolation() as (out, err, _):
        assert main(argv) == 0
    assert f"batch 64 ({decode['running_per_worker']} running, " in out.getvalue().decode()
