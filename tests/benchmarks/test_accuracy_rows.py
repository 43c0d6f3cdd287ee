"""benchmarks/silicon_rows.py: real rows of aiconfigurator-core's silicon_sample.csv -> plan, lengths, quant (and
the arguments benchmarks/accuracy_silicon.py asks aiconfigurator with)."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy_silicon import (ANY_BACKEND, aic_request, calibration_lines, fit_constants, fit_group,  # noqa: E402
                              fit_handoff, fit_handoffs, fit_pool_scale)
from silicon_rows import Layout, map_row, mark_duplicates, read_rows, silicon_csv  # noqa: E402


@pytest.fixture(scope="module")
def rows() -> dict:
    path = silicon_csv()
    if not path.exists():
        pytest.skip(f"{path} not present")
    return {r["id"]: r for r in read_rows(path)}


def row(rows, row_id):
    if row_id not in rows:
        pytest.skip(f"row {row_id} not in this version of the CSV")
    return map_row(rows[row_id])


def test_a_run_exported_twice_counts_once(rows):
    # one SGLang run on B200, in a DB dump (named DeepSeek-V3) and in the dated export (DeepSeek-R1)
    dump, export = "dsr1_b200_sglang_fp4_agg_1024x8192_c16_cfg88", \
        "2026_04_06_deepseek_r1_b200_sxm_sglang_fp4_agg_1024x8192_c16_tp4_ep1_903"
    other = "dsr1_b200_sglang_fp4_agg_8192x1024_c32_cfg88"   # another run of the same config
    raw = [rows[i] for i in (dump, other, export) if i in rows]
    if len(raw) < 3:
        pytest.skip("rows not in this version of the CSV")
    mapped = [map_row(r) for r in raw]
    assert mark_duplicates(mapped) == 1
    assert [m.rule for m in mapped] == ["", "", f"duplicate: the same run as {dump}"]
    # a copy no tool can price does not stand for the run when another copy can be priced
    mapped = [map_row(r) for r in raw]
    mapped[0].no_layout = "no layout: test"
    assert mark_duplicates(mapped) == 1
    assert mapped[0].rule == f"duplicate: the same run as {export}" and mapped[2].rule == ""
    # a copy rounded to 0.01 ms (169.941 / 8.36143 ms in the DB dump, 169.94 / 8.36 in the gap-analysis file) whose
    # layout columns read batch 4, no attention DP, EP 4 where the dump's read batch 1, attention DP 4, EP 16: both
    # are the launch script's TP4 at 4 clients
    dump, rounded = "kimik2_5_b200_vllm_fp4_agg_1024x1024_c4_cfg635", \
        "kimi_k2_5_gap_analysis_kimi_k2_5_gap_analysis_b200_sxm_vllm_fp4_agg_1024x1024_c4_tp4_ep4_3"
    if dump in rows and rounded in rows:
        mapped = [launched(rows, dump), launched(rows, rounded)]
        assert mapped[0].layouts == mapped[1].layouts
        assert mark_duplicates(mapped) == 1 and mapped[1].rule == f"duplicate: the same run as {dump}"


def test_a_disagg_run_in_the_dump_and_in_the_dated_export_counts_once_at_its_configs_layout(rows):
    """The dump gives the workers with a prefill batch of 1 (it does so for every disagg run); the dated export gives
    none, so its layout is read off the master config. Both are priced at the prompts TensorRT-LLM's 8192-token
    budget fits per prefill step (8 of 922 tokens), and the copy read off the config stands for the run."""
    dump, export = "dsr1_h200_trtllm_fp8_disagg_1024x1024_c36_cfg590", \
        "2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_disagg_1024x1024_c36_tp8_0_ep8_0_368"
    if dump not in rows or export not in rows:
        pytest.skip("rows not in this version of the CSV")
    assert rows[dump]["prefill_batch_size"] == "1"
    mapped = [launched(rows, dump), launched(rows, export)]
    assert [m.layouts["prefill"] for m in mapped] == [Layout(tp=1, pp=1, ep=8, dp=8, moe_tp=1, batch=8, workers=1)] * 2
    assert (mapped[0].launch, bool(mapped[1].launch)) == ("", True)
    assert mark_duplicates(mapped) == 1
    assert (mapped[0].rule, mapped[1].rule) == (f"duplicate: the same run as {export}", "")
    # at 144 clients the config ran this layout with MTP and without: the export's launch says so, the dump cannot;
    # the run stays out though its dump copy breaks no rule
    dump, export = "dsr1_h200_trtllm_fp8_disagg_1024x1024_c144_cfg590", \
        "2026_03_25_deepseek_r1_h200_sxm_trtllm_fp8_disagg_1024x1024_c144_tp8_0_ep8_0_426"
    if dump in rows and export in rows:
        mapped = [launched(rows, dump), launched(rows, export)]
        assert (mapped[0].rule, mapped[1].rule) == ("", "launch: speculative decoding (mtp 3 or none)")
        assert mark_duplicates(mapped) == 1
        assert mapped[0].rule == f"duplicate: the same run as {export}"


def test_aic_sweep_row_keeps_its_lengths_and_reads_the_instruct_model_as_its_base(rows):
    m = row(rows, "meta_llama_llama_3_1_8b_instruct_meta_llama_llama_3_1_8b_instruct_h100_sxm_trtllm_agg_1024x128_c8_tp1_epnone_1")
    assert (m.mode, m.system, m.backend, m.backend_version) == ("agg", "h100_sxm", "trtllm", "1.0.0rc3")
    assert m.model == "meta-llama/Llama-3.1-8B"
    assert m.source_kind == "aic-gap-analysis"
    assert (m.isl_used, m.osl_used, m.fixed_lengths) == (1024, 128, True)   # every request alike
    assert (m.gemm_quant, m.moe_quant, m.quant) == ("bfloat16", "bfloat16", "bf16")  # no quant named: bf16
    assert m.layouts == {"agg": Layout(tp=1, pp=1, ep=1, dp=1, moe_tp=1, batch=8)}  # attention DP empty: none
    assert (m.rule, m.no_layout, m.concurrency) == ("", "", 8)


def test_inferencex_row_priced_at_mean_lengths_with_batch_per_dp_rank(rows):
    m = row(rows, "minimaxm2_5_b300_vllm_fp8_agg_1024x1024_c512_cfg734")
    assert m.source_kind == "inferencex"  # a DB dump with a workflow_run_id
    assert (m.isl_used, m.osl_used) == (922, 922)  # lengths uniform on [819.2, 1024]: mean 921.6
    assert not m.fixed_lengths
    assert m.layouts["agg"] == Layout(tp=4, pp=1, ep=16, dp=4, moe_tp=1, batch=128)
    assert m.concurrency == 512  # 128 per rank x 4 ranks, as the source line says
    assert m.quant == "fp8" and m.rule == ""


def test_disagg_row_has_two_layouts_and_mixed_quant_breaks_a_rule(rows):
    m = row(rows, "dsr1_gb300_sglang_fp8_disagg_8192x1024_c1024_cfg505")
    assert (m.isl_used, m.osl_used) == (7373, 922)
    assert m.layouts == {"prefill": Layout(tp=1, pp=1, ep=8, dp=8, moe_tp=1, batch=1, workers=5),
                         "decode": Layout(tp=1, pp=1, ep=32, dp=32, moe_tp=1, batch=32, workers=1)}
    assert m.concurrency == 1024  # 32 x 32 ranks x 1 worker
    assert (m.gemm_quant, m.moe_quant, m.quant) == ("fp8", "fp8_block", "fp8")
    assert m.rule.startswith("quant: (fp8 GEMMs, fp8_block MoE)")


def test_disagg_row_without_worker_counts_has_no_layout(rows):
    m = row(rows, "2026_03_25_glm_5_gb200_trtllm_fp4_disagg_8192x1024_c5_tp4_0_ep_138")
    assert m.source_kind == "inferencex"  # a dated export of the InferenceX results
    assert m.layouts == {}
    assert m.no_layout == ("no layout: prefill_batch/num_workers missing; "
                           "no layout: decode_batch/num_workers missing")


def test_moe_sizes_that_do_not_cover_the_gpus_break_the_layout_rule(rows):
    hit = [map_row(r) for r in rows.values() if r["model_path"] == "Qwen/Qwen3-235B-A22B-FP8" and r["mode"] == "agg"
           and float(r["tp_size"]) == 1 and float(r["moe_tp_size"] or 0) == 2]
    if not hit:
        pytest.skip("no such row in this version of the CSV")
    m = hit[0]
    assert m.rule == "layout: moe_tp x moe_ep 2 != tp x attention_dp 1"
    assert m.layouts["agg"] == Layout(tp=1, pp=1, ep=1, dp=1, moe_tp=1, batch=m.layouts["agg"].batch)


def test_disagg_row_asks_aiconfigurator_with_each_phase_layout_and_the_row_labels(rows):
    m = row(rows, "dsr1_gb300_sglang_fp8_disagg_8192x1024_c1024_cfg505")
    assert aic_request(m, "/models/dsr1", "0.5.16") == {
        "model_path": "/models/dsr1", "system_name": "gb300", "backend_name": "sglang", "backend_version": "0.5.16",
        "mode": "disagg", "isl": 7373, "osl": 922, "gemm_quant_mode": "fp8", "moe_quant_mode": "fp8_block",
        "prefill_tp_size": 1, "prefill_pp_size": 1, "prefill_attention_dp_size": 8, "prefill_moe_tp_size": 1,
        "prefill_moe_ep_size": 8, "prefill_batch_size": 1, "prefill_num_workers": 5,
        "decode_tp_size": 1, "decode_pp_size": 1, "decode_attention_dp_size": 32, "decode_moe_tp_size": 1,
        "decode_moe_ep_size": 32, "decode_batch_size": 32, "decode_num_workers": 1}


def test_a_row_takes_the_concurrency_its_source_states(rows):
    """The export wrote batch 2 per attention-DP rank of a multiplied size 64; its source says 128 clients: priced
    at 128 over the 8 ranks of one node, 16 each."""
    m = row(rows, "2026_04_06_deepseek_r1_b200_sxm_trtllm_fp8_agg_1024x8192_c128_tp8_ep8_1809")
    assert m.concurrency == 128 and m.layouts["agg"] == Layout(tp=1, pp=1, ep=8, dp=8, moe_tp=1, batch=16)


def launched(rows, row_id):
    from accuracy_silicon import with_launch
    m = row(rows, row_id)
    return with_launch(m, rows[row_id])


def test_inferencex_rows_run_at_their_scripts_launch_settings(rows):
    """The 70B TensorRT-LLM script of 2025-10 holds 1k/1k prompts at TP < 8 for 20 steps or 90% of 16384 tokens; the
    SGLang DeepSeek FP8 script takes new requests every 10 steps below 16 clients, with a 32768-token chunk."""
    llama = launched(rows, "2026_04_06_llama_3_1_70b_b200_sxm_trtllm_fp8_agg_1024x1024_c32_tp1_ep1_263")
    e = llama.engine
    assert (e.max_tokens_per_step, e.cuda_graph_max_batch, e.batch_wait_steps, e.batch_wait_token_ratio) == (
        16384, 1024, 20, 0.9)
    assert llama.kv_dtype == "fp8" and "70b_fp8_b200_trt_slurm.sh" in llama.launch and llama.rule == ""
    sglang = launched(rows, "2026_03_25_deepseek_r1_b200_sxm_sglang_fp8_agg_1024x1024_c8_tp8_0_ep1_0_249")
    e = sglang.engine
    assert (e.max_tokens_per_step, e.max_num_seqs, e.cuda_graph_max_batch, e.recv_interval_steps) == (
        32768, 128, 128, 10)


def test_a_disagg_row_takes_its_recipes_decode_max_batch(rows):
    """The dynamo-trt config of 2026-03-23 ran 1k/8k at 135 clients with recipe ctx1_gen15_tep4_batch8: 15 TP4 decode
    workers of at most 8 requests, 120 slots for 135 clients (the rest wait for one)."""
    m = launched(rows, "2026_03_25_deepseek_r1_gb200_trtllm_fp4_disagg_1024x8192_c135_tp4_0_ep4_0_444")
    decode = m.layouts["decode"]
    assert (decode.workers, decode.tp, decode.dp, decode.batch) == (15, 4, 1, 9)
    assert m.engine.max_num_seqs == 8 and "26d415b36" in m.launch and m.rule == ""


def test_aiconfigurators_own_sweeps_run_at_its_generators_launch_settings(rows):
    """aiconfigurator's generator launched TensorRT-LLM with max_num_tokens = batch + ISL + 1500 and max_batch_size =
    batch (= the concurrency), SGLang 0.5.6.post2 with --enable-mixed-chunk and --max-prefill-tokens ISL + 1500; the
    SGLang 0.5.1.post1 runs keep the engine's defaults."""
    qwen = "qwen_qwen3_235b_a22b_fp8_qwen_qwen3_235b_a22b_fp8"
    trt = launched(rows, f"{qwen}_h100_sxm_trtllm_agg_512x128_c4_tp4_epnone_1")
    e = trt.engine
    assert (e.max_tokens_per_step, e.max_num_seqs, e.cuda_graph_max_batch, e.mixed_prefill) == (2016, 4, 4, None)
    assert trt.launch.startswith("aic_gap_launch.yaml: ") and trt.fixed_lengths
    sglang = launched(rows, f"{qwen}_h200_sxm_sglang_agg_1000x100_c8_tp4_epnone_1")
    e = sglang.engine
    assert (e.max_tokens_per_step, e.max_num_seqs, e.mixed_prefill) == (2500, 8, True)
    older = launched(rows, "qwen_qwen3_32b_qwen_qwen3_32b_h100_sxm_sglang_agg_1024x128_c16_tp2_epnone_1")
    assert older.engine is None and older.launch == ""


