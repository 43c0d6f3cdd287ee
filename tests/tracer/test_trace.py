"""Tracer and op graph: parameter counts, FLOPs against torch's own counter, depth reduction, symbolic sizes."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_GPT, TINY_RWKV, shared_config, shared_config_files, tiny_config, write_config
from graph.build import build_graph
from core.expr import evaluate
from graph.model_graph import trace_model
from tracer.export import export_phase, export_phases, export_prefill
from tracer.layers import LayerKind, LayerPlan, apply_plan, packed_per_layer, parameter_totals, plan_layers
from tracer.meta import build_meta_model
from tracer.config_build import load_config
from tracer.model_source import ModelSource
from tracer.source import resolve

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, vocab_size=1000)

TINY = {
    "llama": tiny_config("llama", num_hidden_layers=4, **SMALL),
    "qwen3": tiny_config("qwen3", num_hidden_layers=3, head_dim=64, **SMALL),
    "mixtral": tiny_config("mixtral", num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, **SMALL),
    "deepseek_v3": tiny_config("deepseek_v3", num_hidden_layers=3, first_k_dense_replace=1, n_routed_experts=8,
                               num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=128,
                               q_lora_rank=64, kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=32,
                               v_head_dim=32, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                               num_key_value_heads=4, vocab_size=1000),
    "gemma3_text": tiny_config("gemma3_text", num_hidden_layers=7, sliding_window=16, head_dim=32, **SMALL),
}

COUNTED = ("matmul", "attention", "conv")  # the op kinds torch's FlopCounterMode counts


def _config(config_dict: dict):
    return load_config(ModelSource(name="test", kind="local", origin="test", config=config_dict, path=None))[0]


def _model(config_dict: dict):
    return build_meta_model(_config(config_dict))


def _cpu_model(config_dict: dict):
    """The same tiny model with real CPU weights, MoE experts looped per expert ("eager"), which the counter
    counts: the trace's `_grouped_mm` is unknown to FlopCounterMode, the arithmetic is the same."""
    from transformers import AutoModelForCausalLM

    config = _config(config_dict)
    config._experts_implementation = "eager"
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def _graph_flops(g, **sizes) -> int:
    return sum(evaluate(a["flops"], **sizes) * a["repeat"] for _, a in g.nodes(data=True) if a["category"] in COUNTED)


def _counter_prefill(model, batch, seq) -> int:
    ids = torch.randint(0, 1000, (batch, seq))
    # The math SDPA backend runs attention as two bmm, which the counter counts; the CPU flash kernel it skips.
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return counter.get_total_flops()


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_prefill_flops_match_torch_flop_counter(tmp_path, model_type):
    """The graph's matmul/attention/conv FLOPs equal FlopCounterMode's on the full-depth model, at two sizes
    from one trace (the shapes are symbolic). MoE experts run as `_grouped_mm` in the trace, which the counter
    does not know; the counter's model loops over the experts instead, the same arithmetic."""
    mg = trace_model(str(write_config(tmp_path, TINY[model_type])))  # the session's trace, shared (conftest)
    full = _cpu_model(TINY[model_type])
    for batch, seq in ((2, 33), (1, 64)):
        ours = _graph_flops(mg.phases["prefill"], B=batch, S=seq, L=0)
        theirs = _counter_prefill(full, batch, seq)
        assert theirs > 0
        assert abs(ours - theirs) / theirs < 0.005, (batch, seq, ours, theirs)


