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
  ``moe_tp = tp * dp / ep``. Without attention DP the MoE output is summed by the block all-reduce; with it, tokens
  are dispatched and combined by two all-to-alls (ep > 1), or gathered and reduce-scattered (ep = 1).
- **PP** (``pp``): layers split into pp stages; a token passes every stage, so the latency path prices every layer
  (each stage its share) plus pp - 1 point-to-point sends of the hidden state. ``stage_layers`` gives the layers of
  the most loaded stage (memory).

``apply`` returns new op objects: the per-GPU shapes with the same ``count`` (runs per step along the latency path)
plus ``Comm`` ops. A plan that does not divide the model raises UserError with one line.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace

from core.ops import MLA, Attention, Comm, Conv, CostOp, Embedding, Gemm, MemoryBound, MoE, MoEShard, Scan, Unsupported
from core.errors import UserError


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
    experts = {op.layer_kind: op.experts for op in ops if isinstance(op, MoE)}
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
        if isinstance(op, Gemm) and op.layer_kind is not None:
            by_block.setdefault((op.layer_kind, block_of(op.module)), []).append(i)
    for members in by_block.values():
        if any(roles[i] == "row" for i in members):
            continue
        square = [i for i in members if ops[i].n == ops[i].k == hidden and roles[i] == "column"]
        if square:
            roles[square[-1]] = "row"
    return roles


def _div(expr: str, by: int) -> str:
    return expr if by == 1 else f"({expr})/{by}"


def _check_heads(op, tp: int) -> None:
    heads = op.q_heads if isinstance(op, Attention) else op.heads
    if heads % tp:
        raise UserError(f"tp={tp} does not divide the {heads} attention heads of {op.module}")
    if isinstance(op, Attention) and op.kv_heads % tp and tp % op.kv_heads:
        raise UserError(f"tp={tp} does not divide the {op.kv_heads} KV heads of {op.module} "
                        f"(nor do they divide tp, to replicate them)")


def validate(ops, plan: Plan, num_layers: int | None = None) -> None:
    """UserError when the plan does not divide the model."""
    if num_layers is not None and plan.pp > num_layers:
        raise UserError(f"pp={plan.pp} exceeds the model's {num_layers} layers")
    moes = [op for op in ops if isinstance(op, MoE)]
    if plan.ep > 1 and not moes:
        raise UserError(f"ep={plan.ep} but the model has no routed experts")
    for op in ops:
        if isinstance(op, (Attention, MLA)):
            _check_heads(op, plan.tp)
        elif isinstance(op, MoE):
            if op.experts % plan.ep:
                raise UserError(f"ep={plan.ep} does not divide the {op.experts} experts of {op.module}")
            if op.inter % plan.moe_tp:
                raise UserError(f"moe tp={plan.moe_tp} (tp x dp / ep) does not divide the expert intermediate size "
                                f"{op.inter} of {op.module}")
        elif isinstance(op, Scan) and op.heads % plan.tp:
            raise UserError(f"tp={plan.tp} does not divide the {op.heads} heads of the scan in {op.module}")


def stage_layers(num_layers: int, pp: int) -> int:
    """Layers on the most loaded pipeline stage."""
    return math.ceil(num_layers / pp)


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
                    if roles.get(i) in ("column", "row", "heads") or isinstance(op, (Attention, MLA, MoE, Scan))}
    out: list[CostOp] = []
    reduce_blocks: dict[tuple, CostOp] = {}   # block -> an op whose output the block all-reduce carries
    moe_blocks: dict[tuple, MoE] = {}
    for i, op in enumerate(ops):
        block = (op.layer_kind, block_of(op.module))
        if isinstance(op, Gemm):
            role = roles[i]
            if tp == 1 or role == "replicated":
                out.append(op)
            elif role == "column":
                out.append(replace(op, n=math.ceil(op.n / tp)))
            elif role == "row":
                out.append(replace(op, k=math.ceil(op.k / tp)))
                reduce_blocks.setdefault(block, op)
            else:  # heads
                out.append(replace(op, batch=_div(op.batch, tp)))
        elif isinstance(op, Attention):
            kv = op.kv_heads // tp if op.kv_heads >= tp else 1
            out.append(replace(op, q_heads=op.q_heads // tp, kv_heads=kv))
        elif isinstance(op, MLA):
            out.append(replace(op, heads=op.heads // tp))
        elif isinstance(op, MoE):
            fields = {k: getattr(op, k) for k in op.__dataclass_fields__}
            fields["tokens"] = op.tokens if dp == 1 else f"({op.tokens})*{dp}"
            shard = MoEShard(**fields, tp=plan.moe_tp, ep=plan.ep)
            out.append(shard)
            moe_blocks[block] = op
        elif isinstance(op, Conv):
            if tp > 1 and op.groups == op.channels and op.channels % tp == 0 and op.out_channels % tp == 0:
                out.append(replace(op, channels=op.channels // tp, out_channels=op.out_channels // tp,
                                   groups=op.groups // tp))
            else:
                out.append(op)
        elif isinstance(op, Scan):
            out.append(replace(op, heads=op.heads // tp, flops_expr=_div(op.flops_expr, tp),
                               bytes_expr=_div(op.bytes_expr, tp)))
        elif isinstance(op, (MemoryBound, Unsupported)):
            if tp > 1 and block in split_blocks and _inside_block(op.module):
                out.append(replace(op, bytes_expr=_div(op.bytes_expr, tp), flops_expr=_div(op.flops_expr, tp)))
            else:
                out.append(op)
        else:
            out.append(op)
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
            m = op.m if isinstance(op, Gemm) else tokens
            comms.append(Comm(module=block[1], layer_kind=block[0], count=op.count, collective="all_reduce",
                              message_bytes=f"({m})*{hidden}*{act_bytes}", num_gpus=tp, cross_node=cross_node))
    for block, op in moe_blocks.items():
        width = tp * dp
        if width == 1:
            continue
        if dp == 1:
            comms.append(Comm(module=block[1], layer_kind=block[0], count=op.count, collective="all_reduce",
                              message_bytes=f"({op.tokens})*{hidden}*{act_bytes}", num_gpus=tp, cross_node=cross_node))
        elif ep > 1:
            msg = f"({op.tokens})*{op.topk}*{hidden}*{act_bytes}"
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
    out = []
    for i, op in enumerate(ops):
        if isinstance(op, Gemm) and op.operand == "weight":
            b = op.batch
            params = op.n * op.k * (int(b) if b.isdigit() else 1) * op.count
            share = 1.0 if roles[i] == "replicated" else 1.0 / plan.tp
            out.append((op, params, share))
        elif isinstance(op, MoE):
            params = op.experts * op.hidden * op.inter * (3 if op.gated else 2) * op.count
            out.append((op, params, 1.0 / (plan.ep * plan.moe_tp)))
    return out
