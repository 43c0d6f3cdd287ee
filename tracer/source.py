"""Model sources: find a model's config.json and turn it into a transformers config.

`resolve` looks in five places, in order: a local path, the real configs bundled in aiconfigurator-core, the local
Hugging Face cache, the hub (config.json only, never weights) and finally transformers' default config for a bare
model_type. `load_config` builds the PretrainedConfig to trace, choosing the text model of a multimodal config.
Every bad input raises `UserError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import importlib.util
import json
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from core.errors import UserError, join_notes

if TYPE_CHECKING:
    from transformers import PretrainedConfig

CONFIG_NAME = "config.json"
_BUNDLED_SUFFIX = "_config.json"
_QUANT_SUFFIX = "_hf_quant_config.json"
# Offline machines must fail fast; a user may still raise it through the usual huggingface_hub variable.
_DEFAULT_HUB_TIMEOUT_S = 4.0
_SIZE_FIELDS = (
    "hidden_size",
    "num_attention_heads",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "num_key_value_heads",
)


@dataclass(frozen=True)
class ModelSource:
    name: str  # what the user typed
    kind: str  # "local" | "bundled" | "hf-cache" | "hub" | "model_type"
    origin: str  # human-readable: the file used, or the transformers default config
    config: dict  # raw config.json contents (for kind model_type: the default config's to_dict())
    path: str | None  # directory or file the config came from (None for model_type)


class _NotHere(Exception):
    """One source does not have the model; the message is the short reason shown to the user."""


# ----------------------------------------------------------------------------------------------------------- resolve


def resolve(name: str) -> ModelSource:
    """Find `name` in the sources, in order; raise UserError naming each source tried and why it failed."""
    name = name.strip()
    if not name:
        raise UserError("no model given: pass a repo id (org/name), a path to a config.json, or a model_type")
    reasons = []
    for label, finder in _FINDERS:
        try:
            return finder(name)
        except _NotHere as why:
            reasons.append(f"{label}: {why}")
    hint = _did_you_mean(name)
    raise UserError(
        f"model '{name}' not found; tried {'; '.join(reasons)}{hint}; "
        "`tracecost models` lists what is available offline"
    )


def _from_local(name: str) -> ModelSource:
    path = Path(name).expanduser()
    if path.is_dir():
        file = path / CONFIG_NAME
        if not file.is_file():
            raise _NotHere(f"directory {path} has no {CONFIG_NAME}")
    elif path.is_file():
        if path.suffix.lower() != ".json":
            raise _NotHere(f"{path} is not a .json file")
        file = path
    else:
        raise _NotHere("no such file or directory")
    config = _read_config_file(file)
    return ModelSource(name, "local", str(file.resolve()), config, str(path.resolve()))


def _read_config_file(file: Path) -> dict:
    """Parse a config.json the user pointed at; errors here are the user's to fix, so they stop the search."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON in {file}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    _check_config_dict(config, str(file))
    return config


def _check_config_dict(config: Any, where: str) -> None:
    if not isinstance(config, dict):
        raise UserError(f"{where} is not a model config: expected a JSON object, got {type(config).__name__}")
    if not config.get("model_type") and not config.get("architectures"):
        raise UserError(f"{where} is not a model config: it has neither 'model_type' nor 'architectures'")


# Bundled configs (aiconfigurator-core ships real config.json files as data) ------------------------------------------


def bundled_config_dir() -> Path | None:
    """aiconfigurator_core/model_configs, found without importing the package (its import is slow)."""
    try:
        spec = importlib.util.find_spec("aiconfigurator_core")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(root) / "model_configs"
        if candidate.is_dir():
            return candidate
    return None


@lru_cache(maxsize=4)
def _bundled_index(directory: str) -> dict[str, Path]:
    """Repo id ("org/name") -> bundled config file, ignoring the quantization companions."""
    index = {}
    for file in sorted(Path(directory).glob(f"*{_BUNDLED_SUFFIX}")):
        if file.name.endswith(_QUANT_SUFFIX):
            continue
        stem = file.name[: -len(_BUNDLED_SUFFIX)]
        org, sep, model = stem.partition("--")
        index[f"{org}/{model}" if sep else stem] = file
    return index


def _model_key(model: str) -> str:
    # Meta renamed its repos ("Meta-Llama-3.1-8B" became "Llama-3.1-8B"); both spellings name one model.
    key = model.lower()
    return key[len("meta-") :] if key.startswith("meta-") else key


