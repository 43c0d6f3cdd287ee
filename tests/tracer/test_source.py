"""Model sources: resolve a name offline, build the config to trace, reject bad input with one line."""

import json
import time
from pathlib import Path

import pytest

from conftest import SHARED_CONFIGS
from core.errors import UserError
from tracer.catalogue import list_offline
from tracer.config_build import load_config
from tracer.model_source import ModelSource
from tracer.source import bundled_config_dir, resolve


TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "vocab_size": 1000,
}

needs_bundled = pytest.mark.skipif(bundled_config_dir() is None, reason="aiconfigurator-core not installed")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Never touch the network or the user's own cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def write_config(directory: Path, config, name: str = "config.json") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    file = directory / name
    file.write_text(config if isinstance(config, str) else json.dumps(config))
    return file


def shared_config(name: str) -> Path:
    file = SHARED_CONFIGS / f"{name}.json"
    if not file.is_file():
        pytest.skip(f"{file} absent")
    return file


# Bundled configs ----------------------------------------------------------------------------------------------------


@needs_bundled
@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B", "META-LLAMA/meta-llama-3.1-8b", "Llama-3.1-8B"])
def test_bundled_alias_finds_meta_llama_file(name):
    src = resolve(name)
    assert src.kind == "bundled"
    assert src.origin.endswith("meta-llama--Meta-Llama-3.1-8B_config.json")
    assert src.config["hidden_size"] == 4096
    config, note = load_config(src)
    assert config.hidden_size == 4096 and note == ""


@needs_bundled
def test_bundled_deepseek_v3():
    src = resolve("deepseek-ai/DeepSeek-V3")
    assert src.kind == "bundled" and "deepseek-ai--DeepSeek-V3_config.json" in src.origin
    config, _ = load_config(src)
    assert config.model_type == "deepseek_v3" and config.kv_lora_rank == 512


@needs_bundled
def test_bundled_other_org_does_not_match():
    with pytest.raises(UserError):
        resolve("someone-else/Meta-Llama-3.1-8B")


@needs_bundled
def test_bundled_quantization_companion_is_attached():
    companions = sorted(bundled_config_dir().glob("*_hf_quant_config.json"))
    for companion in companions:
        config_file = companion.with_name(companion.name.replace("_hf_quant_config.json", "_config.json"))
        if "quantization_config" not in json.loads(config_file.read_text()):
            break
    else:
        pytest.skip("no bundled config relies on a companion")
    org, _, model = config_file.name[: -len("_config.json")].partition("--")
    quant = resolve(f"{org}/{model}").config["quantization_config"]
    expected = json.loads(companion.read_text())["quantization"]["quant_algo"]
    assert quant["quant_algo"] == expected and quant["quant_method"] == "modelopt"


# Local files ------------------------------------------------------------------------------------------------------


def test_local_directory_and_file(tmp_path):
    file = write_config(tmp_path / "tiny", TINY)
    by_dir = resolve(str(file.parent))
    by_file = resolve(str(file))
    assert by_dir.kind == by_file.kind == "local"
    assert by_dir.origin == by_file.origin == str(file.resolve())
    assert by_dir.path == str(file.parent.resolve()) and by_file.path == str(file.resolve())
    config, note = load_config(by_file)
    assert (config.hidden_size, config.num_key_value_heads, note) == (64, 2, "")


def test_malformed_json_names_the_file(tmp_path):
    file = write_config(tmp_path, '{"model_type": "llama",, }', name="broken.json")
    with pytest.raises(UserError, match="broken.json") as err:
        resolve(str(file))
    assert "line 1 column" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", ["[1, 2]", '{"hidden_size": 64}'])
def test_json_that_is_not_a_model_config(tmp_path, content):
    file = write_config(tmp_path, content)
    with pytest.raises(UserError, match="not a model config"):
        resolve(str(file))


