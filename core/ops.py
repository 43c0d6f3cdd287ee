"""Cost operations: what a serving engine runs as one kernel, as small value objects with explicit fields.

Sizes that depend on the batch B, the new tokens S or the cached tokens L are expressions in those symbols
(text, see core/expr.py), so one matched graph is priced at any (B, S, L). `count` is how many times the op runs
per step in the whole model (layers of its kind x occurrences); `module` and `layer_kind` say where it came from.
Every op can say its FLOPs and bytes at concrete sizes, which roofline pricing and the reports use.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.dtypes import element_bytes
from core.expr import evaluate


def _ev(expr, sizes) -> float:
    return expr if isinstance(expr, (int, float)) else evaluate(expr, **sizes)


@dataclass(frozen=True)
class CostOp:
    module: str
    layer_kind: int | None
    count: int

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict:
        return {"type": self.kind, **asdict(self)}

    def flops(self, sizes) -> float:
        return 0.0

    def bytes(self, sizes) -> float:
        return 0.0

    def shape_text(self) -> str:
        """The op's own fields, for tables: where it sits and its long byte/FLOP expressions left out."""
        skip = {"module", "layer_kind", "count"}
        return ", ".join(f"{k}={v}" for k, v in asdict(self).items() if k not in skip and not k.endswith("_expr"))


class TracedCost:
    """For ops priced by the traced nodes' own FLOPs and bytes (fields flops_expr, bytes_expr)."""

    def flops(self, sizes):
        return _ev(self.flops_expr, sizes)

    def bytes(self, sizes):
        return _ev(self.bytes_expr, sizes)


@dataclass(frozen=True)
class Gemm(CostOp):
    """out[m, n] = a[m, k] @ b[k, n]. operand: "weight" (b is a parameter) or "activation" (both computed)."""
    m: str
    n: int
    k: int
    dtype: str = "bfloat16"
    operand: str = "weight"
    batch: str = "1"           # independent products (bmm over heads) for activation GEMMs

    def flops(self, sizes):
        return 2 * _ev(self.batch, sizes) * _ev(self.m, sizes) * self.n * self.k

    def bytes(self, sizes):
        e = element_bytes(self.dtype)
        m, b = _ev(self.m, sizes), _ev(self.batch, sizes)
        return e * b * (m * self.k + self.k * self.n + m * self.n)


@dataclass(frozen=True)
class Attention(CostOp):
    """Fused attention over a KV cache. phase "context": S new tokens attend to themselves (causal);
    "generation": one token per sequence attends to kv_len cached tokens. window 0 = full attention."""
    phase: str
    batch: str
    q_len: str
    kv_len: str
    q_heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int
    causal: bool = True
    window: int = 0
    dtype: str = "bfloat16"

    def effective_kv(self, sizes) -> float:
        kv = _ev(self.kv_len, sizes)
        return min(kv, self.window) if self.window else kv

    def flops(self, sizes):
        b, q = _ev(self.batch, sizes), _ev(self.q_len, sizes)
        kv = self.effective_kv(sizes)
        pairs = q * kv
        if self.causal and self.phase == "context":
            pairs = q * (q + 1) / 2 if not self.window else q * min(kv, self.window)
        return 2 * b * self.q_heads * pairs * (self.head_dim + self.v_head_dim)

    def bytes(self, sizes):
        e = element_bytes(self.dtype)
        b, q = _ev(self.batch, sizes), _ev(self.q_len, sizes)
        kv = self.effective_kv(sizes)
        return e * b * (self.q_heads * q * (self.head_dim + self.v_head_dim)
                        + self.kv_heads * kv * (self.head_dim + self.v_head_dim))


@dataclass(frozen=True)
class MLA(CostOp):
    """Multi-head latent attention. The cache holds the latent (kv_lora_rank) and the shared rope key per token;
    generation runs weight-absorbed: queries projected into the latent space, scores over the latent."""
    phase: str
    batch: str
    q_len: str
    kv_len: str
    heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    dtype: str = "bfloat16"

    def flops(self, sizes):
        b, q, kv = _ev(self.batch, sizes), _ev(self.q_len, sizes), _ev(self.kv_len, sizes)
        if self.phase == "context":
            pairs = q * (q + 1) / 2
            return 2 * b * self.heads * pairs * (self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim)
        # absorbed: scores over (latent + rope), values over the latent
        return 2 * b * self.heads * q * kv * (2 * self.kv_lora_rank + self.qk_rope_head_dim)

    def bytes(self, sizes):
        e = element_bytes(self.dtype)
        b, kv = _ev(self.batch, sizes), _ev(self.kv_len, sizes)
        return e * b * kv * (self.kv_lora_rank + self.qk_rope_head_dim)