def _split_repo_id(name: str) -> tuple[str | None, str]:
    name = name.replace("--", "/") if "/" not in name else name
    org, sep, model = name.rpartition("/")
    return (org.lower() if sep else None), model


def _match_bundled(name: str, index: dict[str, Path]) -> list[str]:
    org, model = _split_repo_id(name)
    key = _model_key(model)
    hits = []
    for repo_id in index:
        their_org, their_model = _split_repo_id(repo_id)
        if _model_key(their_model) == key and (org is None or org == their_org):
            hits.append(repo_id)
    return hits


def _from_bundled(name: str) -> ModelSource:
    directory = bundled_config_dir()
    if directory is None:
        raise _NotHere("aiconfigurator-core is not installed")
    index = _bundled_index(str(directory))
    hits = _match_bundled(name, index)
    if len(hits) > 1:
        raise _NotHere(f"ambiguous, matches {', '.join(hits)}")
    if not hits:
        raise _NotHere(f"none of the {len(index)} configs in aiconfigurator-core {_version('aiconfigurator-core')}")
    file = index[hits[0]]
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise _NotHere(f"bundled file {file} is unreadable ({exc})") from None
    _check_config_dict(config, str(file))
    return ModelSource(name, "bundled", str(file), _with_quantization(config, file), str(file))


def _with_quantization(config: dict, file: Path) -> dict:
    """Attach the quantization held by a `<model>_hf_quant_config.json` companion, when the config has none.

    Every companion shipped is NVIDIA ModelOpt's export format: {"producer": {...}, "quantization": {"quant_algo":
    "NVFP4" | "FP8" | "MIXED_PRECISION", "kv_cache_quant_algo", "exclude_modules", ...}}. Checkpoints that carry it
    inside config.json write it flat with quant_method "modelopt" (several bundled nvidia configs do), so the companion
    is flattened into that same shape. Anything without a string quant_algo is not clearly a quantization description
    and is left out.
    """
    companion = file.with_name(file.name[: -len(_BUNDLED_SUFFIX)] + _QUANT_SUFFIX)
    if "quantization_config" in config or not companion.is_file():
        return config
    try:
        content = json.loads(companion.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return config
    quant = content.get("quantization") if isinstance(content, dict) else None
    if not isinstance(quant, dict) or not isinstance(quant.get("quant_algo"), str):
        return config
    quantization = {"quant_method": content.get("quant_method", "modelopt"), **quant}
    if isinstance(content.get("producer"), dict):
        quantization.setdefault("producer", content["producer"])
    return {**config, "quantization_config": quantization}


# Hugging Face cache and hub ----------------------------------------------------------------------------------------


def hub_cache_dir() -> str:
    """huggingface_hub reads HF_HUB_CACHE / HF_HOME at import; read them now so a late setting is honoured."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def _check_repo_id(name: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise _NotHere("not a repo id") from None


def _from_hf_cache(name: str) -> ModelSource:
    from huggingface_hub import try_to_load_from_cache

    _check_repo_id(name)
    cache = hub_cache_dir()
    file = try_to_load_from_cache(name, CONFIG_NAME, cache_dir=cache)
    if not isinstance(file, str):  # None, or the marker for a file known not to exist
        raise _NotHere(f"not in {cache}")
    config = _read_config_file(Path(file))
    return ModelSource(name, "hf-cache", file, config, str(Path(file).parent))


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now; huggingface_hub's own reading (taken at its import) when it is unset."""
    from huggingface_hub import constants

    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ["HF_HUB_OFFLINE"].strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE)


def _hub_timeout_s() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT", _DEFAULT_HUB_TIMEOUT_S))
    except ValueError:
        return _DEFAULT_HUB_TIMEOUT_S


def _from_hub(name: str) -> ModelSource:
    if name.count("/") != 1:
        raise _NotHere("skipped, not an org/name repo id")
    if _hub_offline():
        raise _NotHere("skipped, HF_HUB_OFFLINE is set")
    _check_repo_id(name)
    file = _download_config(name)
    config = _read_config_file(Path(file))
    origin = f"huggingface.co/{name} {CONFIG_NAME}, saved as {file}"
    return ModelSource(name, "hub", origin, config, str(Path(file).parent))


