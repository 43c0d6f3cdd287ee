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

from tracer.errors import UserError

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
        with _quiet_transformers():
            default = AutoConfig.for_model(model_type)
    except Exception as exc:
        # the name is a model_type: the other sources have had their turn, and "not found" would mislead
        raise UserError(
            f"model_type '{model_type}': transformers {_version('transformers')} cannot build its own default config "
            f"({_one_line(str(exc), 160)}); pass a real config.json of this architecture"
        ) from None
    config = default.to_dict()
    repaired = repair_default_config(default, config)
    origin = f"transformers default config for model_type '{model_type}'"
    if repaired:
        origin += f" (repaired: {', '.join(repaired)})"
    return ModelSource(name, "model_type", origin, config, None)


def repair_default_config(config: PretrainedConfig, raw: dict) -> list[str]:
    """Repair, in place in `raw` (config.to_dict()), what transformers' default config of a bare model type leaves
    inconsistent with transformers' own model code, where the value is fixed by the config itself. Generic rules,
    applied to the config and to each of its sub-configs; returns what was changed, as "where.field=old->new".

    - no head_dim while hidden_size is not a multiple of num_attention_heads: the model code derives
      hidden_size // num_attention_heads; that value is written down, so the head split is explicit.
    - rope_parameters left empty: the config class's own `default_theta` with the default RoPE type; one entry per
      layer type where the config lists layer_types (transformers' per-layer-type form).
    - a sub-config describing attention (it counts heads) without RoPE parameters, under a parent whose RoPE
      parameters give rope_theta: the sub-config gets the parent's rope_theta (its attention code reads it there).
    - a `default_<x>` choice left None where the config offers exactly one `<x>s` value: that value.

    Real configs are never passed here: this is the handling of bare model types only.
    """
    fixed: list[str] = []

    def walk(cfg, data: dict, where: str, parent_theta):
        _repair_head_split(data, where, fixed)
        _repair_empty_rope(cfg, data, where, fixed)
        if parent_theta is not None and where and _counts_heads(data) and not _has_rope(data):
            data["rope_theta"] = parent_theta
            fixed.append(f"{where}rope_theta=absent->{parent_theta} (from the parent config)")
        _repair_single_choice(data, where, fixed)
        theta = _flat_rope_theta(data)
        for key, value in data.items():
            sub = getattr(cfg, key, None) if isinstance(value, dict) else None
            if sub is not None and hasattr(sub, "to_dict"):
                walk(sub, value, f"{where}{key}.", theta)

    walk(config, raw, "", None)
    return fixed


def _repair_head_split(data: dict, where: str, fixed: list[str]) -> None:
    hidden, heads = data.get("hidden_size"), data.get("num_attention_heads")
    explicit = any("head_dim" in key or key.endswith("head_size") for key in data)
    if type(hidden) is int and type(heads) is int and heads > 0 and hidden % heads and not explicit:
        data["head_dim"] = hidden // heads
        fixed.append(f"{where}head_dim=absent->{data['head_dim']} (hidden_size // num_attention_heads)")


def _repair_empty_rope(cfg, data: dict, where: str, fixed: list[str]) -> None:
    theta = getattr(type(cfg), "default_theta", None)
    if data.get("rope_parameters") != {} or not isinstance(theta, (int, float)):
        return
    params = {"rope_type": "default", "rope_theta": float(theta)}
    layer_types = data.get("layer_types")
    if isinstance(layer_types, (list, tuple)) and layer_types and all(isinstance(t, str) for t in layer_types):
        data["rope_parameters"] = {t: dict(params) for t in dict.fromkeys(layer_types)}
    else:
        data["rope_parameters"] = params
    fixed.append(f"{where}rope_parameters={{}}->{data['rope_parameters']}")


def _counts_heads(data: dict) -> bool:
    return any("heads" in key and type(value) is int for key, value in data.items())


def _has_rope(data: dict) -> bool:
    return "rope_theta" in data or bool(data.get("rope_parameters"))


def _flat_rope_theta(data: dict):
    params = data.get("rope_parameters")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return theta if isinstance(theta, (int, float)) else data.get("rope_theta")


