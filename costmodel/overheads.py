"""Engine overheads and scheduler defaults per backend and version, read from systems/engines/overheads.yaml (data,
each number with its source), overridden field by field by systems/engines/overheads.fitted.yaml where present."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import yaml

from core.dtypes import FP8_INPUT_SCALES, MOE_FORMATS, MXFP4_MOE_ACTIVATIONS
from core.errors import UserError, require_int
from costmodel.tables.roots import REPO_SYSTEMS_DIR

OVERHEADS_FILE = REPO_SYSTEMS_DIR / "engines" / "overheads.yaml"
FITTED_FILE = REPO_SYSTEMS_DIR / "engines" / "overheads.fitted.yaml"
FIELDS = ("max_tokens_per_step", "max_num_seqs", "step_ms", "per_sequence_ms", "eager_step_ms", "cuda_graph_sizes",
          "graph_kernel_scale", "request_ms", "first_token_steps", "prompt_token_us", "disagg_kernel_scale",
          "handoff_ms", "handoff_steps", "shared_experts_overlap_tokens",
          "batch_wait_steps", "batch_wait_token_ratio", "recv_interval_steps", "attention_dp_wait_steps",
          "mxfp4_moe_activation", "mixed_prefill", "chunked_prefill", "moe_kernels", "fp8_input_scale")


EP_SUFFIX = "/ep"   # a moe_kernels key for experts split over GPUs (expert parallelism)
CUDA_GRAPH_STEPS = "cuda_graph"   # a token limit that is the largest captured batch (cuda_graph_sizes' max)


@dataclass(frozen=True)
class EngineSettings:
    """What an engine's launch command sets over its defaults; None keeps the default (overheads.yaml)."""
    max_tokens_per_step: int | None = None      # the token budget per step (vLLM max_num_batched_tokens, ...)
    max_num_seqs: int | None = None             # the most running requests (TensorRT-LLM max_batch_size, ...)
    cuda_graph_max_batch: int | None = None     # the largest decode batch captured as a CUDA graph
    batch_wait_steps: int | None = None         # steps the scheduler may hold new prompts (batch_wait_timeout_iters)
    batch_wait_token_ratio: float | None = None  # ... until the step's tokens reach this share of the budget
    recv_interval_steps: int | None = None      # decode steps between polls for new requests (SGLang)
    attention_dp_wait_steps: int | None = None  # steps prompts wait for every attention-DP rank to have one
    mxfp4_moe_activation: str | None = None     # bf16 | mxfp8: the activations of mxfp4 experts on FP4 GPUs
    mixed_prefill: bool | None = None           # prefill chunks ride in decode steps (False: prefill-only steps)
    chunked_prefill: bool | None = None         # a step may take part of a prompt (False: whole prompts only)
    moe_kernels: tuple[tuple[str, str], ...] | None = None   # the kernel family per MoE dtype it was launched with
    fp8_input_scale: str | None = None          # static | dynamic: a per-tensor FP8 GEMM's input scale

    def kernel_choices(self) -> "EngineSettings":
        """The settings that change what an op costs (the Estimator's: the kernels it prices); the rest shape the
        engine's steps."""
        return EngineSettings(mxfp4_moe_activation=self.mxfp4_moe_activation, moe_kernels=self.moe_kernels,
                              fp8_input_scale=self.fp8_input_scale)

    def __post_init__(self):
        if self.moe_kernels is not None:   # a mapping (the launch files) or pairs, as Overheads.moe_kernels
            object.__setattr__(self, "moe_kernels", _kernel_families(dict(self.moe_kernels), "--moe-kernel"))
        for name, least in (("max_tokens_per_step", 1), ("max_num_seqs", 1), ("cuda_graph_max_batch", 1),
                            ("batch_wait_steps", 0), ("recv_interval_steps", 1), ("attention_dp_wait_steps", 0)):
            if getattr(self, name) is not None:
                require_int(name.replace("_", "-"), getattr(self, name), minimum=least)
        for name, known in (("mxfp4_moe_activation", MXFP4_MOE_ACTIVATIONS), ("fp8_input_scale", FP8_INPUT_SCALES)):
            if getattr(self, name) not in (None, *known):
                raise UserError(f"--{name.replace('_', '-')} {getattr(self, name)!r}; known: {', '.join(known)}")
        ratio = self.batch_wait_token_ratio
        if ratio is not None and not 0 <= ratio <= 1:
            raise UserError(f"--batch-wait-token-ratio is a share of the token budget, 0 to 1; got {ratio}")


