"""Cost operations: what a serving engine runs as one kernel, as small value objects with explicit fields.

Sizes that depend on the batch B, the new tokens S or the cached tokens L are expressions in those symbols
(text, see core/expr.py), so one matched graph is priced at any (B, S, L). `count` is how many times the op runs
per step in the whole model (layers of its kind x occurrences); `module` and `layer_kind` say where it came from.
Every op type owns its formulas: FLOPs and bytes at concrete sizes (roofline pricing, the reports), the parameters
its weights hold, what it caches per token (KV), and how it splits under tensor / expert parallelism (PP splits
layers: `pipeline_stages`). The formulas the perf database's roofline shares with the ops are functions here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from core.dtypes import element_bytes, vector_bytes
from core.errors import UserError
from core.expr import evaluate


def _ev(expr, sizes) -> float:
    return expr if isinstance(expr, (int, float)) else evaluate(expr, **sizes)


def _div(expr: str, by: int) -> str:
    return expr if by == 1 else f"({expr})/{by}"


# --- formulas the ops and the perf database's roofline share ------------------------------------------------------

def causal_pairs(seq_len: float, window: float = 0) -> float:
    """(query, key) pairs of causal attention over seq_len tokens, each seeing itself and the keys before it, at
    most `window` of them (0: all)."""
    if window <= 0 or window >= seq_len:
        return seq_len * (seq_len + 1) / 2
    return window * (window + 1) / 2 + (seq_len - window) * window


def attention_pairs(q_len: float, kv_len: float, window: float = 0, causal: bool = True) -> float:
    """(query, key) pairs of q_len queries that are the last q_len of kv_len positions (a prefill over a cached
    prefix, or a decode step); causal: each sees the keys up to itself; window: at most that many."""
    if not causal:
        return q_len * (min(kv_len, window) if window else kv_len)
    return causal_pairs(kv_len, window) - causal_pairs(max(kv_len - q_len, 0), window)


def attention_flops(batch, heads, pairs, qk_dim, v_dim) -> float:
    """QK^T and PV over the (query, key) pairs, 2 FLOPs per multiply-add."""
    return 2 * batch * heads * pairs * (qk_dim + v_dim)


def attention_bytes(batch, q_len, kv_read, q_heads, kv_heads, qk_dim, v_dim, act_bytes=2, kv_bytes=2,
                    kv_written=0) -> float:
    """Queries read and outputs written per head, K and V read for kv_read keys (and written for kv_written
    new tokens where the kernel writes the cache itself)."""
    return batch * (q_len * q_heads * (qk_dim + v_dim) * act_bytes
                    + (kv_read + kv_written) * kv_heads * (qk_dim + v_dim) * kv_bytes)


def mla_flops(phase, batch, q_len, kv_len, heads, nope, rope, v_dim, rank) -> float:
    """Context: attention over K / V expanded from the latent; generation: weight-absorbed, scores over the latent
    plus the rope key and values over the latent."""
    if phase == "context":
        return attention_flops(batch, heads, attention_pairs(q_len, kv_len), nope + rope, v_dim)
    return 2 * batch * heads * q_len * kv_len * (2 * rank + rope)


def mla_bytes(phase, batch, q_len, kv_len, heads, nope, rope, v_dim, rank, act_bytes=2, kv_bytes=2,
              kv_written=0) -> float:
    """Context: per head, queries and outputs of the new tokens and the expanded K / V of every key; generation:
    the latent cache read, and per head the queries and outputs in the latent space. kv_written: new tokens whose
    latent the kernel writes to the cache."""
    latent = (rank + rope) * kv_bytes
    if phase == "context":
        return batch * ((q_len + kv_len) * heads * (nope + rope + v_dim) * act_bytes + kv_written * latent)
    return batch * ((kv_len + kv_written) * latent + q_len * heads * (2 * rank + rope) * act_bytes)


def moe_flops(tokens, hidden, inter, topk, tp=1, ep=1, gated=True) -> float:
    """Routed experts on one GPU: tokens x topk / ep rows through expert FFNs of inter / tp."""
    routed, width = tokens * topk / ep, inter / tp
    return 2 * routed * hidden * width * (3 if gated else 2)


def expert_slots(experts: int, ep: int) -> int:
    """The experts one of ep GPUs holds: experts / ep, rounded up where ep does not divide them. The engines run such
    an EP with redundant copies of experts, which their expert-parallel load balancers place and route to
    (TensorRT-LLM's moe_load_balancer num_slots, SGLang's --ep-num-redundant-experts, vLLM's --num-redundant-experts),
    so every GPU holds the same number of slots and takes an even share of the routed tokens."""
    return -(-experts // ep)


def redundant_experts(experts: int, ep: int) -> int:
    """The redundant expert copies an EP of `ep` GPUs holds in all (0 where ep divides the experts): the slots of
    expert_slots beyond the experts, which only run with the engine's expert-parallel load balancer launched."""
    return expert_slots(experts, ep) * ep - experts


def dispatch_ranks(experts: int, topk: int, ep: int) -> float:
    """The GPUs of an ep-wide expert-parallel group one token's topk experts land on, on average with uniform
    routing: an expert-parallel dispatch sends a token once to each GPU holding one of its experts (DeepEP's and
    TensorRT-LLM's all-to-all kernels count tokens per destination rank), not once per expert."""
    if ep <= 1:
        return 1.0
    per_gpu, missed = experts / ep, 1.0
    for i in range(topk):   # the chance that none of the token's experts sits on a given GPU
        missed *= max(experts - per_gpu - i, 0.0) / (experts - i)
    return ep * (1.0 - missed)


def moe_bytes(tokens, hidden, inter, topk, experts, tp=1, ep=1, gated=True, weight_bytes=2, act_bytes=2) -> float:
    """Routed experts on one GPU: the weights of the expert slots that receive a token (at most all it holds,
    expert_slots), and per routed row its input, its output (bf16) and its intermediate written and read."""
    routed = tokens * topk / ep
    width = inter / tp
    active = min(expert_slots(experts, ep), routed)
    return active * hidden * width * (3 if gated else 2) * weight_bytes + routed * (hidden * (act_bytes + 2)
                                                                                   + width * 4)


def pipeline_stages(num_layers: int, pp: int) -> list[int]:
    """Layers of each pipeline stage: contiguous stages, the first num_layers % pp one layer longer."""
    return [num_layers // pp + (1 if s < num_layers % pp else 0) for s in range(pp)]


def _kv_heads_per_rank(kv_heads: int, tp: int) -> tuple[int, int]:
    """KV heads on one TP rank and how many ranks hold each head: split, or one head per rank when fewer heads
    than ranks (tp / kv_heads ranks share it)."""
    return (kv_heads // tp, 1) if kv_heads % tp == 0 else (1, tp // kv_heads)


@dataclass(frozen=True)
class KVCache:
    """What one op caches per token in one layer: bytes, bytes on one TP rank, and the heads' TP layout."""
    kind: str                  # "full" (K and V per KV head) or "mla" (the latent and the rope key)
    bytes_per_token: int
    bytes_per_token_per_rank: int
    heads: int
    heads_per_rank: int
    replication: int           # ranks holding each head
    window: int                # 0, or the keys a sliding window keeps
    dims: dict                 # the dims the KV report shows


@dataclass(frozen=True)
class CostOp:
    module: str
    layer_kind: int | None
    count: int
    # the module of the MoE op this op runs beside, on a stream of its own where the engine overlaps them (shared
    # experts: graph.patterns.beside_moe); "" for an op on the main stream
    concurrent_with: str = field(default="", kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_json(self) -> dict:
        return {"type": self.kind, **asdict(self)}

    def flops(self, sizes) -> float:
        return 0.0

    def bytes(self, sizes) -> float:
        return 0.0

    def shape_text(self, sizes=None) -> str:
        """The op's own fields, for tables: where it sits left out; its size expressions evaluated at `sizes` where
        given, else as written with the long byte / FLOP expressions left out."""
        skip = {"module", "layer_kind", "count"}
        parts = []
        for k, v in asdict(self).items():
            if k in skip or (k.endswith("_expr") and sizes is None) or (k == "concurrent_with" and not v):
                continue
            if sizes is not None and isinstance(v, str) and k not in self._TEXT_FIELDS:
                v = f"{_ev(v, sizes):g}"
            parts.append(f"{k.removesuffix('_expr')}={v}")
        return ", ".join(parts)

    # fields that hold words, not size expressions
    _TEXT_FIELDS = frozenset({"phase", "dtype", "operand", "variant", "what", "op", "collective", "concurrent_with"})
    # True for an op whose TP split splits its block's activations (memory-bound work inside the block splits too)
    splits_block = False
    # True for routed experts, which EP splits
    expert_parallel = False

    def weight_params(self) -> int:
        """Parameters the op's own weights hold (per run of the op)."""
        return 0

    def weight_share(self, tp: int, ep: int = 1, dp: int = 1, role: str | None = None) -> float:
        """The fraction of the op's weights one GPU holds."""
        return 1.0

    def act_width(self) -> float:
        """Elements per token of the op's live input and output buffers on one GPU (activation workspace)."""
        return 0.0

    def check_split(self, tp: int, ep: int = 1, dp: int = 1) -> None:
        """UserError (one line) when the op cannot run split over tp (and ep of tp x dp for experts)."""

    def split(self, tp: int, ep: int = 1, dp: int = 1, role: str | None = None) -> "CostOp":
        """What one GPU runs under tp (ep, attention-DP dp). role: a GEMM's from parallel.gemm_roles; "split" for
        memory-bound work inside a block the split splits."""
        return self

    def kv_cache(self, dtype: str, tp: int = 1) -> KVCache | None:
        """The KV cache the op keeps per token and layer at the KV dtype, and its TP layout (None: none)."""
        return None

    def cache_dims(self) -> list[list[int]]:
        """Sorted dims (besides batch and length) of the cache tensors the op reads, as HF caches may hold them."""
        return []

    def state_dims(self, dims: list[int]) -> tuple[str, list[int]] | None:
        """(role, dims engines keep) where a fixed cache tensor of these dims (batch left out) is this op's state."""
        return None

    def state_info(self) -> dict | None:
        """A recurrent mixer's state layout, for the KV report (None: the op keeps no recurrent state)."""
        return None


class TracedCost:
    """For ops priced by the traced nodes' own FLOPs and bytes (fields flops_expr, bytes_expr)."""

    def flops(self, sizes):
        return _ev(self.flops_expr, sizes)

    def bytes(self, sizes):
        return _ev(self.bytes_expr, sizes)

    def split(self, tp, ep=1, dp=1, role=None):
        if tp == 1 or role != "split":
            return self
        return replace(self, bytes_expr=_div(self.bytes_expr, tp), flops_expr=_div(self.flops_expr, tp))


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

    def _products(self) -> int:
        """Independent products at B = S = L = 1: the head count of a GEMM batched over heads."""
        return int(_ev(self.batch, {"B": 1, "S": 1, "L": 1}))

    def weight_params(self):
        return self.n * self.k * (int(self.batch) if self.batch.isdigit() else 1) if self.operand == "weight" else 0

    def weight_share(self, tp, ep=1, dp=1, role=None):
        return 1.0 if role == "replicated" else 1.0 / tp

    def act_width(self):
        return self.n * (int(self.batch) if self.batch.isdigit() else 1) + self.k

    def split(self, tp, ep=1, dp=1, role=None):
        """column: n split; row: k split; heads: the independent products split, where tp divides them (a batch
        over tokens, or fewer heads than ranks, as an indexer's, runs whole on every rank)."""
        if tp == 1 or role in (None, "replicated"):
            return self
        if role == "column":
            return replace(self, n=math.ceil(self.n / tp))
        if role == "row":
            return replace(self, k=math.ceil(self.k / tp))
        return replace(self, batch=_div(self.batch, tp)) if self._products() % tp == 0 else self


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

    splits_block = True

    def flops(self, sizes):
        b, q, kv = _ev(self.batch, sizes), _ev(self.q_len, sizes), _ev(self.kv_len, sizes)
        pairs = attention_pairs(q, kv, self.window, self.causal and self.phase == "context")
        return attention_flops(b, self.q_heads, pairs, self.head_dim, self.v_head_dim)

    def bytes(self, sizes):
        # the cache write is a memory-bound op of its own in the graph
        e = element_bytes(self.dtype)
        b, q = _ev(self.batch, sizes), _ev(self.q_len, sizes)
        return attention_bytes(b, q, self.effective_kv(sizes), self.q_heads, self.kv_heads, self.head_dim,
                               self.v_head_dim, e, e)

    def check_split(self, tp, ep=1, dp=1):
        if self.q_heads % tp:
            raise UserError(f"tp={tp} does not divide the {self.q_heads} attention heads ({self.kv_heads} KV heads) "
                            f"of {self.module}")
        if self.kv_heads % tp and tp % self.kv_heads:
            raise UserError(f"tp={tp} does not divide the {self.kv_heads} KV heads of {self.module} "
                            f"(nor do they divide tp, to replicate them)")

    def split(self, tp, ep=1, dp=1, role=None):
        return replace(self, q_heads=self.q_heads // tp, kv_heads=_kv_heads_per_rank(self.kv_heads, tp)[0])

    def kv_cache(self, dtype, tp=1):
        per_head = vector_bytes(self.head_dim, dtype) + vector_bytes(self.v_head_dim, dtype)
        per_rank, replication = _kv_heads_per_rank(self.kv_heads, tp)
        return KVCache("full", self.kv_heads * per_head, per_rank * per_head, self.kv_heads, per_rank, replication,
                       self.window, {"head_dim": self.head_dim, "v_head_dim": self.v_head_dim,
                                     "q_heads": self.q_heads})

    def cache_dims(self):
        dims = [sorted([self.kv_heads, self.head_dim]), sorted([self.kv_heads, self.v_head_dim])]
        if self.kv_heads == 1:  # one KV head, cached without its head axis
            dims += [[self.head_dim], [self.v_head_dim]]
        return dims


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

    splits_block = True

    def _dims(self):
        return self.heads, self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim, self.kv_lora_rank

    def flops(self, sizes):
        b, q, kv = _ev(self.batch, sizes), _ev(self.q_len, sizes), _ev(self.kv_len, sizes)
        return mla_flops(self.phase, b, q, kv, *self._dims())

    def bytes(self, sizes):
        # the cache write is a memory-bound op of its own in the graph
        e = element_bytes(self.dtype)
        b, q, kv = _ev(self.batch, sizes), _ev(self.q_len, sizes), _ev(self.kv_len, sizes)
        return mla_bytes(self.phase, b, q, kv, *self._dims(), e, e)

    def check_split(self, tp, ep=1, dp=1):
        if self.heads % tp:
            raise UserError(f"tp={tp} does not divide the {self.heads} attention heads of {self.module}")

    def split(self, tp, ep=1, dp=1, role=None):
        return replace(self, heads=self.heads // tp)

    def kv_cache(self, dtype, tp=1):
        # the latent and the rope key, replicated on every TP rank (engines cache the latent, not per-head K / V)
        rate = vector_bytes(self.kv_lora_rank, dtype) + vector_bytes(self.qk_rope_head_dim, dtype)
        return KVCache("mla", rate, rate, 1, 1, tp, 0, {"kv_lora_rank": self.kv_lora_rank,
                                                         "qk_rope_head_dim": self.qk_rope_head_dim})

    def cache_dims(self):
        # the latent, the rope key, or the expanded per-head K / V some HF caches hold
        return [[self.kv_lora_rank], sorted([1, self.kv_lora_rank]), [self.qk_rope_head_dim],
                sorted([1, self.qk_rope_head_dim]), sorted([self.heads, self.qk_nope_head_dim + self.qk_rope_head_dim]),
                sorted([self.heads, self.v_head_dim])]


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

    splits_block = True
    expert_parallel = True

    def ways(self) -> tuple[int, int]:
        """(tp, ep): how each expert's inter and the experts are split on the GPU that runs this op."""
        return 1, 1

    def flops(self, sizes):
        tp, ep = self.ways()
        return moe_flops(_ev(self.tokens, sizes), self.hidden, self.inter, self.topk, tp, ep, self.gated)

    def bytes(self, sizes):
        tp, ep = self.ways()
        e = element_bytes(self.dtype)
        return moe_bytes(_ev(self.tokens, sizes), self.hidden, self.inter, self.topk, self.experts, tp, ep,
                         self.gated, e, e)

    def weight_params(self):
        return self.experts * self.hidden * self.inter * (3 if self.gated else 2)

    def weight_share(self, tp, ep=1, dp=1, role=None):
        return expert_slots(self.experts, ep) / self.experts / (tp * dp // ep)

    def act_width(self):
        tp, ep = self.ways()
        return self.topk / ep * (self.hidden + 2 * self.inter / tp)  # routed rows landing on this GPU (balanced)

    def check_split(self, tp, ep=1, dp=1):
        if ep > self.experts:
            raise UserError(f"ep={ep} exceeds the {self.experts} experts of {self.module}")
        if self.inter % (tp * dp // ep):
            raise UserError(f"moe tp={tp * dp // ep} (tp x dp / ep) does not divide the expert intermediate size "
                            f"{self.inter} of {self.module}")

    def split(self, tp, ep=1, dp=1, role=None):
        """Experts over ep GPUs, each expert's inter over moe_tp = tp x dp / ep; the layer sees the tokens of all
        dp attention copies."""
        fields = {k: getattr(self, k) for k in MoE.__dataclass_fields__}
        fields["tokens"] = self.tokens if dp == 1 else f"({self.tokens})*{dp}"
        return MoEShard(**fields, tp=tp * dp // ep, ep=ep)


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

    def split(self, tp, ep=1, dp=1, role=None):
        """A depthwise conv splits its channels where tp divides them; any other conv runs whole."""
        if tp > 1 and self.groups == self.channels and self.channels % tp == 0 and self.out_channels % tp == 0:
            return replace(self, channels=self.channels // tp, out_channels=self.out_channels // tp,
                           groups=self.groups // tp)
        return self

    def state_dims(self, dims):
        # a causal conv's state: channels x kernel columns in HF; engines keep the kernel - 1 previous inputs
        if len(dims) == 2 and dims[0] == self.channels and dims[1] in (self.kernel, self.kernel - 1):
            return "conv", [dims[0], self.kernel - 1]
        return None


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

    splits_block = True

    def check_split(self, tp, ep=1, dp=1):
        # heads == 1: no per-head state was seen (a state of one channel dim): the work splits over its channels
        if self.heads > 1 and self.heads % tp:
            raise UserError(f"tp={tp} does not divide the {self.heads} heads of the scan in {self.module}")

    def split(self, tp, ep=1, dp=1, role=None):
        return replace(self, heads=max(self.heads // tp, 1), flops_expr=_div(self.flops_expr, tp),
                       bytes_expr=_div(self.bytes_expr, tp))

    def state_info(self) -> dict:
        return {"variant": self.variant, "heads": self.heads, "head_dim": self.head_dim, "state": self.state}


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

    def ways(self):
        return self.tp, self.ep


OP_TYPES = {cls.__name__: cls for cls in (Gemm, Attention, MLA, MoE, MoEShard, Conv, ConvInGdn, Scan, Embedding,
                                          MemoryBound, Unsupported, Comm)}


def from_json(data: dict) -> CostOp:
    data = dict(data)
    cls = OP_TYPES[data.pop("type")]
    return cls(**data)