def test_a_run_launched_without_flashinfer_moe_prices_vllms_triton_experts(rows):
    """MiniMax-M2.5's FP8 script of 2026-03 set VLLM_USE_FLASHINFER_MOE_FP8=0 VLLM_MOE_USE_DEEP_GEMM=0: its block-FP8
    experts ran on vLLM's Triton kernels, not the FlashInfer ones vLLM picks on Blackwell by default."""
    m = launched(rows, "2026_03_25_minimax_m2_5_b200_sxm_vllm_fp8_agg_1024x1024_c16_tp2_0_ep1_0_552")
    assert m.engine.moe_kernels == (("fp8_block", "vllm_fused_moe|triton"),)
    later = launched(rows, "minimaxm2_5_b200_vllm_fp8_agg_1024x1024_c32_cfg691")   # the 2026-04 script: defaults
    assert later.engine.moe_kernels is None
    # SGLang's DeepSeek FP4 script runs its experts with --moe-runner-backend flashinfer_trtllm
    sglang = launched(rows, "2026_03_25_deepseek_r1_b200_sxm_sglang_fp4_agg_1024x1024_c8_tp8_0_ep8_0_248")
    assert sglang.engine.moe_kernels == (("nvfp4", "flashinfer_trtllm"),)


def test_a_run_launched_with_cutlass_moe_prices_its_experts_on_that_lane(rows):
    """The DeepSeek-R1 FP4 script of 2025-10 ran attention DP with moe_config.backend CUTLASS and TP alone with TRTLLM:
    the first prices its experts on the table's CUTLASS lane (64 tokens of 256 experts over EP 8: 0.266 ms measured,
    against 0.113 on the min-latency lane the table takes by default), the second keeps the table's own choice."""
    from costmodel.database import Database
    dp = launched(rows, "dsr1_b200_trtllm_fp4_agg_8192x1024_c64_cfg91")
    assert dp.engine.moe_kernels == (("nvfp4", "cutlass"),) and "CUTLASS" in dp.launch
    tp = launched(rows, "dsr1_b200_trtllm_fp4_agg_1024x1024_c4_cfg91")
    assert tp.engine.moe_kernels is None
    db = Database("b200_sxm", "trtllm", version="1.3.0rc20")
    shape = dict(num_tokens=64, hidden=7168, inter=2048, topk=8, num_experts=256, tp=1, ep=8, quant="nvfp4")
    assert db.moe(**shape, family="cutlass").latency_ms == pytest.approx(0.266, abs=5e-4)
    assert db.moe(**shape).latency_ms == pytest.approx(0.113, abs=5e-4)


