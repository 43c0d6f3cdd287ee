"""Where a checkpoint's config declares its quantization: one lookup for the pricer, the KV report and the tracer.

A plain model keeps its `quantization_config` at the top level. A composite (vision-language) checkpoint quantizes
all its sub-models with one block at its top level, or keeps it in the sub-config of its text model; the text
model traced alone (transformers' text sub-config) carries neither, so every reader asks here.
"""
from __future__ import annotations

KEY = "quantization_config"


def declared_quantization(config: dict | None) -> tuple[str, dict] | None:
    """(where, block): the quantization block the config declares at its top level, else the first one a
    sub-config (a dict field such as text_config) declares; None where there is none."""
    config = config or {}
    block = config.get(KEY)
    if isinstance(block, dict) and block:
        return KEY, block
    for name, sub in config.items():
        block = sub.get(KEY) if isinstance(sub, dict) else None
        if isinstance(block, dict) and block:
            return f"{name}.{KEY}", block
    return None
