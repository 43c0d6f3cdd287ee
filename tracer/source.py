"""Model sources: find a model's config.json by the name the user gave.

`resolve` looks in five places, in order: a local path, the real configs bundled in aiconfigurator-core, the local
Hugging Face cache, the hub (config.json only, never weights; tracer.hub) and finally transformers' default config
for a bare model_type (repaired where transformers' own code cannot run it: tracer.default_repairs). Every bad input
raises `UserError` with a one-line message; tracer.config_build turns the found config into the one to trace.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError
from tracer.default_repairs import repair_default_config
from tracer.model_source import CONFIG_NAME, ModelSource, NotHere, one_line, quiet_transformers, version

BUNDLED_SUFFIX = "_config.json"
_QUANT_SUFFIX = "_hf_quant_config.json"
# Linux's PATH_MAX: no path, repo id or model_type is longer, so a longer name is refused before any source is asked.
_MAX_NAME_CHARS = 4096


def resolve(name: str) -> ModelSource:
    """Find `name` in the sources, in order; raise UserError naming each source tried and why it failed."""
    name = name.strip()
    if not name:
        raise UserError("no model given: pass a repo id (org/name), a path to a config.json, or a model_type")
    if len(name) > _MAX_NAME_CHARS:
        raise UserError(f"model name of {len(name)} characters: no path, repo id or model_type is longer than "
                        f"{_MAX_NAME_CHARS} characters")
    reasons = []
    for label, finder in _FINDERS:
        try:
            return finder(name)
        except NotHere as why:
            reasons.append(f"{label}: {why}")
    hint = _did_you_mean(name)
    raise UserError(
        f"model '{name}' not found; tried {'; '.join(reasons)}{hint}; "
        "`tracecost models` lists what is available offline"
    )


# Local path ---------------------------------------------------------------------------------------------------------


def _from_local(name: str) -> ModelSource:
    path = Path(name).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # a name the file system cannot hold (a part over 255 bytes)
        raise NotHere(f"not a path ({exc.strerror})") from None
    if is_dir:
        file = path / CONFIG_NAME
        if not file.is_file():
            raise NotHere(f"directory {path} has no {CONFIG_NAME}")
    elif is_file:
        if path.suffix.lower() != ".json":
            raise NotHere(f"{path} is not a .json file")
        file = path
    else:
        raise NotHere("no such file or directory")
    config = read_config_file(file)
    return ModelSource(name, "local", str(file.resolve()), config, str(path.resolve()))


def read_config_file(file: Path) -> dict:
    """Parse a config.json the user pointed at; errors here are the user's to fix, so they stop the search."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"malformed JSON in {file}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise UserError(f"{file} is nested too deeply to be a model config") from None
    check_config_dict(config, str(file))
    return config


def check_config_dict(config: Any, where: str) -> None:
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
def bundled_index(directory: str) -> dict[str, Path]:
    """Repo id ("org/name") -> bundled config file, ignoring the quantization companions."""
    index = {}
    for file in sorted(Path(directory).glob(f"*{BUNDLED_SUFFIX}")):
        if file.name.endswith(_QUANT_SUFFIX):
            continue
        stem = file.name[: -len(BUNDLED_SUFFIX)]
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
        raise NotHere("aiconfigurator-core is not installed")
    index = bundled_index(str(directory))
    hits = _match_bundled(name, index)
    if len(hits) > 1:
        raise NotHere(f"ambiguous, matches {', '.join(hits)}")
    if not hits:
        raise NotHere(f"none of the {len(index)} configs in aiconfigurator-core {version('aiconfigurator-core')}")
    file = index[hits[0]]
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise NotHere(f"bundled file {file} is unreadable ({exc})") from None
    check_config_dict(config, str(file))
    return ModelSource(name, "bundled", str(file), _with_quantization(config, file), str(file))


def _with_quantization(config: dict, file: Path) -> dict:
    """Attach the quantization held by a `<model>_hf_quant_config.json` companion, when the config has none.

    Every companion shipped is NVIDIA ModelOpt's export format: {"producer": {...}, "quantization": {"quant_algo":
    "NVFP4" | "FP8" | "MIXED_PRECISION", "kv_cache_quant_algo", "exclude_modules", ...}}. Checkpoints that carry it
    inside config.json write it flat with quant_method "modelopt" (several bundled nvidia configs do), so the companion
    is flattened into that same shape. Anything without a string quant_algo is not clearly a quantization description
    and is left out.
    """
    companion = file.with_name(file.name[: -len(BUNDLED_SUFFIX)] + _QUANT_SUFFIX)
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
# tracer.hub is imported when these are asked, not above: its client loads httpx, which a warm run of a local or
# bundled model never needs.


def _from_hf_cache(name: str) -> ModelSource:
    from tracer.hub import cached_config, hub_cache_dir, is_repo_id

    if not is_repo_id(name):
        raise NotHere("not a repo id")
    file = cached_config(name)
    if file is None:
        raise NotHere(f"not in {hub_cache_dir()}")
    config = read_config_file(Path(file))
    return ModelSource(name, "hf-cache", file, config, str(Path(file).parent))


def _from_hub(name: str) -> ModelSource:
    from tracer.hub import download_config, hub_offline, is_repo_id

    if name.count("/") != 1:
        raise NotHere("skipped, not an org/name repo id")
    if hub_offline():
        raise NotHere("skipped, HF_HUB_OFFLINE is set")
    if not is_repo_id(name):
        raise NotHere("not a repo id")
    file = download_config(name)
    config = read_config_file(Path(file))
    origin = f"huggingface.co/{name} {CONFIG_NAME}, saved as {file}"
    return ModelSource(name, "hub", origin, config, str(Path(file).parent))


# Bare model_type --------------------------------------------------------------------------------------------------


def _from_model_type(name: str) -> ModelSource:
    # transformers (and with it torch) is imported only when every other source failed: a warm run never gets here
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = name if name in CONFIG_MAPPING_NAMES else name.lower()
    if model_type not in CONFIG_MAPPING_NAMES:
        raise NotHere(f"not a model_type of transformers {version('transformers')}")
    try:
        with quiet_transformers():
            default = AutoConfig.for_model(model_type)
    except Exception as exc:
        # the name is a model_type: the other sources have had their turn, and "not found" would mislead
        raise UserError(
            f"model_type '{model_type}': transformers {version('transformers')} cannot build its own default config "
            f"({one_line(str(exc), 160)}); pass a real config.json of this architecture"
        ) from None
    config = default.to_dict()
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
    names = {_model_key(_split_repo_id(r)[1]): r for r in bundled_index(str(directory))}
    close = difflib.get_close_matches(_model_key(_split_repo_id(name)[1]), list(names), n=3, cutoff=0.75)
    return f"; did you mean {', '.join(names[c] for c in close)}?" if close else ""
