"""The transformers config to trace, built from a found config (tracer.source): transformers' own config class for a
model_type it knows (even where the file also offers remote code: no code runs and it works offline), the file's
remote config class for one it lacks (only with trust_remote_code), the text decoder of a multimodal config, and
sizes no model can have refused before tracing turns them into an obscure shape error.

transformers is imported here at the top: this module is reached on a cold trace only (graph.model_graph imports it
there), never on a warm run that reads the trace cache.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import transformers.models.auto.modeling_auto as modeling_auto
from transformers import PretrainedConfig
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LM
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES as BASE_MODEL

from core.errors import UserError, join_notes
from tracer import hub
from tracer.model_source import ModelSource, one_line, quiet_transformers, version
from tracer.source import BUNDLED_SUFFIX


def load_config(src: ModelSource, *, trust_remote_code: bool = False) -> tuple[PretrainedConfig, str]:
    """The transformers config to trace, and a note ("" or what was chosen from a multimodal config).

    A model_type known to transformers is built with transformers' own class, even when the config also offers remote
    code: no code runs and it works offline. Remote code is used only for types transformers lacks, and only with
    trust_remote_code. The returned config is the text model of a multimodal config (see `_text_model`).
    """
    model_type = _model_type_of(src)
    _validate_raw_sizes(src.config, src.origin)
    native, arch_note = model_type, ""
    if not _known_type(model_type):
        # A type transformers lacks whose config names an architecture class transformers ships (a renamed
        # copy of a known architecture): transformers' own code for that class, no remote code.
        inferred = _model_type_from_architectures(src.config.get("architectures") or [])
        if inferred is not None and _known_type(inferred):
            native = inferred
            arch_note = (f"model_type '{model_type}' is not in transformers; its architecture "
                         f"{src.config['architectures'][0]} is, traced with transformers' '{inferred}' code")
    if _known_type(native):
        config = _build_known(src, native)
    else:
        config = _build_remote(src, model_type, trust_remote_code)
    chosen, note, raw = _text_model(config, src.config)
    _validate_sizes(chosen, raw, src.origin)
    return chosen, join_notes(arch_note, note)


def _known_type(model_type: str) -> bool:
    return model_type in CONFIG_MAPPING_NAMES


def _model_type_of(src: ModelSource) -> str:
    model_type = src.config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type
    archs = src.config.get("architectures") or []
    inferred = _model_type_from_architectures(archs)
    if inferred is None:
        raise UserError(f"{src.origin} has no model_type and transformers knows none of its architectures {archs}")
    return inferred


def _model_type_from_architectures(archs: list) -> str | None:
    """Reverse transformers' model_type -> class name tables (LlamaForCausalLM -> llama).

    Several types may share a class (internlm3 reuses LlamaForCausalLM); the one whose config class carries the
    architecture's stem (LlamaConfig) is the owner.
    """
    tables = [
        getattr(modeling_auto, name)
        for name in dir(modeling_auto)
        if name.endswith("_MAPPING_NAMES") and name != "CONFIG_MAPPING_NAMES"
    ]
    for arch in (a for a in archs if isinstance(a, str)):
        owners = [
            model_type
            for table in tables
            if isinstance(table, dict)
            for model_type, classes in table.items()
            if arch == classes or (isinstance(classes, tuple) and arch in classes)
        ]
        stem = re.split(r"For|Model", arch)[0]
        owned = [mt for mt in owners if CONFIG_MAPPING_NAMES.get(mt) == f"{stem}Config"]
        if owned or owners:
            return (owned or owners)[0]
    return None


def _build_known(src: ModelSource, model_type: str) -> PretrainedConfig:
    return _build(CONFIG_MAPPING[model_type].from_dict, {**src.config, "model_type": model_type},
                  f"{src.origin}: transformers rejects this '{model_type}' config")


def _build_remote(src: ModelSource, model_type: str, trust_remote_code: bool) -> PretrainedConfig:
    release = version("transformers")
    reference = _auto_config_reference(src.config)
    if reference is None:
        raise UserError(
            f"model_type '{model_type}' ({src.origin}) is not in transformers {release} and the config names no "
            f"remote code (no auto_map.AutoConfig)"
        )
    if not trust_remote_code:
        raise UserError(
            f"model_type '{model_type}' is not in transformers {release}; its config asks for remote code "
            f"({reference}): rerun with --trust-remote-code to allow running it"
        )
    config_class = _remote_config_class(reference, src)
    return _build(config_class.from_dict, src.config, f"{src.origin}: remote config class {reference} rejects it")


def _build(make, raw: dict, rejected: str) -> PretrainedConfig:
    """make(raw), where a flat file of a composite config class also gives the text sub-config its own values."""
    try:
        with quiet_transformers():
            config = make(raw)
            key = _flat_text_key(config, raw)
            if key is not None:
                sub_keys = set(config.sub_configs)
                config = make({**raw, key: {k: v for k, v in raw.items() if k not in sub_keys | {"model_type"}}})
    except Exception as exc:
        raise UserError(f"{rejected}: {one_line(str(exc))}") from None
    return config


def _flat_text_key(config: PretrainedConfig, raw: dict) -> str | None:
    """The key of a composite config's text sub-config where the file has no entry for it: a flat config.json of a
    composite class (Step-3.7-Flash's) gives the text model's fields at its top level, and the class would build the
    sub-config from its own defaults, standing in for the values the file gives. None where that is not so."""
    text = _decoder_config(config)
    if text is config:
        return None
    key = _sub_config_key(config, text)
    return key if key in (getattr(config, "sub_configs", None) or {}) and not isinstance(raw.get(key), dict) else None


def _decoder_config(config: PretrainedConfig) -> PretrainedConfig:
    try:
        return config.get_text_config(decoder=True)
    except Exception:  # composite configs without a single text decoder
        return config


def _remote_config_class(reference: str, src: ModelSource) -> type:
    """Import the config class named by auto_map: local code first, then the HF cache, then the hub."""
    repo, module = _code_file(reference, _code_location(src))
    if Path(repo).is_dir():
        if not (Path(repo) / module).is_file():
            raise UserError(
                f"remote code {module} named by {src.origin} is not in {repo}: "
                "put the model's .py files there or pass its repo id"
            )
        return _import_remote(reference, repo, local_only=False)
    with contextlib.suppress(UserError):
        return _import_remote(reference, repo, local_only=True)
    if hub.hub_offline():
        raise UserError(f"remote code {module} of {repo} is not in the HF cache and HF_HUB_OFFLINE is set")
    try:
        hub.probe(repo, module)  # the import itself would retry an unreachable hub for about 20 s
    except Exception as exc:
        raise UserError(f"remote code {module} of {repo}: hub {hub.failure(exc, module)}") from None
    return _import_remote(reference, repo, local_only=False)


def _import_remote(reference: str, repo: str, *, local_only: bool) -> type:
    try:
        with quiet_transformers():
            return get_class_from_dynamic_module(
                reference, repo, cache_dir=hub.hub_cache_dir(), local_files_only=local_only
            )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {one_line(str(exc))}"
        raise UserError(f"remote code {reference} from {repo} failed: {reason}") from None


def _code_file(reference: str, location: str) -> tuple[str, str]:
    """(where the code lives, its file name) for "module.Class" or "org/repo--module.Class"."""
    repo, sep, class_ref = reference.rpartition("--")
    return (repo if sep else location), class_ref.rsplit(".", 1)[0] + ".py"


def _auto_config_reference(config: dict) -> str | None:
    auto_map = config.get("auto_map")
    reference = auto_map.get("AutoConfig") if isinstance(auto_map, dict) else None
    if isinstance(reference, (list, tuple)):
        reference = next((r for r in reference if r), None)
    return reference if isinstance(reference, str) and reference else None


def _code_location(src: ModelSource) -> str:
    """Where remote code lives: next to a local config, else in the model's hub repo (cached copies included)."""
    if src.kind == "local" and src.path:
        path = Path(src.path)
        return str(path if path.is_dir() else path.parent)
    if src.kind == "bundled" and src.path:
        org, _, model = Path(src.path).name[: -len(BUNDLED_SUFFIX)].partition("--")
        return f"{org}/{model}"
    return src.name


def _text_model(config: PretrainedConfig, raw: dict) -> tuple[PretrainedConfig, str, dict]:
    """Pick the text decoder of a multimodal config: the tracer builds a causal LM and the vision tower is not priced.

    The text sub-config wins when transformers has a causal-LM class for it and it differs from the whole config
    (gemma3 -> gemma3_text, llama4 -> llama4_text), or when the whole config has no causal-LM class but the sub-config
    has a base-model class (qwen2_vl -> qwen2_vl_text, to be built with AutoModel), or when the whole config's causal-LM class declares the
    sub-config's class as its config_class (it is written for the sub-config: musicgen's decoder, mllama's text
    model). Otherwise the whole config is kept. Returns (config, note, raw dict of the choice).
    """
    text = _decoder_config(config)
    top, sub = config.model_type, getattr(text, "model_type", None)
    if text is config or not sub or sub == top:
        return config, "", raw
    key = _sub_config_key(config, text)
    where = f"{key}, model_type {sub}"
    if sub in CAUSAL_LM:
        note = f"vision-language config: tracing its text model ({where})"
    elif top not in CAUSAL_LM and sub in BASE_MODEL:
        note = (
            f"vision-language config: tracing its text model ({where}; "
            "transformers has only a base-model class for it, no causal-LM head)"
        )
    elif top in CAUSAL_LM:
        written_for = _causal_lm_written_for(config, text)
        if not written_for:
            return config, "", raw
        note = f"composite config: its causal-LM class {written_for} is written for its text model ({where})"
    else:
        note = f"vision-language config kept whole: transformers has no model class for its text model ({where})"
        return config, note, raw
    sub_raw = raw.get(key) if isinstance(raw.get(key), dict) else {}
    return text, note, {**raw, **sub_raw}


def _causal_lm_written_for(config: PretrainedConfig, text: PretrainedConfig) -> str:
    """The name of the whole config's causal-LM class where that class declares the text sub-config's class as its
    config_class (it is written for the sub-config and is built from it), else ""."""
    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except Exception:
        return ""
    return model_class.__name__ if getattr(model_class, "config_class", None) is type(text) else ""


def _sub_config_key(config: PretrainedConfig, sub: PretrainedConfig) -> str:
    for key in getattr(config, "sub_configs", None) or {}:
        if getattr(config, key, None) is sub:
            return key
    return "text_config"


# Sizes every model has and none can have at zero or below; checked in the file and in the config built from it.
_POSITIVE_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
                    "num_key_value_heads", "head_dim", "max_position_embeddings")
