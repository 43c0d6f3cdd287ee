"""Built-in grids: per collector, the points over the axes the database interpolates (see the schemas in
costmodel/tables/specs.py). ``builtin(name, ctx)`` returns case dicts; in dry-run, a tiny grid of the same shape
(a few points, small sizes) so every collector's code path runs on the CPU in seconds."""
from __future__ import annotations

import torch

POW2 = [2**i for i in range(15)]  # 1 .. 16384


def _gemm(ctx, dry):
    if dry:
        points = [("bfloat16", 1, 64, 32), ("bfloat16", 16, 64, 32), ("bfloat16", 16, 32, 32)]
        if ctx.features.get("fp8_scaled_mm"):
            points.append(("fp8", 16, 64, 32))
        return [{"gemm_dtype": d, "m": m, "n": n, "k": k} for d, m, n, k in points]
    ms = POW2
    nk = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
    dtypes = ["bfloat16"] + (["fp8"] if ctx.features.get("fp8_scaled_mm") else [])
    return [{"gemm_dtype": d, "m": m, "n": n, "k": k} for d in dtypes for m in ms for n in nk for k in nk
            if m * n * k <= 2**42]


_HEADS = [(8, 1), (8, 8), (16, 2), (32, 4), (32, 8), (32, 32), (64, 8), (128, 8)]  # (q heads, kv heads) per GPU


def _context_attention(ctx, dry):
    if dry:
        return [{"batch_size": b, "isl": s, "num_heads": 4, "num_key_value_heads": kv, "head_dim": 16,
                 "window_size": w} for b, s, kv, w in [(1, 32, 4, 0), (2, 32, 2, 0), (1, 32, 2, 8), (1, 64, 4, 0)]]
    out = []
    for d in (64, 128, 256):
        for hq, hkv in _HEADS:
            for b in (1, 2, 4, 8, 16, 32):
                for s in (128, 256, 512, 1024, 2048, 4096, 8192, 16384):
                    if b * s > 65536:
                        continue
                    for w in (0, 128, 1024, 4096):
                        if w and (w >= s or d == 256):
                            continue
                        out.append({"batch_size": b, "isl": s, "num_heads": hq, "num_key_value_heads": hkv,
                                    "head_dim": d, "window_size": w})
    return out


def _generation_attention(ctx, dry):
    if dry:
        return [{"batch_size": b, "step": st, "num_heads": 4, "num_key_value_heads": kv, "head_dim": 16,
                 "window_size": w} for b, st, kv, w in [(1, 15, 4, 0), (2, 15, 2, 0), (1, 63, 2, 16), (2, 63, 4, 0)]]
    out = []
    for d in (64, 128, 256):
        for hq, hkv in _HEADS:
            for b in (1, 4, 16, 64, 256):
                for st in (15, 63, 255, 1023, 2047, 4095, 8191, 16383, 32767, 65535, 131071):
                    kv_bytes = 2 * b * hkv * d * 2 * (st + 1)
                    if kv_bytes > 2**34:
                        continue
                    for w in (0, 128, 1024, 4096):
                        if w and (w > st or d == 256):
                            continue
                        out.append({"batch_size": b, "step": st, "num_heads": hq, "num_key_value_heads": hkv,
                                    "head_dim": d, "window_size": w})
    return out


# (hidden, inter, experts, topk) of real MoE layers: Mixtral, Qwen3-30B/235B, DeepSeek-V2-Lite/V3, gpt-oss,
# Llama-4 Scout, Qwen2-57B
_MOE_SHAPES = [(4096, 14336, 8, 2), (2048, 768, 128, 8), (4096, 1536, 128, 8), (2048, 1408, 64, 6),
               (7168, 2048, 256, 8), (2880, 2880, 32, 4), (2880, 2880, 128, 4), (5120, 8192, 16, 1),
               (3584, 2560, 64, 8)]


def _moe(ctx, dry):
    if dry:
        return [{"num_tokens": t, "hidden_size": 64, "inter_size": 32, "num_experts": 4, "topk": 2,
                 "distribution": dist} for t, dist in ((1, "balanced"), (8, "balanced"), (8, "power_law_1.01"))]
    out = []
    for h, i, e, k in _MOE_SHAPES:
        for t in POW2:
            for dist in ("balanced", "power_law_1.01"):
                out.append({"num_tokens": t, "hidden_size": h, "inter_size": i, "num_experts": e, "topk": k,
                            "distribution": dist})
    return out


# Mamba2 geometries (nheads, head_dim, n_groups, d_state): mamba2-130m .. 2.7b, Nemotron-H, Codestral-Mamba
_MAMBA2 = [(24, 64, 1, 128), (48, 64, 1, 128), (64, 64, 1, 128), (80, 64, 1, 128), (128, 64, 8, 128),
           (112, 64, 8, 128), (128, 64, 1, 128)]


