"""Each pattern rule on a small hand-built graph (the plain-dict node attributes graph.build makes), the rule
order, the engine taking any rule list, and the one walk the rules use."""
from __future__ import annotations

import networkx as nx

from core.ops import Attention, Conv, Embedding, Gemm, MemoryBound, MoE, Scan
from graph.engine import Rule, run
from graph.match import match_graph
from graph.patterns import RULES, gemm
from graph.walk import follow, follow_until


class Graph:
    """Builds a phase graph node by node; every node in layer kind 0, repeated 2 times."""

    def __init__(self, phase: str = "prefill"):
        self.g = nx.DiGraph(phase=phase)

    def add(self, name, op, category, inputs, out, module, flops="0", nbytes="0", dtype="bfloat16", **extra):
        """inputs: (src, shape) pairs; src a node name, "param:<fqn>" or "input"."""
        self.g.add_node(name, op=op, category=category, module=module, layer_kind=0, repeat=2,
                        inputs=[{"src": src, "shape": shape, "dtype": dtype} for src, shape in inputs],
                        out_shapes=[out], out_dtypes=[dtype], consts={}, flops=flops, bytes=nbytes, **extra)
        self.g.add_edges_from((src, name) for src, _ in inputs if src in self.g)
        return name


def _ops(matched, cls):
    return [op for op in matched.ops if isinstance(op, cls)]


def test_rules_in_priority_order():
    assert [r.name for r in RULES] == ["attention", "eager_attention", "moe", "expert_loop", "scan", "recurrence",
                                       "conv", "gemm", "embedding", "kv_write"]


def test_engine_runs_the_rules_it_is_given():
    b = Graph()
    b.add("up", "aten.linear", "matmul", [("input", ["B", "S", "64"]), ("param:mlp.up.weight", ["128", "64"])],
          ["B", "S", "128"], "mlp.up", flops="2*B*S*64*128")
    (left,) = run(b.g, "prefill", ()).unsupported
    assert (left.op, left.flops_expr) == ("aten.linear", "2*B*S*64*128")
    (op,) = run(b.g, "prefill", (Rule("gemm", ("aten.linear",), gemm),)).ops
    assert op == Gemm(module="mlp.up", layer_kind=0, count=2, m="(B)*(S)", n=128, k=64)


def _qk_projections(fuse: bool):
    """A norm's output read by q (64 wide) and k (16 wide) projections, k's weight through a cast."""
    b = Graph()
    b.add("norm", "aten.mul", "elementwise", [("input", ["B", "S", "64"])], ["B", "S", "64"], "attn.norm")
    b.add("q", "aten.linear", "matmul", [("norm", ["B", "S", "64"]), ("param:attn.q.weight", ["64", "64"])],
          ["B", "S", "64"], "attn.q")
    b.add("k_w", "aten._to_copy", "memory", [("param:attn.k.weight", ["16", "64"])], ["16", "64"], "attn.k")
    b.add("k", "aten.linear", "matmul", [("norm", ["B", "S", "64"]), ("k_w", ["16", "64"])],
          ["B", "S", "16"], "attn.k")
    return match_graph(b.g, "prefill", fuse=fuse)


def test_gemm_siblings_fused_and_apart():
    assert _ops(_qk_projections(fuse=True), Gemm) == [
        Gemm(module="attn", layer_kind=0, count=2, m="(B)*(S)", n=80, k=64)]
    assert [(op.module, op.n) for op in _ops(_qk_projections(fuse=False), Gemm)] == [("attn.q", 64), ("attn.k", 16)]


def test_gemm_of_two_activations():
    b = Graph()
    b.add("scores", "aten.matmul", "matmul", [("input", ["B", "4", "S", "16"]), ("input", ["B", "4", "16", "8"])],
          ["B", "4", "S", "8"], "mix", flops="2*B*4*S*16*8")
    (op,) = match_graph(b.g, "prefill").ops
    assert op == Gemm(module="mix", layer_kind=0, count=2, m="S", n=8, k=16, batch="4*(B)", operand="activation")


