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


def session_trace_cache(tmp_path_factory) -> Path:
    """The trace cache of this test session, never the user's: every test and fixture that traces through the cache
    shares it, so a config (equal dicts, whatever the file or name) is traced once per session."""
    return tmp_path_factory.getbasetemp() / "trace-cache"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never read or write the user's trace cache, and never reach for the hub.
    monkeypatch.setenv("TRACECOST_CACHE", str(session_trace_cache(tmp_path_factory)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# A tiny RWKV, traced once per session through the trace cache by the tests of several files (test_kv, test_match,
# test_trace). Its declared context of 64 tokens keeps the decode trace's cache prefills short (RWKV loops over the
# tokens in Python; without it they run to 1019 tokens); the traced graphs are the same.
TINY_RWKV = tiny_config("rwkv", hidden_size=64, attention_hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        vocab_size=100, context_length=64, torch_dtype="bfloat16")
# A tiny GPT, which keeps no KV cache (its decode recomputes the sequence): test_kv and test_trace share its trace.
TINY_GPT = tiny_config("openai-gpt", n_embd=64, n_head=4, n_layer=2, vocab_size=1000)


@pytest.fixture(scope="session")
def deepseek_v3_h200(tmp_path_factory):
    """An Estimator of ../shared's DeepSeek-V3 config on h200_sxm (its default backend), traced once through the
    session's trace cache and shared by the files that only read it."""
    from costmodel.estimate import Estimator
    from graph.model_graph import trace_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACECOST_CACHE", str(session_trace_cache(tmp_path_factory)))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return Estimator(trace_model(str(shared_config("deepseek-ai--DeepSeek-V3"))), system="h200_sxm")


def write_config(tmp_path: Path, config: dict, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path