def test_decode_flops_match_torch_flop_counter(tmp_path):
    mg = trace_model(str(write_config(tmp_path, TINY["llama"])))
    model = _model(TINY["llama"])
    for batch, cached in ((2, 40), (3, 200)):
        with torch.no_grad():
            out = model(input_ids=torch.zeros(batch, cached, dtype=torch.long, device="meta"), use_cache=True)
            with FlopCounterMode(display=False) as counter:
                model(input_ids=torch.zeros(batch, 1, dtype=torch.long, device="meta"),
                      past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
        assert _graph_flops(mg.phases["decode"], B=batch, S=1, L=cached) == counter.get_total_flops()


def _identity_plan(model, config) -> LayerPlan:
    plan = plan_layers(model, config)
    n = plan.num_layers
    return LayerPlan(num_layers=n, stack_path=plan.stack_path, per_layer_keys=plan.per_layer_keys,
                     kinds=[LayerKind(index=i, representative=i, count=1, layers=[i]) for i in range(n)])


def _totals(g, sizes):
    flops = sum(evaluate(a["flops"], **sizes) * a["repeat"] for _, a in g.nodes(data=True))
    moved = sum(evaluate(a["bytes"], **sizes) * a["repeat"] for _, a in g.nodes(data=True))
    return flops, moved


@pytest.mark.parametrize("model_type", ["llama", "deepseek_v3", "gemma3_text"])
def test_reduced_trace_equals_full_depth_trace(tmp_path, model_type):
    """One layer per kind, multiplied by its count, gives exactly the totals of tracing every layer. The reduced
    trace is trace_model's (the session's, shared with the FLOP tests above); every layer is exported here."""
    reduced = trace_model(str(write_config(tmp_path, TINY[model_type])))
    assert len(reduced.plan) < reduced.num_layers
    model = _model(TINY[model_type])
    plan = _identity_plan(model, model.config)
    apply_plan(model, model.config, plan)
    full = {p: build_graph(ph, plan) for p, ph in export_phases(model).items()}
    results = [{p: [_totals(g, s) for s in ({"B": 2, "S": 50, "L": 0}, {"B": 3, "S": 1, "L": 70})]
                for p, g in phases.items()} for phases in (reduced.phases, full)]
    assert results[0] == results[1]


def test_layer_plan_kinds():
    model = _model(TINY["deepseek_v3"])
    plan = plan_layers(model, model.config)
    assert [(k.count, k.layers) for k in plan.kinds] == [(1, [0]), (2, [1, 2])]
    model = _model(TINY["gemma3_text"])
    plan = plan_layers(model, model.config)
    # 5 sliding : 1 full, repeating: layers 5 is full; 7 layers -> 6 sliding + 1 full
    assert sorted(k.count for k in plan.kinds) == [1, 6]
    assert plan.per_layer_keys == ["layer_types"]


@pytest.mark.parametrize("path", shared_config_files(), ids=lambda p: p.stem)
def test_parameter_count_equals_full_depth(path):
    """Every real config: parameters of the reduced model, layers multiplied by their counts, equal
    sum(p.numel()) over the full-depth meta model."""
    src = resolve(str(path))
    try:
        config, _ = load_config(src)
    except Exception as exc:  # remote-code configs are refused offline: nothing to count
        pytest.skip(str(exc))
    model = build_meta_model(config)
    full = sum(p.numel() for p in model.parameters())
    plan = plan_layers(model, model.config)
    apply_plan(model, model.config, plan)
    assert parameter_totals(model, plan)[0] == full


def test_llama_8b_parameter_count():
    mg = trace_model(str(shared_config("meta-llama--Llama-3.1-8B")))
    assert mg.param_count == 8_030_261_248
    assert mg.weight_bytes == 2 * 8_030_261_248
    assert [k["count"] for k in mg.plan] == [32]


def test_decode_graph_is_symbolic_in_batch_and_cache(tmp_path):
    mg = trace_model(str(write_config(tmp_path, TINY["llama"])))
    sdpa = [a for _, a in mg.phases["decode"].nodes(data=True) if a["category"] == "attention"]
    assert len(sdpa) == 1 and sdpa[0]["repeat"] == 4
    # q: (B, 8 heads, 1, 32); k: the cache plus the new token, its 2 KV heads repeated to 8 before SDPA
    assert sdpa[0]["inputs"][0]["shape"] == ["B", "8", "1", "32"]
    assert sdpa[0]["inputs"][1]["shape"] == ["B", "8", "L + 1", "32"]
    cache_appends = [a for _, a in mg.phases["decode"].nodes(data=True) if a["op"] == "aten.cat"
                     and a["out_shapes"] == [["B", "2", "L + 1", "32"]]]
    assert len(cache_appends) == 2  # K and V of the one traced layer


def _export_tiny(config_dict: dict):
    model = _model(config_dict)
    plan = plan_layers(model, model.config)
    apply_plan(model, model.config, plan)
    return export_phases(model)


def test_decode_cache_prefill_checks_no_mask_values():
    """The meta prefill that builds the decode cache takes the traced branches too: a decoder whose mask code
    reads a padding mask's values (.item(), impossible on meta) when not tracing still gets a symbolic decode."""
    phases = _export_tiny(tiny_config("bart", d_model=64, encoder_layers=1, decoder_layers=1,
                                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128,
                                      decoder_ffn_dim=128, vocab_size=100))
    assert sorted(phases["decode"].symbols.values()) == ["B", "L"]


def test_decode_cache_returned_under_another_name():
    """A recurrent model that returns its state object under another output field (and takes it back under the
    same argument name) is decoded with that object."""
    phases = _export_tiny(tiny_config("mamba2", hidden_size=64, num_heads=4, head_dim=32, state_size=16,
                                      n_groups=1, num_hidden_layers=2, vocab_size=100, chunk_size=8))
    assert "B" in phases["decode"].symbols.values()
    ops = {str(n.target) for n in phases["decode"].program.graph.nodes if n.op == "call_function"}
    assert any("conv" in op for op in ops) or len(ops) > 5


def test_default_config_with_none_counts_traces_with_the_smallest_that_works():
    """dots1's default config leaves its expert counts None: 1 expert cannot be routed two per group, 2 can. The
    repair is in the note, which a cached trace keeps."""
    mg = trace_model("dots1")
    assert "n_routed_experts=None->2" in mg.note and "num_experts_per_tok=None->2" in mg.note
    assert mg.config["n_routed_experts"] == 2
    again = trace_model("dots1")
    assert again.from_cache and again.note == mg.note


def test_coverage_reports_the_repairs_tracecost_made():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = {"source": {"origin": "transformers default config for model_type 'x' (repaired: head_dim=absent->42)"},
            "note": "default config repaired after a TypeError in transformers' code: a=None->1; prefill: other"}
    assert bench._repairs(data) == ["head_dim=absent->42", "a=None->1"]
    assert bench._repairs({"source": {"origin": "o"}, "note": ""}) == []


def test_unbounded_clamp_passes_its_input_through_while_tracing():
    """clamp with neither bound (an unset clip) is the identity while tracing, no op; torch's own is restored."""
    from tracer.tracing_mode import tracing_branches

    class Clip(torch.nn.Module):
        def forward(self, x):
            return x.clamp(min=None, max=None) + torch.clamp(x, max=1.0)

    clamp = torch.Tensor.clamp
    with tracing_branches():
        program = torch.export.export(Clip(), (torch.zeros(3, 5, device="meta"),), strict=False)
    assert torch.Tensor.clamp is clamp
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert sum("clamp" in t for t in targets) == 1
    with pytest.raises(RuntimeError):
        torch.zeros(2).clamp(min=None, max=None)


def test_grouped_gemm_with_unaligned_rows_takes_the_fallback(tmp_path):
    """An expert width of 100 bf16 values (200 bytes a row) is refused by torch's grouped GEMM; the trace takes
    transformers' fallback op, matched as MoE like the kernel."""
    cfg = dict(TINY["deepseek_v3"], moe_intermediate_size=100)
    graph = trace_model(str(write_config(tmp_path, cfg))).phases["prefill"]
    ops = {a["op"] for _, a in graph.nodes(data=True)}
    assert "transformers.grouped_mm_fallback" in ops


def test_composite_config_without_a_layer_count_sizes_the_cache_by_its_sub_configs():
    """BLT counts layers per sub-model only; transformers' cache code reads config.num_hidden_layers."""
    from transformers import BltConfig, DynamicCache

    from tracer.decode_cache import _give_cache_layer_count

    config = BltConfig()
    _give_cache_layer_count(config)
    subs = (config.encoder_config, config.decoder_config, config.global_config, config.patcher_config)
    assert config.num_hidden_layers == max(sub.num_hidden_layers for sub in subs)
    assert len(DynamicCache(config=config).layers) == config.num_hidden_layers
    llama = TINY["llama"]
    config = _config(llama)
    _give_cache_layer_count(config)
    assert config.num_hidden_layers == llama["num_hidden_layers"]


def test_layers_named_by_index_in_config_are_renumbered():
    """A config field listing some layers by index (layers that cross-attend) is part of each layer's kind and is
    renumbered with the plan, in the config and wherever a module kept a copy of it."""
    cfg = tiny_config("mllama", text_config=dict(num_hidden_layers=5, cross_attention_layers=[1, 3], hidden_size=64,
                                                 num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                                                 vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2),
                      vision_config=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                                         num_global_layers=1, intermediate_size=64, vision_output_dim=64))
    model = _model(cfg)
    plan = plan_layers(model, model.config)
    assert sorted(k.count for k in plan.kinds) == [2, 3]
    apply_plan(model, model.config, plan)
    cross = [k.index for k in plan.kinds if k.count == 2]
    assert list(model.config.cross_attention_layers) == cross
    phases = export_phases(model)
    assert sorted(phases["decode"].symbols.values()) == ["B", "L"]


def test_heterogeneous_config_builds():
    """A config whose head_dim is set per layer refuses a global read; building the model must not read it."""
    cfg = tiny_config("gemma4_text", num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, vocab_size=128,
                      vocab_size_per_layer_input=128, hidden_size_per_layer_input=16,
                      layer_types=["sliding_attention", "full_attention"], per_layer_config={"01": {"head_dim": 64}})
    model = _model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0


TINY_MAMBA = tiny_config("mamba", hidden_size=64, state_size=8, num_hidden_layers=2, vocab_size=1000,
                         time_step_rank=8, conv_kernel=4)