def test_attention_kernel_with_gqa_heads_found_upstream():
    """K is projected to 8 heads, repeated to 32 by views just before the kernel: 8 KV heads."""
    b = Graph()
    m = "layers.0.attn"
    b.add("k_proj", "aten.linear", "matmul", [("input", ["B", "S", "4096"]), (f"param:{m}.k.weight", ["1024", "4096"])],
          ["B", "S", "1024"], m)
    b.add("k_view", "aten.view", "view", [("k_proj", ["B", "S", "1024"])], ["B", "S", "8", "128"], m)
    b.add("k_t", "aten.transpose", "view", [("k_view", ["B", "S", "8", "128"])], ["B", "8", "S", "128"], m)
    b.add("k_rep", "aten.expand", "view", [("k_t", ["B", "8", "S", "128"])], ["B", "8", "4", "S", "128"], m)
    b.add("k_all", "aten.reshape", "view", [("k_rep", ["B", "8", "4", "S", "128"])], ["B", "32", "S", "128"], m)
    b.add("sdpa", "aten.scaled_dot_product_attention", "attention",
          [("input", ["B", "32", "S", "128"]), ("k_all", ["B", "32", "S", "128"]), ("k_all", ["B", "32", "S", "128"])],
          ["B", "32", "S", "128"], m)
    (att,) = _ops(match_graph(b.g, "prefill"), Attention)
    assert att == Attention(module=m, layer_kind=0, count=2, phase="context", batch="(B)", q_len="S", kv_len="S",
                            q_heads=32, kv_heads=8, head_dim=128, v_head_dim=128)


def test_attention_written_out():
    """q @ k^T, scaled, softmax, @ v: one attention op that takes all four nodes."""
    b = Graph("decode")
    m = "layers.0.attn"
    b.add("qk", "aten.matmul", "matmul", [("input", ["B", "4", "1", "16"]), ("input", ["B", "4", "16", "L"])],
          ["B", "4", "1", "L"], m, flops="2*B*4*16*L")
    b.add("scale", "aten.mul", "elementwise", [("qk", ["B", "4", "1", "L"])], ["B", "4", "1", "L"], m)
    b.add("p", "aten._softmax", "reduction", [("scale", ["B", "4", "1", "L"])], ["B", "4", "1", "L"], m)
    b.add("pv", "aten.matmul", "matmul", [("p", ["B", "4", "1", "L"]), ("input", ["B", "4", "L", "16"])],
          ["B", "4", "1", "16"], m, flops="2*B*4*16*L")
    matched = match_graph(b.g, "decode")
    assert matched.ops == [Attention(module=m, layer_kind=0, count=2, phase="generation", batch="(B)", q_len="1",
                                     kv_len="L", q_heads=4, kv_heads=4, head_dim=16, v_head_dim=16)]


def test_grouped_experts_are_one_moe():
    """Two grouped GEMMs over 8 stacked experts sharing one offsets tensor; rows = 2 x tokens: top-2, gated."""
    b = Graph()
    m = "layers.0.moe"
    b.add("offs", "aten.cumsum", "reduction", [("input", ["8"])], ["8"], m)
    b.add("up", "aten._grouped_mm", "matmul",
          [("input", ["2*B*S", "64"]), (f"param:{m}.w_up", ["8", "64", "256"]), ("offs", ["8"])], ["2*B*S", "256"], m)
    b.add("act", "aten.silu", "elementwise", [("up", ["2*B*S", "256"])], ["2*B*S", "128"], m)
    b.add("down", "aten._grouped_mm", "matmul",
          [("act", ["2*B*S", "128"]), (f"param:{m}.w_down", ["8", "128", "64"]), ("offs", ["8"])], ["2*B*S", "64"], m)
    matched = match_graph(b.g, "prefill")
    assert matched.ops == [MoE(module=m, layer_kind=0, count=2, tokens="B*S", hidden=64, inter=128, topk=2,
                               experts=8, gated=True)]


def test_experts_in_a_python_loop_are_one_moe():
    """Per expert: up GEMM on its slice of a stacked (2 x 128 x 64) parameter, half of it activated, down GEMM on
    its slice of another (2 x 64 x 64); each expert sees every token: top-2."""
    b = Graph()
    m = "layers.0.moe.experts"
    for e in ("0", "1"):
        b.add(f"su{e}", "aten.select", "view", [(f"param:{m}.w_up", ["2", "128", "64"])], ["128", "64"], m)
        b.add(f"up{e}", "aten.linear", "matmul", [("input", ["B*S", "64"]), (f"su{e}", ["128", "64"])],
              ["B*S", "128"], m)
        b.add(f"half{e}", "aten.slice", "view", [(f"up{e}", ["B*S", "128"])], ["B*S", "64"], m)
        b.add(f"act{e}", "aten.silu", "elementwise", [(f"half{e}", ["B*S", "64"])], ["B*S", "64"], m)
        b.add(f"sd{e}", "aten.select", "view", [(f"param:{m}.w_down", ["2", "64", "64"])], ["64", "64"], m)
        b.add(f"down{e}", "aten.linear", "matmul", [(f"act{e}", ["B*S", "64"]), (f"sd{e}", ["64", "64"])],
              ["B*S", "64"], m)
    matched = match_graph(b.g, "prefill")
    assert matched.ops == [MoE(module=m, layer_kind=0, count=2, tokens="B*S", hidden=64, inter=64, topk=2,
                               experts=2, gated=True)]


