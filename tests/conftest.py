"""Shared test helpers: tiny configs written to disk, the real configs beside the project when present."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the project
SHARED = ROOT.parent / "shared"
SHARED_CONFIGS = SHARED / "configs"
SHARED_REFERENCE = SHARED / "reference"


def shared_config(name: str) -> Path:
    path = SHARED_CONFIGS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def shared_config_files() -> list[Path]:
    return sorted(SHARED_CONFIGS.rglob("*.json")) if SHARED_CONFIGS.is_dir() else []  # derived/ included


def tiny_config(model_type: str, **overrides) -> dict:
    """transformers' default config for model_type with the given fields changed, as a plain dict."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **overrides).to_dict()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never read or write the user's trace cache, and never reach for the hub.
    monkeypatch.setenv("TRACECOST_CACHE", str(tmp_path_factory.getbasetemp() / "trace-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def write_config(tmp_path: Path, config: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path