def test_sequence_loop_folds_to_exact_symbolic_prefill():
    """Mamba's slow path loops over the tokens in Python: prefill is traced at fixed lengths and folded. The folded
    graph, evaluated at a length it was not traced at, equals a direct trace there node class by node class."""
    from graph.loops import fold_sequence_loops
    from tracer.export import SequenceLoop, export_phase
    from tracer.lengths import LOOP_LENGTHS

    model = _model(TINY_MAMBA)
    plan = plan_layers(model, model.config)
    apply_plan(model, model.config, plan)
    with pytest.raises(SequenceLoop):
        export_phase(model, "prefill")
    graphs = {s: build_graph(export_phase(model, "prefill", length=s), plan) for s in (*LOOP_LENGTHS, 11)}
    folded = fold_sequence_loops({s: graphs[s] for s in LOOP_LENGTHS})
    direct = graphs[11]
    assert len(folded) < len(graphs[LOOP_LENGTHS[0]])          # one loop body kept, not five
    body = [a for _, a in folded.nodes(data=True) if a.get("steps")]
    assert body and all(a["steps"] == "S" for a in body)
    for key in ("flops", "bytes"):
        for op in {a["op"] for _, a in direct.nodes(data=True)}:
            want = sum(evaluate(a[key], B=3) * a["repeat"] for _, a in direct.nodes(data=True) if a["op"] == op)
            got = sum(evaluate(a[key], B=3, S=11) * a["repeat"] for _, a in folded.nodes(data=True) if a["op"] == op)
            assert got == want, (key, op)
    assert folded.nodes[next(n for n, a in folded.nodes(data=True) if a["op"] == "aten.conv1d")]["out_shapes"] == \
        [["B", "128", "S + 3"]]


def test_sequence_loop_prefill_flops_match_torch_flop_counter(tmp_path):
    """The folded Mamba prefill against torch's own counter on the real CPU model (which runs the same loop)."""
    path = write_config(tmp_path, TINY_MAMBA)
    g = trace_model(str(path)).phases["prefill"]
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(TINY_MAMBA)).eval()
    counted = _counter_prefill(model, 2, 37)
    assert _graph_flops(g, B=2, S=37) == pytest.approx(counted, rel=0.005)


def test_layer_count_fields_follow_the_plan():
    """The reduced model's layer counts: num_hidden_layers, and num_*_layers equal to the stack where the total is
    derived from them and cannot be set (an encoder-decoder config tracing its decoder)."""
    from types import SimpleNamespace

    from tracer.layers import layer_count_keys

    config = SimpleNamespace(num_hidden_layers=12, num_decoder_layers=12, num_encoder_layers=6, num_dense_layers=1)
    assert layer_count_keys(config, 12) == ["num_hidden_layers", "num_decoder_layers"]

    class Derived(SimpleNamespace):
        @property
        def num_hidden_layers(self):
            return self.num_decoder_layers

    derived = Derived(num_decoder_layers=12)
    plan = LayerPlan(num_layers=12, stack_path="layers", kinds=[LayerKind(index=0, representative=0, count=12)],
                     per_layer_keys=[])
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(12)])
    apply_plan(model, derived, plan)
    assert derived.num_decoder_layers == 1 and derived.num_hidden_layers == 1 and len(model.layers) == 1


def test_decode_of_a_model_without_cache_recomputes_the_sequence(tmp_path):
    """A model that returns no KV cache runs the whole sequence again each step: its decode is traced as a full
    forward over L + 1 tokens, and the trace says so."""
    graph = trace_model(str(write_config(tmp_path, TINY_GPT)))  # the session's trace, shared with test_kv
    assert "decode recomputes" in graph.note
    decode = graph.phases["decode"]
    lm_head = [a for _, a in decode.nodes(data=True) if a["op"] in ("aten.addmm", "aten.linear")]
    # the first projection of the block runs on B * (L + 1) rows: at B=2, L=9 that is 20 rows of 64 -> 192 (qkv)
    flops = {evaluate(a["flops"], B=2, S=1, L=9) for a in lm_head}
    assert 2 * 20 * 64 * 192 in flops


def test_parallel_layer_lists_are_cut_together():
    """A layer written as parallel ModuleLists (attentions[i], ffns[i], norms[i]) is judged and cut as one: every
    list keeps the same layers, and the owner's own copy of the layer count follows."""
    model = _model(tiny_config("xlm", n_layers=3, emb_dim=64, n_heads=4, vocab_size=100))
    plan = plan_layers(model, model.config)
    assert len(plan.parallel_paths) == 3 and [k.count for k in plan.kinds] == [3]
    apply_plan(model, model.config, plan)
    owner = model.get_submodule(plan.stack_path.rpartition(".")[0])
    assert [len(model.get_submodule(p)) for p in (plan.stack_path, *plan.parallel_paths)] == [1, 1, 1, 1]
    assert owner.n_layers == 1
    assert sorted(export_prefill(model).symbols.values()) == ["B", "S"]


class _ToyLayer(torch.nn.Module):
    def __init__(self, i, shared):
        super().__init__()
        self.layer_idx = i
        self.shared = shared
        self.proj = torch.nn.Linear(8, 8)


