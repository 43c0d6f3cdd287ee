"""Speculative decoding with the model's own multi-token-prediction (MTP) layers, in static and agg modes.

Where the MTP layer comes from
------------------------------
A config declares its MTP layers by count (MTP_KEYS). transformers' model classes leave them out of the model
(their weights are dropped on load); its generic MTP module (transformers.modeling_layers.MtpLayer, built by
MtpModel for `generate(use_mtp=True)`) is one more decoder layer of the class of the model's last layer, fed by
`eh_proj`, a [2h -> h] GEMM over the concatenated normed embedding and normed hidden state, with a norm after it and
the model's own embedding and LM head shared. The MTP layer is priced as that structure, from the trace: the ops
of the last layer's kind (one layer's share of them, with that layer's TP/EP communication), the eh_proj GEMM
(replicated on every TP rank, as vLLM's deepseek_mtp keeps it: a plain nn.Linear), three norms priced as the
model's final norm op (same width), and the traced LM head and embedding.

One speculative step (per running request, K draft tokens, acceptance r per drafted token)
------------------------------------------------------------------------------------------
- verify: the main model over K + 1 tokens per request: the decode step at batch B x (K + 1) (GEMMs and MoE at
  that many tokens, weights read once; attention priced as K + 1 decode queries per request over its context,
  an upper bound where an engine's multi-token kernel reads the KV cache once);
- draft: K steps of the MTP layer at batch B, one token each, over the request's context (its own KV cache);
- tokens per step (expected): 1 + r + r^2 + ... + r^K; TPOT = step time / tokens per step.
Static: TTFT adds the MTP layer's pass over the prompt. Agg: decode-only steps are speculative steps; a mixed
step's decodes carry their K extra verify tokens (at the per-token cost of a full budget step) and their drafts;
every step's token work adds the MTP layer's; a request needs (OSL - 1) / tokens-per-step decode steps.
Left out: the MTP layer's weights and KV cache in the memory figures (one layer of the model's own).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, replace

from core.errors import UserError, require_int
from core.ops import Embedding, Gemm, MemoryBound
from costmodel import serving
from costmodel.overheads import EngineSettings
from costmodel.parallel import Plan
from costmodel.steps import step_ms

METHODS = ("mtp",)
MTP_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers", "num_mtp_modules", "num_mtp_layers")
DEFAULT_ACCEPTANCE = 0.85
ACCEPTANCE_SOURCE = ("DeepSeek-V3 Technical Report (arXiv:2412.19437), sec. 5.4.3: the acceptance rate of the "
                     "second token prediction is between 85% and 90%; the low end")
_MTP_NORMS = 3   # enorm, hnorm and the norm after the layer
EH_PROJ = "mtp.eh_proj"


def mtp_layers(config: dict) -> int:
    """The MTP layers a config declares (top level or a composite's text_config); 0 where none."""
    for cfg in (config or {}, (config or {}).get("text_config") or {}):
        for key in MTP_KEYS:
            value = cfg.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return 0


@dataclass(frozen=True)
class Speculation:
    draft_tokens: int = 1
    acceptance: float = DEFAULT_ACCEPTANCE
    method: str = "mtp"

    def __post_init__(self):
        if self.method not in METHODS:
            raise UserError(f"unknown --speculative {self.method!r}; known: {', '.join(METHODS)}")
        require_int("draft-tokens", self.draft_tokens)
        if not isinstance(self.acceptance, (int, float)) or not 0.0 <= self.acceptance <= 1.0:
            raise UserError(f"--acceptance {self.acceptance!r}: must lie in [0, 1] (the chance a drafted token is "
                            f"accepted)")

    @property
    def tokens_per_step(self) -> float:
        """Expected tokens a request gains per step: 1 + r + ... + r^K."""
        return sum(self.acceptance ** i for i in range(self.draft_tokens + 1))

    def to_json(self) -> dict:
        return {"method": self.method, "draft_tokens": self.draft_tokens, "acceptance": self.acceptance,
                "acceptance_source": ACCEPTANCE_SOURCE if self.acceptance == DEFAULT_ACCEPTANCE else "given",
                "tokens_per_step": self.tokens_per_step}


def _shared(op) -> bool:
    """The model's own LM head and embedding, which the MTP layer shares."""
    return op.layer_kind is None and isinstance(op, (Gemm, Embedding)) and op.module != EH_PROJ


def mtp_ops(est, plan: Plan, phase: str) -> list:
    """The cost ops of one MTP layer on one GPU for a step of `phase` (see the module docstring)."""
    mg = est.model
    if not mtp_layers(mg.config):
        raise UserError(f"{mg.name}: its config declares no MTP layers ({' / '.join(MTP_KEYS)}); "
                        f"--speculative mtp needs them")
    last = next(k for k in mg.plan if mg.num_layers - 1 in k["layers"])
    ops = est.ops(plan, phase)
    layer = [replace(op, count=op.count // last["count"]) for op in ops if op.layer_kind == last["kind"]]
    shared = [op for op in ops if _shared(op)]
    norm = [replace(op, count=_MTP_NORMS) for op in ops
            if op.layer_kind is None and isinstance(op, MemoryBound) and op.what == "norm"][:1]
    head = next((op for op in shared if isinstance(op, Gemm)), None)
    eh_proj = Gemm(module=EH_PROJ, layer_kind=None, count=1, m="B*S" if phase == "prefill" else "B",
                   n=est.hidden, k=2 * est.hidden, dtype=head.dtype if head else "bfloat16")
    return layer + [eh_proj] + norm + shared


class MtpPricer:
    """Prices the MTP layer's passes and the speculative step of one plan, through the Estimator's pricer."""

    def __init__(self, est, plan: Plan, spec: Speculation, isl: int, osl: int):
        self.est, self.plan, self.spec, self.isl, self.osl = est, plan, spec, isl, osl
        self.decode_ops = mtp_ops(est, plan, "decode")
        self.prefill_ops = mtp_ops(est, plan, "prefill")
        self._cache: dict[tuple, float] = {}

    def _sum(self, ops, sizes) -> float:
        return step_ms(self.est.pricer.price, ops, sizes, self.est.overheads)

    def draft_ms(self, batch: int) -> float:
        """One draft step at `batch` requests, averaged over the request's decode contexts."""
        key = ("draft", batch)
        if key not in self._cache:
            points = self.est.decode_points(self.isl, self.osl)
            self._cache[key] = sum(self._sum(self.decode_ops, {"B": batch, "S": 1, "L": L})
                                   for L in points) / len(points)
        return self._cache[key]

    def verify_ms(self, batch: int) -> float:
        return self.est.tpot_ms(self.plan, batch * (self.spec.draft_tokens + 1), self.isl, self.osl)

    def step_ms(self, batch: int) -> float:
        return self.verify_ms(batch) + self.spec.draft_tokens * self.draft_ms(batch)

    def prompt_ms(self, batch: int) -> float:
        """The MTP layer's pass over `batch` prompts of ISL tokens (its KV cache and the first draft)."""
        return self._sum(self.prefill_ops, {"B": batch, "S": self.isl, "L": 0})

    def token_ms(self, tokens: int) -> float:
        """The MTP layer's work that grows with a step's tokens (all but its attention and the shared head)."""
        key = ("tok", tokens)
        if key not in self._cache:
            ops = [op for op in self.prefill_ops if not isinstance(op, serving.SEQUENCE_OPS) and not _shared(op)]
            self._cache[key] = self._sum(ops, {"B": 1, "S": tokens, "L": 0})
        return self._cache[key]


class _SpeculativeSteps(serving.StepPricer):
    """Agg's steps with speculative decodes (see the module docstring). The osl agg_benchmark passes is the
    request's decode steps; the contexts are the request's own (ISL to ISL + OSL)."""

    def __init__(self, est, plan: Plan, overheads, mtp: MtpPricer):
        super().__init__(est, plan, overheads)
        self.mtp = mtp

    def token_ms(self, tokens: int) -> float:
        return super().token_ms(tokens) + self.mtp.token_ms(tokens)

    def decode_step_ms(self, n: int, isl: int, osl: int) -> float:
        padded = self.ov.graph_batch(n)
        return self.ov.decode_step_ms(self.mtp.step_ms(padded or n), n, padded is not None)

    def decode_group_ms(self, n: int, isl: int, osl: int) -> float:
        if n <= 0:
            return 0.0
        k, budget = self.mtp.spec.draft_tokens, self.ov.max_tokens_per_step
        extra_tokens = k * n * super().token_ms(budget) / budget
        extra_outputs = self.output_ms(n * (k + 1)) - self.output_ms(n)
        return (super().decode_group_ms(n * (k + 1), self.mtp.isl, self.mtp.osl) + extra_tokens + extra_outputs
                + k * self.mtp.draft_ms(n))


_PRICERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Estimator -> {key: (MtpPricer, steps)}


def _pricers(est, plan: Plan, spec: Speculation, isl: int, osl: int, engine: EngineSettings | None):
    """The MTP pricer and the speculative step pricer of one point's shape, kept as long as the Estimator so a
    search over concurrencies prices each step shape once."""
    cache = _PRICERS.setdefault(est, {})
    key = (plan, spec, isl, osl, engine)
    if key not in cache:
        mtp = MtpPricer(est, plan, spec, isl, osl)
        ov = serving.step_pricer(est, plan, engine).ov
        cache[key] = (mtp, _SpeculativeSteps(est, plan, ov, mtp))
    return cache[key]


def agg_point(est, plan: Plan, batch: int, isl: int, osl: int, spec: Speculation,
              engine: EngineSettings | None = None, bench: serving.Benchmark = serving.CLIENT) -> dict:
    """serving.agg_point's compact row with MTP speculative decoding (what plan searches)."""
    return _agg_run(est, plan, batch, isl, osl, spec, engine, bench)[0]


def _agg_run(est, plan: Plan, batch: int, isl: int, osl: int, spec: Speculation, engine: EngineSettings | None,
             bench: serving.Benchmark):
    """serving.agg_run with the speculative steps (a request needs 1 + (OSL - 1) / tokens-per-step of them)."""
    steps = _pricers(est, plan, spec, isl, osl, engine)[1]
    return serving.agg_run(est, plan, batch, isl, osl, engine, bench, steps=steps,
                           tokens_per_step=spec.tokens_per_step)


def speculative_estimate(est, mode: str, plan: Plan, batch: int, isl: int, osl: int, spec: Speculation, *,
                         engine: EngineSettings | None = None,
                         bench: serving.Benchmark = serving.CLIENT) -> dict:
    """The estimate of `mode` (static or agg) with MTP speculative decoding; its "speculative" key holds the step
    (verify, draft, tokens per step) and the TPOT without it."""
    mode = serving.check_mode(mode)
    if mode == "disagg":
        raise UserError("--speculative is priced in the static and agg modes, not disagg")
    batch, isl, osl = require_int("batch", batch), require_int("isl", isl), require_int("osl", osl)
    result = serving.mode_estimate(est, mode, plan, batch, isl, osl, engine=engine, bench=bench)
    mtp = _pricers(est, plan, spec, isl, osl, engine)[0]
    without = result["tpot_ms"]
    if mode == "static":
        running = batch
        ttft = result["ttft_ms"] + mtp.prompt_ms(batch)
        tpot = mtp.step_ms(batch) / spec.tokens_per_step
        out = {"ttft_ms": ttft, "tpot_ms": tpot, "request_latency_ms": ttft + (osl - 1) * tpot}
        result.update(serving.figures(out, batch * plan.dp / out["request_latency_ms"] * 1e3, osl, plan.gpus))
    else:
        running = result["serving"]["running_per_rank"]
        row, out, _ = _agg_run(est, plan, batch, isl, osl, spec, engine, bench)
        result.update({k: row[k] for k in serving.FIGURES})
        result["serving"]["steps"] = out["steps"]
    result["speculative"] = {**spec.to_json(), "mtp_layers": mtp_layers(est.model.config),
                             "verify_ms": mtp.verify_ms(running), "draft_ms": mtp.draft_ms(running),
                             "step_ms": mtp.step_ms(running), "tpot_without_ms": without}
    return result