def test_a_speculative_run_is_held_apart_by_its_rule(rows):
    """DeepSeek-R1 rows measured with the MTP image (2026-02-05) ran speculative decoding, which the row does not
    say: priced as the row says, outside the rules."""
    m = launched(rows, "2026_04_06_deepseek_r1_b200_sxm_trtllm_fp8_agg_1024x8192_c128_tp8_ep8_1809")
    assert "launch: speculative decoding (mtp 1)" in m.rule


def test_launch_expressions_compute_what_the_scripts_do():
    from inferencex_launch import evaluate
    names = {"conc": 64, "isl": 1024, "osl": 1024, "tp": 8, "ep": 8}
    assert evaluate("(conc + isl + 64 + 63) // 64 * 64", names) == 1152
    assert evaluate("max(8192, (conc + isl + 64 + 63) // 64 * 64)", names) == 8192
    assert evaluate("30 if conc >= 16 else 10", names) == 30 and evaluate("isl * 2", names) == 2048
    with pytest.raises(ValueError):
        evaluate("__import__('os')", names)


def test_the_fit_recovers_constants_with_each_rows_front_end_queue():
    """Rows measured as TTFT = kernels + request_ms 20 + 2 x TPOT + 0.4 us x ISL x the prompts waited for at the
    front end (a first round of C together, later rounds alone: tc_ingest_prompts), TPOT = 0.9 x the graph-run
    kernels + 0.25 ms: the fit finds the same five constants."""
    rows = []
    for isl, clients, rounds in ((1024, 4, 10), (8192, 64, 10), (2048, 16, 1), (4096, 128, 10), (1024, 256, 10)):
        waiting = ((clients + 1) / 2 + rounds - 1) / rounds
        tpot_graph, tpot_eager, ttft = 10.0 + clients / 16, 12.0 + clients / 8, 30.0 + isl / 100
        tpot = 0.9 * tpot_graph + 0.1 * tpot_eager + 0.25
        for spread in (0.0, 1.0):   # two rows per shape: the same figures, a row of another concurrency's graph
            rows.append({"tc_tpot_ms": tpot_graph + spread, "tc_tpot_nograph_ms": tpot_eager + spread,
                         "tc_ttft_ms": ttft, "tc_ttft_nograph_ms": ttft, "tpot_ms": tpot + spread,
                         "ttft_ms": ttft + 20.0 + 2 * (tpot + spread) + 0.4 * isl * waiting / 1e3,
                         "isl_used": isl, "concurrency": clients, "tc_ingest_prompts": waiting})
    fit = fit_group(rows)
    assert fit["graph_kernel_scale"] == pytest.approx(0.9) and fit["step_ms"] == pytest.approx(0.25)
    assert (fit["first_token_steps"], fit["prompt_token_us"]) == (2.0, 0.4)
    assert fit["request_ms"] == pytest.approx(20.0)