class _ToyModel(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        n, k = config.num_hidden_layers, config.hidden_size_per_layer_input
        self.per_layer_embed = torch.nn.Embedding(10, n * k)  # one k-wide slice per layer, packed
        self.layers = torch.nn.ModuleList([_ToyLayer(i, i in config.shared_layers) for i in range(n)])
        self.slot_of_layer = {layer: slot for slot, layer in enumerate(config.shared_layers)}


def _toy_config(**kw):
    from transformers import PretrainedConfig

    return PretrainedConfig(num_hidden_layers=4, shared_layers=[1, 3], **kw)


def test_lookup_keyed_by_listed_layers_is_renumbered():
    """A module's dict keyed by the layers a config list names (layer index -> slot) keeps its slots under the
    plan's new layer numbers."""
    config = _toy_config(hidden_size_per_layer_input=0)
    model = _ToyModel(_toy_config(hidden_size_per_layer_input=1))
    plan = plan_layers(model, config)
    assert [k.layers for k in plan.kinds] == [[0, 2], [1, 3]]
    apply_plan(model, config, plan)
    assert model.slot_of_layer == {1: 0} and list(config.shared_layers) == [1]


def test_weight_packed_per_layer_keeps_the_layer_count():
    """A weight outside the stack packed as num_layers x a per-layer size the config declares is reshaped by the
    config's layer count: the count stays the full model's (4), while the stack is cut to its 2 kinds."""
    config = _toy_config(hidden_size_per_layer_input=16)
    model = _ToyModel(config)
    plan = plan_layers(model, config)
    assert packed_per_layer(model, config, plan) == ["per_layer_embed.weight"]
    apply_plan(model, config, plan)
    assert len(model.layers) == 2 and config.num_hidden_layers == 4
    plain = _toy_config(hidden_size_per_layer_input=3)  # 64 = 4 x 16, not 4 x 3: nothing packed
    model = _ToyModel(_toy_config(hidden_size_per_layer_input=16))
    plan = plan_layers(model, plain)
    apply_plan(model, plain, plan)
    assert plain.num_hidden_layers == 2


def test_decode_cache_prefill_that_reads_values_is_traced():
    """A model whose use_cache=True prefill reads token-dependent values (expert sizes with .tolist()) cannot run
    on plain meta tensors; its cache is built by a traced prefill and the decode is still symbolic."""
    phases = _export_tiny(tiny_config("jetmoe", num_hidden_layers=1, hidden_size=64, intermediate_size=64,
                                      num_key_value_heads=2, kv_channels=16, num_local_experts=4,
                                      num_experts_per_tok=2, vocab_size=100))
    assert sorted(phases["decode"].symbols.values()) == ["B", "L"]
    sdpa = [n for n in phases["decode"].program.graph.nodes if "scaled_dot_product" in str(n.target)]
    assert len(sdpa) == 1
    length = {v: k for k, v in phases["decode"].symbols.items()}["L"]
    assert str(sdpa[0].args[1].meta["val"].shape[2]) == f"{length} + 1"  # the cache plus the new token


def test_distribution_argument_checks_are_off_while_tracing():
    """torch.distributions' default value checks (a branch on data) are off during export, and restored after."""
    from tracer.tracing_mode import tracing_branches

    class Entropy(torch.nn.Module):
        def forward(self, logits):
            return torch.distributions.Categorical(logits=logits).entropy()

    before = torch.distributions.Distribution._validate_args
    with tracing_branches():
        program = torch.export.export(Entropy(), (torch.zeros(3, 5, 7, device="meta"),),
                                      dynamic_shapes={"logits": {0: torch.export.Dim.DYNAMIC}}, strict=False)
    assert torch.distributions.Distribution._validate_args == before
    out = [n for n in program.graph.nodes if n.op == "output"][0].args[0][0]
    assert tuple(out.meta["val"].shape)[1:] == (5,)


def test_per_layer_list_computed_by_a_property_is_cut():
    """A per-layer list the config computes (a read-only property repeating a pattern to num_hidden_layers) is cut
    with the plan like a stored one: the reduced model's cache is made for the layer kinds it kept."""
    model = _model(tiny_config("recurrent_gemma", num_hidden_layers=6, hidden_size=64, lru_width=64,
                               intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                               attention_window_size=16, vocab_size=100))
    assert model.config.layers_block_type == ["linear_attention", "linear_attention", "sliding_attention"] * 2
    plan = plan_layers(model, model.config)
    assert "layers_block_type" in plan.per_layer_keys
    apply_plan(model, model.config, plan)
    assert model.config.layers_block_type == ["linear_attention", "sliding_attention"]
    assert model.config.layer_types == ["linear_attention", "sliding_attention"]  # its attribute_map alias
    assert type(model.config).__name__ == "RecurrentGemmaConfig"


def test_decode_state_held_on_modules_and_cache_not_returned():
    """A model that keeps its recurrent state on its own modules and makes a KV cache it does not return is decoded
    with both: the cache it handed its layers goes back in as past_key_values, the module states are inputs. Its
    conv state's width (conv1d_width - 1 = 3) equals B0, and is not taken for the batch."""
    model = _model(tiny_config("recurrent_gemma", num_hidden_layers=3, hidden_size=64, lru_width=64,
                               intermediate_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                               attention_window_size=16, conv1d_width=4, vocab_size=100,
                               max_position_embeddings=64))  # a declared context: the state probe's prefill is short
    plan = plan_layers(model, model.config)
    apply_plan(model, model.config, plan)
    decode = export_phase(model, "decode")  # (prefill loops over the sequence: folded elsewhere)
    assert sorted(set(decode.symbols.values())) == ["B"]  # the window (16) is full: no L-sized state
    user = [n for n in decode.program.graph.nodes if n.op == "placeholder"
            and n.name in set(decode.program.graph_signature.user_inputs)]
    b = {v: k for k, v in decode.symbols.items()}["B"]
    shapes = sorted(tuple(str(d) for d in n.meta["val"].shape) for n in user[1:])
    # a scalar counter of the window layer, its K and V (the window less the new token: 1 head x 15 x 32), the
    # scan state (64) and the conv state (64 x 3)
    assert shapes == [(), (b, "1", "15", "32"), (b, "1", "15", "32"), (b, "64"), (b, "64", "3")]


def test_cache_tensors_inside_tuples_are_held():
    """Cache tensors kept in tuples (a recurrent state per layer as a (C, n, m) tuple in a dict) are found and each
    is replaced by putting a new tuple of the same type in the tuple's place."""
    from collections import namedtuple

    from tracer.decode_cache import cache_contents

    Pair = namedtuple("Pair", "a b")

    class Cache:
        pass

    cache = Cache()
    cache.state = {0: (torch.zeros(3, 2), torch.zeros(3, 4)), 1: Pair(torch.zeros(3, 5), torch.zeros(1))}
    held, _ = cache_contents(cache, 173)
    assert [tuple(t.shape) for t, _ in held] == [(3, 2), (3, 4), (3, 5), (1,)]
    for i, (tensor, put) in enumerate(held):
        put(torch.full(tensor.shape, float(i)))
    assert type(cache.state[0]) is tuple and type(cache.state[1]) is Pair
    assert [float(t[0]) if t.dim() == 1 else float(t[0, 0]) for t in (*cache.state[0], *cache.state[1])] == [0, 1, 2, 3]


def test_decode_that_fixes_the_batch_stops_at_once():
    """A one-token step that specialises the batch is said at once (BatchFixedDecode: the caller traces decode as a
    chunk instead), and no longer cached length is tried (a model looping over the tokens in Python would run its
    prefill over 131071 of them)."""
    import types

    from tracer import export

    class Lm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"to_dict": lambda self: {}})()
            self.emb = torch.nn.Embedding(10, 4)

        def forward(self, input_ids, state=None, use_cache=False):
            x = self.emb(input_ids)
            if state is None:
                state = [x[:, -1].clone()]
            else:
                x = x + state[0]  # (B, 1, 4) + (B, 4): (B, B, 4), and B fixed by the loop below
                for i in range(x.shape[1]):
                    x = x + 1
            return types.SimpleNamespace(logits=x, state=state)

    tried = []
    original = export._export_decode_at
    export._export_decode_at = lambda model, l0, *args: tried.append(l0) or original(model, l0, *args)
    try:
        with pytest.raises(export.BatchFixedDecode, match="fixes the batch size"):
            export.export_decode(Lm())
    finally:
        export._export_decode_at = original
    assert tried == [export.L0_TRIES[0]]


