"""Parallelism: split each cost op to what one GPU runs, and add the communication the plan implies.

A plan is TP x PP x attention-DP GPUs (EP lives inside TP x DP):

- **TP** (tensor parallel, ``tp``): every layer's weight GEMMs are split over tp GPUs. Column-parallel GEMMs (whose
  input is the hidden state, ``k == hidden``) split ``n``; row-parallel GEMMs (whose output is the hidden state,
  ``n == hidden``) split ``k`` and are followed by an all-reduce of the block output. Which is which is read from
  the shapes alone (see ``gemm_role``). Attention heads split; KV heads split while ``kv_heads >= tp`` and are
  replicated (one per GPU) below that. MLA heads split; the latent is replicated. Norms on the hidden state are
  replicated; memory-bound work inside a split block (rotary on heads, the MLP activation) splits.
- **Attention DP** (``dp``): ``dp`` copies of the attention and dense layers, each serving its own ``batch``
  sequences; the MoE layers see the tokens of all dp copies and run over tp x dp GPUs.
- **EP / MoE-TP** (``ep``): routed experts split over ``ep`` GPUs and each expert's intermediate size over
  ``moe_tp = tp * dp / ep``; an ``ep`` that does not divide the experts holds the rounded-up count on every GPU, the
  engines' redundant copies (core.ops.expert_slots). Without attention DP the MoE output is summed by the block
  all-reduce; with it, tokens are dispatched and combined by two all-to-alls (ep > 1), each token sent once to each
  GPU holding one of its experts (core.ops.dispatch_ranks), or gathered and reduce-scattered (ep = 1).
- **PP** (``pp``): layers split into pp stages; a token passes every stage, so the latency path prices every layer
  (each stage its share) plus pp - 1 point-to-point sends of the hidden state (stages: core.ops.pipeline_stages).

How each op type splits is the op's own (core.ops: ``check_split``, ``split``, ``weight_share``). ``apply`` returns
new op objects: the per-GPU shapes with the same ``count`` (runs per step along the latency path) plus ``Comm`` ops. A plan that does not divide the model raises UserError with one line.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from core.errors import UserError
from core.ops import MLA, Comm, CostOp, Embedding, Gemm, MoE, dispatch_ranks


@dataclass(frozen=True)
class Plan:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp: int = 1

    def __post_init__(self):
        for name in ("tp", "pp", "ep", "dp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name} must be a positive integer, got {value!r}")
        if (self.tp * self.dp) % self.ep:
            raise UserError(f"ep={self.ep} must divide tp x dp = {self.tp * self.dp} (experts are spread over the "
                            f"GPUs of one pipeline stage)")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def moe_tp(self) -> int:
        return self.tp * self.dp // self.ep

    def label(self) -> str:
        return f"TP{self.tp} PP{self.pp} EP{self.ep} DP{self.dp}"

    def to_json(self) -> dict:
        return {"tp": self.tp, "pp": self.pp, "ep": self.ep, "dp": self.dp, "gpus": self.gpus,
                "moe_tp": self.moe_tp}


# ---------------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------------

_LAYER_INDEX = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_of(module: str) -> str:
    """The residual block an op belongs to: the module one level below its decoder layer
    ('model.layers.3.mlp.down_proj' -> 'model.layers.3.mlp'); the module itself outside layers."""
    m = _LAYER_INDEX.match(module)
    if not m:
        return module
    rest = module[len(m.group(1)):].lstrip(".")
    return m.group(1) + ("." + rest.split(".")[0] if rest else "")


def hidden_size(ops, config: dict | None = None) -> int:
    """The model's hidden size: the embedding width, else the config's, else the commonest GEMM k."""
    for op in ops:
        if isinstance(op, Embedding):
            return op.hidden
    if config and isinstance(config.get("hidden_size"), int):
        return config["hidden_size"]
    ks = Counter(op.k for op in ops if isinstance(op, Gemm))
    if not ks:
        raise UserError("cannot tell the model's hidden size: no embedding and no GEMM")
    return ks.most_common(1)[0][0]


def gemm_roles(ops, hidden: int) -> dict[int, str]:
    """index -> 'column' | 'row' | 'replicated' | 'heads' for each Gemm in ops, from shapes alone.

    - batched GEMMs over heads (MLA's absorbed projections): 'heads' (the batch splits);
    - n == hidden, k != hidden: 'row' (the block's output projection);
    - k == hidden and n == the expert count of a MoE in the same layer kind: 'replicated' (the router);
    - k == hidden in a layer with MLA and n not a multiple of its heads: 'replicated' (the latent down-projection,
      which engines keep whole);
    - a square GEMM (k == n == hidden) is 'row' when it is the last GEMM of a block that has no other row GEMM;
    - everything else: 'column' (it produces per-head or per-channel outputs)."""
    experts = {op.layer_kind: op.experts for op in ops if op.expert_parallel}
    mla_heads = {op.layer_kind: op.heads for op in ops if isinstance(op, MLA)}
    roles: dict[int, str] = {}
    for i, op in enumerate(ops):
        if not isinstance(op, Gemm):
            continue
        if op.batch != "1":
            roles[i] = "heads"
        elif op.n == hidden and op.k != hidden:
            roles[i] = "row"
        elif op.k == hidden and experts.get(op.layer_kind) == op.n:
            roles[i] = "replicated"
        elif op.k == hidden and op.layer_kind in mla_heads and op.n % mla_heads[op.layer_kind]:
            roles[i] = "replicated"
        else:
            roles[i] = "column"
    # square GEMMs: the last one of a block without another row GEMM is the output projection
    by_block: dict[tuple, list[int]] = {}
    for i, op in enumerate(ops):
        if i in roles and op.layer_kind is not None:
            by_block.setdefault((op.layer_kind, block_of(op.module)), []).append(i)
    for members in by_block.values():
        if any(roles[i] == "row" for i in members):
            continue
        square = [i for i in members if ops[i].n == ops[i].k == hidden and roles[i] == "column"]
        if square:
            roles[square[-1]] = "row"
    return roles


def validate(ops, plan: Plan, num_layers: int | None = None) -> None:
    """UserError when the plan does not divide the model."""
    if num_layers is not None and plan.pp > num_layers:
        raise UserError(f"pp={plan.pp} exceeds the model's {num_layers} layers")
    if plan.ep > 1 and not any(op.expert_parallel for op in ops):
        raise UserError(f"ep={plan.ep} but the model has no routed experts")
    for op in ops:
        op.check_split(plan.tp, plan.ep, plan.dp)


def apply(ops, plan: Plan, *, hidden: int | None = None, num_layers: int | None = None, phase: str = "decode",
          act_bytes: float = 2, cross_node: bool = False) -> list[CostOp]:
    """Per-GPU cost ops for one step of `phase` ("prefill" or "decode") under `plan`, communication included.
    act_bytes: bytes per element of the communicated activations (bf16 = 2)."""
    validate(ops, plan, num_layers)
    hidden = hidden or hidden_size(ops)
    tp, dp = plan.tp, plan.dp
    tokens = "B*S" if phase == "prefill" else "B"
    roles = gemm_roles(ops, hidden)
    split_blocks = {(op.layer_kind, block_of(op.module)) for i, op in enumerate(ops)
                    if roles.get(i) in ("column", "row", "heads") or op.splits_block}
    out: list[CostOp] = []
    reduce_blocks: dict[tuple, Gemm] = {}   # block -> the row GEMM whose output the block all-reduce carries
    moe_blocks: dict[tuple, MoE] = {}
    for i, op in enumerate(ops):
        block = (op.layer_kind, block_of(op.module))
        role = roles.get(i) or ("split" if block in split_blocks and _inside_block(op.module) else None)
        out.append(op.split(tp, plan.ep, dp, role))
        if role == "row":
            reduce_blocks.setdefault(block, op)
        if op.expert_parallel:
            moe_blocks[block] = op
    out.extend(_communication(plan, hidden, tokens, reduce_blocks, moe_blocks, act_bytes, cross_node))
    if plan.pp > 1:
        out.append(Comm(module="pipeline", layer_kind=None, count=plan.pp - 1, collective="p2p",
                        message_bytes=f"({tokens})*{hidden}*{act_bytes}", num_gpus=2, cross_node=cross_node))
    return out


def _inside_block(module: str) -> bool:
    """True when the module sits inside a block of a layer (not the layer itself or a top-level module)."""
    m = _LAYER_INDEX.match(module)
    return bool(m) and len(module) > len(m.group(1))


def _communication(plan, hidden, tokens, reduce_blocks, moe_blocks, act_bytes, cross_node):
    tp, dp, ep = plan.tp, plan.dp, plan.ep
    comms = []
    for block, op in reduce_blocks.items():
        if block in moe_blocks and dp == 1:
            continue  # one all-reduce carries the shared experts and the routed experts together
        if tp > 1:
            comms.append(Comm(module=block[1], layer_kind=block[0], count=op.count, collective="all_reduce",
                              message_bytes=f"({op.m})*{hidden}*{act_bytes}", num_gpus=tp, cross_node=cross_node))
    for block, op in moe_blocks.items():
        width = tp * dp
        if width == 1:
            continue
        if dp == 1:
            comms.append(Comm(module=block[1], layer_kind=block[0], count=op.count, collective="all_reduce",
                              message_bytes=f"({op.tokens})*{hidden}*{act_bytes}", num_gpus=tp, cross_node=cross_node))
        elif ep > 1:
            msg = f"({op.tokens})*{dispatch_ranks(op.experts, op.topk, ep)!r}*{hidden}*{act_bytes}"
            comms.append(Comm(module=block[1] + " dispatch", layer_kind=block[0], count=op.count,
                              collective="alltoall", message_bytes=msg, num_gpus=width, cross_node=cross_node))
            comms.append(Comm(module=block[1] + " combine", layer_kind=block[0], count=op.count,
                              collective="alltoall", message_bytes=msg, num_gpus=width, cross_node=cross_node))
        else:
            msg = f"({op.tokens})*{dp}*{hidden}*{act_bytes}"
            comms.append(Comm(module=block[1] + " gather", layer_kind=block[0], count=op.count,
                              collective="all_gather", message_bytes=msg, num_gpus=width, cross_node=cross_node))
            comms.append(Comm(module=block[1] + " scatter", layer_kind=block[0], count=op.count,
                              collective="reduce_scatter", message_bytes=msg, num_gpus=width, cross_node=cross_node))
    return comms


def weight_shares(ops, plan: Plan, hidden: int) -> list[tuple[CostOp, float, float]]:
    """(op, parameters, fraction held by one GPU) for each weight-bearing op (Gemm with a weight operand, MoE),
    from the prefill ops (whole projections, no absorbed splits). PP is applied by the caller per layer."""
    roles = gemm_roles(ops, hidden)
    return [(op, op.weight_params() * op.count, op.weight_share(plan.tp, plan.ep, plan.dp, roles.get(i)))
            for i, op in enumerate(ops) if op.weight_params()]
