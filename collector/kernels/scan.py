"""State-space scans as transformers' PyTorch fallbacks run them (no mamba_ssm / causal_conv1d kernels).

- mamba1_selective_scan: Mamba-1. context = discretise A and B over the sequence, then the recurrent loop
  over tokens (state (B, d_inner, d_state) updated, output contracted with C), plus the D skip and the z gate;
  generation = one selective_state_update step on a held state. nheads = d_inner, head_dim = 1.
- mamba2_ssd: Mamba-2. context = the chunked SSD (segment sums, intra-chunk "attention", chunk states,
  inter-chunk recurrence, state -> output); generation = selective_state_update per head on a held state.

Table ssm_scan_perf (costmodel.tables.specs.SSM_SCAN; aiconfigurator has no scan table).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from collector.common import as_int, randn
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import MAMBA1_SCAN, MAMBA2_SCAN, SSM_SCAN

VARIANTS = (MAMBA1_SCAN, MAMBA2_SCAN)
KERNELS = {
    (MAMBA1_SCAN, "context"): "torch_recurrent_scan",
    (MAMBA1_SCAN, "generation"): "torch_selective_state_update",
    (MAMBA2_SCAN, "context"): "torch_chunked_ssd",
    (MAMBA2_SCAN, "generation"): "torch_selective_state_update",
}


# ---- Mamba-1 -----------------------------------------------------------------------------------------------

def mamba1_scan(u, dt, A, B, C, D, z):
    """u, dt, z: (b, d, l); A: (d, n); B, C: (b, n, l). Returns y (b, d, l) and the last state."""
    b, d, length = u.shape
    dt = F.softplus(dt)
    Bt, Ct = B.transpose(1, 2), C.transpose(1, 2)  # (b, l, n)
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])  # (b, d, l, n)
    dBu = dt[:, :, :, None] * Bt[:, None, :, :].float() * u[:, :, :, None].float()
    state = torch.zeros(b, d, A.shape[-1], dtype=u.dtype, device=u.device)
    outs = []
    for i in range(length):
        state = dA[:, :, i] * state + dBu[:, :, i]
        outs.append(torch.matmul(state.to(u.dtype), Ct[:, i, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(outs, dim=-1)
    y = y + u * D[None, :, None]
    return y * F.silu(z), state


def mamba1_step(state, u, dt, A, B, C, D, z):
    """One token: state (b, d, n); u, dt, z (b, d); B, C (b, n)."""
    dt = F.softplus(dt)
    dA = torch.exp(dt.float()[..., None] * A.float())
    dBx = dt.float()[..., None] * B.float()[:, None, :] * u.float()[..., None]
    new = state.float() * dA + dBx
    state.copy_(new.to(state.dtype))
    out = torch.matmul(new.to(C.dtype), C.unsqueeze(-1)).squeeze(-1)
    return (out + u * D) * F.silu(z)


# ---- Mamba-2 -----------------------------------------------------------------------------------------------

def _segment_sum(x):
    n = x.size(-1)
    x = x[..., None].expand(*x.size(), n)
    x = x.masked_fill(~torch.tril(torch.ones(n, n, device=x.device, dtype=torch.bool), diagonal=-1), 0)
    x = torch.cumsum(x, dim=-2)
    return x.masked_fill(~torch.tril(torch.ones(n, n, device=x.device, dtype=torch.bool), diagonal=0), -torch.inf)


def _chunks(x, pad, chunk):
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad) if x.dim() == 4 else (0, 0, 0, pad))
    return x.reshape(x.shape[0], -1, chunk, *x.shape[2:])


def mamba2_ssd(x, dt, A, B, C, D, chunk: int):
    """x: (b, l, h, p); dt: (b, l, h); A, D: (h,); B, C: (b, l, g, n). Chunked SSD; returns y and the final state."""
    b, length, h, p = x.shape
    g = B.shape[2]
    dt = F.softplus(dt)
    x = x.float()
    B = B.float().repeat_interleave(h // g, dim=2, output_size=h)
    C = C.float().repeat_interleave(h // g, dim=2, output_size=h)
    pad = (chunk - length % chunk) % chunk
    residual = D[..., None] * (F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x)
    x = x * dt[..., None].float()
    A = A.float() * dt.float()
    x, A, B, C = (_chunks(t, pad, chunk) for t in (x, A, B, C))
    A = A.permute(0, 3, 1, 2)
    A_cumsum = torch.cumsum(A, dim=-1)
    L = torch.exp(_segment_sum(A))
    G = torch.einsum("bclhn,bcshn->bclsh", C, B)
    M = G * L.permute(0, 2, 3, 4, 1)
    y_diag = torch.einsum("bclsh,bcshp->bclhp", M, x)
    decay = torch.exp(A_cumsum[:, :, :, -1:] - A_cumsum)
    states = torch.einsum("bclhn,bclhp->bchpn", B * decay.permute(0, -2, -1, 1)[..., None], x)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(_segment_sum(F.pad(A_cumsum[:, :, :, -1], (1, 0)))).transpose(1, 3)
    new_states = torch.einsum("bzch,bzhpn->bchpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    y_off = torch.einsum("bclhn,bchpn->bclhp", C, states) * torch.exp(A_cumsum).permute(0, 2, 3, 1)[..., None]
    y = (y_diag + y_off).contiguous().reshape(b, -1, h, p) + residual
    return y[:, :length], final


def mamba2_step(state, x, dt, A, B, C, D):
    """One token: state (b, h, p, n); x (b, h, p); dt (b, h); B, C (b, g, n)."""
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[-1]
    dt = F.softplus(dt).float()[..., None, None]  # (b, h, 1, 1)
    dA = torch.exp(dt * A.float()[:, None, None])
    B = B.reshape(b, g, 1, n).expand(b, g, h // g, n).reshape(b, h, 1, n)
    dBx = dt * B * x[..., None]
    new = state * dA + dBx
    state.copy_(new.to(state.dtype))
    C = C.reshape(b, g, 1, n).expand(b, g, h // g, n).reshape(b * h, n, 1)
    out = torch.bmm(new.to(C.dtype).reshape(b * h, p, n), C).view(b, h, p)
    return out + x * D[:, None]


# ---- collector -----------------------------------------------------------------------------------------------

def _parse(case):
    op = case.get("op_name", MAMBA2_SCAN)
    if op not in VARIANTS:
        raise ValueError(f"unknown scan {op!r}; known: {', '.join(VARIANTS)}")
    phase = case.get("phase", "context")
    if phase not in ("context", "generation"):
        raise ValueError(f"unknown phase {phase!r}")
    b = as_int(case, "batch_size")
    s = 1 if phase == "generation" else as_int(case, "seq_len")
    h, n = as_int(case, "nheads"), as_int(case, "d_state")
    if op == MAMBA1_SCAN:
        p, g, chunk = 1, 1, 1
        if as_int(case, "head_dim", 1) != 1:
            raise ValueError("mamba1_selective_scan: nheads = d_inner and head_dim = 1")
    else:
        p, g, chunk = as_int(case, "head_dim"), as_int(case, "n_groups", 1), as_int(case, "chunk_size", 256)
        if h % g:
            raise ValueError(f"nheads {h} is not a multiple of n_groups {g}")
    return op, phase, b, s, h, p, n, g, chunk


@collector("scan", spec=SSM_SCAN)
def scan(case: dict, ctx) -> float:
    op, phase, b, s, h, p, n, g, chunk = _parse(case)
    f32 = torch.float32
    if op == MAMBA1_SCAN:
        d = h
        A = -torch.rand(d, n, device=ctx.device).add_(0.5)
        D = torch.ones(d, device=ctx.device)
        if phase == "context":
            def make():
                return (randn((b, d, s), ctx), randn((b, d, s), ctx), randn((b, n, s), ctx), randn((b, n, s), ctx),
                        randn((b, d, s), ctx))

            def run(u, dt, B, C, z):
                return mamba1_scan(u, dt, A, B, C, D, z)
        else:
            def make():
                return (randn((b, d, n), ctx, f32), randn((b, d), ctx), randn((b, d), ctx), randn((b, n), ctx),
                        randn((b, n), ctx), randn((b, d), ctx))

            def run(state, u, dt, B, C, z):
                return mamba1_step(state, u, dt, A, B, C, D, z)
        return time_call(run, make, ctx)
    A = -torch.rand(h, device=ctx.device).add_(0.5)
    D = torch.ones(h, device=ctx.device)
    if phase == "context":
        def make():
            return randn((b, s, h, p), ctx), randn((b, s, h), ctx), randn((b, s, g, n), ctx), randn((b, s, g, n), ctx)

        def run(x, dt, B, C):
            return mamba2_ssd(x, dt, A, B, C, D, chunk)
    else:
        def make():
            return (randn((b, h, p, n), ctx, f32), randn((b, h, p), ctx), randn((b, h), ctx), randn((b, g, n), ctx),
                    randn((b, g, n), ctx))

        def run(state, x, dt, B, C):
            return mamba2_step(state, x, dt, A, B, C, D)
    return time_call(run, make, ctx)


@scan.normalizer
def _row(case: dict, ctx) -> dict:
    op, phase, b, s, h, p, n, g, chunk = _parse(case)
    return {"op_name": op, "kernel_source": KERNELS[(op, phase)], "phase": phase, "batch_size": b, "seq_len": s,
            "num_tokens": b * s, "nheads": h, "head_dim": p, "d_state": n, "n_groups": g, "chunk_size": chunk}
