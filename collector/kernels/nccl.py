"""Collectives over the visible GPUs with torch.distributed: all_reduce, all_gather, reduce_scatter and
alltoall, in nccl-tests' convention (message_size = elements of the full buffer: the all_reduce buffer, the
gathered output, the reduce_scatter input, the alltoall buffer per rank). The collector launches its own
worker processes (spawn; one per GPU, tcp rendezvous on localhost), one process group per GPU count, and
reports per case the median over repeats of the slowest rank's time per call.

CUDA: backend nccl, table comm/nccl/<NCCL version>/nccl_perf.parquet with kernel_source "NCCL" (the
database's nccl queries read backend folder "nccl"). CPU (--device cpu, dry-run): backend gloo with 2
processes, written to comm/gloo/<torch version>/nccl_perf.parquet, kernel_source "gloo".
"""
from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from datetime import timedelta

import torch

from collector.common import as_int
from collector.registry import collector
from costmodel.tables.specs import NCCL

OPS = ("all_reduce", "all_gather", "reduce_scatter", "alltoall")
DTYPES = {"half": torch.float16, "int8": torch.int8}
LAUNCH_TIMEOUT_S = 120


def nccl_version() -> str:
    try:
        return ".".join(str(x) for x in torch.cuda.nccl.version())
    except Exception:
        return "unknown"


def _backend(ctx) -> tuple[str, str]:
    return ("nccl", nccl_version()) if ctx.is_cuda else ("gloo", ctx.torch_version)


def _parse(case, ctx):
    op = case.get("op_name")
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r}; known: {', '.join(OPS)}")
    dtype = case.get("nccl_dtype", "half")
    if dtype not in DTYPES:
        raise ValueError(f"nccl_dtype {dtype!r}; known: {', '.join(DTYPES)}")
    n, size = as_int(case, "num_gpus"), as_int(case, "message_size")
    if n < 2:
        raise ValueError("num_gpus must be at least 2")
    if op != "all_reduce" and size % n:
        raise ValueError(f"{op}: message_size {size} is not a multiple of num_gpus {n}")
    return op, dtype, n, size


@collector("nccl", spec=NCCL, batch=True, backend=_backend)
def nccl(cases: list[dict], ctx) -> list:
    """Latencies (ms) or exceptions, one per case; cases grouped by GPU count, one launch per count."""
    results: list = [None] * len(cases)
    by_world: dict[int, list[int]] = {}
    for i, case in enumerate(cases):
        try:
            _parse(case, ctx)
        except Exception as exc:
            results[i] = exc
            continue
        by_world.setdefault(int(case["num_gpus"]), []).append(i)
    visible = torch.cuda.device_count() if ctx.is_cuda else None
    for world, idx in sorted(by_world.items()):
        if visible is not None and world > visible:
            for i in idx:
                results[i] = RuntimeError(f"{world} GPUs asked, {visible} visible")
            continue
        try:
            out = launch([cases[i] for i in idx], world, ctx)
        except Exception as exc:
            out = [exc] * len(idx)
        for i, r in zip(idx, out):
            results[i] = RuntimeError(r) if isinstance(r, str) else r
    return results


@nccl.normalizer
def _row(case: dict, ctx) -> dict:
    op, dtype, n, size = _parse(case, ctx)
    return {"op_name": op, "kernel_source": "NCCL" if ctx.is_cuda else "gloo", "nccl_dtype": dtype, "num_gpus": n,
            "message_size": size}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cases: list[dict], world: int, ctx) -> list:
    """Run the cases in `world` spawned processes; latency (ms) or an error string per case."""
    import torch.multiprocessing as mp

    backend = "nccl" if ctx.is_cuda else "gloo"
    settings = {"warmup": ctx.warmup, "repeats": ctx.repeats, "iters": 2 if ctx.dry_run else 20,
                "device": ctx.device.type, "backend": backend}
    with tempfile.TemporaryDirectory(prefix="tracecost-nccl-") as tmp:
        result_path = os.path.join(tmp, "results.json")
        ctx_mp = mp.get_context("spawn")
        port = _free_port()
        procs = [ctx_mp.Process(target=_worker, args=(rank, world, port, cases, result_path, settings),
                                daemon=False) for rank in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S + 10 * len(cases)
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
        hung = [p for p in procs if p.is_alive()]
        for p in hung:
            p.kill()
            p.join()
        if not os.path.exists(result_path):
            codes = [p.exitcode for p in procs]
            raise RuntimeError(f"collective workers ({backend}, {world} processes) gave no results; exit codes {codes}"
                               + (" (timed out)" if hung else ""))
        with open(result_path) as f:
            return json.load(f)


def _worker(rank: int, world: int, port: int, cases: list[dict], result_path: str, settings: dict) -> None:
    import torch.distributed as dist

    cuda = settings["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    dist.init_process_group(settings["backend"], init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=LAUNCH_TIMEOUT_S))
    results = []
    try:
        for case in cases:
            try:
                results.append(_time_case(case, world, device, settings, dist))
            except Exception as exc:  # recorded; the next case still runs on every rank
                results.append(f"{type(exc).__name__}: {exc}")
                if cuda:
                    torch.cuda.empty_cache()
        if rank == 0:
            tmp = result_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f)
            os.replace(tmp, result_path)
    finally:
        dist.destroy_process_group()


def _time_case(case: dict, world: int, device, settings: dict, dist) -> float:
    op, size, dtype = case["op_name"], int(case["message_size"]), DTYPES[case.get("nccl_dtype", "half")]
    make = (lambda n: torch.ones(n, device=device, dtype=dtype))
    if op == "all_reduce":
        buf = make(size)

        def call():
            dist.all_reduce(buf)
    elif op == "all_gather":
        inp, out = make(size // world), make(size)

        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

        def call():
            gather(out, inp)
    elif op == "reduce_scatter":
        inp, out = make(size), make(size // world)

        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

        def call():
            scatter(out, inp)
    else:
        inp, out = make(size), make(size)

        def call():
            dist.all_to_all_single(out, inp)
    cuda = device.type == "cuda"
    for _ in range(settings["warmup"]):
        call()
    iters = settings["iters"]
    samples = []
    for _ in range(settings["repeats"]):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                call()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                call()
            samples.append((time.perf_counter() - t0) * 1e3 / iters)
    mine = torch.tensor([statistics.median(samples)], dtype=torch.float64, device=device)
    dist.all_reduce(mine, op=dist.ReduceOp.MAX)
    return float(mine.item())
