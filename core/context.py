"""Context lengths: the longest context a config declares, the attention windows it declares below it, and the
context a decode step sees in the middle of generation. Configs are read as dicts or as config objects."""
from __future__ import annotations

# Fields that bound the positions a model can embed (its context length), under the names configs use.
POSITION_LIMITS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "max_target_positions",
                   "context_length", "max_sequence_length", "seq_length")
# Layer types (a config's per-layer type names) whose attention keeps a window: sliding, local, chunked.
WINDOW_LAYER_TYPES = ("sliding", "local", "chunk", "swa")


def _fields(config) -> dict:
    if config is None:
        return {}
    return config if isinstance(config, dict) else config.to_dict()


def _get(config, key):
    if isinstance(config, dict):
        return config.get(key)
    try:
        return getattr(config, key, None)
    except Exception:  # a per-layer field of a heterogeneous config refuses a global read
        return None


def context_length(config) -> int | None:
    """The model's context length: the smallest positive limit the config declares, None where it declares none."""
    limits = [v for v in (_get(config, key) for key in POSITION_LIMITS) if type(v) is int and v > 0]
    return min(limits) if limits else None


def _windows_below_context(config) -> dict[str, int]:
    """Positive int fields below the context length (a window at least that long never binds)."""
    limit = context_length(config) or 1 << 62
    return {k: v for k, v in _fields(config).items() if type(v) is int and 0 < v < limit}


def sliding_windows(config) -> dict[str, int]:
    """Sliding-window sizes the config declares (int fields named for a window), below the context length."""
    return {k: v for k, v in _windows_below_context(config).items() if "window" in k.lower()}


def layer_window(config, layer_type: str | None) -> tuple[int, str] | None:
    """(window, field) the config declares for a layer typed sliding / local / chunked: the attention chunk size of
    a chunked layer, else `sliding_window`, else any window field; None for other layer types."""
    if not layer_type or not any(t in layer_type.lower() for t in WINDOW_LAYER_TYPES):
        return None
    if "chunk" in layer_type.lower():
        fields = {k: v for k, v in _windows_below_context(config).items()
                  if "chunk" in k.lower() and "attention" in k.lower()}
    else:
        fields = sliding_windows(config)
        if "sliding_window" in fields:
            fields = {"sliding_window": fields["sliding_window"]}
    key = next(iter(fields), None)
    return (fields[key], key) if key else None


def mid_decode_context(isl: int, osl: int) -> int:
    """Cached tokens of the decode step in the middle of generation: the steps see isl .. isl + osl - 1 cached
    tokens, their mean is isl + (osl - 1) / 2, taken up to a whole token (isl + osl // 2). Priced there, a cost
    linear in the context equals the mean step's."""
    return isl + osl // 2