@dataclass(frozen=True)
class MoE(CostOp):
    """Routed experts: tokens x topk rows through `experts` expert FFNs (gated: gate+up then down)."""
    tokens: str
    hidden: int
    inter: int
    topk: int
    experts: int
    gated: bool = True
    dtype: str = "bfloat16"

    def flops(self, sizes):
        t = _ev(self.tokens, sizes)
        return 2 * t * self.topk * self.hidden * self.inter * (3 if self.gated else 2)

    def bytes(self, sizes):
        e = element_bytes(self.dtype)
        t = _ev(self.tokens, sizes)
        touched = min(self.experts, t * self.topk)  # experts that receive at least one token, at most
        weights = touched * self.hidden * self.inter * (3 if self.gated else 2)
        return e * (weights + 2 * t * self.topk * self.hidden)


@dataclass(frozen=True)
class Conv(CostOp):
    """Convolution; depthwise causal 1-D (Mamba, linear attention) when groups == channels."""
    batch: str
    length: str
    channels: int
    out_channels: int
    kernel: int
    groups: int
    dtype: str = "bfloat16"

    def flops(self, sizes):
        return 2 * _ev(self.batch, sizes) * _ev(self.length, sizes) * self.out_channels * self.kernel * (
            self.channels // self.groups)

    def bytes(self, sizes):
        e = element_bytes(self.dtype)
        bl = _ev(self.batch, sizes) * _ev(self.length, sizes)
        return e * (bl * (self.channels + self.out_channels) + self.out_channels * self.kernel * self.channels
                    // self.groups)


@dataclass(frozen=True)
class Scan(TracedCost, CostOp):
    """A recurrent sequence mixer run as one kernel: a state-space scan (variant "ssm": Mamba-1 selective scan,
    Mamba-2 SSD), linear attention (variant "delta": gated delta-net and kin), or any other loop over the tokens
    in the model's code (variant "recurrence", priced by its FLOPs and fused bytes). state = per-head recurrent
    state elements (head_dim x d_state, or key_dim x value_dim). flops and bytes are the traced block's."""
    variant: str
    batch: str
    length: str
    heads: int
    head_dim: int
    state: int
    flops_expr: str = "0"
    bytes_expr: str = "0"


@dataclass(frozen=True)
class Embedding(CostOp):
    tokens: str
    hidden: int
    dtype: str = "bfloat16"

    def bytes(self, sizes):
        return 2 * element_bytes(self.dtype) * _ev(self.tokens, sizes) * self.hidden


@dataclass(frozen=True)
class MemoryBound(TracedCost, CostOp):
    """Norms, activations, elementwise, rotary, softmax, copies and KV writes: priced by the bytes they move.
    what: the ops fused into it (e.g. "norm", "activation", "kv_write"); nodes: how many ATen ops it stands for."""
    what: str
    bytes_expr: str
    flops_expr: str = "0"
    nodes: int = 1


@dataclass(frozen=True)
class Unsupported(TracedCost, CostOp):
    """Work no pattern recognised: an ATen op with FLOPs or real bytes. Reported, and priced by roofline."""
    op: str
    shapes: list = field(default_factory=list)
    flops_expr: str = "0"
    bytes_expr: str = "0"
    consts: dict = field(default_factory=dict)  # its constant arguments (an einsum's equation), for a replay


@dataclass(frozen=True)
class ConvInGdn(Conv):
    """A gated delta-net's causal conv1d: gdn_perf measures it together with the delta rule, so the Scan's price
    holds it and this op adds nothing (kept in the breakdown to show where it went)."""

    @property
    def kind(self) -> str:
        return "Conv"


@dataclass(frozen=True)
class Comm(CostOp):
    """A collective or a point-to-point send. message_bytes: the per-GPU buffer (nccl-tests convention), an
    expression in B, S, L. collective: all_reduce, all_gather, reduce_scatter, alltoall, p2p."""
    collective: str
    message_bytes: str
    num_gpus: int
    cross_node: bool = False

    def bytes(self, sizes):
        return _ev(self.message_bytes, sizes)


@dataclass(frozen=True)
class MoEShard(MoE):
    """The routed experts one GPU runs: experts split ep ways, each expert's inter split tp ways. tokens: tokens
    entering the layer on this GPU's group (all attention-DP copies)."""
    tp: int = 1
    ep: int = 1

    @property
    def kind(self) -> str:
        return "MoE"

    def flops(self, sizes):
        return super().flops(sizes) / (self.tp * self.ep)

    def bytes(self, sizes):
        e = element_bytes(self.dtype)
        t = _ev(self.tokens, sizes)
        mats = 3 if self.gated else 2
        routed = t * self.topk / self.ep
        touched = min(self.experts / self.ep, routed)
        return e * (touched * self.hidden * self.inter / self.tp * mats + 2 * routed * self.hidden)


OP_TYPES = {cls.__name__: cls for cls in (Gemm, Attention, MLA, MoE, MoEShard, Conv, ConvInGdn, Scan, Embedding,
                                          MemoryBound, Unsupported, Comm)}


def from_json(data: dict) -> CostOp:
    data = dict(data)
    cls = OP_TYPES[data.pop("type")]
    return cls(**data)