def test_rows_a_mask_selects_are_priced_at_their_bound():
    """A size that depends on data (the rows hidden[mask] selects, as a per-language adapter routes its sequences)
    is given its bound, the mask's element count in B / S (every row selected), and noted; the graph is in B, S."""
    import types

    from graph.build import build_graph
    from tracer.export import export_phase

    class Routed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = None
            self.emb = torch.nn.Embedding(10, 8)
            self.adapter = torch.nn.Linear(8, 8)

        def forward(self, input_ids, use_cache=False):
            hidden = self.emb(input_ids)
            mask = input_ids[:, 0] == 1                       # one flag per sequence: (B,)
            out = torch.zeros_like(hidden)
            out[mask] = self.adapter(hidden[mask])            # (u0, S, 8), u0 <= B
            return types.SimpleNamespace(logits=out)

    phase = export_phase(Routed(), "prefill")
    bounded = {name: role for name, role in phase.symbols.items() if name.startswith("u")}
    assert list(bounded.values()) == ["B"]
    assert "priced at their bound: B" in phase.note
    plan = LayerPlan(num_layers=1, stack_path="stack", kinds=[], per_layer_keys=[])
    graph = build_graph(phase, plan)
    linear = [a for _, a in graph.nodes(data=True) if a["op"] == "aten.linear"]
    assert linear[0]["inputs"][0]["shape"] == ["B", "S", "8"]


def test_legacy_float_parameters_join_the_meta_model_in_its_dtype():
    """torch.FloatTensor(...) ignores the meta device and the build dtype: such parameters become meta tensors of
    DTYPE (tied ones stay tied), except modules the model declares it keeps in float32."""
    from tracer.meta import DTYPE, _uniform_dtype

    class Net(torch.nn.Module):
        _keep_in_fp32_modules = ["norm"]

        def __init__(self):
            super().__init__()
            with torch.device("meta"):
                self.q = torch.nn.Parameter(torch.FloatTensor(4, 2))       # a real CPU fp32 tensor, even here
                self.norm = torch.nn.Linear(2, 2, dtype=torch.float32)
                self.head = torch.nn.Linear(2, 4, bias=False, dtype=DTYPE)
            self.sub = torch.nn.Module()
            self.sub.q = self.q

    net = Net()
    assert net.q.device.type == "cpu"
    _uniform_dtype(net)
    assert (net.q.device.type, net.q.dtype) == ("meta", DTYPE) and net.sub.q is net.q
    assert (net.norm.weight.device.type, net.norm.weight.dtype) == ("meta", torch.float32)
    assert net.head.weight.dtype == DTYPE


def test_tuple_state_returned_by_prefill_is_a_list_the_decode_can_fill():
    from types import SimpleNamespace

    from tracer.decode_cache import returned_cache

    class M(torch.nn.Module):
        def forward(self, input_ids, mems=None, use_cache=False):
            pass

    kind, cache = returned_cache(M(), SimpleNamespace(logits=None, mems=(torch.zeros(2), torch.zeros(3))))
    assert kind == "mems" and isinstance(cache, list) and [t.numel() for t in cache] == [2, 3]


def _token_graph(ops: list[str]):
    import networkx as nx

    g = nx.DiGraph(phase="prefill")
    for i, op in enumerate(ops):
        g.add_node(f"n{i}", op=op, module="m", layer_kind=0, repeat=1, inputs=[], out_shapes=[], out_dtypes=[],
                   flops="0", bytes="0")
    return g


def test_sequence_loop_folding_refuses_a_model_that_branches_on_length():
    """Graphs at fixed lengths that differ by more than the copies of a loop body cannot be one graph in S."""
    from graph.loops import FoldError, fold_sequence_loops

    loop = {s: _token_graph(["aten.linear"] + ["aten.mul", "aten.add"] * s + ["aten.cat"]) for s in (5, 6, 7, 8)}
    folded = fold_sequence_loops(loop)
    assert [a["op"] for _, a in folded.nodes(data=True)] == ["aten.linear", "aten.mul", "aten.add", "aten.cat"]
    assert [a.get("steps") for _, a in folded.nodes(data=True)] == [None, "S", "S", None]
    branching = dict(loop)
    branching[8] = _token_graph(["aten.linear"] + ["aten.mul", "aten.add"] * 8 + ["aten.softmax"])
    with pytest.raises(FoldError, match="branches on the sequence length"):
        fold_sequence_loops(branching)
    with pytest.raises(FoldError, match="four lengths"):
        fold_sequence_loops({5: loop[5], 6: loop[6]})