def _download_config(repo_id: str) -> str:
    """config.json of `repo_id` from the hub through the real client, failing in seconds when offline.

    hf_hub_download retries a failed connection with backoff (about 20 s) when nothing is cached, so a single metadata
    request with a short timeout and no retries probes the hub first.
    """
    from huggingface_hub import hf_hub_download

    try:
        _probe_hub(repo_id, CONFIG_NAME)
        return hf_hub_download(
            repo_id, CONFIG_NAME, cache_dir=hub_cache_dir(), etag_timeout=_hub_timeout_s(), endpoint=_hub_endpoint()
        )
    except Exception as exc:  # any failure of the hub is a reason to report, not a traceback
        raise _NotHere(_hub_failure(exc)) from None


def _probe_hub(repo_id: str, filename: str) -> None:
    """One metadata request, short timeout, no retries: raises the client's own error when the hub cannot serve it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = _hub_endpoint()
    get_hf_file_metadata(hf_hub_url(repo_id, filename, endpoint=endpoint), timeout=_hub_timeout_s(), endpoint=endpoint)


def _hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None  # read now, as for the cache directory


def _hub_failure(exc: Exception, filename: str = CONFIG_NAME) -> str:
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    if isinstance(exc, OfflineModeIsEnabled):
        return "skipped, huggingface_hub is in offline mode (HF_HUB_OFFLINE was set when it was imported)"
    if isinstance(exc, GatedRepoError):
        return "gated repo, accept its licence on huggingface.co and log in with `hf auth login`"
    if isinstance(exc, RepositoryNotFoundError):
        return "no such repo (or it is private: log in with `hf auth login`)"
    if isinstance(exc, EntryNotFoundError):
        return f"the repo has no {filename}"
    return f"unreachable ({type(exc).__name__}: {_one_line(str(exc), 100)})"


# Bare model_type --------------------------------------------------------------------------------------------------


def _from_model_type(name: str) -> ModelSource:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = name if name in CONFIG_MAPPING_NAMES else name.lower()
    if model_type not in CONFIG_MAPPING_NAMES:
        raise _NotHere(f"not a model_type of transformers {_version('transformers')}")
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            default = AutoConfig.for_model(model_type)
    except Exception as exc:
        # the name is a model_type: the other sources have had their turn, and "not found" would mislead
        raise UserError(
            f"model_type '{model_type}': transformers {_version('transformers')} cannot build its own default config "
            f"({_one_line(str(exc), 160)}); pass a real config.json of this architecture"
        ) from None
    config = default.to_dict()
    from tracer.default_repairs import repair_default_config

    repaired = repair_default_config(default, config)
    origin = f"transformers default config for model_type '{model_type}'"
    if repaired:
        origin += f" (repaired: {', '.join(repaired)})"
    return ModelSource(name, "model_type", origin, config, None)


_FINDERS: tuple[tuple[str, Callable[[str], ModelSource]], ...] = (
    ("local path", _from_local),
    ("bundled configs", _from_bundled),
    ("HF cache", _from_hf_cache),
    ("hub", _from_hub),
    ("model_type", _from_model_type),
)


def _did_you_mean(name: str) -> str:
    directory = bundled_config_dir()
    if directory is None:
        return ""
    names = {_model_key(_split_repo_id(r)[1]): r for r in _bundled_index(str(directory))}
    close = difflib.get_close_matches(_model_key(_split_repo_id(name)[1]), list(names), n=3, cutoff=0.75)
    return f"; did you mean {', '.join(names[c] for c in close)}?" if close else ""


# ------------------------------------------------------------------------------------------------------- load_config


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
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

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
    import transformers.models.auto.modeling_auto as modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

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
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        with quiet_transformers():
            return CONFIG_MAPPING[model_type].from_dict({**src.config, "model_type": model_type})
    except Exception as exc:
        reason = _one_line(str(exc))
        raise UserError(f"{src.origin}: transformers rejects this '{model_type}' config: {reason}") from None


def _build_remote(src: ModelSource, model_type: str, trust_remote_code: bool) -> PretrainedConfig:
    version = _version("transformers")
    reference = _auto_config_reference(src.config)
    if reference is None:
        raise UserError(
            f"model_type '{model_type}' ({src.origin}) is not in transformers {version} and the config names no "
            f"remote code (no auto_map.AutoConfig)"
        )
    if not trust_remote_code:
        raise UserError(
            f"model_type '{model_type}' is not in transformers {version}; its config asks for remote code "
            f"({reference}): rerun with --trust-remote-code to allow running it"
        )
    config_class = _remote_config_class(reference, src)
    try:
        with quiet_transformers():
            return config_class.from_dict(src.config)
    except Exception as exc:
        raise UserError(f"{src.origin}: remote config class {reference} rejects it: {_one_line(str(exc))}") from None


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
    if _hub_offline():
        raise UserError(f"remote code {module} of {repo} is not in the HF cache and HF_HUB_OFFLINE is set")
    try:
        _probe_hub(repo, module)  # the import itself would retry an unreachable hub for about 20 s
    except Exception as exc:
        raise UserError(f"remote code {module} of {repo}: hub {_hub_failure(exc, module)}") from None
    return _import_remote(reference, repo, local_only=False)


def _import_remote(reference: str, repo: str, *, local_only: bool) -> type:
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        with quiet_transformers():
            return get_class_from_dynamic_module(
                reference, repo, cache_dir=hub_cache_dir(), local_files_only=local_only
            )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {_one_line(str(exc))}"
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
        org, _, model = Path(src.path).name[: -len(_BUNDLED_SUFFIX)].partition("--")
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
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LM
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES as BASE_MODEL

    try:
        text = config.get_text_config(decoder=True)
    except Exception:  # composite configs without a single text decoder
        text = config
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
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

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


def _validate_sizes(config: PretrainedConfig, raw: dict, origin: str) -> None:
    """Reject sizes no model can have, before tracing turns them into an obscure shape error."""
    for field in _SIZE_FIELDS:
        _check_positive(field, _field_values(config, field), origin)
    hidden, heads = (_single_value(config, field) for field in ("hidden_size", "num_attention_heads"))
    _check_head_split(hidden, heads, raw, origin)


def _validate_raw_sizes(raw: dict, origin: str) -> None:
    """The same checks on the JSON itself, so that our message comes before a config class's own validator's."""
    for field in _SIZE_FIELDS:
        _check_positive(field, [raw.get(field)], origin)
    _check_head_split(raw.get("hidden_size"), raw.get("num_attention_heads"), raw, origin)


def _check_positive(field: str, values: list, origin: str) -> None:
    for value in values:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):  # one value per layer (e.g. a per-layer intermediate_size)
            _check_positive(field, list(value), origin)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{origin}: {field} must be a positive integer, got {value!r}")
        if value <= 0:
            raise UserError(f"{origin}: {field} must be positive, got {value}")


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
    return [getattr(config, field, None)]


def _single_value(config: PretrainedConfig, field: str) -> Any:
    values = set(_field_values(config, field))
    return values.pop() if len(values) == 1 else None


@contextlib.contextmanager
def quiet_transformers():
    """Config classes log and warn about legacy fields; the CLI prints its own notes."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