def _repair_single_choice(data: dict, where: str, fixed: list[str]) -> None:
    for key, value in list(data.items()):
        if value is not None or not key.startswith("default_"):
            continue
        options = data.get(key[len("default_"):] + "s")
        if isinstance(options, (list, tuple)) and len(options) == 1 and isinstance(options[0], (str, int)):
            data[key] = options[0]
            fixed.append(f"{where}{key}=None->{options[0]!r} (the only one of {key[len('default_'):]}s)")


# Fields a default config leaves None that transformers' code uses --------------------------------------------------

# Values tried in turn for a count no config field or docstring determines: the smallest with which the model traces.
TRIAL_VALUES = (1, 2, 4)
# transformers' code that every model runs besides its own module: its None checks count as the model's
_SHARED_MODEL_CODE = ("transformers.cache_utils", "transformers.masking_utils", "transformers.modeling_rope_utils",
                      "transformers.modeling_utils", "transformers.integrations.moe")


@dataclass(frozen=True)
class Repair:
    """A bare model type's default config with its None fields set, and what was set ("field=None->value (why)")."""

    source: ModelSource
    fixed: list[str]


def none_field_repairs(src: ModelSource, failure: BaseException) -> list[Repair]:
    """Default configs to trace instead of a bare model type's, after its trace failed with a TypeError in
    transformers' code (a value of the wrong type: in a default config, a number or a per-layer list left None).
    Empty where that does not apply. Applied to the config and each of its sub-configs, to fields that are None:

    - `layer_types` (one entry per layer): what transformers' own cache code infers for a config without one
      (cache_utils.get_layer_types_and_kwargs): "sliding_attention" where sliding_window is set, else
      "chunked_attention" where attention_chunk_size is set, else "full_attention", for every layer;
    - a count (a field annotated int, not a token id) that neither the model's module nor transformers' shared model
      code tests for None (see _none_checked_names; a None the code handles, such as an unset clip or LoRA rank,
      is a choice, left alone):
      - the default its config class documents ("defaults to `X`"): a number, another field's value, or an
        arithmetic expression of the config's fields;
      - otherwise the smallest value with which the model traces: one repaired config per value of TRIAL_VALUES,
        the counts without a documented default all set to it, tried in turn by the caller.

    Real configs are never passed here: they say what they mean, and their errors are the user's to see.
    """
    if src.kind != "model_type" or not _type_error(failure):
        return []
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        with _quiet_transformers():
            config = CONFIG_MAPPING[src.config["model_type"]].from_dict(dict(src.config))
    except Exception:
        return []
    determined: dict[tuple[str, ...], tuple[Any, str]] = {}  # path -> (value, why)
    trial: list[tuple[str, ...]] = []

    def walk(cfg, data: dict, path: tuple[str, ...]):
        checked = _none_checked_names(type(cfg).__module__.replace(".configuration_", ".modeling_")).union(
            *map(_none_checked_names, _SHARED_MODEL_CODE))
        aliases = getattr(type(cfg), "attribute_map", None) or {}
        for name, annotation in _field_types(cfg).items():
            if name not in data or data[name] is not None:
                continue
            if name == "layer_types" and "list" in annotation and type(data.get("num_hidden_layers")) is int:
                kind = ("sliding_attention" if data.get("sliding_window") is not None else
                        "chunked_attention" if data.get("attention_chunk_size") is not None else "full_attention")
                determined[(*path, name)] = ([kind] * data["num_hidden_layers"],
                                             "what transformers' cache code infers for a config without one")
                continue
            if not {"int", "Optional[int]"} & {part.strip() for part in annotation.split("|")} \
                    or name.endswith("_token_id"):
                continue
            if {name, *(alias for alias, field in aliases.items() if field == name)} & checked:
                continue
            documented = _documented_default(type(cfg), name, data)
            if documented is not None:
                determined[(*path, name)] = documented
            else:
                trial.append((*path, name))
        for key, value in data.items():
            sub = getattr(cfg, key, None) if isinstance(value, dict) else None
            if sub is not None and hasattr(sub, "to_dict"):
                walk(sub, value, (*path, key))

    walk(config, src.config, ())
    if not determined and not trial:
        return []
    repairs = []
    for value in TRIAL_VALUES if trial else (None,):
        raw = json.loads(json.dumps(src.config, default=str))
        fixed = []
        for path, (new, why) in determined.items():
            _set_path(raw, path, new)
            fixed.append(f"{'.'.join(path)}=None->{_short(new)} ({why})")
        for path in trial:
            _set_path(raw, path, value)
        if trial:
            tried = ", ".join(map(str, TRIAL_VALUES))
            fixed.append(", ".join(f"{'.'.join(path)}=None->{value}" for path in trial)
                         + f" (no documented default: the smallest of {tried} that traces)")
        repairs.append(Repair(ModelSource(src.name, src.kind, src.origin, raw, src.path), fixed))
    return repairs


