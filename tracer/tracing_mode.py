"""The tracing mode every meta run and export of a model runs under: transformers' compiled-graph branches, and
the few calls torch or transformers refuse on meta tensors given what model code means by them."""
from __future__ import annotations

import contextlib

import torch
from torch.fx.experimental import _config as fx_config

from tracer.known_values import KnownValues

@contextlib.contextmanager
def tracing_branches():
    """Make transformers take the branches it keeps for compiled / exported graphs.

    Non-strict export does not count as compiling, so models would take eager-only branches (checking a mask's
    values with .item(), which a meta tensor cannot answer). Export is a trace: say so for its duration.
    torch.distributions checks its arguments' values by default (a Categorical's probabilities are a simplex), a
    branch on data a trace does not have: off for the duration, as for any traced graph. Selections by value
    (nonzero) and values known from sizes follow KnownValues; on plain meta tensors (the prefill that builds the
    decode cache) a selection selects every element, torch's own assumption for its meta kernel, so the prefill
    runs through an MoE's per-expert loop without being traced."""
    original = torch.compiler.is_compiling
    validate = torch.distributions.Distribution._validate_args
    torch.compiler.is_compiling = lambda: True
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with _unbounded_clamp_is_identity(), _unaligned_grouped_mm_falls_back(), _caches_without_attention(), \
                KnownValues(), fx_config.patch(meta_nonzero_assume_all_nonzero=True):
            yield
    finally:
        torch.compiler.is_compiling = original
        torch.distributions.Distribution.set_default_validate_args(validate)


@contextlib.contextmanager
def _unbounded_clamp_is_identity():
    """clamp / clip with neither bound is the identity; torch refuses the call instead. Model code that computes
    optional bounds reaches it when the clip is unset (min = -c if c is not None else None, max = c, with an
    unset clip in a default config), and means no clipping: the input is passed through, as no op."""
    originals = [(owner, name, getattr(owner, name)) for owner in (torch.Tensor, torch) for name in ("clamp", "clip")]

    def passing(original):
        def clamp(input, min=None, max=None, **kwargs):
            if min is None and max is None and not kwargs:
                return input
            return original(input, min, max, **kwargs)
        return clamp

    for owner, name, original in originals:
        setattr(owner, name, passing(original))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


@contextlib.contextmanager
def _unaligned_grouped_mm_falls_back():
    """torch's grouped GEMM needs each operand's leading stride to be a multiple of 16 bytes (a row of 1407 bf16
    values is not), and its meta kernel checks it; transformers takes its own fallback op where the kernel cannot be
    used (its _can_use_grouped_mm). Operands the kernel would refuse take that fallback here too: the same grouped
    GEMM, one op in the graph (transformers.grouped_mm_fallback), priced as the kernel is."""
    try:
        import transformers.integrations.moe as moe
    except ImportError:
        yield
        return
    can_use = getattr(moe, "_can_use_grouped_mm", None)
    if can_use is None:
        yield
        return

    def aligned(mat) -> bool:  # the row stride, the larger of the last two; a symbolic one is not judged
        strides = mat.stride()[-2:]
        return not all(type(s) is int for s in strides) or max(strides) * mat.element_size() % 16 == 0

    def can_use_aligned(input, weight, offs) -> bool:
        return can_use(input, weight, offs) and aligned(input) and aligned(weight)

    moe._can_use_grouped_mm = can_use_aligned
    try:
        yield
    finally:
        moe._can_use_grouped_mm = can_use


@contextlib.contextmanager
def _caches_without_attention():
    """A cache of recurrent layers only (a hybrid config whose layer list holds no attention layer) tracks no
    sequence length, and transformers' Cache refuses the questions the model's own code still asks it while
    building the masks of its attention layers (of which it has none): get_seq_length, get_mask_sizes. Such a cache
    is answered as transformers answers for a cache that holds no attention layer yet: no cached tokens, masks over
    the new tokens only. Nothing of the model reads those masks; the recurrent layers read their own states."""
    try:
        from transformers.cache_utils import Cache, CacheLayerMixin
    except ImportError:  # a transformers without per-layer caches
        yield
        return
    seq_length, mask_sizes = Cache.get_seq_length, Cache.get_mask_sizes

    def lengthless(cache, layer_idx) -> bool:
        layers = getattr(cache, "layers", None)
        return (layer_idx == 0 and isinstance(layers, list) and bool(layers)
                and not any(isinstance(layer, CacheLayerMixin) for layer in layers))

    def get_seq_length(self, layer_idx: int = 0, *args, **kwargs):
        return 0 if lengthless(self, layer_idx) else seq_length(self, layer_idx, *args, **kwargs)

    def get_mask_sizes(self, query_length, layer_idx, *args, **kwargs):
        if lengthless(self, layer_idx):
            return query_length, 0
        return mask_sizes(self, query_length, layer_idx, *args, **kwargs)

    Cache.get_seq_length, Cache.get_mask_sizes = get_seq_length, get_mask_sizes
    try:
        yield
    finally:
        Cache.get_seq_length, Cache.get_mask_sizes = seq_length, mask_sizes