class _Codebooks(torch.nn.Module):
    """An audio decoder's input layout: input_ids of (batch * 4, S), one row per codebook, reshaped by 4."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"to_dict": lambda self: {}})()
        self.emb = torch.nn.ModuleList(torch.nn.Embedding(10, 8) for _ in range(4))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, input_ids, use_cache=False):
        import types

        ids = input_ids.reshape(-1, 4, input_ids.shape[-1])
        hidden = sum(self.emb[c](ids[:, c]) for c in range(4))
        return types.SimpleNamespace(logits=self.head(hidden))


def test_input_rows_per_sequence_are_found_and_kept_symbolic():
    """A model whose code reshapes the batch of its input by a constant (codebooks) is found by probing which row
    counts run, and exported with that many rows per sequence: B counts sequences, both phases stay in B and S / L."""
    from tracer.batch_rows import batch_group

    model = _Codebooks()
    plan = LayerPlan(num_layers=1, stack_path="stack", kinds=[], per_layer_keys=[])
    phases = {p: export_phase(model, p) for p in ("prefill", "decode")}
    assert batch_group(model) == 4
    for phase in phases.values():
        assert "4 rows of input_ids per sequence" in phase.note and set(phase.symbols.values()) >= {"B"}
    heads = {p: [a for _, a in build_graph(e, plan).nodes(data=True) if a["op"] == "aten.linear"]
             for p, e in phases.items()}
    assert heads["prefill"][0]["inputs"][0]["shape"] == ["B", "S", "8"]
    assert heads["decode"][0]["inputs"][0]["shape"] == ["B", "L + 1", "8"]  # no cache: the whole sequence again


def test_a_model_with_one_row_per_sequence_is_not_grouped():
    from tracer.batch_rows import batch_group

    class Plain(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            return input_ids

    assert batch_group(Plain()) == 1


class _SharedShift(torch.nn.Module):
    """RWKV's token shift: the one-token path adds a (B, H) state to (B, 1, H) hidden states, which broadcasts to
    (B, B, H), right only for one sequence; the multi-token path puts the state in the first position."""

    def __init__(self):
        super().__init__()
        self.config = type("C", (), {"to_dict": lambda self: {}})()
        self.emb = torch.nn.Embedding(10, 8)
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, input_ids, state=None, use_cache=False):
        import types

        hidden = self.emb(input_ids)
        if hidden.shape[1] == 1 and state is not None:
            shifted = state[0]
            mixed = hidden + shifted
            for _ in range(mixed.shape[1]):  # as RWKV's loop over the tokens: here over B
                mixed = mixed * 2
        else:
            shifted = torch.nn.functional.pad(hidden, (0, 0, 1, -1))
            if state is not None:
                shifted[:, 0] = state[0]
            mixed = hidden + shifted
        out = self.mix(mixed)
        return types.SimpleNamespace(logits=out, state=[hidden[:, -1].clone()] if use_cache else None)


def test_decode_whose_one_token_path_fixes_the_batch_is_traced_as_a_chunk():
    """BatchFixedDecode, then the multi-token path over the cache: symbolic in B and S (priced at S = 1), its state
    an input with a batch dim, and said in the note."""
    from graph.model_graph import _export_graphs
    from tracer import export

    model = _SharedShift()
    with pytest.raises(export.BatchFixedDecode):
        export_phase(model, "decode")
    phase = export_phase(model, "decode", chunk=True)
    assert sorted(set(phase.symbols.values())) == ["B", "S"] and "chunk of S new tokens" in phase.note
    plan = LayerPlan(num_layers=1, stack_path="stack", kinds=[], per_layer_keys=[])
    graph = _export_graphs(model, plan, lambda m: None)["decode"]
    assert "priced at S = 1" in graph.graph["note"]
    (mix,) = [a for _, a in graph.nodes(data=True) if a["op"] == "aten.linear"]
    assert mix["inputs"][0]["shape"] == ["B", "S", "8"]
    assert any(i["src"] == "input" and i["shape"] == ["B", "8"] for _, a in graph.nodes(data=True)
               for i in a["inputs"])


def test_rwkv_decode_traced_as_a_chunk_matches_the_real_one_token_step(tmp_path):
    """transformers' one-token RWKV step is right only for one sequence; decode is traced as a one-token chunk of
    its multi-token path. Its GEMM FLOPs at B = 1 equal torch's count of the real one-token step, and grow with B."""
    from transformers import AutoModelForCausalLM

    from tracer import export

    from graph.summary import op_table

    real = AutoModelForCausalLM.from_config(_config(TINY_RWKV), dtype=torch.float32).eval()
    ids = torch.randint(0, 100, (1, 9))
    with torch.no_grad():
        state = real(input_ids=ids, use_cache=True).state
        with FlopCounterMode(display=False) as counter:
            real(input_ids=ids[:, -1:], state=state, use_cache=True)
    model = _model(TINY_RWKV)
    plan = plan_layers(model, model.config)
    apply_plan(model, model.config, plan)
    with pytest.raises(export.BatchFixedDecode):
        export.export_decode(model)
    decode = trace_model(str(write_config(tmp_path, TINY_RWKV))).phases["decode"]  # the session's, shared
    assert "chunk of S new tokens" in decode.graph["note"]

    def gemm_flops(batch):
        return sum(r["flops"] for r in op_table(decode, {"B": batch, "S": 1, "L": 9}) if r["category"] == "matmul")

    assert gemm_flops(1) == counter.get_total_flops()
    assert gemm_flops(4) == 4 * gemm_flops(1)


def _decode_counted(config_dict: dict, batch: int, cached: int, whole_sequence: bool = False) -> int:
    """FlopCounterMode's count of one decode step of the full-depth CPU model (eager attention) over a cache its
    own prefill of `cached` tokens built; `whole_sequence`: the step is given every token, as its generate() does."""
    from transformers import AutoModelForCausalLM

    from tracer.tracing_mode import _caches_without_attention

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(config_dict), attn_implementation="eager").eval()
    ids = torch.randint(3, 1000, (batch, cached + 1))
    with torch.no_grad(), _caches_without_attention():
        out = model(input_ids=ids[:, :-1], use_cache=True)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids if whole_sequence else ids[:, -1:], past_key_values=out.past_key_values,
                  use_cache=True)
    return counter.get_total_flops()


TINY_BAMBA = tiny_config("bamba", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=1000, mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16,
                         mamba_chunk_size=8)


def test_cache_of_recurrent_layers_only_decodes(tmp_path):
    """Bamba's default layer list holds no attention layer (the full config, not the depth reduction): its cache
    tracks no length, and transformers refuses to give one while the model's code builds masks no layer reads. The
    tracer answers as for an empty cache: decode traces, its state does not grow with L, its FLOPs equal torch's
    counter on the CPU model; outside the trace the cache refuses as before."""
    from transformers.cache_utils import DynamicCache

    assert not _config(TINY_BAMBA).attn_layer_indices  # the default lists no attention layer
    mg = trace_model(str(write_config(tmp_path, TINY_BAMBA)))
    decode = mg.phases["decode"]
    dims = {str(d) for _, a in decode.nodes(data=True) for shape in a["out_shapes"] for d in shape}
    assert "B" in dims and not any("L" in d for d in dims)
    for batch, cached in ((2, 37), (1, 60)):
        assert _graph_flops(decode, B=batch, S=1, L=cached) == _decode_counted(TINY_BAMBA, batch, cached)
    with pytest.raises(ValueError, match="LinearAttention"):
        DynamicCache(config=_config(TINY_BAMBA)).get_seq_length()


def test_decode_lengths_stay_within_the_context_length():
    """The cached lengths a decode is traced at are primes the config's position table covers (with the decode
    token's position and an offset): a learned position table of 512 never sees 131071. A declared window still
    gets a length past it; fold lengths are four primes within the table too."""
    from tracer.lengths import B1, L0_TRIES, decode_lengths, fold_lengths, is_prime

    short = _config(tiny_config("prophetnet"))
    assert short.max_position_embeddings == 512
    windowed = _config(tiny_config("mistral", sliding_window=100, max_position_embeddings=256))
    tiny = _config(tiny_config("llama", max_position_embeddings=64))
    for config in (short, windowed, tiny):
        limit = config.max_position_embeddings
        for lengths in (decode_lengths(config), fold_lengths(config)):
            assert all(is_prime(n) and B1 < n <= limit - 4 for n in lengths), lengths
        assert len(set(fold_lengths(config))) == 4
    assert decode_lengths(short) == (L0_TRIES[0], 503)
    assert decode_lengths(windowed)[0] == 101 and fold_lengths(windowed)[0] == 101
    assert decode_lengths(_config(tiny_config("rwkv", context_length=1 << 20))) == L0_TRIES


def test_context_length_is_the_smallest_limit_the_config_declares():
    """One answer for every use (decode lengths, range notes, retraces past a short path): the smallest positive
    limit among the fields configs name it by, a decoder's max_target_positions included; a field that refuses a
    global read (per-layer) is skipped."""
    import types

    from tracer.lengths import context_length

    class PerLayer(types.SimpleNamespace):
        @property
        def n_ctx(self):
            raise AttributeError("per-layer")

    assert context_length(types.SimpleNamespace(max_position_embeddings=1500, max_target_positions=448)) == 448
    assert context_length(types.SimpleNamespace(max_position_embeddings=32768, seq_length=8192, n_positions=0)) == 8192
    assert context_length(PerLayer(context_length=4096)) == 4096
    assert context_length(types.SimpleNamespace(hidden_size=64)) is None


