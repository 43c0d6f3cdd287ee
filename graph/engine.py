"""The one matching engine: rules (graph/patterns.py, listed there in priority order) claim subgraphs and turn
them into cost ops; what is left is fused into memory-bound ops or reported as unsupported. graph/match.py hands
the rules to it.

Rules are tried in the order given, each at its anchor ops in topological order; a node belongs to the first rule
that claims it. Rules read structure only: op names, shapes, data flow, parameter shapes and module containment
(one module path being a prefix of another), never a model type or module class name.

Fusion, as serving engines do it (off with fuse=False): sibling weight GEMMs that read the same activation (q, k,
v; gate and up) become one GEMM with the summed n (the GEMM rule does it); adjacent memory-bound nodes (norms,
residual adds, activations, rotary) of one layer become one op whose bytes are what the group reads from and
writes to the rest of the graph.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import networkx as nx

from core.dtypes import element_bytes
from core.ops import CostOp, MemoryBound, Unsupported
from core.expr import evaluate, unknowns

MEMORY_CATEGORIES = ("elementwise", "reduction", "memory")
# Leftovers below this many bytes at a reference size (B=1, S=4096, L=4096) are bookkeeping, not work.
UNSUPPORTED_MIN_BYTES = 1 << 20
REFERENCE = {"B": 1, "S": 4096, "L": 4096}


@dataclass
class Context:
    g: nx.DiGraph
    phase: str
    tokens: str                      # "B*S" in prefill, "B" in decode
    fuse: bool = True
    windows: dict = field(default_factory=dict)   # what decode shows and prefill needs: sliding windows by
                                                  # (layer_kind, module), recurrent state shapes by ("state", kind)
    claimed: dict = field(default_factory=dict)   # node -> index of the op that took it
    kv_writes: dict = field(default_factory=dict)  # cache-append node -> bytes an engine writes for it
    ops: list = field(default_factory=list)
    unknown: set = field(default_factory=set)      # nodes whose size is data-dependent with no bound

    def claim(self, nodes, op: CostOp | None) -> None:
        index = len(self.ops)
        if op is not None:
            self.ops.append(op)
        for n in nodes:
            self.claimed[n] = index if op is not None else -1

    def free(self, n) -> bool:
        return n not in self.claimed


class Rule(NamedTuple):
    """A pattern rule: fn(ctx, node) claims nodes through ctx.claim (or claims none). anchors: the op names it
    starts from, or a predicate on a node's attributes."""
    name: str
    anchors: tuple[str, ...] | Callable[[dict], bool]
    fn: Callable[[Context, str], None]


@dataclass
class Matched:
    phase: str
    ops: list[CostOp]
    unsupported: list[Unsupported]
    graph_flops: float = 0.0          # the graph's FLOPs at REFERENCE sizes
    unsupported_flops: float = 0.0    # of those, on nodes no pattern claimed

    @property
    def matched_share(self) -> float:
        return 1.0 if not self.graph_flops else 1.0 - self.unsupported_flops / self.graph_flops


def run(g: nx.DiGraph, phase: str, rules, *, fuse: bool = True, windows: dict | None = None,
        after=()) -> Matched:
    """Match one phase's graph: `rules` (Rule) in priority order, then memory-bound fusion, then the `after` passes
    (fn(ctx), which read the finished ops and the nodes each claimed), then the leftovers.
    windows: what an earlier phase's matching found for this one (graph.match.match_model)."""
    ctx = Context(g=g, phase=phase, tokens="B*S" if phase == "prefill" else "B", fuse=fuse,
                  windows={} if windows is None else windows)
    order = list(nx.topological_sort(g))
    # ops whose size is data-dependent with no bound (core.expr): no rule prices them, they are reported
    ctx.unknown = {n for n in order if unknowns(g.nodes[n]["flops"], g.nodes[n]["bytes"])}
    for _, anchors, fn in rules:
        for n in order:
            if ctx.free(n) and n not in ctx.unknown and \
                    (anchors(g.nodes[n]) if callable(anchors) else g.nodes[n]["op"] in anchors):
                fn(ctx, n)
    _memory_bound(ctx, order, fuse)
    for fn in after:
        fn(ctx)
    unsupported = _leftovers(ctx, order)
    total = sum(evaluate(a["flops"], **REFERENCE) * a["repeat"] for _, a in g.nodes(data=True))
    return Matched(phase=phase, ops=ctx.ops + unsupported, unsupported=unsupported, graph_flops=total,
                   unsupported_flops=sum(op.flops(REFERENCE) * op.count for op in unsupported))


# --- fusion ------------------------------------------------------------------------------------------------------

