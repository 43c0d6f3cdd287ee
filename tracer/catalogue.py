"""The offline catalogue (`tracecost models`): what resolves without a network, read from the files alone."""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import scan_cache_dir
from huggingface_hub.errors import CacheNotFound, CorruptedCacheException
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from tracer.hub import hub_cache_dir
from tracer.model_source import CONFIG_NAME, version
from tracer.source import bundled_config_dir, bundled_index


def list_offline() -> list[dict]:
    """Bundled configs, the HF cache, transformers' causal-LM model types: one row each."""
    return _bundled_rows() + _cache_rows() + _model_type_rows()


def _bundled_rows() -> list[dict]:
    directory = bundled_config_dir()
    if directory is None:
        return []
    return [{"name": repo_id, "kind": "bundled", "model_type": _peek_model_type(file), "origin": str(file)}
            for repo_id, file in bundled_index(str(directory)).items()]


def _cache_rows() -> list[dict]:
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
    origin = f"transformers {version('transformers')} default config"
    return [{"name": mt, "kind": "model_type", "model_type": mt, "origin": origin}
            for mt in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)]


def _peek_model_type(file: Path) -> str:
    """model_type for a listing: a read of the JSON only, no config built."""
    try:
        config = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, RecursionError):
        return "?"
    return str(config.get("model_type", "?")) if isinstance(config, dict) else "?"
