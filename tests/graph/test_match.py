"""Pattern matching: the cost ops each family's real (or default) config turns into, by structure alone."""
from __future__ import annotations

import json


from cli import main
from conftest import TINY_RWKV, shared_config, tiny_config, write_config
from core.ops import MLA, Attention, Conv, Gemm, MoE, Scan
from graph.match import match_model
from graph.model_graph import trace_model


def _ops(matched, phase, cls):
    return [op for op in matched[phase].ops if isinstance(op, cls)]


def _gemm_shapes(matched, phase):
    return sorted((op.n, op.k, op.count) for op in _ops(matched, phase, Gemm))


def test_llama_8b_gemms_and_attention():
    matched = match_model(trace_model(str(shared_config("meta-llama--Llama-3.1-8B"))))
    for phase, m in (("prefill", "(B)*(S)"), ("decode", "(B)")):
        gemms = _ops(matched, phase, Gemm)
        assert sorted((g.n, g.k, g.count) for g in gemms) == sorted([
            (6144, 4096, 32),      # q, k, v fused: 4096 + 2 x 1024
            (4096, 4096, 32),      # o_proj
            (28672, 4096, 32),     # gate + up fused: 2 x 14336
            (4096, 14336, 32),     # down
            (128256, 4096, 1),     # logits
        ])
        assert all(g.m == m for g in gemms if g.n != 128256)
        (att,) = _ops(matched, phase, Attention)
        assert (att.q_heads, att.kv_heads, att.head_dim, att.count, att.window) == (32, 8, 128, 32, 0)
        assert matched[phase].unsupported == []
    assert _ops(matched, "decode", Attention)[0].kv_len == "L + 1"


def test_no_fuse_shows_sibling_gemms_apart():
    matched = match_model(trace_model(str(shared_config("meta-llama--Llama-3.1-8B"))), fuse=False)
    shapes = _gemm_shapes(matched, "prefill")
    assert (14336, 4096, 32) in shapes and (1024, 4096, 32) in shapes and (6144, 4096, 32) not in shapes


def test_deepseek_v3_mla_moe_and_dense_layers():
    mg = trace_model(str(shared_config("deepseek-ai--DeepSeek-V3")))
    matched = match_model(mg)
    for phase in ("prefill", "decode"):
        mla = _ops(matched, phase, MLA)
        assert {(op.heads, op.kv_lora_rank, op.qk_rope_head_dim, op.qk_nope_head_dim, op.v_head_dim)
                for op in mla} == {(128, 512, 64, 128, 128)}
        assert sum(op.count for op in mla) == 61
        (moe,) = _ops(matched, phase, MoE)
        assert (moe.experts, moe.topk, moe.inter, moe.hidden, moe.count, moe.gated) == (256, 8, 2048, 7168, 58, True)
        # the shared expert runs as its own GEMMs beside the routed experts; the 3 dense layers are dense
        shapes = _gemm_shapes(matched, phase)
        assert (4096, 7168, 58) in shapes and (7168, 2048, 58) in shapes
        assert (36864, 7168, 3) in shapes and (7168, 18432, 3) in shapes
        assert matched[phase].unsupported == []
    # decode runs weight-absorbed: per-head projections into and out of the 512-dim latent, no cache expansion
    absorbed = [g for g in _ops(matched, "decode", Gemm) if g.batch == "128"]
    assert sorted((g.k, g.n) for g in absorbed if g.count == 58) == [(128, 512), (512, 128)]


def test_gpt_oss_sliding_window_on_alternate_layers():
    matched = match_model(trace_model(str(shared_config("openai--gpt-oss-120b"))))
    for phase in ("prefill", "decode"):
        windows = sorted((op.window, op.count) for op in _ops(matched, phase, Attention))
        assert windows == [(0, 18), (128, 18)]
        (moe_a, moe_b) = _ops(matched, phase, MoE)
        assert (moe_a.experts, moe_a.topk) == (128, 4)


def test_gemma3_five_local_one_global():
    matched = match_model(trace_model(str(shared_config("google--gemma-3-27b-it"))))
    for phase in ("prefill", "decode"):
        windows = sorted((op.window, op.count) for op in _ops(matched, phase, Attention))
        assert windows == [(0, 10), (1024, 52)]


def test_nemotron_h_mamba2_blocks():
    matched = match_model(trace_model(str(shared_config("nvidia--Nemotron-H-56B-Base-8K"))))
    for phase in ("prefill", "decode"):
        (scan,) = _ops(matched, phase, Scan)
        assert (scan.variant, scan.heads, scan.head_dim, scan.state, scan.count) == ("ssm", 256, 64, 256, 54)
        (conv,) = _ops(matched, phase, Conv)
        assert (conv.channels, conv.groups, conv.kernel, conv.count) == (20480, 20480, 4, 54)
        (att,) = _ops(matched, phase, Attention)
        assert att.count == 10
        assert matched[phase].matched_share == 1.0