TINY_PROPHETNET = tiny_config("prophetnet", hidden_size=64, encoder_ffn_dim=128, decoder_ffn_dim=128,
                              num_encoder_layers=2, num_decoder_layers=2, num_encoder_attention_heads=4,
                              num_decoder_attention_heads=4, vocab_size=1000)
TINY_CPMANT = tiny_config("cpmant", hidden_size=64, num_attention_heads=4, dim_head=16, dim_ff=128,
                          num_hidden_layers=2, vocab_size=1000, prompt_length=8, prompt_types=8, segment_types=8)


def test_decode_that_casts_the_cached_length_to_int_is_folded(tmp_path):
    """ProphetNet's decode casts the cache's length to a Python int (its position), so export fixes L at every
    length: decode is traced at fixed L and folded into one graph in L, exact against torch's counter on the CPU
    model at lengths it was not traced at."""
    mg = trace_model(str(write_config(tmp_path, TINY_PROPHETNET)))
    assert "decode fixes the cached length" in mg.note
    decode = mg.phases["decode"]
    assert any("L" in str(d) for _, a in decode.nodes(data=True) for shape in a["out_shapes"] for d in shape)
    for batch, cached in ((2, 37), (1, 90)):
        assert _graph_flops(decode, B=batch, S=1, L=cached) == _decode_counted(TINY_PROPHETNET, batch, cached)


def test_decode_of_a_model_fed_the_whole_sequence_is_folded(tmp_path):
    """CPM-Ant's forward slices the cached prefix off itself: its generate() passes every token at each step (what
    its prepare_inputs_for_generation returns), and one new token alone fails in its code. Decode is traced fed the
    whole sequence, at fixed L (its code sizes a list by the length), folded into one graph in L, and equals torch's
    counter on the CPU model fed the same way. Its written-out attention (softmax a submodule of its own, over the
    prompt tokens and the sequence) is one attention op per layer."""
    from core.ops import Attention
    from graph.match import match_model

    mg = trace_model(str(write_config(tmp_path, TINY_CPMANT)))
    assert "fed the whole sequence" in mg.note
    decode = mg.phases["decode"]
    for batch, cached in ((2, 37), (1, 90)):
        counted = _decode_counted(TINY_CPMANT, batch, cached, whole_sequence=True)
        assert _graph_flops(decode, B=batch, S=1, L=cached) == counted
    matched = match_model(mg)
    (att,) = [op for op in matched["prefill"].ops if isinstance(op, Attention)]
    assert (att.count, att.q_len, att.kv_len, att.q_heads, att.head_dim) == (2, "S + 8", "S + 8", 4, 16)
    assert matched["prefill"].matched_share == 1.0


class _ExpertLoop(torch.nn.Module):
    """An MoE written as a Python loop over the experts that received tokens (nonzero of per-expert counts), with
    identity ("zero") experts beside the real ones and the empty experts skipped: top-2 of 4 experts, 2 real."""

    def __init__(self, real: int = 2, identity: int = 2, hidden: int = 8, inter: int = 16):
        super().__init__()
        self.config = None
        self.real, self.experts = real, real + identity
        self.emb = torch.nn.Embedding(10, hidden)
        self.router = torch.nn.Linear(hidden, self.experts)
        self.up = torch.nn.Parameter(torch.ones(real, 2 * inter, hidden))
        self.down = torch.nn.Parameter(torch.ones(real, hidden, inter))

    def forward(self, input_ids, use_cache=False):
        import types

        x = self.emb(input_ids).flatten(0, 1)
        weights, chosen = self.router(x).topk(2, dim=-1)
        mask = torch.nn.functional.one_hot(chosen, self.experts).permute(2, 1, 0)   # experts x top-k x tokens
        out = torch.zeros_like(x)
        for hit in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            expert = int(hit.item())
            slot, rows = torch.where(mask[expert])
            if rows.numel() == 0:
                continue
            h = x[rows]
            if expert < self.real:
                gate, up = torch.nn.functional.linear(h, self.up[expert]).chunk(2, dim=-1)
                h = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, self.down[expert])
            out.index_add_(0, rows, h * weights[rows, slot, None])
        return types.SimpleNamespace(logits=out)


def test_loop_over_the_experts_that_received_tokens_unrolls():
    """Every expert is taken as hit: the loop unrolls over all 4, reads each expert's index as a plain int (the
    identity experts take their own branch), takes the non-empty path, and prices each expert's rows at their
    mean share, 2 x B x S / 4; the two real experts are one MoE op."""
    from graph.build import build_graph
    from graph.match import match_graph
    from core.ops import MoE

    phase = export_phase(_ExpertLoop(), "prefill")
    plan = LayerPlan(num_layers=1, stack_path="stack", kinds=[], per_layer_keys=[])
    graph = build_graph(phase, plan)
    linears = [a for _, a in graph.nodes(data=True) if a["op"] == "aten.linear" and a["module"] != "router"]
    assert len(linears) == 4 and {a["inputs"][0]["shape"][0] for a in linears} == {"B*S/2"}
    assert "one-hot over 4 classes: B*S/2" in graph.graph["note"]
    (moe,) = [op for op in match_graph(graph, "prefill").ops if isinstance(op, MoE)]
    assert (moe.experts, moe.topk, moe.hidden, moe.inter, moe.gated, moe.tokens) == (2, 1, 8, 16, True, "B*S")


def test_branch_on_positions_takes_the_traced_sizes_side():
    """Positions are made from sizes (arange over S): a Python branch on their largest value, which export cannot
    decide on its own, goes as the example sizes imply (17 tokens, not past 64), and S stays symbolic."""
    import types

    class Scaled(torch.nn.Module):
        config = None

        def forward(self, input_ids, use_cache=False):
            positions = torch.arange(input_ids.shape[1], device=input_ids.device) + 0
            longest = torch.max(positions) + 1
            scale = 3.0 if longest > 64 else 0.5
            return types.SimpleNamespace(logits=input_ids.float() * scale)

    phase = export_phase(Scaled(), "prefill")
    assert sorted(phase.symbols.values()) == ["B", "S"]
    scales = [n.args[1] for n in phase.program.graph.nodes if n.target is torch.ops.aten.mul.Tensor]
    assert scales == [0.5]


def test_sub_blocks_numbered_within_the_layer_keep_one_kind():
    """A layer holding two sub-blocks that number themselves 2i and 2i + 1 (a cache slot each) is one kind; the
    reduced layer's sub-blocks are numbered 0 and 1."""
    class Sub(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.layer_idx = index
            self.proj = torch.nn.Linear(4, 4)

    class Layer(torch.nn.Module):
        def __init__(self, i):
            super().__init__()
            self.layer_idx = i
            self.blocks = torch.nn.ModuleList([Sub(2 * i + j) for j in (0, 1)])

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Layer(i) for i in range(3)])

    from transformers import PretrainedConfig

    model, config = Model(), PretrainedConfig(num_hidden_layers=3)
    plan = plan_layers(model, config)
    assert [k.count for k in plan.kinds] == [3]
    apply_plan(model, config, plan)
    assert [b.layer_idx for b in model.layers[0].blocks] == [0, 1]