def test_the_calibration_bound_shifts_each_series_by_its_own_fit_rows():
    """Series a is priced 50 ms low on every row, series b 40 ms high: with its own shift, of either sign, every
    held-out row of each is exact; series c, with too few fit rows, keeps its error."""
    rows = []
    for model, off, fits in (("a", -50.0, 3), ("b", 40.0, 3), ("c", 100.0, 2)):
        for i, meas in enumerate((200.0, 400.0, 800.0, 300.0, 600.0)):
            rows.append({"mode": "agg", "backend": "vllm", "system": "h200_sxm", "backend_version": "0.12.0",
                         "model_path": model, "source_kind": "inferencex", "split": "fit" if i < fits else "held-out",
                         "ttft_ms": meas, "tc_ttft_ms": meas + off, "tc_ttft_err": off / meas})
    # held-out |error| as priced: a 50/300, 50/600; b 40/300, 40/600; c 100/800, 100/300, 100/600 (median 13.3%,
    # p90 23.3%); shifted: a and b 0, c as before (median 0, p90 23.3%)
    assert [line for line in calibration_lines(rows) if line.startswith("| agg")] == \
        ["| agg | 7 | 13.3% / 23.3% | 0.0% / 23.3% |"]


def _disagg_rows(scale: float, handoff_ms: float, steps: float, system: str = "gb200") -> list[dict]:
    """Disagg rows measured as TPOT = scale x the decode pool's kernels + its host's 0.3 ms, TTFT = a prefill and
    transfer part + handoff_ms + steps x TPOT, no pool saturated; priced at both scales 1 and 0 as the fit's first
    pass prices them."""
    rows = []
    for kernels, prefill in ((8.0, 120.0), (14.0, 300.0), (25.0, 900.0), (40.0, 2500.0), (11.0, 80.0)):
        tpot1, tpot0 = kernels + 0.3, 0.3
        tpot = scale * kernels + 0.3
        rows.append({"tc_tpot_ms": tpot1, "tc_tpot_nograph_ms": tpot0, "tc_ttft_ms": prefill + 2 * tpot1,
                     "tc_ttft_nograph_ms": prefill + 2 * tpot0, "tpot_ms": tpot,
                     "ttft_ms": prefill + 2 * tpot + handoff_ms + steps * tpot, "mode": "disagg",
                     "backend": "trtllm", "table_version": "1.3.0rc23", "system": system,
                     "model_path": f"model-{len(rows) % 2}", "rule": "", "tc_queue_ms": 0.0, "tc_rounds": 10.0})
    return rows


