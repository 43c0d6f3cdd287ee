"""Routed experts of one MoE layer, as transformers' grouped-experts path runs them: softmax router top-k
(over given router logits; the router GEMM itself is a GEMM), tokens sorted by expert, the gate+up and down
projections as grouped GEMMs (torch._grouped_mm where the device has it, else a loop over experts), SwiGLU
between them, and the weighted scatter back to tokens. Table moe_perf (moe_tp_size = moe_ep_size = 1: one
GPU holds every expert).

distribution "balanced": token t picks experts (t * topk + j) mod num_experts; "power_law_<a>": experts'
popularity ~ rank^-a and each token samples topk distinct experts by it (fixed seed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from collector.common import as_int, randn
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import MOE



def router_logits(tokens: int, experts: int, topk: int, distribution: str, ctx) -> torch.Tensor:
    g = torch.Generator().manual_seed(ctx.seed)
    if distribution == "balanced":
        logits = torch.zeros(tokens, experts)
        t = torch.arange(tokens)[:, None]
        chosen = (t * topk + torch.arange(topk)[None, :]) % experts
        logits.scatter_(1, chosen, 10.0)
    elif distribution.startswith("power_law_"):
        alpha = float(distribution.rsplit("_", 1)[1])
        popularity = torch.arange(1, experts + 1, dtype=torch.float64) ** -alpha
        popularity = popularity[torch.randperm(experts, generator=g)]
        gumbel = -torch.log(-torch.log(torch.rand(tokens, experts, generator=g, dtype=torch.float64)))
        logits = (popularity.log()[None, :] + gumbel).float()
    else:
        raise ValueError(f"unknown distribution {distribution!r}; known: balanced, power_law_<alpha>")
    return logits.to(ctx.device)


def _geometry(case):
    t, h, i = as_int(case, "num_tokens"), as_int(case, "hidden_size"), as_int(case, "inter_size")
    k, e = as_int(case, "topk"), as_int(case, "num_experts")
    if k > e:
        raise ValueError(f"topk {k} > num_experts {e}")
    for col in ("moe_tp_size", "moe_ep_size"):
        if as_int(case, col, 1) != 1:
            raise ValueError(f"{col} must be 1: the collector runs every expert on one GPU")
    if case.get("moe_dtype", "bfloat16") not in ("bfloat16", "bf16"):
        raise ValueError(f"moe_dtype {case['moe_dtype']!r}: the torch collector measures bfloat16 only")
    return t, h, i, k, e


@collector("moe", spec=MOE)
def moe(case: dict, ctx) -> float:
    t, h, inter, k, e = _geometry(case)
    logits = router_logits(t, e, k, case.get("distribution", "balanced"), ctx)
    grouped = ctx.features.get("grouped_mm", False)

    def make():
        x = randn((t, h), ctx)
        w_gate_up = randn((e, 2 * inter, h), ctx, scale=h ** -0.5)  # (experts, out, in) as transformers stores
        w_down = randn((e, h, inter), ctx, scale=inter ** -0.5)
        return x, logits, w_gate_up, w_down

    def run(x, logits, w_gate_up, w_down):
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, k, dim=-1)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token_of = order // k
        xs = x.index_select(0, token_of)
        if grouped:
            # counts by scatter, not bincount: bincount syncs with the host, which CUDA graph capture refuses
            counts = torch.zeros(e, dtype=torch.int64, device=flat.device).scatter_add_(0, flat, torch.ones_like(flat))
            offs = torch.cumsum(counts, 0).to(torch.int32)
            hidden = torch._grouped_mm(xs, w_gate_up.transpose(-2, -1), offs=offs)
            gate, up = hidden.chunk(2, dim=-1)
            out = torch._grouped_mm(F.silu(gate) * up, w_down.transpose(-2, -1), offs=offs)
        else:
            counts = torch.bincount(flat, minlength=e).tolist()
            parts, start = [], 0
            for j, c in enumerate(counts):
                if c:
                    gate, up = F.linear(xs[start:start + c], w_gate_up[j]).chunk(2, dim=-1)
                    parts.append(F.linear(F.silu(gate) * up, w_down[j]))
                start += c
            out = torch.cat(parts)
        out = out * weights.reshape(-1).index_select(0, order)[:, None]
        return torch.zeros_like(x).index_add_(0, token_of, out)

    return time_call(run, make, ctx, graph=grouped)


@moe.normalizer
def _row(case: dict, ctx) -> dict:
    t, h, i, k, e = _geometry(case)
    distribution = case.get("distribution", "balanced")
    if distribution != "balanced" and not distribution.startswith("power_law_"):
        raise ValueError(f"unknown distribution {distribution!r}")
    kernel = "torch_grouped_mm" if ctx.features.get("grouped_mm") else "torch_expert_loop"
    return {"op_name": "moe", "kernel_source": kernel, "moe_dtype": "bfloat16", "num_tokens": t, "hidden_size": h,
            "inter_size": i, "topk": k, "num_experts": e, "moe_tp_size": 1, "moe_ep_size": 1,
            "distribution": distribution}