@dataclass(frozen=True)
class Overheads:
    backend: str
    version: str | None
    max_tokens_per_step: int
    max_num_seqs: int
    step_ms: float
    per_sequence_ms: float
    eager_step_ms: float
    graph_sizes: tuple[int, ...]
    graph_kernel_scale: float
    request_ms: float
    first_token_steps: float
    prompt_token_us: float
    disagg_kernel_scale: float        # the share of their kernels' summed timings a disagg worker's steps take
    handoff_ms: float                 # a disagg request's time from prefill to decode, beyond moving its KV bytes
    handoff_steps: float              # ... and the decode pool's steps it waits there
    shared_experts_overlap_tokens: int
    batch_wait_steps: int
    batch_wait_token_ratio: float
    recv_interval_steps: int
    attention_dp_wait_steps: int
    mxfp4_moe_activation: str
    mixed_prefill: bool
    chunked_prefill: bool
    moe_kernels: tuple[tuple[str, str], ...]   # (MoE table dtype, kernel family the engine runs it with)
    fp8_input_scale: str   # static: per-tensor FP8 GEMMs take the checkpoint's calibrated input scale
    shipped_step_ms: float   # step_ms as overheads.yaml has it: the fitted step_ms goes with graph_kernel_scale
    sources: dict = field(compare=False, hash=False)
    graph_spec: dict = field(default_factory=dict, compare=False, hash=False)   # cuda_graph_sizes as the file says

    def graph_batch(self, n: int) -> int | None:
        """The captured batch size a decode step of n requests pads up to; None when it runs eager."""
        i = bisect.bisect_left(self.graph_sizes, n)
        return self.graph_sizes[i] if i < len(self.graph_sizes) else None

    def overlaps_shared_experts(self, tokens: float) -> bool:
        """Whether a step of `tokens` tokens runs the shared experts on a second stream beside the routed ones."""
        return tokens <= self.shared_experts_overlap_tokens

    def step_overhead_ms(self, sequences: float, graph: bool, shipped: bool = False) -> float:
        """The host's time in a step of `sequences` requests; `shipped`: at overheads.yaml's step_ms, not the fitted
        one (decode_step_ms says when)."""
        step = self.shipped_step_ms if shipped else self.step_ms
        return step + self.per_sequence_ms * sequences + (0.0 if graph else self.eager_step_ms)

    def decode_step_ms(self, kernels_ms: float, sequences: float, graph: bool, pool: bool = False) -> float:
        """A decode step from its kernels' summed timings (each measured alone, as the collector's tables are):
        run as a CUDA graph they take graph_kernel_scale of that sum; then the host's time per step. A disagg
        decode `pool`'s step: disagg_kernel_scale of the sum (as its prefill pool's steps) and the host's time as
        overheads.yaml gives it, since the fitted step_ms is fitted together with graph_kernel_scale (both on agg
        runs' TPOT)."""
        if pool:
            return kernels_ms * self.disagg_kernel_scale + self.step_overhead_ms(sequences, graph, shipped=True)
        return kernels_ms * (self.graph_kernel_scale if graph else 1.0) + self.step_overhead_ms(sequences, graph)

    def first_token_ms(self, decode_step_ms: float) -> float:
        """From the end of a request's prefill until the client has its first token: the time outside the steps
        plus the steps the token waits to be sent (an engine that schedules step n+1 before it returns step n's
        tokens sends them a step late)."""
        return self.request_ms + self.first_token_steps * decode_step_ms

    def handoff(self, decode_step_ms: float) -> float:
        """A disagg request's time between its prefill and its first token beyond moving its KV bytes: the KV
        connector's handshake and the serving stack's hops, then handoff_steps of the decode pool's steps."""
        return self.handoff_ms + self.handoff_steps * decode_step_ms

    def ingest_ms(self, isl: float, prompts: float) -> float:
        """A prompt's way in through the engine's own server front end (tokenizing, input processing), which takes
        in one prompt after another for all its clients: `prompts` is how many a prompt waits for there, its own
        included (costmodel.serving.ingest_prompts: (C + 1) / 2 when all C clients' prompts arrive together)."""
        return self.prompt_token_us * isl * prompts / 1e3

    def holds_prompts(self) -> bool:
        """Whether the scheduler holds new prompts back to gather a bigger prefill (batch_wait_*): only when both
        are set, since a prompt is let through once the step's tokens reach ratio x budget, at once when that is 0."""
        return self.batch_wait_steps > 0 and self.batch_wait_token_ratio > 0

    def balances_ranks(self, ranks: int) -> bool:
        """Whether the scheduler holds prompts until every one of `ranks` attention-DP ranks has one
        (attention_dp_wait_steps), which takes the place of batch waiting."""
        return ranks > 1 and self.attention_dp_wait_steps > 0

    def with_settings(self, engine: "EngineSettings | None") -> "Overheads":
        """These overheads under an engine launched with `engine`'s settings (None fields keep the defaults)."""
        if engine is None:
            return self
        changed = {k: v for k, v in vars(engine).items() if v is not None}
        if not changed:
            return self
        launched = changed.pop("moe_kernels", None)
        if launched is not None:   # a family launched for a dtype replaces the defaults for it, under EP too
            dtypes = {k.removesuffix(EP_SUFFIX) for k, _ in launched}
            changed["moe_kernels"] = tuple(sorted(
                {**{k: f for k, f in self.moe_kernels if k.removesuffix(EP_SUFFIX) not in dtypes}, **dict(launched)}
                .items()))
        graph_max = changed.pop("cuda_graph_max_batch", None)
        if graph_max is not None:
            changed["graph_sizes"] = tuple(sorted(set(_graph_sizes(dict(self.graph_spec, max=graph_max)))
                                                  | {graph_max}))
        named = {"cuda_graph_max_batch": "cuda_graph_sizes"}   # the one setting that is not a field's own name
        sources = {**self.sources, **{named.get(k, k): "launch setting" for k, v in vars(engine).items()
                                      if v is not None}}
        return replace(self, **changed, sources=sources)

    def to_json(self) -> dict:
        return {"backend": self.backend, "version": self.version, "max_tokens_per_step": self.max_tokens_per_step,
                "max_num_seqs": self.max_num_seqs, "step_ms": self.step_ms, "per_sequence_ms": self.per_sequence_ms,
                "eager_step_ms": self.eager_step_ms, "cuda_graph_max_batch": max(self.graph_sizes, default=0),
                "graph_kernel_scale": self.graph_kernel_scale,
                "request_ms": self.request_ms, "first_token_steps": self.first_token_steps,
                "prompt_token_us": self.prompt_token_us, "disagg_kernel_scale": self.disagg_kernel_scale,
                "handoff_ms": self.handoff_ms, "handoff_steps": self.handoff_steps,
                "shared_experts_overlap_tokens": self.shared_experts_overlap_tokens,
                "batch_wait_steps": self.batch_wait_steps, "batch_wait_token_ratio": self.batch_wait_token_ratio,
                "recv_interval_steps": self.recv_interval_steps,
                "attention_dp_wait_steps": self.attention_dp_wait_steps,
                "mxfp4_moe_activation": self.mxfp4_moe_activation, "mixed_prefill": self.mixed_prefill,
                "chunked_prefill": self.chunked_prefill,
                "moe_kernels": dict(self.moe_kernels), "fp8_input_scale": self.fp8_input_scale,
                "shipped_step_ms": self.shipped_step_ms,
                "sources": dict(self.sources)}