def _at_scale(rows: list[dict], scale: float) -> list[dict]:
    """The rows as the fit's second pass prices them: at the pools' fitted scale, with no handoff."""
    return [dict(r, **{f"tc_{m}_ms": r[f"tc_{m}_nograph_ms"] + scale * (r[f"tc_{m}_ms"] - r[f"tc_{m}_nograph_ms"])
                       for m in ("ttft", "tpot")}) for r in rows]


def test_the_disagg_fit_recovers_the_pools_scale_and_the_handoff():
    """TTFT priced with 2 decode steps of its own (TPOT-linear, as the agg constants' delivery is): the handoff fit
    at the pools' fitted scale finds the rest."""
    rows = _disagg_rows(0.76, 35.0, 4.0)
    assert fit_pool_scale(rows)["disagg_kernel_scale"] == pytest.approx(0.76)
    fit = fit_handoff(_at_scale(rows, 0.76))
    assert fit["handoff_steps"] == 4.0 and fit["handoff_ms"] == pytest.approx(35.0)


def test_the_handoff_fit_lets_a_saturated_pools_queue_take_it():
    """Where a pool sets the pace, the handoff shortens the queue of the rounds after the first rather than adding
    to TTFT: rows measured so (three of five saturated, 10 rounds) give back their handoff, where adding it to
    every row's TTFT would not."""
    rows = _at_scale(_disagg_rows(1.0, 0.0, 0.0), 1.0)
    for r, queue in zip(rows, (0.0, 400.0, 0.0, 900.0, 2000.0)):
        h = 60.0 + 5 * r["tc_tpot_ms"]
        r.update(tc_queue_ms=queue, ttft_ms=r["tc_ttft_ms"] + h - 0.9 * min(h, queue))
    fit = fit_handoff(rows)
    assert fit["handoff_steps"] == 5.0 and fit["handoff_ms"] == 60.0
    naive = fit_handoff([dict(r, tc_queue_ms=0.0) for r in rows])
    assert (naive["handoff_ms"], naive["handoff_steps"]) != (60.0, 5.0)