def test_qwen3_next_linear_attention_and_moe():
    matched = match_model(trace_model(str(shared_config("Qwen--Qwen3-Next-80B-A3B-Thinking"))))
    for phase in ("prefill", "decode"):
        (scan,) = _ops(matched, phase, Scan)
        assert (scan.variant, scan.heads, scan.head_dim, scan.state, scan.count) == ("delta", 32, 128, 128, 36)
        assert sum(op.count for op in _ops(matched, phase, Attention)) == 12
        assert {(op.experts, op.topk) for op in _ops(matched, phase, MoE)} == {(512, 10)}
        assert matched[phase].matched_share == 1.0


def test_falcon_mamba_selective_scan_blocks():
    """Falcon-Mamba (transformers' default config; its prefill loops over the tokens in Python and is folded): one
    conv + selective-scan block per layer, sized by the 3-D SSM state (channels = expand x hidden, d_state)."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("falcon_mamba")
    matched = match_model(trace_model("falcon_mamba"))
    for phase, length in (("prefill", "S"), ("decode", "1")):
        (scan,) = _ops(matched, phase, Scan)
        assert (scan.count, scan.variant, scan.length) == (cfg.num_hidden_layers, "ssm", length)
        assert (scan.heads, scan.head_dim, scan.state) == (cfg.expand * cfg.hidden_size, 1, cfg.state_size)
        (conv,) = _ops(matched, phase, Conv)
        assert (conv.channels, conv.groups, conv.kernel) == (1536, 1536, cfg.conv_kernel)
        assert matched[phase].matched_share == 1.0


def test_jamba_attention_mamba_and_moe_layers():
    """Jamba's default config: 1 attention layer in 8 (offset 4), Mamba elsewhere, MoE on every other layer."""
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("jamba")
    matched = match_model(trace_model("jamba"))
    for phase in ("prefill", "decode"):
        att, scans, moe = (_ops(matched, phase, t) for t in (Attention, Scan, MoE))
        assert sum(op.count for op in att) == 4 and {(a.q_heads, a.kv_heads, a.head_dim) for a in att} == {(32, 8, 128)}
        assert sum(op.count for op in scans) == 28
        assert {(s.variant, s.heads, s.state) for s in scans} == {("ssm", cfg.mamba_expand * cfg.hidden_size,
                                                                   cfg.mamba_d_state)}
        assert sum(op.count for op in moe) == 16 and {(m.experts, m.topk) for m in moe} == {(16, 2)}
        assert matched[phase].matched_share == 1.0


def test_alibi_attention_with_heads_folded_into_the_batch(tmp_path):
    """BLOOM writes attention out with the heads folded into the batch dim (heads x B, S, head_dim) and its ALiBi
    bias added by the score GEMM itself (baddbmm), the softmax in fp32: one attention op per layer with the
    config's heads, batch B, in the query's dtype, and nothing left unpriced."""
    cfg = tiny_config("bloom", n_layer=2, hidden_size=64, n_head=4, vocab_size=100)
    matched = match_model(trace_model(str(write_config(tmp_path, cfg))))
    for phase, q_len, kv_len in (("prefill", "S", "S"), ("decode", "1", "L + 1")):
        (att,) = _ops(matched, phase, Attention)
        assert (att.count, att.batch, att.q_len, att.kv_len, att.q_heads, att.kv_heads, att.head_dim, att.dtype) \
            == (2, "B", q_len, kv_len, 4, 4, 16, "bfloat16")
        assert matched[phase].matched_share == 1.0


def test_expert_loop_with_identity_experts_is_one_moe(tmp_path):
    """LongCat-Flash's experts run in a Python loop over the experts that received tokens, identity ("zero")
    experts among them, two attention sub-blocks per layer numbered 2i and 2i + 1: one layer kind, and the 4 real
    experts of 6 (top-3) are one MoE op whose top-k counts the real experts' rows, 3 x 4 / 6 = 2 per token."""
    cfg = tiny_config("longcat_flash", num_layers=2, hidden_size=64, ffn_hidden_size=128, expert_ffn_hidden_size=32,
                      n_routed_experts=4, zero_expert_num=2, moe_topk=3, num_attention_heads=4, kv_lora_rank=16,
                      q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, head_dim=8, v_head_dim=16,
                      vocab_size=100)
    mg = trace_model(str(write_config(tmp_path, cfg)))
    assert [k["count"] for k in mg.plan] == [2]
    matched = match_model(mg)
    for phase, tokens in (("prefill", "B*S"), ("decode", "B")):
        (moe,) = _ops(matched, phase, MoE)
        assert (moe.experts, moe.topk, moe.hidden, moe.inter, moe.gated, moe.count, moe.tokens) == \
            (4, 2, 64, 32, True, 2, tokens)
        assert matched[phase].matched_share == 1.0