def test_a_prefill_with_a_short_sequence_path_is_traced_past_it():
    """A model that takes another path for short sequences (chunked or block-sparse attention that falls back for
    a few tokens) is traced again at a length past the short path's bound, so the graph shows what serving lengths
    run; its note says where it holds. Where the longer trace fails, the short one is kept and says so. A bound at
    the model's own context length is no branch and is not noted."""
    import types

    class Branching(torch.nn.Module):
        def __init__(self, context, long_path_runs=True):
            super().__init__()
            self.config = types.SimpleNamespace(max_position_embeddings=context)
            self.emb = torch.nn.Embedding(10, 8)
            self.proj = torch.nn.Linear(8, 8)
            self.long_path_runs = long_path_runs

        def forward(self, input_ids, use_cache=False):
            hidden = self.emb(input_ids)
            if hidden.shape[1] <= 64:
                hidden = hidden * 2
            elif self.long_path_runs:
                hidden = self.proj(hidden)
            else:
                hidden = hidden.reshape(hidden.shape[0], 64, -1, 8).sum(1)  # needs S a multiple of 64
            return types.SimpleNamespace(logits=hidden)

    from graph.build import build_graph

    phase = export_phase(Branching(4096), "prefill")
    assert "holds only for S >= 65" in phase.note
    plan = LayerPlan(num_layers=1, stack_path="stack", kinds=[], per_layer_keys=[])
    (proj,) = [a for _, a in build_graph(phase, plan).nodes(data=True) if a["op"] == "aten.linear"]
    assert proj["inputs"][0]["shape"] == ["B", "S", "8"]
    assert "holds only for S <= 64" in export_phase(Branching(4096, long_path_runs=False), "prefill").note
    assert "holds only" not in export_phase(Branching(64), "prefill").note


# max_seq_len 64: the decode trace's cache prefill runs 59 tokens, not 173, and gives the same graphs
TINY_DBRX = tiny_config("dbrx", d_model=64, n_heads=4, n_layers=2, vocab_size=1000, max_seq_len=64,
                        attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
                        ffn_config={"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2})


def test_expert_loop_over_a_one_hot_with_a_class_no_index_reaches(tmp_path):
    """DBRX one-hots its top-k indices over E + 1 classes, one more than its E experts, and loops over the classes
    that received tokens: the loop unrolls over the E experts only (class E would index past the stacked weights),
    each expert's rows are priced at k x tokens / E, and the graph's FLOPs equal torch's count on the CPU model
    (the experts' rows add up to k x tokens whatever the routing). Gate and up on slices of two stacked weights,
    down on a third: one gated MoE op."""
    from core.ops import MoE
    from graph.match import match_model

    mg = trace_model(str(write_config(tmp_path, TINY_DBRX)))
    assert "one-hot over 4 classes: B*S/2" in mg.note
    full = _cpu_model(TINY_DBRX).requires_grad_(False)  # its weight slices are module inputs: no grad hooks
    for batch, seq in ((2, 33), (1, 64)):
        ours = _graph_flops(mg.phases["prefill"], B=batch, S=seq, L=0)
        theirs = _counter_prefill(full, batch, seq)
        assert abs(ours - theirs) / theirs < 0.005, (batch, seq, ours, theirs)
    matched = match_model(mg)
    for phase, tokens in (("prefill", "B*S"), ("decode", "B")):
        (moe,) = [op for op in matched[phase].ops if isinstance(op, MoE)]
        assert (moe.experts, moe.topk, moe.hidden, moe.inter, moe.gated, moe.count, moe.tokens) == \
            (4, 2, 64, 32, True, 2, tokens)
        assert matched[phase].matched_share == 1.0


def test_a_count_over_an_empty_dim_is_known_to_be_zero():
    """A decode step of one token drops the first position and counts what is left above a threshold: a sum over
    an empty dim, zero whatever the data. Slicing by its maximum reads 0, not a data-dependent symbol that no output
    would bind (export refuses those), and the slice is empty."""
    from tracer.tracing_mode import tracing_branches

    class Patches(torch.nn.Module):
        def forward(self, input_ids):
            scores = input_ids.float()[:, 1:]
            count = (scores > 0.5).sum(dim=1).max()
            starts = torch.arange(scores.shape[1]).unsqueeze(0).expand(input_ids.shape[0], -1)
            return starts[:, :count]

    ids = torch.zeros(3, 1, dtype=torch.long)
    with tracing_branches():
        program = torch.export.export(Patches(), (ids,), dynamic_shapes={"input_ids": {0: torch.export.Dim.DYNAMIC}},
                                      strict=False)
    (out,) = [n for n in program.graph.nodes if n.op == "output"][0].args[0]
    assert out.meta["val"].shape[1] == 0
    assert not any(n.meta.get("unbacked_bindings") for n in program.graph.nodes)


def test_scores_of_query_heads_against_every_key_are_one_gemm():
    """An indexer scores each query head against every key, (B, S, H, D) @ (B, 1, D, S): the output grows with the
    sequence in its last dim and has the heads before it. One batched GEMM with m and n swapped (m = S, n = H,
    k = D, over B x S), not an unsupported op; so too against keys compressed 4 to 1 (S // 4 of them, none at
    S = 1)."""
    import types

    from core.ops import Gemm, Unsupported
    from graph.match import match_graph

    class Indexer(torch.nn.Module):
        config = None

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 32)
            self.q = torch.nn.Linear(32, 4 * 8)
            self.k = torch.nn.Linear(32, 8)

        def forward(self, input_ids, use_cache=False):
            h = self.emb(input_ids)
            b, s = input_ids.shape
            q = self.q(h).view(b, s, 4, 8)
            k = self.k(h).view(b, 1, s, 8).transpose(-1, -2)
            blocks = s // 4
            kc = self.k(h[:, :blocks * 4]).view(b, blocks, 4, 8).mean(2).view(b, 1, blocks, 8).transpose(-1, -2)
            scores = torch.relu(q @ k).sum(dim=2) + torch.relu(q @ kc).sum((2, 3))[..., None]
            return types.SimpleNamespace(logits=scores)

    phase = export_phase(Indexer(), "prefill")
    plan = LayerPlan(num_layers=1, stack_path="stack", kinds=[], per_layer_keys=[])
    matched = match_graph(build_graph(phase, plan), "prefill")
    scores = sorted((op.m, op.n, op.k, op.batch) for op in matched.ops if isinstance(op, Gemm)
                    and op.operand == "activation")
    assert scores == [("(S//4)", 4, 8, "(B)*(S)"), ("S", 4, 8, "(B)*(S)")]
    assert not [op for op in matched.ops if isinstance(op, Unsupported)]