def test_depthwise_causal_conv_is_a_scan_block_sized_by_the_cached_state():
    """Decode: a depthwise conv over the cached window, and the block's state read from the cache as
    [B, 8 heads, 16 wide, 32 states]: one conv and one SSM scan with that state; the projection stays a GEMM."""
    b = Graph("decode")
    m = "layers.0.mixer"
    b.add("in_proj", "aten.linear", "matmul", [("input", ["B", "1", "64"]), (f"param:{m}.in.weight", ["128", "64"])],
          ["B", "1", "128"], m)
    b.add("conv", "aten.conv1d", "conv", [("input", ["B", "128", "4"]), (f"param:{m}.conv.weight", ["128", "1", "4"])],
          ["B", "128", "1"], m)
    b.add("decay", "aten.mul", "elementwise", [("input", ["B", "8", "16", "32"]), ("conv", ["B", "128", "1"])],
          ["B", "8", "16", "32"], m, flops="B*8*16*32")
    b.add("y", "aten.sum", "reduction", [("decay", ["B", "8", "16", "32"])], ["B", "8", "16"], m, flops="B*8*16*32")
    matched = match_graph(b.g, "decode")
    assert _ops(matched, Conv) == [Conv(module=m, layer_kind=0, count=2, batch="B", length="4", channels=128,
                                        out_channels=128, kernel=4, groups=128)]
    (scan,) = _ops(matched, Scan)
    assert _ops(matched, Scan) == [Scan(module=m, layer_kind=0, count=2, variant="ssm", batch="B", length="1",
                                        heads=8, head_dim=16, state=32, flops_expr="(B*8*16*32) + (B*8*16*32)",
                                        bytes_expr=scan.bytes_expr)]
    # bf16: the state in, the conv's output in, the [B, 8, 16] result out; the state's update stays inside
    assert scan.bytes({"B": 1}) == 8 * 16 * 32 * 2 + 128 * 2 + 8 * 16 * 2
    assert [op.n for op in _ops(matched, Gemm)] == [128]


def test_conv_that_is_not_a_sequence_mixer():
    b = Graph()
    b.add("conv", "aten.conv1d", "conv", [("input", ["B", "16", "S"]), ("param:stem.weight", ["32", "16", "3"])],
          ["B", "32", "S"], "stem")
    assert match_graph(b.g, "prefill").ops == [Conv(module="stem", layer_kind=0, count=2, batch="B", length="(S)",
                                                    channels=16, out_channels=32, kernel=3, groups=1)]


def test_loop_over_the_tokens_is_one_recurrence():
    """A folded loop body (its nodes carry steps = S) reads a [B, S, 64] tensor and hands out a [B, 64] result each
    step: bytes are the tensor once plus S results; the carried state is not counted."""
    b = Graph()
    m = "layers.0.wkv"
    b.add("x", "aten.mul", "elementwise", [("input", ["B", "S", "64"])], ["B", "S", "64"], "layers.0.pre")
    b.add("step", "aten.mul", "elementwise", [("x", ["B", "S", "64"])], ["B", "64"], m, flops="S*B*64", steps="S")
    b.add("state", "aten.add", "elementwise", [("step", ["B", "64"])], ["B", "64"], m, flops="S*B*64", steps="S")
    b.add("out", "aten.mul", "elementwise", [("state", ["B", "64"])], ["B", "64"], "layers.0.post")
    (scan,) = _ops(match_graph(b.g, "prefill"), Scan)
    assert (scan.variant, scan.module, scan.length, scan.flops_expr) == ("recurrence", m, "S", "(S*B*64) + (S*B*64)")
    assert scan.bytes({"B": 1, "S": 10}) == 10 * 64 * 2 + 10 * 64 * 2


def test_embedding():
    b = Graph()
    b.add("emb", "aten.embedding", "memory", [("param:embed.weight", ["1000", "64"]), ("input", ["B", "S"])],
          ["B", "S", "64"], "embed")
    assert match_graph(b.g, "prefill").ops == [Embedding(module="embed", layer_kind=0, count=2, tokens="(B)*(S)",
                                                         hidden=64)]


def test_decode_cache_append_writes_only_the_new_token():
    """HF's cat copies the whole [B, 8, L, 128] cache; an engine writes the new token's K and V: 2 x B x 8 x 128 x 2
    bytes."""
    b = Graph("decode")
    m = "layers.0.attn"
    b.add("k_new", "aten.transpose", "view", [("input", ["B", "1", "8", "128"])], ["B", "8", "1", "128"], m)
    b.add("cache", "aten.cat", "memory", [("input", ["B", "8", "L", "128"]), ("k_new", ["B", "8", "1", "128"])],
          ["B", "8", "L + 1", "128"], m, nbytes="(B*8*(L + 1)*128)*2*2")
    (op,) = match_graph(b.g, "decode").ops
    assert (type(op), op.what, op.nodes) == (MemoryBound, "kv_write", 1)
    assert op.bytes({"B": 3, "L": 100}) == 2 * 3 * 8 * 128 * 2