def test_model_type_inferred_from_architectures(tmp_path):
    config = {k: v for k, v in TINY.items() if k != "model_type"} | {"architectures": ["LlamaForCausalLM"]}
    loaded, _ = load_config(resolve(str(write_config(tmp_path, config))))
    assert loaded.model_type == "llama"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_hidden_layers": -2}, "num_hidden_layers"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"hidden_size": 66}, "not divisible"),
    ],
)
def test_impossible_sizes(tmp_path, change, field):
    src = resolve(str(write_config(tmp_path, TINY | change)))
    with pytest.raises(UserError, match=field):
        load_config(src)


def test_explicit_head_dim_allows_indivisible_hidden(tmp_path):
    # llama's own validator forbids this split; qwen3 allows it, as our check must when head_dim is given
    src = resolve(str(write_config(tmp_path, TINY | {"model_type": "qwen3", "hidden_size": 66, "head_dim": 16})))
    config, _ = load_config(src)
    assert config.head_dim == 16


# Remote code ------------------------------------------------------------------------------------------------------

REMOTE = TINY | {"model_type": "made_up_lm", "auto_map": {"AutoConfig": "configuration_made_up.MadeUpConfig"}}

REMOTE_CODE = '''
from transformers import PretrainedConfig


class MadeUpConfig(PretrainedConfig):
    model_type = "made_up_lm"

    def __init__(self, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, **kwargs):
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_hidden_layers = num_hidden_layers
        super().__init__(**kwargs)
'''


def test_remote_code_refused_without_flag(tmp_path):
    src = resolve(str(write_config(tmp_path, REMOTE).parent))
    with pytest.raises(UserError, match="made_up_lm.*--trust-remote-code"):
        load_config(src)


def test_remote_code_runs_with_flag(tmp_path):
    file = write_config(tmp_path / "made-up", REMOTE)
    (file.parent / "configuration_made_up.py").write_text(REMOTE_CODE)
    config, note = load_config(resolve(str(file.parent)), trust_remote_code=True)
    assert type(config).__name__ == "MadeUpConfig" and config.hidden_size == 64 and note == ""


def test_unknown_model_type_without_remote_code(tmp_path):
    src = resolve(str(write_config(tmp_path, TINY | {"model_type": "made_up_lm"})))
    with pytest.raises(UserError, match="made_up_lm.*no remote code"):
        load_config(src, trust_remote_code=True)


# Nothing found, bare model types, listing ----------------------------------------------------------------------


