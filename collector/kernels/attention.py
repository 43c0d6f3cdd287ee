"""Attention as transformers' SDPA path runs it (torch.nn.functional.scaled_dot_product_attention).

context_attention_perf: causal prefill over isl new tokens per sequence (no cached prefix). GQA through
``enable_gqa``; a sliding window shorter than isl adds the boolean band mask transformers builds (and then,
as transformers does with a mask, K/V repeated to the query heads). q/k/v are the transposed (B, H, S, D)
views of (B, S, H, D) projections, as in the model.

generation_attention_perf: one decode step. The new token's K/V are written into a preallocated cache at
position ``step`` (a static cache's index_copy_) and the query attends to the step + 1 cached tokens, or
to the last ``window_size`` of them (a sliding-window cache holds only those). ``step`` = tokens already
cached, as in the aiconfigurator tables.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from collector.common import as_int, randn
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import CONTEXT_ATTENTION, GENERATION_ATTENTION

KERNEL = "torch_sdpa"


def _heads(case):
    hq = as_int(case, "num_heads")
    hkv = as_int(case, "num_key_value_heads", hq)
    if hq % hkv:
        raise ValueError(f"num_heads {hq} is not a multiple of num_key_value_heads {hkv}")
    return hq, hkv


def _dtype_check(case):
    for col in ("attn_dtype", "kv_cache_dtype"):
        if case.get(col, "bfloat16") not in ("bfloat16", "bf16"):
            raise ValueError(f"{col} {case[col]!r}: the torch SDPA collector measures bfloat16 only")


@collector("context_attention", group="attention", spec=CONTEXT_ATTENTION)
def context_attention(case: dict, ctx) -> float:
    _dtype_check(case)
    b, s, d = as_int(case, "batch_size"), as_int(case, "isl"), as_int(case, "head_dim")
    hq, hkv = _heads(case)
    w = as_int(case, "window_size", 0)
    windowed = 0 < w < s
    mask = None
    if windowed:
        i = torch.arange(s, device=ctx.device)
        diff = i[:, None] - i[None, :]
        mask = (diff >= 0) & (diff < w)  # causal band of w keys

    def make():
        q = randn((b, s, hq, d), ctx).transpose(1, 2)
        k = randn((b, s, hkv, d), ctx).transpose(1, 2)
        v = randn((b, s, hkv, d), ctx).transpose(1, 2)
        return q, k, v

    if windowed:
        rep = hq // hkv

        def run(q, k, v):
            if rep > 1:
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        def run(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=hq != hkv)

    return time_call(run, make, ctx)


@context_attention.normalizer
def _context_row(case: dict, ctx) -> dict:
    hq, hkv = _heads(case)
    return {"op_name": "context_attention", "kernel_source": KERNEL, "batch_size": as_int(case, "batch_size"),
            "isl": as_int(case, "isl"), "num_heads": hq, "num_key_value_heads": hkv,
            "head_dim": as_int(case, "head_dim"), "beam_width": 1, "attn_dtype": "bfloat16",
            "kv_cache_dtype": "bfloat16", "step": 0, "window_size": as_int(case, "window_size", 0)}


@collector("generation_attention", group="attention", spec=GENERATION_ATTENTION)
def generation_attention(case: dict, ctx) -> float:
    _dtype_check(case)
    b, step, d = as_int(case, "batch_size"), as_int(case, "step"), as_int(case, "head_dim")
    hq, hkv = _heads(case)
    w = as_int(case, "window_size", 0)
    seen = min(step + 1, w) if w > 0 else step + 1
    pos = torch.tensor([seen - 1], device=ctx.device)

    def make():
        q = randn((b, 1, hq, d), ctx).transpose(1, 2)
        k_new = randn((b, 1, hkv, d), ctx).transpose(1, 2)
        v_new = randn((b, 1, hkv, d), ctx).transpose(1, 2)
        k_cache = randn((b, hkv, seen, d), ctx)
        v_cache = randn((b, hkv, seen, d), ctx)
        return q, k_new, v_new, k_cache, v_cache

    def run(q, k_new, v_new, k_cache, v_cache):
        k_cache.index_copy_(2, pos, k_new)
        v_cache.index_copy_(2, pos, v_new)
        return F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=hq != hkv)

    return time_call(run, make, ctx)


@generation_attention.normalizer
def _generation_row(case: dict, ctx) -> dict:
    hq, hkv = _heads(case)
    return {"op_name": "generation_attention", "kernel_source": KERNEL, "batch_size": as_int(case, "batch_size"),
            "isl": 1, "num_heads": hq, "num_key_value_heads": hkv, "head_dim": as_int(case, "head_dim"),
            "beam_width": 1, "attn_dtype": "bfloat16", "kv_cache_dtype": "bfloat16", "step": as_int(case, "step"),
            "window_size": as_int(case, "window_size", 0)}
