"""Timing done one way for every collector, and the run's context (device, features, environment).

``time_call`` measures ``fn(*args)``:

- inputs: ``make_args()`` builds one input set; when one set is smaller than twice the L2 cache, enough sets
  are built to exceed it (capped by a memory budget) and the calls rotate through them, so every call starts
  with cold caches, as a layer of a real model does;
- warm-up calls first (kernel selection, allocator, lazy init);
- CUDA: the calls are captured in a CUDA graph (rotation included) and the graph is replayed between two CUDA
  events; latency = elapsed / calls. Where capture fails (host syncs, data-dependent shapes) the same loop
  runs eagerly between events. CPU: ``time.perf_counter`` around the same loop;
- the reported latency is the median over ``repeats`` such measurements.

``Context`` carries the device, the run mode and the probed features (fp8 ``torch._scaled_mm``,
``torch._grouped_mm``), and ``environment()`` what collection_meta.yaml records: GPU name, clocks, driver,
torch / CUDA / cuDNN / NCCL versions.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field

import torch

GRAPH_TARGET_MS = 5.0  # a graph replays about this long (at least one rotation of the input sets)
MAX_CALLS_PER_GRAPH = 200
MAX_INPUT_SETS = 64


@dataclass
class Context:
    device: torch.device
    dry_run: bool = False
    warmup: int = 3
    repeats: int = 10
    use_graphs: bool = True
    l2_bytes: int = 50 * 2**20
    memory_budget_bytes: int = 8 * 2**30  # what rotated input copies may take
    seed: int = 0
    max_input_sets: int = MAX_INPUT_SETS
    features: dict = field(default_factory=dict)
    methods: dict = field(default_factory=dict)  # timing method -> count, for the meta file

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def torch_version(self) -> str:
        return str(torch.__version__)

    @property
    def device_name(self) -> str:
        if self.is_cuda:
            return torch.cuda.get_device_name(self.device)
        return cpu_name()

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def make_context(device: str = "cuda", dry_run: bool = False, system_l2_bytes: int | None = None) -> Context:
    from core.errors import UserError

    if device not in ("cuda", "cpu") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; use cuda or cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("no CUDA GPU is visible to PyTorch (this torch build: "
                            f"{torch.__version__}); use --device cpu --dry-run to exercise the collectors")
        dev = torch.device(device if ":" in device else f"cuda:{torch.cuda.current_device()}")
        torch.cuda.set_device(dev)
        props = torch.cuda.get_device_properties(dev)
        l2 = int(getattr(props, "L2_cache_size", 0) or system_l2_bytes or 50 * 2**20)
        free, _ = torch.cuda.mem_get_info(dev)
        budget = min(8 * 2**30, free // 4)
    else:
        dev = torch.device("cpu")
        l2 = cpu_cache_bytes()
        budget = 512 * 2**20
    ctx = Context(device=dev, dry_run=dry_run, l2_bytes=l2, memory_budget_bytes=budget)
    if dry_run:
        ctx.warmup, ctx.repeats, ctx.use_graphs = 1, 3, ctx.is_cuda
        ctx.l2_bytes = min(ctx.l2_bytes, 4 * 2**20)
        ctx.max_input_sets = 2
        ctx.memory_budget_bytes = min(ctx.memory_budget_bytes, 64 * 2**20)
    ctx.features = probe_features(ctx)
    return ctx


def probe_features(ctx: Context) -> dict:
    """What this device runs: fp8 GEMM via torch._scaled_mm, grouped GEMM via torch._grouped_mm."""
    out = {}
    dev = ctx.device
    fp8 = False
    if hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn"):
        if ctx.is_cuda and torch.cuda.get_device_capability(dev) < (8, 9):
            fp8 = False  # fp8 tensor cores start at Ada / Hopper
        else:
            try:
                a = torch.ones(16, 32, device=dev).to(torch.float8_e4m3fn)
                b = torch.ones(16, 32, device=dev).to(torch.float8_e4m3fn).t()
                one = torch.ones((), device=dev)
                torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
                fp8 = True
            except Exception:
                fp8 = False
    out["fp8_scaled_mm"] = fp8
    grouped = False
    if hasattr(torch, "_grouped_mm"):
        try:
            a = torch.ones(32, 64, device=dev, dtype=torch.bfloat16)
            w = torch.ones(2, 64, 64, device=dev, dtype=torch.bfloat16).transpose(-2, -1)
            offs = torch.tensor([16, 32], device=dev, dtype=torch.int32)
            torch._grouped_mm(a, w, offs=offs)
            grouped = True
        except Exception:
            grouped = False
    out["grouped_mm"] = grouped
    return out


def _bytes_of(args) -> int:
    total = 0
    for a in args if isinstance(args, (tuple, list)) else (args,):
        if isinstance(a, torch.Tensor):
            total += a.numel() * a.element_size()
        elif isinstance(a, (tuple, list)):
            total += _bytes_of(a)
    return total


def input_sets(make_args, ctx: Context, bytes_per_set: int | None = None) -> list:
    """Enough input sets that rotating through them exceeds twice the L2 cache (within the memory budget)."""
    first = make_args()
    size = bytes_per_set if bytes_per_set is not None else _bytes_of(first)
    n = 1
    if 0 < size < 2 * ctx.l2_bytes:
        n = math.ceil(2 * ctx.l2_bytes / size)
        n = max(1, min(n, ctx.max_input_sets, ctx.memory_budget_bytes // max(size, 1)))
    return [first] + [make_args() for _ in range(n - 1)]


def time_call(fn, make_args, ctx: Context, *, graph: bool = True, bytes_per_set: int | None = None) -> float:
    """Median latency of fn(*args) in milliseconds, over cold-cache input sets (see the module docstring)."""
    sets = input_sets(make_args, ctx, bytes_per_set)
    n = len(sets)
    for i in range(max(ctx.warmup, 1) * max(1, min(n, 4))):
        fn(*sets[i % n])
    if not ctx.is_cuda:
        samples = []
        calls = n
        for r in range(ctx.repeats):
            t0 = time.perf_counter()
            for i in range(calls):
                fn(*sets[(r * calls + i) % n])
            samples.append((time.perf_counter() - t0) * 1e3 / calls)
        _count(ctx, "perf_counter")
        return statistics.median(samples)

    torch.cuda.synchronize()
    # eager estimate, used to size the graph
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(n):
        fn(*sets[i % n])
    end.record()
    torch.cuda.synchronize()
    eager_ms = max(start.elapsed_time(end) / n, 1e-4)
    calls = max(n, min(MAX_CALLS_PER_GRAPH, math.ceil(GRAPH_TARGET_MS / eager_ms)))
    calls = math.ceil(calls / n) * n
    if graph and ctx.use_graphs:
        try:
            g = torch.cuda.CUDAGraph()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for i in range(n):  # warm on the side stream before capture
                    fn(*sets[i])
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(g):
                for i in range(calls):
                    fn(*sets[i % n])
            g.replay()
            torch.cuda.synchronize()
            samples = []
            for _ in range(ctx.repeats):
                start.record()
                g.replay()
                end.record()
                torch.cuda.synchronize()
                samples.append(start.elapsed_time(end) / calls)
            del g
            _count(ctx, "cuda_graph")
            return statistics.median(samples)
        except Exception:
            torch.cuda.synchronize()  # capture refused: time the same loop eagerly
    samples = []
    calls = max(n, min(calls, 50))
    for _ in range(ctx.repeats):
        start.record()
        for i in range(calls):
            fn(*sets[i % n])
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    _count(ctx, "cuda_events")
    return statistics.median(samples)


def _count(ctx: Context, method: str) -> None:
    ctx.methods[method] = ctx.methods.get(method, 0) + 1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def cpu_cache_bytes() -> int:
    for index in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
            return int(text.rstrip("KMG")) * mult
        except (OSError, ValueError):
            continue
    return 32 * 2**20


def _nvidia_smi(index: int) -> dict:
    fields = ["clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "driver_version", "power.limit",
              "persistence_mode", "pci.bus_id"]
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(fields)}",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0 or not out.stdout.strip():
        return {}
    values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    names = ["sm_clock_mhz", "max_sm_clock_mhz", "mem_clock_mhz", "max_mem_clock_mhz", "driver", "power_limit_w",
             "persistence_mode", "pci_bus_id"]
    return dict(zip(names, values))


def environment(ctx: Context) -> dict:
    """What the tables were measured on, for collection_meta.yaml."""
    env = {
        "device": ctx.device_name,
        "device_type": ctx.device.type,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "host_cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "features": dict(ctx.features),
    }
    if ctx.is_cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        env.update(
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            memory_bytes=props.total_memory,
            l2_bytes=int(getattr(props, "L2_cache_size", 0) or 0),
            visible_gpus=torch.cuda.device_count(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
        try:
            env["nccl"] = ".".join(str(x) for x in torch.cuda.nccl.version())
        except Exception:
            env["nccl"] = None
        env.update(_nvidia_smi(ctx.device.index or 0))
    else:
        env["l2_bytes"] = ctx.l2_bytes
    env["timing"] = {
        "warmup": ctx.warmup, "repeats": ctx.repeats, "statistic": "median",
        "cold_l2": f"inputs rotated over > 2 x {ctx.l2_bytes} bytes",
        "method": "cuda_graph (cuda_events where capture fails)" if ctx.is_cuda else "perf_counter",
    }
    return env