def test_rope_factors_chosen_by_the_largest_position(tmp_path):
    """Phi-MoE picks long or short RoPE factors with a Python branch on max(position_ids) + 1, data export cannot
    read: the positions are known from the sizes, the branch goes as the traced sizes imply, and both phases
    trace symbolic in B, S and L with the experts as one MoE op."""
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
            "original_max_position_embeddings": 64, "short_mscale": 1.0, "long_mscale": 1.5}
    cfg = tiny_config("phimoe", num_hidden_layers=1, hidden_size=64, intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=100,
                      max_position_embeddings=1024, rope_parameters=rope)
    mg = trace_model(str(write_config(tmp_path, cfg)))
    assert "bound" not in mg.note  # a value read is no data-dependent size
    matched = match_model(mg)
    for phase in ("prefill", "decode"):
        (moe,) = _ops(matched, phase, MoE)
        assert (moe.experts, moe.topk) == (4, 2)
        assert matched[phase].matched_share == 1.0
    assert _ops(matched, "decode", Attention)[0].kv_len == "L + 1"


def _renamed_classes(tmp_path):
    """A tiny MoE + GQA model whose every module class is renamed: results must not change. (test_trace's tiny
    mixtral: the trace before renaming is the session's.)"""
    return write_config(tmp_path, tiny_config("mixtral", num_hidden_layers=2, num_local_experts=4,
                                              num_experts_per_tok=2, hidden_size=256, intermediate_size=512,
                                              num_attention_heads=8, num_key_value_heads=2, vocab_size=1000))


def test_renaming_module_classes_changes_nothing(tmp_path):
    import transformers.models.mixtral.modeling_mixtral as mod

    path = _renamed_classes(tmp_path)
    before = match_model(trace_model(str(path)))
    classes = [c for c in vars(mod).values() if isinstance(c, type) and c.__module__ == mod.__name__]
    saved = [(c, c.__name__, c.__qualname__) for c in classes]
    try:
        for i, cls in enumerate(classes):
            cls.__name__ = cls.__qualname__ = f"Block{i}"
        after = match_model(trace_model(str(path), use_cache=False))  # the cache key does not see class names
    finally:
        for cls, name, qualname in saved:
            cls.__name__, cls.__qualname__ = name, qualname
    for phase in ("prefill", "decode"):
        assert [op.to_json() for op in before[phase].ops] == [op.to_json() for op in after[phase].ops]
        (moe,) = _ops(after, phase, MoE)
        assert (moe.experts, moe.topk, moe.inter, moe.hidden) == (4, 2, 512, 256)


def test_unsupported_report_and_collector_cases(tmp_path, capsys):
    """A model with a conv that is not a depthwise causal mixer leaves work no pattern prices by its kernel:
    here a tiny llama, where all is matched, exits 0 with --strict; the report and cases file are well formed."""
    path = _renamed_classes(tmp_path)
    cases = tmp_path / "cases.json"
    code = main(["trace", str(path), "-q", "--strict", "--collector-cases", str(cases)])
    out = capsys.readouterr().out
    assert code == 0 and "unsupported: none" in out
    assert json.loads(cases.read_text()) == []