def common_module(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)


def tensor_bytes_expr(shape: list[str], dtype: str) -> str:
    size = element_bytes(dtype)
    return "*".join([f"({d})" for d in shape] + [str(size)]) if shape else str(size)


def _memory_bound(ctx: Context, order, fuse: bool) -> None:
    g = ctx.g
    free = [n for n in order if ctx.free(n) and g.nodes[n]["category"] in MEMORY_CATEGORIES and n not in ctx.unknown]
    if fuse:
        sub = g.subgraph(free).to_undirected(as_view=True)
        # one group per connected run of memory-bound nodes, never across layer kinds
        groups = []
        for comp in nx.connected_components(sub):
            by_kind: dict = {}
            for n in comp:
                by_kind.setdefault(g.nodes[n]["layer_kind"], []).append(n)
            groups.extend(by_kind.values())
    else:
        groups = [[n] for n in free]
    position = {n: i for i, n in enumerate(order)}
    for nodes in sorted(groups, key=lambda ns: min(position[n] for n in ns)):
        nodes = sorted(nodes, key=position.get)
        op = _memory_op(ctx, nodes)
        ctx.claim(nodes, op)


def _what(g, nodes, kv_writes) -> str:
    ops = {g.nodes[n]["op"].split(".", 1)[-1] for n in nodes}
    labels = []
    if ops & {"rsqrt", "var", "var_mean", "layer_norm", "native_layer_norm", "rms_norm", "group_norm"}:
        labels.append("norm")
    if ops & {"silu", "gelu", "relu", "tanh", "sigmoid", "softplus", "gelu_", "relu_", "erf"}:
        labels.append("activation")
    if ops & {"softmax", "_softmax", "_safe_softmax", "log_softmax"}:
        labels.append("softmax")
    if any(n in kv_writes for n in nodes):
        labels.append("kv_write")
    if ops & {"sin", "cos"}:
        labels.append("rotary")
    if not labels:
        labels.append("elementwise" if any(g.nodes[n]["category"] != "memory" for n in nodes) else "copy")
    return "+".join(labels)


def group_flops(g, nodes) -> str:
    """FLOPs of a group of nodes: the sum of theirs, as one expression."""
    return " + ".join(f"({g.nodes[n]['flops']})" for n in nodes if g.nodes[n]["flops"] != "0") or "0"


def group_bytes(g, nodes, kv_writes: dict) -> str:
    """Bytes a fused group moves: each tensor it reads from outside once, each tensor it hands outside once."""
    inside = set(nodes)
    terms, seen = [], set()
    for n in nodes:
        a = g.nodes[n]
        if n in kv_writes:
            terms.append(kv_writes[n])
            continue
        if a["category"] == "view":
            continue
        for inp in a["inputs"]:
            key = inp["src"]
            if key in inside or key in seen:
                continue
            seen.add(key)
            terms.append(tensor_bytes_expr(inp["shape"], inp["dtype"]))
        succs = list(g.successors(n))
        if not succs or any(s not in inside for s in succs):
            terms += [tensor_bytes_expr(s, d) for s, d in zip(a["out_shapes"], a["out_dtypes"])]
    return " + ".join(terms) if terms else "0"


def _memory_op(ctx, nodes) -> MemoryBound:
    g = ctx.g
    first = g.nodes[nodes[0]]
    flops = group_flops(g, nodes)
    return MemoryBound(module=common_module([g.nodes[n]["module"] for n in nodes]), layer_kind=first["layer_kind"],
                       count=first["repeat"], what=_what(g, nodes, ctx.kv_writes),
                       bytes_expr=group_bytes(g, nodes, ctx.kv_writes),
                       flops_expr=flops, nodes=len(nodes))


def _leftovers(ctx, order) -> list[Unsupported]:
    g = ctx.g
    out = []
    for n in order:
        if not ctx.free(n):
            continue
        a = g.nodes[n]
        flops = evaluate(a["flops"], **REFERENCE)
        moved = evaluate(a["bytes"], **REFERENCE)
        if flops <= 0 and moved < UNSUPPORTED_MIN_BYTES and n not in ctx.unknown:
            ctx.claim([n], None)  # metadata and bookkeeping: no kernel
            continue
        op = Unsupported(module=a["module"], layer_kind=a["layer_kind"], count=a["repeat"], op=a["op"],
                         shapes=[i["shape"] for i in a["inputs"]], flops_expr=a["flops"], bytes_expr=a["bytes"],
                         consts=a.get("consts", {}))
        ctx.claim([n], op)
        out.append(op)
    ctx.ops = [op for op in ctx.ops if not isinstance(op, Unsupported)]
    return out