# Counts and sizes, by name: zero where a part is absent (num_nextn_predict_layers, n_shared_experts,
# shared_intermediate_size; experts are checked in pairs by _check_experts), never below; a routed intermediate size
# (moe_intermediate_size) is positive.
_COUNT_NAME = re.compile(r"^(num|n)_|_(heads|layers)$|experts|_per_tok|intermediate_size$")


def _validate_sizes(config: PretrainedConfig, raw: dict, origin: str) -> None:
    """Reject sizes no model can have, before tracing turns them into an obscure shape error or a price."""
    _validate_raw_sizes(raw, origin)
    for field in _POSITIVE_FIELDS:
        _check_positive(field, _field_values(config, field), origin)
    hidden, heads = (_single_value(config, field) for field in ("hidden_size", "num_attention_heads"))
    _check_head_split(hidden, heads, raw, origin)


def _validate_raw_sizes(raw: dict, origin: str) -> None:
    """The checks on the JSON itself, so that our message comes before a config class's own validator's: the sizes
    every model has, the routed-expert sizes (an intermediate size, a count of experts, experts per token; those of
    shared experts may be zero), and no count or size below zero."""
    for field in _POSITIVE_FIELDS:
        _check_positive(field, [raw.get(field)], origin)
    for field, value in raw.items():
        values = value if isinstance(value, list) else [value]
        if _COUNT_NAME.search(field) and values and all(type(v) is int for v in values):
            routed_size = field.endswith("intermediate_size") and "shared" not in field
            _check_positive(field, values, origin, minimum=1 if routed_size else 0)
    _check_experts(raw, origin)
    _check_head_split(raw.get("hidden_size"), raw.get("num_attention_heads"), raw, origin)


