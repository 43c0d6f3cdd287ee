"""Depthwise causal conv1d of a Mamba / short-conv mixer, as transformers' torch fallbacks run it (conv then
SiLU): context = F.conv1d(groups=channels, padding=d_conv - 1) cut to seq_len; generation = one token per
sequence appended to the conv state (state shifted, conv over d_conv columns). Table mamba2_perf, whose conv
channels are nheads * head_dim + 2 * n_groups * d_state: a case gives either that Mamba2 geometry or plain
``channels`` (stored as nheads=1, head_dim=channels, n_groups=0)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from collector.common import as_int, randn
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import MAMBA2_CONV

KERNELS = {"context": "torch_causal_conv1d_fn", "generation": "torch_causal_conv1d_update"}


def geometry(case: dict) -> dict:
    if "channels" in case and "nheads" not in case:
        c = as_int(case, "channels")
        return {"nheads": 1, "head_dim": c, "n_groups": 0, "d_state": as_int(case, "d_state", 0)}
    return {"nheads": as_int(case, "nheads"), "head_dim": as_int(case, "head_dim"),
            "n_groups": as_int(case, "n_groups", 1), "d_state": as_int(case, "d_state")}


def channels(geo: dict) -> int:
    return geo["nheads"] * geo["head_dim"] + 2 * geo["n_groups"] * geo["d_state"]


def _phase(case):
    phase = case.get("phase", "context")
    if phase not in KERNELS:
        raise ValueError(f"unknown phase {phase!r}; known: context, generation")
    return phase


@collector("conv1d", spec=MAMBA2_CONV)
def conv1d(case: dict, ctx) -> float:
    phase = _phase(case)
    c = channels(geometry(case))
    b, width = as_int(case, "batch_size"), as_int(case, "d_conv", 4)
    s = 1 if phase == "generation" else as_int(case, "seq_len")
    if c <= 0:
        raise ValueError("conv channels must be positive")

    if phase == "context":
        def make():
            # (B, S, C) projection output transposed to (B, C, S), as the mixer does
            return randn((b, s, c), ctx).transpose(1, 2), randn((c, width), ctx), randn((c,), ctx)

        def run(x, w, bias):
            out = F.conv1d(x, w.unsqueeze(1), bias, padding=width - 1, groups=c)[..., :s]
            return F.silu(out)
    else:
        def make():
            return randn((b, c, 1), ctx), randn((b, c, width), ctx), randn((c, width), ctx), randn((c,), ctx)

        def run(x, state, w, bias):
            new = torch.cat([state, x], dim=-1)
            state.copy_(new[:, :, -width:])
            out = F.conv1d(new, w.unsqueeze(1), bias, padding=0, groups=c)[..., -1:]
            return F.silu(out)

    return time_call(run, make, ctx)


@conv1d.normalizer
def _row(case: dict, ctx) -> dict:
    phase = _phase(case)
    geo = geometry(case)
    b = as_int(case, "batch_size")
    s = 1 if phase == "generation" else as_int(case, "seq_len")
    return {"op_name": "causal_conv1d", "kernel_source": KERNELS[phase], "phase": phase, "batch_size": b,
            "seq_len": s, "num_tokens": b * s, "d_model": as_int(case, "d_model", channels(geo)),
            "d_state": geo["d_state"], "d_conv": as_int(case, "d_conv", 4), "nheads": geo["nheads"],
            "head_dim": geo["head_dim"], "n_groups": geo["n_groups"], "chunk_size": as_int(case, "chunk_size", 256),
            "model_name": str(case.get("model_name", "tracecost_grid"))}