def test_unsupported_ops_are_reported(tmp_path, capsys):
    """Eager attention written with a custom op pattern the rules do not know stays visible: a GPT-2 style
    model's Conv1D projections are addmm with weights, matched; its leftovers are listed with a case each."""
    path = write_config(tmp_path, tiny_config("gpt2", n_layer=2, n_embd=128, n_head=4, vocab_size=500))
    code = main(["trace", str(path), "-q", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    for row in data["unsupported"]:
        assert row["case"]["schema"] == "tracecost.collector-case/1" and row["case"]["shapes"]
    assert data["phases"]["prefill"]["matched_flops_share"] > 0.99


def test_llama_8b_gemms_at_tp8():
    """The same matched ops split over 8 GPUs: column GEMMs split n, row GEMMs split k, heads split, and one
    all-reduce after each row-parallel GEMM."""
    from costmodel.parallel import Plan, apply
    from core.ops import Comm

    matched = match_model(trace_model(str(shared_config("meta-llama--Llama-3.1-8B"))))
    for phase in ("prefill", "decode"):
        ops = apply(matched[phase].ops, Plan(tp=8), hidden=4096, num_layers=32, phase=phase)
        assert sorted((g.n, g.k, g.count) for g in ops if isinstance(g, Gemm)) == sorted([
            (768, 4096, 32), (4096, 512, 32), (3584, 4096, 32), (4096, 1792, 32), (16032, 4096, 1)])
        (att,) = [op for op in ops if isinstance(op, Attention)]
        assert (att.q_heads, att.kv_heads, att.head_dim) == (4, 1, 128)
        reduces = [op for op in ops if isinstance(op, Comm) and op.collective == "all_reduce"]
        assert sum(op.count for op in reduces) == 64 and {op.num_gpus for op in reduces} == {8}


def test_loop_over_tokens_outside_a_scan_block_is_one_recurrence(tmp_path):
    """A Python loop over the tokens with no convolution beside it (RWKV's WKV) is folded and priced as one
    recurrent kernel: FLOPs of all steps, bytes of a fused kernel (inputs once, one output per step)."""
    from graph.match import match_graph

    mg = trace_model(str(write_config(tmp_path, TINY_RWKV)))  # the session's trace, shared with test_kv
    assert "prefill loops over the sequence in Python" in mg.note  # folded (graph.model_graph._folded_prefill)
    matched = match_graph(mg.phases["prefill"], "prefill")
    scans = [op for op in matched.ops if type(op).__name__ == "Scan"]
    assert matched.unsupported == [] and {op.variant for op in scans} == {"recurrence"}
    assert sum(op.count for op in scans) == 2 and all(op.length == "S" for op in scans)
    sizes = {"B": 2, "S": 100, "L": 0}
    # reads key and value ([B, S, 64] bf16 each) once and writes the [B, S, 64] output: at least those three, not
    # the S per-step re-reads of the unfused loop (its state stays on chip)
    seq = 2 * 100 * 64 * 2
    assert all(3 * seq <= op.bytes(sizes) < 5 * seq for op in scans)


class _SplitByCounts:
    """A dispatch written as MoE code does: per-part row counts read back with .tolist(), rows split by them."""

    @staticmethod
    def program(parts: int = 4, with_unbounded: bool = False):
        import torch

        class Dispatch(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(parts, 8, 16))

            def forward(self, x):                       # x: [N, 16]
                choice = x.argmax(-1) % parts           # [N]
                counts = torch.nn.functional.one_hot(choice, parts).sum(0).tolist()
                out = torch.cat([torch.nn.functional.linear(chunk, self.w[i])
                                 for i, chunk in enumerate(x.split(counts))])
                if with_unbounded:                      # a size no split bounds
                    n = (x[:, 0] > 0).sum().item()
                    torch._check(n >= 0)
                    out = out.sum() + torch.zeros(n, 16).sum()
                return out

        x = torch.ones(6, 16)
        dims = {"x": {0: torch.export.Dim("n", min=2)}}
        return torch.export.export(Dispatch(), (x,), dynamic_shapes=dims, strict=False)


def _graph_of(program):
    from types import SimpleNamespace

    from graph.build import build_graph

    (x,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == "x"]
    sym = str(x.meta["val"].shape[0])
    phase = SimpleNamespace(phase="prefill", program=program, symbols={sym: "S"})
    plan = SimpleNamespace(kinds=[], stack_path="layers")
    return build_graph(phase, plan)


def test_split_sizes_from_data_priced_at_their_mean():
    """Unbacked sizes that are the parts of a split of S rows into 4 are S/4 each: balanced routing, noted."""
    from core.expr import evaluate
    from graph.match import match_graph

    g = _graph_of(_SplitByCounts.program(parts=4))
    linears = [a for _, a in g.nodes(data=True) if a["op"] == "aten.linear"]
    assert len(linears) == 4 and {a["out_shapes"][0][0] for a in linears} == {"S/4"}
    assert sum(evaluate(a["flops"], S=1000) for a in linears) == 2 * 1000 * 16 * 8
    assert "balanced routing" in g.graph["note"] and "S rows split 4 ways: S/4" in g.graph["note"]
    match_graph(g, "prefill")  # prices without a NameError


def test_unbounded_data_dependent_size_is_reported_not_crashing():
    from core.expr import evaluate, unknowns
    from graph.match import match_graph

    assert evaluate("2*u7 + S", S=3) == 3 and unknowns("2*u7 + Max(S, u2)", "B") == {"u7", "u2"}
    g = _graph_of(_SplitByCounts.program(parts=2, with_unbounded=True))
    assert "counted as 0" in g.graph["note"]
    matched = match_graph(g, "prefill")
    assert any(unknowns(op.flops_expr, op.bytes_expr) for op in matched.unsupported)