# ------------------------------------------------------------------------------------------------------ list_offline


def list_offline() -> list[dict]:
    """What resolves without a network: bundled configs, the HF cache, transformers' causal-LM model types."""
    return _bundled_rows() + _cache_rows() + _model_type_rows()


def _bundled_rows() -> list[dict]:
    directory = bundled_config_dir()
    if directory is None:
        return []
    rows = []
    for repo_id, file in _bundled_index(str(directory)).items():
        rows.append({"name": repo_id, "kind": "bundled", "model_type": _peek_model_type(file), "origin": str(file)})
    return rows


def _cache_rows() -> list[dict]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    try:
        cache = scan_cache_dir(hub_cache_dir())
    except (CacheNotFound, CorruptedCacheException, OSError):
        return []
    rows = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        file = _cached_config(repo) if repo.repo_type == "model" else None
        if file is not None:
            model_type = _peek_model_type(file)
            rows.append({"name": repo.repo_id, "kind": "hf-cache", "model_type": model_type, "origin": str(file)})
    return rows


def _cached_config(repo) -> Path | None:
    """config.json of the most recently modified cached revision that has one."""
    for revision in sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True):
        for cached in revision.files:
            if cached.file_name == CONFIG_NAME and cached.file_path.parent == revision.snapshot_path:
                return cached.file_path
    return None


def _model_type_rows() -> list[dict]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    origin = f"transformers {_version('transformers')} default config"
    return [
        {"name": mt, "kind": "model_type", "model_type": mt, "origin": origin}
        for mt in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    ]


def _peek_model_type(file: Path) -> str:
    """model_type for a listing: a read of the JSON only, no config built."""
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "?"
    return str(config.get("model_type", "?")) if isinstance(config, dict) else "?"


# ----------------------------------------------------------------------------------------------------------- helpers


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def _one_line(text: str, limit: int = 200) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
