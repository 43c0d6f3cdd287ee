"""KV cache figures (costmodel/kv.py): the reference table, hybrids against hand calculations from their configs,
per-rank figures under TP / PP, the HF cache cross-check, KV dtypes, and bad input."""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED, TINY_GPT, TINY_RWKV, session_trace_cache, write_config
from core.dtypes import vector_bytes
from costmodel.kv import declared_kv_dtype, kv_report
from render import format_kv_report
from core.expr import evaluate
from graph.match import Matched, match_model
from graph.model_graph import trace_model
from core.errors import UserError

CONFIGS = SHARED / "configs"
REFERENCE = SHARED / "reference" / "kv_bytes.tsv"
BF16 = 2


# The slowest traces run in a background process from the module's start, beside the other tests; both write the
# same trace cache (conftest's), and a test of one of these models waits for that process first.
SLOW = ("nvidia--Nemotron-H-56B-Base-8K", "Qwen--Qwen3-Next-80B-A3B-Thinking")
_WARMING: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _warm_slow_traces(tmp_path_factory):
    paths = [str(CONFIGS / f"{n}.json") for n in SLOW if (CONFIGS / f"{n}.json").is_file()]
    env = {**os.environ, "TRACECOST_CACHE": str(session_trace_cache(tmp_path_factory)), "HF_HUB_OFFLINE": "1"}
    code = "import sys\nfrom graph.model_graph import trace_model\nfor p in sys.argv[1:]:\n    trace_model(p)"
    proc = subprocess.Popen([sys.executable, "-c", code, *paths], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if paths else None
    _WARMING["proc"] = proc
    yield
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def _config_path(name: str) -> Path:
    path = CONFIGS / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def _trace(name: str):
    path = _config_path(name if name.endswith(".json") else f"{name}.json")
    if name.removesuffix(".json") in SLOW and _WARMING.get("proc") is not None:
        _WARMING["proc"].wait()  # its trace is in the cache now (or failed, and is traced here again)
    return trace_model(str(path))


def _trace_or_xfail(name: str):
    """A model the tracer may not cover yet: the test is an expected failure, with the tracer's reason, until
    it traces; its hand calculation then runs."""
    try:
        return trace_model(name)
    except UserError as exc:
        pytest.xfail(f"{name} does not trace yet: {exc}")


def _reference_rows() -> list:
    if not REFERENCE.is_file():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{REFERENCE} not present"))]
    with open(REFERENCE, newline="") as f:
        return [pytest.param(row, id=row["config"].removesuffix(".json")) for row in csv.DictReader(f, delimiter="\t")]


# --- the reference table -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row", _reference_rows())
def test_reference_row(row):
    report = kv_report(_trace(row["config"]))
    got = (report["kv_bytes_per_token"], report["fixed_bytes_per_sequence"])
    print(f"{row['config']}: kv_bytes_per_token {got[0]} fixed_bytes_per_sequence {got[1]}")
    assert got == (int(row["kv_bytes_per_token"]), int(row["fixed_bytes_per_sequence"])), row["notes"]
    assert {"bfloat16": "bf16"}.get(row["kv_dtype"], row["kv_dtype"]) == report["kv_dtype"]
    json.dumps(report)  # JSON-ready
    assert all(type(report[k]) is int for k in ("kv_bytes_per_token", "fixed_bytes_per_sequence"))


def test_sliding_layers_hold_their_window():
    report = kv_report(_trace("openai--gpt-oss-120b"), seq_len=100)
    sliding, full = report["layers"]
    assert (sliding["type"], sliding["window"], sliding["window_source"]) == ("sliding", 128, "trace")
    assert (sliding["bytes_per_token"], full["type"]) == (0, "full")
    # below the window a sliding layer holds what it has seen; past it, the window
    per_layer = 2 * 8 * 64 * BF16
    assert report["sequence"]["bytes"] == 36 * 100 * per_layer
    assert kv_report(_trace("openai--gpt-oss-120b"), seq_len=1000)["sequence"]["bytes"] == \
        18 * 1000 * per_layer + 18 * 128 * per_layer


def test_window_from_config_where_the_trace_shows_none():
    # the decode trace's window left out: the layer types and sliding_window of the config give it back
    mg = _trace("openai--gpt-oss-120b")
    decode = match_model(mg)["decode"]
    ops = [dataclasses.replace(op, window=0) if hasattr(op, "window") else op for op in decode.ops]
    report = kv_report(mg, matched=Matched(phase="decode", ops=ops, unsupported=[]))
    assert report["layers"][0]["window_source"] == "config sliding_window"
    assert (report["kv_bytes_per_token"], report["fixed_bytes_per_sequence"]) == (36864, 4718592)


# --- hybrids: attention layers grow per token, recurrent layers hold a fixed state --------------------------------

def test_nemotron_h_hand_calculation():
    cfg = json.loads(_config_path("nvidia--Nemotron-H-56B-Base-8K.json").read_text())
    pattern = cfg["hybrid_override_pattern"]
    attention, mamba = pattern.count("*"), pattern.count("M")                           # 10, 54
    per_token = attention * 2 * cfg["num_key_value_heads"] * cfg["attention_head_dim"] * BF16
    conv_dim = cfg["mamba_num_heads"] * cfg["mamba_head_dim"] + 2 * cfg["n_groups"] * cfg["ssm_state_size"]
    conv = conv_dim * (cfg["conv_kernel"] - 1) * BF16     # engines keep kernel - 1 previous inputs
    # SSM state per head: head_dim x state, float32 (transformers' mamba_ssm_cache_dtype for this family)
    ssm = cfg["mamba_num_heads"] * cfg["mamba_head_dim"] * cfg["ssm_state_size"] * 4
    assert (per_token, conv, ssm) == (40960, 122880, 16777216)
    report = kv_report(_trace("nvidia--Nemotron-H-56B-Base-8K"))
    assert report["kv_bytes_per_token"] == per_token
    assert report["fixed_bytes_per_sequence"] == mamba * (conv + ssm)
    rows = {r["type"]: r for r in report["layers"]}
    assert rows["recurrent"]["layers"] == mamba and rows["full"]["layers"] == attention
    assert rows["recurrent"]["bytes_per_token"] == 0 and rows["full"]["fixed_bytes_per_sequence"] == 0
    assert {s["role"]: s["dtype"] for s in rows["recurrent"]["states"]} == {"conv": "bfloat16", "state": "float32"}


def test_qwen3_next_hand_calculation():
    cfg = json.loads(_config_path("Qwen--Qwen3-Next-80B-A3B-Thinking.json").read_text())
    layers, interval = cfg["num_hidden_layers"], cfg["full_attention_interval"]
    attention = layers // interval                                                        # 12
    linear = layers - attention                                                           # 36
    per_token = attention * 2 * cfg["num_key_value_heads"] * cfg["head_dim"] * BF16
    key_dim = cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"]
    value_dim = cfg["linear_num_value_heads"] * cfg["linear_value_head_dim"]
    conv = (2 * key_dim + value_dim) * (cfg["linear_conv_kernel_dim"] - 1) * BF16       # q, k, v through one conv
    # gated delta-net state: key_dim x value_dim per value head, kept in float32 by the model
    state = cfg["linear_num_value_heads"] * cfg["linear_key_head_dim"] * cfg["linear_value_head_dim"] * 4
    assert (per_token, conv, state) == (24576, 49152, 2097152)
    report = kv_report(_trace("Qwen--Qwen3-Next-80B-A3B-Thinking"))
    assert report["kv_bytes_per_token"] == per_token
    assert report["fixed_bytes_per_sequence"] == linear * (conv + state)
    assert sorted((r["type"], r["layers"]) for r in report["layers"]) == [("full", attention), ("recurrent", linear)]


def test_jamba_hand_calculation():
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("jamba")          # transformers' default Jamba: 32 layers, 1 in 8 attention
    kinds = cfg.layers_block_type
    attention, mamba = kinds.count("attention"), kinds.count("mamba")                    # 4, 28
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_token = attention * 2 * cfg.num_key_value_heads * head_dim * BF16
    inner = cfg.mamba_expand * cfg.hidden_size
    conv = inner * (cfg.mamba_d_conv - 1) * BF16
    # the scan's recurrence runs in float32 (exp of A_log.float()) and the cache is made from the state it returns
    ssm = inner * cfg.mamba_d_state * 4
    assert (attention, mamba, per_token, conv, ssm) == (4, 28, 16384, 49152, 524288)
    report = kv_report(_trace_or_xfail("jamba"))
    assert report["kv_bytes_per_token"] == per_token
    assert report["fixed_bytes_per_sequence"] == mamba * (conv + ssm)


def test_falcon_mamba_hand_calculation():
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("falcon_mamba")   # default: 32 Mamba layers, no attention
    inner = cfg.expand * cfg.hidden_size
    conv = inner * (cfg.conv_kernel - 1) * BF16
    # the selective scan runs in float32 (A = -exp(A_log.float()) makes the recurrence float32) and the cache keeps
    # the state the scan returns
    ssm = inner * cfg.state_size * 4
    assert (conv, ssm) == (9216, 98304)
    report = kv_report(_trace_or_xfail("falcon_mamba"))
    assert report["kv_bytes_per_token"] == 0
    assert report["fixed_bytes_per_sequence"] == cfg.num_hidden_layers * (conv + ssm)


# --- tensor and pipeline parallelism --------------------------------------------------------------------------------

def test_qwen3_235b_tp8_replicates_kv_heads():
    report = kv_report(_trace("Qwen--Qwen3-235B-A22B"), tp=8, page_size=16)
    (row,) = report["layers"]
    # 4 KV heads over 8 ranks: each rank holds 1 head, 2 ranks share each head
    assert (row["kv_heads"], row["kv_heads_per_rank"], row["replication"]) == (4, 1, 2)
    assert row["bytes_per_token_per_layer_per_rank"] == 2 * 1 * 128 * BF16
    assert report["per_rank"]["kv_bytes_per_token"] == 94 * 512 == 48128
    assert row["page_bytes_per_layer_per_rank"] == 16 * 512
    assert report["per_rank"]["page_bytes"] == 94 * 16 * 512
    assert report["kv_bytes_per_token"] == 192512          # the whole model does not change


def test_deepseek_v3_tp8_replicates_the_latent():
    report = kv_report(_trace("deepseek-ai--DeepSeek-V3"), tp=8)
    assert {r["type"] for r in report["layers"]} == {"mla"}
    assert all(r["replication"] == 8 and r["bytes_per_token_per_layer_per_rank"] == (512 + 64) * BF16
               for r in report["layers"])
    assert report["per_rank"]["kv_bytes_per_token"] == report["kv_bytes_per_token"] == 70272


def test_tp_splits_kv_heads_when_it_can():
    report = kv_report(_trace("meta-llama--Llama-3.1-8B"), tp=4)
    (row,) = report["layers"]
    assert (row["kv_heads_per_rank"], row["replication"]) == (2, 1)
    assert report["per_rank"]["kv_bytes_per_token"] == 131072 // 4


def test_pp_reports_the_largest_stage():
    report = kv_report(_trace("meta-llama--Llama-3.1-8B"), pp=4, tp=2)
    assert report["per_rank"]["stage_layers"] == 8
    assert report["per_rank"]["kv_bytes_per_token"] == 8 * 2 * 4 * 128 * BF16
    # with layer indices in the plan the stages are exact: gpt-oss alternates sliding (even) and full (odd)
    mg = _trace("openai--gpt-oss-120b")
    for k in mg.plan:
        k["layers"] = list(range(k["kind"], 36, 2))
    report = kv_report(mg, pp=4)
    assert report["per_rank"]["layout"] == "exact"
    per_layer = 2 * 8 * 64 * BF16
    # stages of 9 layers; stage 1 (layers 9-17) holds 5 full and 4 sliding layers, the most that grow
    assert report["per_rank"]["stage"] == 1
    assert report["per_rank"]["kv_bytes_per_token"] == 5 * per_layer
    assert report["per_rank"]["fixed_bytes_per_sequence"] == 4 * 128 * per_layer


# --- the HF cache cross-check ---------------------------------------------------------------------------------------

def _hf_cache_bytes(mg, cached: int) -> int:
    """Bytes of the caches the decode graph appends to (each cat of a cache input, its output after the new
    token), over every layer of the full model, at `cached` tokens."""
    total = 0
    for _, a in mg.phases["decode"].nodes(data=True):
        if a["op"] == "aten.cat" and a["layer_kind"] is not None and any(i["src"] == "input" for i in a["inputs"]):
            shape = a["out_shapes"][0]
            size = {"bfloat16": 2, "float16": 2, "float32": 4}[a["out_dtypes"][0]]
            total += a["repeat"] * size * evaluate("*".join(f"({d})" for d in shape), B=1, L=cached)
    return total


@pytest.mark.parametrize("name", ["meta-llama--Llama-3.1-8B", "openai--gpt-oss-120b", "deepseek-ai--DeepSeek-V3"])
def test_hf_cache_holds_what_engines_hold(name):
    # plain GQA, sliding windows (the trace holds them at their window) and an MLA whose HF cache is the latent
    mg = _trace(name)
    for cached in (1000, 5000):
        assert _hf_cache_bytes(mg, cached) == kv_report(mg, seq_len=cached + 1)["sequence"]["bytes"]


# --- shared KV, dtypes ----------------------------------------------------------------------------------------------

def test_kv_shared_across_layers_counted_once():
    # the sliding layer kind made to read the full layer's cache (no cache input of its own)
    mg = _trace("openai--gpt-oss-120b")
    decode = copy.deepcopy(mg.phases["decode"])
    for _, a in decode.nodes(data=True):
        if a["layer_kind"] == 0:
            a["inputs"] = [{**i, "src": "cat_7"} if i["src"] == "input" else i for i in a["inputs"]]
    mg.phases = {**mg.phases, "decode": decode}
    report = kv_report(mg)
    assert report["layers"][0]["type"] == "shared"
    assert (report["kv_bytes_per_token"], report["fixed_bytes_per_sequence"]) == (36864, 0)


def test_kv_dtype_override_and_fp4_scales():
    assert kv_report(_trace("deepseek-ai--DeepSeek-V3"), kv_dtype="fp8")["kv_bytes_per_token"] == 70272 // 2
    assert kv_report(_trace("meta-llama--Llama-3.1-8B"), kv_dtype="int8")["kv_bytes_per_token"] == 65536
    # fp4: half a byte per element plus one fp8 scale per 16 elements: a 128-vector is 64 + 8 bytes
    assert vector_bytes(128, "fp4") == 72
    assert kv_report(_trace("meta-llama--Llama-3.1-8B"), kv_dtype="fp4")["kv_bytes_per_token"] == 32 * 8 * 2 * 72
    assert kv_report(_trace("meta-llama--Llama-3.1-8B"), kv_dtype="fp32")["kv_bytes_per_token"] == 262144


def test_kv_dtype_the_config_declares():
    assert declared_kv_dtype({"quantization_config": {"quant_method": "modelopt", "kv_cache_quant_algo": "FP8"}})[0] \
        == "fp8"
    assert declared_kv_dtype({"quantization_config": {"kv_cache_scheme": {"num_bits": 8, "type": "float"}}})[0] \
        == "fp8"
    assert declared_kv_dtype({"quantization_config": {"kv_cache_scheme": {"num_bits": 8, "type": "int"}}})[0] \
        == "int8"
    assert declared_kv_dtype({"quantization_config": {"quant_method": "fp8", "fmt": "e4m3"}}) is None  # weights
    mg = _trace("meta-llama--Llama-3.1-8B")
    mg.config = {**mg.config, "quantization_config": {"quant_method": "modelopt", "kv_cache_quant_algo": "FP8"}}
    report = kv_report(mg)
    assert (report["kv_dtype"], report["kv_bytes_per_token"]) == ("fp8", 65536)
    assert kv_report(mg, kv_dtype="bf16")["kv_bytes_per_token"] == 131072


# --- totals, pages and what fits ------------------------------------------------------------------------------------

def test_totals_pages_and_fit():
    mg = _trace("meta-llama--Llama-3.1-8B")
    report = kv_report(mg, seq_len=8192, batch=4, page_size=16, gpu_memory_bytes=80 << 30,
                       weight_bytes_per_gpu=16_000_000_000, reserve_bytes=4_000_000_000)
    assert report["sequence"]["bytes"] == 131072 * 8192 == 1 << 30
    assert report["total"]["bytes"] == 4 << 30
    fit = report["fit"]
    assert fit["free_bytes"] == (80 << 30) - 20_000_000_000
    assert fit["sequences"] == fit["free_bytes"] // (1 << 30) == 61
    # a sequence takes whole pages
    assert kv_report(mg, seq_len=8193, page_size=16)["sequence"]["paged_bytes_per_rank"] == 131072 * 8208
    assert kv_report(mg)["seq_len"] == mg.config["max_position_embeddings"]
    text = format_kv_report(report)
    assert "131,072" in text and "61 sequences" in text


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"page_size": 0}, "page size"),
    ({"page_size": -16}, "page size"),
    ({"seq_len": -1}, "sequence length"),
    ({"batch": -2}, "batch"),
    ({"tp": 0}, "tp"),
    ({"tp": 3}, "8 KV heads"),             # 8 KV heads: 3 ranks can neither split nor replicate them
    ({"tp": 64}, "32 attention heads"),    # more ranks than query heads
    ({"pp": 33}, "32 layers"),
    ({"kv_dtype": "fp6"}, "unknown KV dtype"),
    ({"gpu_memory_bytes": -1}, "GPU memory"),
])
def test_bad_input_is_one_clear_line(kwargs, words):
    with pytest.raises(UserError) as info:
        kv_report(_trace("meta-llama--Llama-3.1-8B"), **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_tp_replicating_more_ranks_than_kv_heads_is_fine():
    report = kv_report(_trace("meta-llama--Llama-3.1-8B"), tp=16)
    (row,) = report["layers"]
    assert (row["kv_heads_per_rank"], row["replication"]) == (1, 2)


def test_model_without_cache_has_no_kv_and_recomputes(tmp_path):
    """A model that keeps no cache: 0 KV bytes, and its decode attention is context attention over L + 1 tokens."""
    from graph.match import match_model

    graph = trace_model(str(write_config(tmp_path, TINY_GPT)))  # the session's trace, shared with test_trace
    (att,) = [op for op in match_model(graph)["decode"].ops if type(op).__name__ == "Attention"]
    assert (att.phase, att.q_len, att.kv_len, att.count) == ("context", "L + 1", "L + 1", 2)
    report = kv_report(graph)
    assert report["kv_bytes_per_token"] == 0 and [r["type"] for r in report["layers"]] == ["none"]


def test_states_stacked_over_layers_count_each_layers_entry(tmp_path):
    """HF's RWKV keeps each of its 5 states (the attention and FFN shift vectors, and the WKV numerator,
    denominator and max) for all layers in one [B, hidden, layers] tensor; a layer selects its own entry and writes
    it back. Per layer: 5 x hidden values, at the dtype each state is kept in."""
    report = kv_report(trace_model(str(write_config(tmp_path, TINY_RWKV))), tp=2)  # bf16, shared with test_trace
    states = [s for r in report["layers"] for s in r["states"]]
    assert sorted((s["dtype"], s["shape"]) for s in states)[0] == ("bfloat16", ["B", "64"])
    per_layer = 2 * 64 * 2 + 3 * 64 * 4   # two bf16 shift vectors, three fp32 WKV states
    assert report["fixed_bytes_per_sequence"] == 2 * per_layer == 2048   # was 1536: two tensors counted per layer
    assert report["per_rank"]["fixed_bytes_per_sequence"] == 1024        # split over the hidden channels