def _type_error(failure: BaseException) -> bool:
    """Whether a failure is, or was caused by, a TypeError (the decode export reports its error as text)."""
    seen = set()
    while failure is not None and id(failure) not in seen:
        seen.add(id(failure))
        if isinstance(failure, TypeError) or re.search(r"\bTypeError: ", str(failure)):
            return True
        failure = failure.__cause__ or failure.__context__
    return False


def _field_types(cfg) -> dict[str, str]:
    """A config's dataclass fields and their annotations, as text."""
    import dataclasses

    if not dataclasses.is_dataclass(cfg):
        return {}
    return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", None) or str(f.type)
            for f in dataclasses.fields(cfg) if not f.name.startswith("_")}


@lru_cache(maxsize=None)
def _none_checked_names(module_name: str) -> frozenset[str]:
    """Names a module tests for None: compared with it (`x.clip_qkv is not None`, `getattr(c, "q_lora_rank", None)
    is None`), replaced when falsy (`c.head_dim or hidden // heads`) or tested (`if self.q_lora_rank:`); and the
    names they were read from (`self.clip_qkv = attn_config.clip_qkv`): fields whose None the code handles."""
    import ast
    import importlib
    import inspect

    try:
        tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    except Exception:  # no modeling module beside the config (or no source): nothing is known to be handled
        return frozenset()

    def terminal(node):
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node, ast.Name):
            return node.id
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            return node.args[1].value
        return None

    def is_none(node):
        return isinstance(node, ast.Constant) and node.value is None

    read_from: dict[str, set[str]] = {}
    checked: set[str] = set()
    for node in ast.walk(tree):
        tested = []
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, source = terminal(node.targets[0]), terminal(node.value)
            if isinstance(target, str) and isinstance(source, str):
                read_from.setdefault(target, set()).add(source)
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1
              and isinstance(node.ops[0], (ast.Is, ast.IsNot, ast.Eq, ast.NotEq))):
            left, right = node.left, node.comparators[0]
            tested = [left] if is_none(right) else [right] if is_none(left) else []
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            tested = node.values[:-1]  # `x or default`: a None (or 0) x is replaced
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
            tested = [node.test.operand if isinstance(node.test, ast.UnaryOp) else node.test]  # `if x:`, `if not x:`
        checked.update(name for name in map(terminal, tested) if isinstance(name, str))
    return frozenset(checked.union(*(read_from.get(name, ()) for name in list(checked))))


def _documented_default(cls: type, name: str, data: dict) -> tuple[int, str] | None:
    """The default a config class's docstring gives a field ("... will default to `num_attention_heads`."): an int,
    another field's int value, or + - * // of those; None where it gives none or it does not evaluate."""
    import ast

    doc = cls.__doc__ or ""
    entry = re.search(rf"^\s*{re.escape(name)} \(.*?\):\n(.*?)(?=^\s*\w+ \(|\Z)", doc, re.S | re.M)
    said = re.search(r"defaults? to\s+`([^`]+)`", entry.group(0)) if entry else None
    if said is None:
        return None
    ops = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__, ast.FloorDiv: int.__floordiv__}

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and type(data.get(node.id)) is int:
            return data[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = value(node.left), value(node.right)
            if left is not None and right is not None and not (type(node.op) is ast.FloorDiv and right == 0):
                return ops[type(node.op)](left, right)
        return None

    try:
        result = value(ast.parse(said.group(1).strip(), mode="eval").body)
    except SyntaxError:
        return None
    return (result, f"its documented default, {said.group(1).strip()}") if isinstance(result, int) and result > 0 \
        else None


def _set_path(data: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _short(value) -> str:
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        return f"[{value[0]!r}] * {len(value)}"
    return repr(value)


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
    return chosen, "; ".join(n for n in (arch_note, note) if n)


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
        with _quiet_transformers():
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
        with _quiet_transformers():
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
        with _quiet_transformers():
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
def _quiet_transformers():
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