def _check_experts(raw: dict, origin: str) -> None:
    """A model that routes each token to k experts has at least k. Both zero is a model without routed experts
    (a dense variant of a MoE family); one of them zero is not a model."""
    per_token = {k: v for k, v in raw.items() if "per_tok" in k and type(v) is int}
    counts = {k: v for k, v in raw.items() if "experts" in k and "shared" not in k and k not in per_token
              and type(v) is int}
    for count, experts in counts.items():
        for k_field, k in per_token.items():
            if experts == 0 and k > 0:
                raise UserError(f"{origin}: {count} must be positive, got 0 (with {k_field} {k})")
            if k == 0 and experts > 0:
                raise UserError(f"{origin}: {k_field} must be positive, got 0 (with {count} {experts})")
            if k > experts:
                raise UserError(f"{origin}: {k_field} {k} is more than {count} {experts}")


def _check_positive(field: str, values: list, origin: str, minimum: int = 1) -> None:
    for value in values:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):  # one value per layer (e.g. a per-layer intermediate_size)
            _check_positive(field, list(value), origin, minimum)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or (isinstance(value, float) and not value.is_integer()):
            raise UserError(f"{origin}: {field} must be {'a positive' if minimum else 'a'} whole number, "
                            f"got {value!r}")
        if value < minimum:
            raise UserError(f"{origin}: {field} must be {'positive' if minimum else 'zero or more'}, got {value}")


def _check_head_split(hidden: Any, heads: Any, raw: dict, origin: str) -> None:
    # head_dim, v_head_dim, qk_rope_head_dim, attention_head_size ...
    explicit_head_dim = any("head_dim" in key or key.endswith("head_size") for key in raw)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads and not explicit_head_dim:
        raise UserError(
            f"{origin}: hidden_size {hidden} is not divisible by num_attention_heads {heads} and no head_dim is given"
        )


def _field_values(config: PretrainedConfig, field: str) -> list:
    """A field's value, or one per layer where a heterogeneous config refuses a global read."""
    if field in (getattr(config, "per_layer_attributes", None) or ()):
        return [getattr(layer, field, None) for layer in config.per_layer_config]
    if isinstance(getattr(type(config), field, None), property) and field not in vars(config):
        return [None]  # a class's own answer, not a size the file gave (XLNet's -1: no position limit)
    return [getattr(config, field, None)]


def _single_value(config: PretrainedConfig, field: str) -> Any:
    values = set(_field_values(config, field))
    return values.pop() if len(values) == 1 else None