def _conv1d(ctx, dry):
    if dry:
        geo = {"nheads": 2, "head_dim": 8, "n_groups": 1, "d_state": 8}
        return ([{"phase": "context", "batch_size": b, "seq_len": s, **geo} for b, s in [(1, 16), (2, 32)]]
                + [{"phase": "generation", "batch_size": b, **geo} for b in (1, 4)]
                + [{"phase": "context", "batch_size": 1, "seq_len": 16, "channels": 24}])
    out = []
    for nh, p, g, n in _MAMBA2:
        geo = {"nheads": nh, "head_dim": p, "n_groups": g, "d_state": n}
        for b in (1, 2, 4, 8, 16, 32, 64):
            for s in (1, 16, 64, 256, 1024, 4096, 16384):
                if b * s <= 131072:
                    out.append({"phase": "context", "batch_size": b, "seq_len": s, **geo})
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            out.append({"phase": "generation", "batch_size": b, **geo})
    for c in (1536, 2048, 2560, 4096, 5120, 8192):  # Mamba-1 / short-conv channels
        for b in (1, 4, 16, 64):
            for s in (16, 256, 1024, 4096):
                out.append({"phase": "context", "batch_size": b, "seq_len": s, "channels": c})
            out.append({"phase": "generation", "batch_size": b, "channels": c})
    return out


def _scan(ctx, dry):
    if dry:
        m1 = {"op_name": "mamba1_selective_scan", "nheads": 16, "head_dim": 1, "d_state": 4}
        m2 = {"op_name": "mamba2_ssd", "nheads": 4, "head_dim": 8, "d_state": 8, "n_groups": 1, "chunk_size": 8}
        return ([{**m1, "phase": "context", "batch_size": 1, "seq_len": 8},
                 {**m1, "phase": "generation", "batch_size": 2},
                 {**m2, "phase": "context", "batch_size": 1, "seq_len": 20},
                 {**m2, "phase": "context", "batch_size": 2, "seq_len": 16},
                 {**m2, "phase": "generation", "batch_size": 2}])
    out = []
    for d_inner in (1536, 2048, 2560, 4096, 5120, 8192):  # mamba-130m .. falcon-mamba-7b
        m1 = {"op_name": "mamba1_selective_scan", "nheads": d_inner, "head_dim": 1, "d_state": 16}
        for b in (1, 4, 16):
            for s in (16, 64, 256, 1024, 2048):
                out.append({**m1, "phase": "context", "batch_size": b, "seq_len": s})
        for b in (1, 4, 16, 64, 256):
            out.append({**m1, "phase": "generation", "batch_size": b})
    for nh, p, g, n in _MAMBA2:
        m2 = {"op_name": "mamba2_ssd", "nheads": nh, "head_dim": p, "d_state": n, "n_groups": g, "chunk_size": 256}
        for b in (1, 2, 4, 8, 16):
            for s in (256, 1024, 4096, 16384):
                if b * s <= 65536:
                    out.append({**m2, "phase": "context", "batch_size": b, "seq_len": s})
        for b in (1, 4, 16, 64, 256):
            out.append({**m2, "phase": "generation", "batch_size": b})
    return out


def _memory(ctx, dry):
    from collector.kernels.memory import OPS

    if dry:
        return [{"op_name": op, "num_tokens": t, "hidden_size": 64} for op in OPS for t in (1, 16)]
    return [{"op_name": op, "num_tokens": t, "hidden_size": h, "dtype": "bfloat16"}
            for op in OPS for h in (1024, 2048, 4096, 5120, 7168, 8192, 16384) for t in POW2 + [32768]]


def _nccl(ctx, dry):
    if dry:
        ops = ["all_reduce", "all_gather", "alltoall"]
        return [{"op_name": op, "num_gpus": 2, "message_size": s, "nccl_dtype": "half"} for op in ops for s in (256, 4096)]
    visible = torch.cuda.device_count() if ctx.is_cuda else 0
    counts = [n for n in (2, 4, 8) if n <= visible]
    sizes = [2**i for i in range(9, 30, 1)]  # 512 .. 512M elements
    return [{"op_name": op, "num_gpus": n, "message_size": s, "nccl_dtype": "half"}
            for op in ("all_reduce", "all_gather", "reduce_scatter", "alltoall") for n in counts for s in sizes
            if s * 2 <= 2**31]


GRIDS = {
    "gemm": _gemm,
    "context_attention": _context_attention,
    "generation_attention": _generation_attention,
    "moe": _moe,
    "conv1d": _conv1d,
    "scan": _scan,
    "memory": _memory,
    "nccl": _nccl,
    "aten": lambda ctx, dry: [],  # cases come from trace --collector-cases
}


def builtin(name: str, ctx) -> list[dict]:
    grid = GRIDS.get(name)
    return list(grid(ctx, ctx.dry_run)) if grid else []


def sizes() -> dict:
    """Points per built-in grid on a GPU with fp8 and 8 visible GPUs (for planning a run)."""
    class _Fake:
        features = {"fp8_scaled_mm": True}
        is_cuda = False
    return {name: len(list(fn(_Fake(), False))) for name, fn in GRIDS.items()}