def test_follow_nearest_first_and_within_the_hop_limit():
    g = nx.DiGraph([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e"), ("e", "f")])
    assert list(follow(["a"], g.successors, lambda n: True)) == ["a", "b", "c", "d", "e", "f"]
    assert list(follow(["a"], g.successors, lambda n: True, hops=2)) == ["a", "b", "c", "d"]
    assert list(follow(["a"], g.successors, lambda n: n != "c")) == ["a", "b", "c", "d", "e", "f"]
    assert list(follow(["a"], g.successors, lambda n: n not in "bc")) == ["a", "b", "c"]


def test_follow_until():
    g = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "d")])
    assert follow_until(["a"], g.successors, lambda n: n in "ab") == ("c", ["a", "b"])
    assert follow_until(["a"], g.successors, lambda n: True, until=lambda n: n == "d") == ("d", ["a", "b", "c"])
    assert follow_until(["a"], g.successors, lambda n: True, until=lambda n: n == "d", hops=1) == (None, ["a", "b"])
    assert follow_until(["a"], g.successors, lambda n: n in "abcd") == (None, ["a", "b", "c", "d"])  # dead end


def _moe_block(shared: bool) -> Graph:
    """A MoE block on h's norm x: routed experts (grouped GEMMs, summed back to one row per token), then, with
    `shared`, a dense up / activation / down branch on x added to their output, then the residual add of h."""
    b = Graph()
    m, e = "layers.0.mlp", "layers.0.mlp.experts"
    b.add("h", "aten.add", "elementwise", [("input", ["B*S", "64"]), ("input", ["B*S", "64"])], ["B*S", "64"], "layers.0")
    b.add("x", "aten.rsqrt", "elementwise", [("h", ["B*S", "64"])], ["B*S", "64"], "layers.0.norm")
    b.add("rows", "aten.index", "memory", [("x", ["B*S", "64"])], ["2*B*S", "64"], e)
    b.add("offs", "aten.cumsum", "reduction", [("x", ["B*S", "64"])], ["8"], e)
    b.add("up", "aten._grouped_mm", "matmul",
          [("rows", ["2*B*S", "64"]), (f"param:{e}.w_up", ["8", "64", "256"]), ("offs", ["8"])], ["2*B*S", "256"], e)
    b.add("act", "aten.silu", "elementwise", [("up", ["2*B*S", "256"])], ["2*B*S", "128"], e)
    b.add("down", "aten._grouped_mm", "matmul",
          [("act", ["2*B*S", "128"]), (f"param:{e}.w_down", ["8", "128", "64"]), ("offs", ["8"])], ["2*B*S", "64"], e)
    b.add("comb", "aten.sum", "reduction", [("down", ["2*B*S", "64"])], ["B*S", "64"], e)
    b.add("view", "aten.view", "view", [("comb", ["B*S", "64"])], ["B*S", "64"], m)
    out = "view"
    if shared:
        s = "layers.0.mlp.shared"
        b.add("s_up", "aten.linear", "matmul", [("x", ["B*S", "64"]), (f"param:{s}.up.weight", ["128", "64"])],
              ["B*S", "128"], s + ".up")
        b.add("s_act", "aten.silu", "elementwise", [("s_up", ["B*S", "128"])], ["B*S", "128"], s)
        b.add("s_down", "aten.linear", "matmul", [("s_act", ["B*S", "128"]), (f"param:{s}.down.weight", ["64", "128"])],
              ["B*S", "64"], s + ".down")
        out = b.add("join", "aten.add", "elementwise", [("view", ["B*S", "64"]), ("s_down", ["B*S", "64"])],
                    ["B*S", "64"], m)
    b.add("res", "aten.add", "elementwise", [(out, ["B*S", "64"]), ("h", ["B*S", "64"])], ["B*S", "64"], "layers.0")
    return b


def test_dense_branch_added_to_the_moe_output_runs_beside_it():
    ops = match_graph(_moe_block(shared=True).g, "prefill").ops
    beside = {(op.kind, getattr(op, "n", None)) for op in ops if op.concurrent_with == "layers.0.mlp.experts"}
    assert beside == {("Gemm", 128), ("Gemm", 64), ("MemoryBound", None)}   # up, down and its activation
    # the norm, the join and the residual adds: one fused group, on the main stream
    assert [op.kind for op in ops if not op.concurrent_with] == ["MoE", "MemoryBound"]


def test_residual_add_after_the_moe_is_no_branch():
    assert not any(op.concurrent_with for op in match_graph(_moe_block(shared=False).g, "prefill").ops)