def _graph_sizes(spec: dict) -> tuple[int, ...]:
    top = int(spec.get("max", 0))
    step = int(spec.get("step", 1)) or 1
    sizes = {int(s) for s in spec.get("explicit", ()) if int(s) <= top}
    sizes.update(range(step, top + 1, step))
    return tuple(sorted(sizes))


def _kernel_families(value, where: str = "") -> tuple[tuple[str, str], ...]:
    """moe_kernels: MoE table dtype (or "dtype/ep", under expert parallelism) -> kernel family."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.removesuffix(EP_SUFFIX) in MOE_FORMATS
                                              and isinstance(f, str) and f for k, f in value.items()):
        raise UserError(f"{where or OVERHEADS_FILE.name + ': moe_kernels'} maps MoE table dtypes "
                        f"({', '.join(MOE_FORMATS)}, each also as dtype{EP_SUFFIX} under expert parallelism) to "
                        f"kernel families, not {value!r}")
    return tuple(sorted(value.items()))


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{OVERHEADS_FILE.name}: {name} is true or false, not {value!r}")
    return value


def _choice(name: str, value, known: tuple[str, ...]) -> str:
    if value not in known:
        raise UserError(f"{OVERHEADS_FILE.name}: {name} is one of {', '.join(known)}, not {value!r}")
    return value


@lru_cache(maxsize=None)
def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path) as f:
        return (yaml.safe_load(f) or {}).get("backends", {})


def reread() -> None:
    """Read the overheads files afresh on the next load (after the fitted file was written or removed)."""
    _read.cache_clear()


def backend_names() -> list[str]:
    """The backends overheads.yaml has entries for ('none' among them: roofline-only pricing)."""
    return list(_read(OVERHEADS_FILE))


def _entries(data: dict, backend: str, version: str | None, system: str | None) -> dict:
    entry = data.get(backend) or {}
    merged = dict(entry.get("default") or {})
    merged.update((entry.get("versions") or {}).get(version) or {})
    merged.update((entry.get("systems") or {}).get(system) or {})
    return merged


def load_overheads(backend: str | None, version: str | None = None, system: str | None = None) -> Overheads:
    """The overheads of `backend` at `version` on `system`: the shipped file's default, version and system entries,
    then the fitted file's, each later one overriding field by field."""
    name = backend or "none"
    shipped = _read(OVERHEADS_FILE)
    if name not in shipped:
        raise UserError(f"{OVERHEADS_FILE.name} has no entry for backend {name!r}; known: {', '.join(shipped)}")
    merged = _entries(shipped, name, version, system)
    missing = [f for f in FIELDS if f not in merged]
    if missing:
        raise UserError(f"{OVERHEADS_FILE.name}: backend {name!r} lacks {', '.join(missing)}")
    shipped_step = float(merged["step_ms"]["value"])
    merged.update(_entries(_read(FITTED_FILE), name, version, system))
    v = {f: merged[f]["value"] for f in FIELDS}
    graphs = _graph_sizes(v["cuda_graph_sizes"])
    overlap = v["shared_experts_overlap_tokens"]
    overlap = max(graphs, default=0) if overlap == CUDA_GRAPH_STEPS else int(overlap)
    return Overheads(name, version, int(v["max_tokens_per_step"]), int(v["max_num_seqs"]), float(v["step_ms"]),
                     float(v["per_sequence_ms"]), float(v["eager_step_ms"]), graphs, float(v["graph_kernel_scale"]),
                     float(v["request_ms"]), float(v["first_token_steps"]), float(v["prompt_token_us"]),
                     float(v["disagg_kernel_scale"]), float(v["handoff_ms"]), float(v["handoff_steps"]), overlap,
                     int(v["batch_wait_steps"]), float(v["batch_wait_token_ratio"]), int(v["recv_interval_steps"]),
                     int(v["attention_dp_wait_steps"]),
                     _choice("mxfp4_moe_activation", v["mxfp4_moe_activation"], MXFP4_MOE_ACTIVATIONS),
                     _flag("mixed_prefill", v["mixed_prefill"]), _flag("chunked_prefill", v["chunked_prefill"]),
                     _kernel_families(v["moe_kernels"]),
                     _choice("fp8_input_scale", v["fp8_input_scale"], FP8_INPUT_SCALES), shipped_step,
                     {f: merged[f]["source"] for f in FIELDS}, dict(v["cuda_graph_sizes"]))
