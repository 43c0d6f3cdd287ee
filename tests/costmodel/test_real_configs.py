"""Real configs that were priced wrong: a composite checkpoint's own quantization, and caches compressed along the
cached length."""
from __future__ import annotations

import pytest

from core.quant_config import declared_quantization
from costmodel.kv import declared_kv_dtype, kv_report
from costmodel.pricing import resolve_quant
from graph.model_graph import trace_model


@pytest.fixture(scope="module")
def kimi_nvfp4():
    # bundled with aiconfigurator-core: a kimi_k25 vision-language checkpoint whose top-level quantization_config
    # (modelopt NVFP4, kv_cache_scheme 8-bit float) covers its deepseek_v3 text model
    return trace_model("nvidia/Kimi-K2.5-NVFP4")


def test_composite_quantization_reaches_the_traced_text_model(kimi_nvfp4):
    q = resolve_quant(kimi_nvfp4.config)
    assert (q.mode, q.weight_bytes, q.kv_dtype, q.source) == ("nvfp4", 0.5625, "fp8", "config: modelopt")
    assert declared_kv_dtype(kimi_nvfp4.config)[0] == "fp8"
    # MLA's cache at one byte per element: 61 layers x (kv_lora_rank 512 + rope key 64)
    assert kv_report(kimi_nvfp4)["kv_bytes_per_token"] == 61 * 576
    # its ignore list names the text model under the composite's wrapper: language_model.model.layers.1.self_attn*
    assert q.excluded("model.layers.1.self_attn.q_b_proj") and q.excluded("lm_head")
    assert not q.excluded("model.layers.1.mlp.experts") and not q.excluded("model.layers.1.mlp.shared_experts")


def test_resolve_quant_reads_a_composites_sub_config():
    composite = {"model_type": "some_vl", "vision_config": {"hidden_size": 64},
                 "text_config": {"hidden_size": 64, "quantization_config": {
                     "quant_method": "fp8", "weight_block_size": [128, 128],
                     "kv_cache_scheme": {"num_bits": 8, "type": "float"},
                     "ignore": ["model.language_model.layers.0.linear_attn*", "model.visual*"]}}}
    assert declared_quantization(composite)[0] == "text_config.quantization_config"
    q = resolve_quant(composite)
    assert (q.mode, q.weight_bytes, q.kv_dtype) == ("fp8_block", 1 + 4 / 128 ** 2, "fp8")
    assert declared_kv_dtype(composite) == ("fp8", "text_config.quantization_config.kv_cache_scheme="
                                                   "{'num_bits': 8, 'type': 'float'}")
    # the text model traced alone has no language_model wrapper; layer 10 and the vision tower stay quantized
    assert q.excluded("model.layers.0.linear_attn.in_proj_qkv")
    assert not q.excluded("model.layers.10.linear_attn.in_proj_qkv") and not q.excluded("model.layers.0.mlp.fc1")
    # an exact module name is not widened to its siblings
    assert not resolve_quant({"quantization_config": {"quant_method": "fp8", "ignore": [
        "language_model.model.layers.0.self_attn.q_proj"]}}).excluded("model.layers.0.self_attn.k_proj")


def test_a_cache_compressed_along_the_length_grows_with_it(tmp_path):
    from conftest import tiny_config, write_config
    from core.expr import evaluate
    from graph.match import match_graph

    # deepseek_v4's cache: a window of 128 tokens, plus one entry per 4 tokens (compressed sparse attention, whose
    # indexer keeps its keys at the same rate) or per 128 (heavily compressed attention)
    config = tiny_config("deepseek_v4", num_hidden_layers=2, hidden_size=256, num_attention_heads=4, head_dim=64,
                         qk_rope_head_dim=16, q_lora_rank=64, o_lora_rank=64, o_groups=2, moe_intermediate_size=64,
                         n_routed_experts=4, num_experts_per_tok=2, index_n_heads=4, index_head_dim=32,
                         index_topk=16, vocab_size=512, hc_mult=2, hc_sinkhorn_iters=1,
                         layer_types=["compressed_sparse_attention", "heavily_compressed_attention"],
                         mlp_layer_types=["moe", "moe"])
    mg = trace_model(str(write_config(tmp_path, config)))
    attention = {op.layer_kind: op for op in match_graph(mg.phases["decode"], "decode").ops if op.kind == "Attention"}
    assert sorted(str(op.kv_len) for op in attention.values()) == ["floor(L/128) + 128", "floor(L/4) + 128"]
    assert sorted(evaluate(str(op.kv_len), L=1024) for op in attention.values()) == [136, 384]
    assert sorted(evaluate(str(op.kv_len), L=8192) for op in attention.values()) == [192, 2176]
    # KV per token: K and V of 64 bf16 elements (256 B) per 128 tokens; per 4 tokens, with the indexer's 32-element
    # keys (64 B) at the same rate: 64 + 16
    assert sorted(r["bytes_per_token_per_layer"] for r in kv_report(mg)["layers"]) == [2, 80]