def test_disagg_constants_need_enough_rows_and_the_scale_goes_by_architecture():
    """A backend's default disagg entry needs 40 fit rows (else the shipped 0 and 0 stay), a system's 40 and a table
    version's 50, as agg's (whose default entry is always fitted); the pools' scale is fitted per GPU architecture
    (gb200 and b300_sxm: sm10) and the handoff at it."""
    few = _disagg_rows(0.8, 10.0, 2.0)
    assert fit_constants(few) == {} and fit_handoffs(_at_scale(few, 0.8)) == {}
    many = few * 4 + _disagg_rows(0.8, 10.0, 2.0, "b300_sxm") * 4   # 20 + 20 rows
    fitted = fit_constants(many)
    assert set(fitted) == {("disagg", "trtllm", "architecture sm10")}
    assert fitted[("disagg", "trtllm", "architecture sm10")]["disagg_kernel_scale"] == pytest.approx(0.8)
    handoffs = fit_handoffs(_at_scale(many, 0.8))
    assert set(handoffs) == {("disagg", "trtllm", "default"), ("disagg", ANY_BACKEND, "default")}
    handoff = handoffs[("disagg", "trtllm", "default")]
    assert handoff["handoff_steps"] == 2.0 and handoff["handoff_ms"] == pytest.approx(10.0)