def test_unknown_name_offline_names_sources_quickly():
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        resolve("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert time.monotonic() - start < 5
    for source in ("local path", "bundled configs", "HF cache", "hub", "model_type"):
        assert source in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_unreachable_hub_is_a_short_reason(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # it may have read the fixture's value at import
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed port: refused at once
    start = time.monotonic()
    with pytest.raises(UserError, match="hub: unreachable"):
        resolve("no-such-org/no-such-model-xyz")
    assert time.monotonic() - start < 10


def test_hf_cache_is_used(tmp_path):
    snapshot = tmp_path / "hf-cache" / "models--acme--tiny" / "snapshots" / ("0" * 40)
    write_config(snapshot, TINY)
    refs = write_config(tmp_path / "hf-cache" / "models--acme--tiny" / "refs", "0" * 40, name="main")
    assert refs.is_file()
    src = resolve("acme/tiny")
    assert src.kind == "hf-cache" and src.config["hidden_size"] == 64
    assert {"name": "acme/tiny", "kind": "hf-cache"}.items() <= next(
        row for row in list_offline() if row["name"] == "acme/tiny"
    ).items()


def test_bare_model_type():
    src = resolve("llama")
    assert (src.kind, src.path) == ("model_type", None)
    assert "llama" in src.origin
    config, _ = load_config(src)
    assert config.model_type == "llama"


def test_list_offline_is_fast_and_complete():
    list_offline()  # the first call pays for importing transformers
    start = time.monotonic()
    rows = list_offline()
    assert time.monotonic() - start < 1
    kinds = {row["kind"] for row in rows}
    assert "model_type" in kinds and all(set(row) == {"name", "kind", "model_type", "origin"} for row in rows)
    assert any(row["name"] == "llama" for row in rows)
    if bundled_config_dir() is not None:
        assert any(row["name"] == "meta-llama/Meta-Llama-3.1-8B" and row["model_type"] == "llama" for row in rows)


def test_model_source_is_frozen():
    src = ModelSource("x", "local", "x", {}, None)
    with pytest.raises(AttributeError):
        src.kind = "hub"


# Vision-language configs (real files from ../shared/configs) ------------------------------------------------------


@pytest.mark.parametrize(
    "name, text_type",
    [
        ("Qwen--Qwen2-VL-7B-Instruct", "qwen2_vl_text"),
        ("Qwen--Qwen2.5-VL-7B-Instruct", "qwen2_5_vl_text"),
        ("meta-llama--Llama-4-Scout-17B-16E-Instruct", "llama4_text"),
        ("google--gemma-3-27b-it", "gemma3_text"),
    ],
)
def test_vision_language_config_gives_text_model(name, text_type):
    config, note = load_config(resolve(str(shared_config(name))))
    assert config.model_type == text_type
    assert "vision-language" in note and text_type in note
    assert config.hidden_size > 0 and config.num_hidden_layers > 0 and config.vocab_size > 0


def test_causal_lm_class_written_for_a_sub_config_gets_that_sub_config():
    # transformers' MllamaForCausalLM declares the text sub-config's class as its config_class: built from it
    config, note = load_config(resolve(str(shared_config("meta-llama--Llama-3.2-11B-Vision-Instruct"))))
    assert config.model_type == "mllama_text_model" and config.hidden_size == 4096
    assert "MllamaForCausalLM" in note
    # a composite audio config: its causal-LM class is written for the decoder sub-config alone
    config, note = load_config(resolve("musicgen"))
    assert config.model_type == "musicgen_decoder" and "MusicgenForCausalLM" in note and "(decoder," in note


def test_causal_lm_class_found_for_a_sub_config_type():
    from transformers import MusicgenDecoderConfig

    from tracer.meta import _causal_lm_written_for

    assert _causal_lm_written_for(MusicgenDecoderConfig()).__name__ == "MusicgenForCausalLM"


def test_flat_config_of_a_composite_class_keeps_the_files_values(tmp_path):
    """Step-3.7-Flash's config.json is flat, while transformers' step3p7 class keeps the text model in text_config:
    that sub-config is built from the file's own top-level fields, not from the class's defaults."""
    layer_types = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    flat = {"model_type": "step3p7", "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 512, "intermediate_size": 256,
            "max_position_embeddings": 4096, "sliding_window": 64, "layer_types": layer_types,
            "moe_intermediate_size": 64, "num_experts_per_tok": 2}
    config, _ = load_config(resolve(str(write_config(tmp_path, flat))))
    text = config.get_text_config(decoder=True)
    assert (text.sliding_window, text.layer_types, text.vocab_size, text.max_position_embeddings) == \
        (64, layer_types, 512, 4096)
    assert (text.hidden_size, text.num_hidden_layers, text.head_dim, text.moe_intermediate_size) == (128, 4, 32, 64)
    # a file that gives the sub-config keeps it as given
    nested = {"model_type": "step3p7", "text_config": {**flat, "model_type": "step3p5", "sliding_window": 32}}
    config, _ = load_config(resolve(str(write_config(tmp_path, nested))))
    assert config.get_text_config(decoder=True).sliding_window == 32


def test_phi3_vision_needs_remote_code():
    src = resolve(str(shared_config("microsoft--Phi-3-vision-128k-instruct")))
    with pytest.raises(UserError, match="phi3_v.*--trust-remote-code"):
        load_config(src)


# Repairs of bare model types' default configs -------------------------------------------------------------------


def test_default_config_repairs_are_generic_and_concrete():
    """What transformers' default configs leave inconsistent with its model code, repaired from the config itself."""
    from transformers import DbrxConfig, LlamaConfig

    from tracer.default_repairs import repair_default_config

    # no head_dim and an indivisible head split: the model code's floor division, written down
    raw = {"hidden_size": 4096, "num_attention_heads": 96}
    assert repair_default_config(LlamaConfig(), raw) == ["head_dim=absent->42 (hidden_size // num_attention_heads)"]
    assert raw["head_dim"] == 42
    # empty rope_parameters: the class's default_theta, one entry per layer type
    raw = {"rope_parameters": {}, "layer_types": ["full_attention", "sliding_attention", "full_attention"]}
    repair_default_config(LlamaConfig(), raw)
    assert raw["rope_parameters"] == {t: {"rope_type": "default", "rope_theta": 10000.0}
                                      for t in ("full_attention", "sliding_attention")}
    # an attention sub-config without RoPE under a parent with it; a one-option default choice
    default = DbrxConfig()
    raw = default.to_dict()
    raw["default_language"], raw["languages"] = None, ["en_XX"]
    repair_default_config(default, raw)
    assert raw["attn_config"]["rope_theta"] == 10000.0 and "rope_theta" not in raw["ffn_config"]
    assert raw["default_language"] == "en_XX"
    # a consistent config is left alone
    raw = LlamaConfig().to_dict()
    assert repair_default_config(LlamaConfig(), raw) == []


def test_bare_model_type_is_repaired_and_says_so():
    src = resolve("glm4_moe")
    assert src.config["head_dim"] == 42 and "repaired: head_dim" in src.origin
    config, _ = load_config(src)  # our head-split check accepts the explicit head_dim
    assert config.head_dim == 42


def test_none_fields_a_default_config_leaves_are_set_after_a_type_error():
    """After a TypeError in transformers' code, the None fields of a bare model type's default config that its code
    uses get values from the config itself where it has them, else the trial values, smallest first."""
    from tracer.default_repairs import TRIAL_VALUES, none_field_repairs

    failure = UserError("transformers could not build x: TypeError: unsupported operand type(s) for //")
    # a count whose config class documents its default as another field
    [repair] = none_field_repairs(resolve("nemotron"), failure)
    assert repair.source.config["num_key_value_heads"] == repair.source.config["num_attention_heads"]
    assert "documented default" in repair.fixed[0]
    # counts with no documented default: one repaired config per trial value, all of them set to it
    repairs = none_field_repairs(resolve("dots1"), failure)
    fields = ("n_routed_experts", "n_shared_experts", "num_experts_per_tok")
    assert [[r.source.config[f] for f in fields] for r in repairs] == [[v] * 3 for v in TRIAL_VALUES]
    assert repairs[0].source.config["n_group"] == 1  # set by the class, untouched
    # a per-layer list: transformers' inference for a config without one
    [repair] = none_field_repairs(resolve("lfm2_moe"), failure)
    assert repair.source.config["layer_types"] == ["full_attention"] * repair.source.config["num_hidden_layers"]
    # a None the model's code checks for (an unset clip, an unset LoRA rank) is a choice; token ids are not sizes
    assert none_field_repairs(resolve("dbrx"), failure) == []
    assert none_field_repairs(resolve("kimi_linear"), failure) == []
    assert all("token_id" not in f for r in none_field_repairs(resolve("deepseek_v2"), failure) for f in r.fixed)
    # only after a TypeError, and only for bare model types
    assert none_field_repairs(resolve("dots1"), UserError("torch.export failed: RuntimeError: x")) == []
    src = resolve("dots1")
    real = ModelSource(src.name, "local", src.origin, src.config, None)
    assert none_field_repairs(real, failure) == []


def test_bare_model_type_whose_default_config_is_invalid_says_why():
    with pytest.raises(UserError, match="model_type 'gemma4_assistant': transformers .* cannot build its own default"):
        resolve("gemma4_assistant")