def test_an_architectures_pool_scale_reaches_each_of_its_systems(tmp_path, monkeypatch):
    from accuracy_silicon import write_fitted_overheads
    from costmodel import overheads
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "overheads.fitted.yaml")
    overheads.reread()
    try:
        fitted = {("disagg", "trtllm", "architecture sm10"): {"rows": 40, "disagg_kernel_scale": 0.8},
                  ("disagg", "trtllm", "default"): {"rows": 40, "handoff_ms": 12.5, "handoff_steps": 3.0}}
        write_fitted_overheads(fitted, ["half"])
        overheads.reread()
        scales = {s: overheads.load_overheads("trtllm", None, s).disagg_kernel_scale
                  for s in ("b200_sxm", "b300_sxm", "gb200", "gb300", "h200_sxm")}
        h200 = overheads.load_overheads("trtllm", None, "h200_sxm")
    finally:
        overheads.reread()
    assert scales == {"b200_sxm": 0.8, "b300_sxm": 0.8, "gb200": 0.8, "gb300": 0.8, "h200_sxm": 1.0}
    assert (h200.handoff_ms, h200.handoff_steps) == (12.5, 3.0)


def test_a_backend_with_too_few_disagg_rows_takes_the_pooled_handoff(tmp_path, monkeypatch):
    """The handoff happens in the serving stack in front of the engines: fitted on every backend's disagg rows
    together, it goes to each backend without a disagg fit of its own; one with its own keeps it."""
    from accuracy_silicon import write_fitted_overheads
    from costmodel import overheads
    rows = _disagg_rows(1.0, 10.0, 2.0) * 8 + [dict(r, backend="sglang") for r in _disagg_rows(1.0, 10.0, 2.0)]
    fitted = fit_handoffs(_at_scale(rows, 1.0))   # 40 trtllm rows, 5 sglang
    assert ("disagg", "trtllm", "default") in fitted and ("disagg", "sglang", "default") not in fitted
    assert fitted[("disagg", ANY_BACKEND, "default")]["rows"] == 45
    monkeypatch.setattr(overheads, "FITTED_FILE", tmp_path / "overheads.fitted.yaml")
    overheads.reread()
    try:
        write_fitted_overheads({**fitted, ("disagg", "trtllm", "default"): dict(
            fitted[("disagg", "trtllm", "default")], handoff_ms=99.0)}, ["half"])
        overheads.reread()
        got = {b: overheads.load_overheads(b, None, "h200_sxm") for b in ("trtllm", "vllm", "sglang", "none")}
    finally:
        overheads.reread()
    assert got["trtllm"].handoff_ms == 99.0
    for b in ("vllm", "sglang"):
        assert got[b].handoff_steps == 2.0 and got[b].handoff_ms == pytest.approx(10.0, abs=1e-3)
    assert (got["none"].handoff_ms, got["none"].handoff_steps) == (0.0, 0.0)   # roofline pricing: no engine
