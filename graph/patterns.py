"""Pattern rules: each recognises one kind of kernel by structure and claims its ATen nodes.

RULES, at the end, lists them in priority order (first claim wins). The engine (graph/engine.py) runs them and
then does memory-bound fusion and the unsupported report; graph/match.py joins the two.
"""
from __future__ import annotations

import math
import re
from dataclasses import replace

import networkx as nx

from core.aten import CASTS as ALL_CASTS, COPIES
from core.ops import MLA, Attention, Conv, Embedding, Gemm, MoE, Scan
from core.expr import evaluate
from graph.engine import REFERENCE, Context, Rule, common_module, group_bytes, group_flops, tensor_bytes_expr
from graph.walk import follow, follow_until

GEMM_OPS = ("aten.linear", "aten.mm", "aten.addmm", "aten.matmul", "aten.bmm", "aten.baddbmm", "aten.einsum")
SDPA_OPS = ("aten.scaled_dot_product_attention", "aten._scaled_dot_product_flash_attention",
            "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention",
            "aten._scaled_dot_product_flash_attention_for_cpu")
GROUPED_OPS = ("aten._grouped_mm", "transformers.grouped_mm_fallback")
CONV_OPS = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution", "aten._convolution")
CASTS = ALL_CASTS + COPIES  # ops a pattern looks through: they leave values as they are
LAYOUTS = ("aten.transpose", "aten.t", "aten.permute")  # a weight read transposed is the same weight


# --- small structural helpers ------------------------------------------------------------------------------------

def product(dims: list[str]) -> str:
    numeric = [int(d) for d in dims if d.isdigit()]
    symbolic = [f"({d})" if not d.isdigit() else None for d in dims]
    symbolic = [d for d in symbolic if d]
    const = math.prod(numeric)
    parts = ([str(const)] if const != 1 or not symbolic else []) + symbolic
    return "*".join(parts)


def as_int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _first_input(g: nx.DiGraph):
    """A walk's step to the value a node's first input is (a node name, or "param:<fqn>" and the like)."""
    return lambda n: [g.nodes[n]["inputs"][0]["src"]] if g.nodes[n]["inputs"] else []


def _retyped(g: nx.DiGraph, layouts: bool = False):
    """Whether a value is a node that leaves it as it is: a view or a cast (and with layouts, a transpose)."""
    return lambda n: n in g and (g.nodes[n]["category"] == "view" or g.nodes[n]["op"] in CASTS
                                 or layouts and g.nodes[n]["op"] in LAYOUTS)


def weight_of(ctx: Context, src: str) -> str | None:
    """The parameter a GEMM operand is, followed through casts, transposes and views; None for activations."""
    end, _ = follow_until([src], _first_input(ctx.g), _retyped(ctx.g, layouts=True))
    return end if end is not None and end.startswith(("param:", "buffer:")) else None


def kv_heads_upstream(ctx: Context, src: str) -> int | None:
    """KV heads of an attention's K (or V) input before any head replication: the fewest heads any
    (..., heads, length, dim) view on the way back to the op that made it shows (GQA expands 8 heads to 32 by
    views just before the kernel). None where no such view has a number there."""
    g = ctx.g
    end, passed = follow_until([src], _first_input(g), _retyped(g))
    heads = [int(shape[-3]) for m in passed + [end] if m in g
             for shape in g.nodes[m]["out_shapes"][:1] if len(shape) == 4 and shape[-3].isdigit()]
    return min(heads) if heads else None


def in_module(module: str, scope: str) -> bool:
    return module == scope or module.startswith(scope + ".")


def upstream_gemms(ctx: Context, start: str, scope: str) -> set[str]:
    """Weight GEMM nodes reached upstream of `start` without leaving module `scope` or passing another GEMM."""
    g = ctx.g

    def weight_gemm(n):
        a = g.nodes[n]
        return a["op"] in GEMM_OPS and len(a["inputs"]) > 1 and weight_of(ctx, a["inputs"][1]["src"]) is not None

    def inside(n):
        return n in g and in_module(g.nodes[n]["module"], scope)

    reached = follow([start], g.predecessors, lambda n: inside(n) and not weight_gemm(n))
    return {n for n in reached if inside(n) and weight_gemm(n)}


def module_nodes(ctx: Context, scope: str) -> list[str]:
    return [n for n, a in ctx.g.nodes(data=True) if in_module(a["module"], scope) and ctx.free(n)]


# --- attention -----------------------------------------------------------------------------------------------------

def attention_phase(ctx: Context, q_len: str) -> str:
    """Generation: one new query per sequence over a cache. A decode step whose queries are the whole sequence
    (a model that keeps no cache recomputes it) runs context attention."""
    return "generation" if ctx.phase == "decode" and q_len == "1" else "context"


def attention(ctx: Context, n: str) -> None:
    g, a = ctx.g, ctx.g.nodes[n]
    q, k, v = (i["shape"] for i in a["inputs"][:3])
    scope = a["module"]
    kv_gemms = upstream_gemms(ctx, a["inputs"][1]["src"], scope) | upstream_gemms(ctx, a["inputs"][2]["src"], scope)
    latent = [m for m in kv_gemms if upstream_gemms(ctx, g.nodes[m]["inputs"][0]["src"], scope) - {m}]
    if latent:
        return _mla(ctx, n, latent[0], q, k, v)
    phase = attention_phase(ctx, q[-2])
    kv_len = k[-2]
    key = (a["layer_kind"], scope)
    if phase == "generation" and as_int(kv_len):
        ctx.windows[key] = int(kv_len)  # the cache stopped growing: a sliding window
    window = ctx.windows.get(key, 0)
    if not (q[-1].isdigit() and v[-1].isdigit()):
        return  # head dims must be known numbers; left for the unsupported report
    # SDPA reads (..., heads, length, dim): the dim before the length is the heads where it is a number; where it
    # is not, every leading dim is batch
    heads_known = len(q) >= 3 and q[-3].isdigit()
    q_heads = int(q[-3]) if heads_known else 1
    kv_heads = kv_heads_upstream(ctx, a["inputs"][1]["src"])
    if not heads_known or kv_heads is None or kv_heads > q_heads:
        kv_heads = as_int(k[-3]) if heads_known and as_int(k[-3]) else q_heads
    op = Attention(module=scope, layer_kind=a["layer_kind"], count=a["repeat"], phase=phase,
                   batch=product(q[:-3] if heads_known else q[:-2]), q_len=q[-2], kv_len=kv_len, q_heads=q_heads,
                   kv_heads=kv_heads, head_dim=int(q[-1]), v_head_dim=int(v[-1]), window=window,
                   dtype=a["out_dtypes"][0])
    ctx.claim([n], op)


SOFTMAX_OPS = ("aten.softmax", "aten._softmax", "aten._safe_softmax")


def _activation_matmul(ctx: Context, n: str) -> bool:
    a = ctx.g.nodes[n]
    return a["op"] in GEMM_OPS and len(a["inputs"]) >= 2 and not any(
        weight_of(ctx, i["src"]) or i["src"].startswith(("param:", "buffer:")) for i in a["inputs"][:2])


def _nearest_score_matmul(ctx: Context, start: str, step, scope: str) -> tuple[str | None, list[str]]:
    """Follow `step` (predecessors or successors) through free non-matmul nodes of `scope` to the first activation
    matmul; returns it and the nodes passed on the way."""
    g = ctx.g

    def near(m):
        return in_module(g.nodes[m]["module"], scope) and ctx.free(m)

    return follow_until(step(start), step, lambda m: near(m) and g.nodes[m]["category"] in (
        "elementwise", "view", "memory", "reduction"), until=lambda m: near(m) and _activation_matmul(ctx, m))


def eager_attention(ctx: Context, n: str) -> None:
    """Attention written out: scores = q @ k^T (scaled, masked, maybe with sinks), softmax, then @ v."""
    g, a = ctx.g, ctx.g.nodes[n]
    scope = a["module"]
    if all(m == n or g.nodes[m]["category"] == "view" for m in module_nodes(ctx, scope)):
        scope = scope.rpartition(".")[0]  # the softmax is a submodule of its own (nn.Softmax): its parent attends
    qk, before = _nearest_score_matmul(ctx, n, g.predecessors, scope)
    pv, after = _nearest_score_matmul(ctx, n, g.successors, scope)
    if qk is None or pv is None:
        return
    q_in, k_in = _score_operands(g.nodes[qk])
    q, kt = q_in["shape"], k_in["shape"]
    v = g.nodes[pv]["inputs"][1]["shape"]
    heads_batch = _heads_and_batch(q)
    if len(v) < 3 or not (q[-1].isdigit() and v[-1].isdigit()) or heads_batch is None:
        return
    q_heads, batch = heads_batch
    phase = attention_phase(ctx, q[-2])
    kv_len = kt[-1]
    key = (a["layer_kind"], scope)
    if phase == "generation" and as_int(kv_len):
        ctx.windows[key] = int(kv_len)
    kv_heads = kv_heads_upstream(ctx, k_in["src"])
    op = Attention(module=scope, layer_kind=a["layer_kind"], count=a["repeat"], phase=phase, batch=batch,
                   q_len=q[-2], kv_len=kv_len, q_heads=q_heads, kv_heads=kv_heads or q_heads,
                   head_dim=int(q[-1]), v_head_dim=int(v[-1]), window=ctx.windows.get(key, 0),
                   dtype=q_in.get("dtype") or a["out_dtypes"][0])  # the query's: a softmax may run in fp32
    ctx.claim([qk, *before, n, *after, pv], op)


def _score_operands(node: dict) -> tuple[dict, dict]:
    """The q and k^T inputs of the score GEMM: baddbmm / addmm add a bias (ALiBi) given first."""
    ins = node["inputs"]
    first = 1 if node["op"] in ("aten.baddbmm", "aten.addmm") and len(ins) > 2 else 0
    return ins[first], ins[first + 1]


_FOLDED_HEADS = re.compile(r"^(\d+)\*([A-Za-z(][\w*()]*)$")  # "8*B": heads x sequences in one dim


def _heads_and_batch(q: list[str]) -> tuple[int, str] | None:
    """(heads, batch) of a query laid out (..., heads, q_len, head_dim), or (heads * batch, q_len, head_dim) with
    the heads folded into the batch dim; None where the shape says neither."""
    if len(q) >= 3 and q[-3].isdigit():
        return int(q[-3]), product(q[:-3])
    folded = _FOLDED_HEADS.match(q[0]) if len(q) == 3 else None
    return (int(folded.group(1)), folded.group(2)) if folded else None


def _mla(ctx: Context, n: str, kv_b: str, q, k, v) -> None:
    """Latent attention: K and V come from a projection whose input is itself projected (the latent)."""
    g, a = ctx.g, ctx.g.nodes[n]
    w = g.nodes[kv_b]["inputs"][1]["shape"]            # kv_b weight: (heads * (nope + v), rank)
    heads, qk, vd = int(q[-3]), int(q[-1]), int(v[-1])
    rank = int(w[-1])
    nope = int(w[0]) // heads - vd
    phase = attention_phase(ctx, q[-2])
    op = MLA(module=a["module"], layer_kind=a["layer_kind"], count=a["repeat"], phase=phase, batch=product(q[:-3]),
             q_len=q[-2], kv_len=k[-2], heads=heads, kv_lora_rank=rank, qk_nope_head_dim=nope,
             qk_rope_head_dim=qk - nope, v_head_dim=vd, dtype=a["out_dtypes"][0])
    # The K/V assembly between the latent's expansion and the kernel (split, rope-key broadcast, concat) is
    # inside an MLA kernel; in decode HF redoes it over the whole cache every step, engines never do.
    between = {m for m in nx.descendants(g, kv_b) & nx.ancestors(g, n)
               if ctx.free(m) and in_module(g.nodes[m]["module"], a["module"]) and g.nodes[m]["op"] not in GEMM_OPS}
    ctx.claim([n, *sorted(between)], op)
    if phase == "generation":
        # Engines run decode weight-absorbed: no expansion of the cached latent; instead each head's query is
        # projected into the latent space and the attention output back out of it (two batched GEMMs).
        tokens = product(q[:-3] + [q[-2]])
        ctx.claim([kv_b], Gemm(module=g.nodes[kv_b]["module"], layer_kind=a["layer_kind"], count=a["repeat"],
                               m=tokens, n=rank, k=nope, batch=str(heads), operand="weight"))
        ctx.ops.append(Gemm(module=g.nodes[kv_b]["module"], layer_kind=a["layer_kind"], count=a["repeat"],
                            m=tokens, n=vd, k=rank, batch=str(heads), operand="weight"))


# --- mixture of experts --------------------------------------------------------------------------------------------

def moe(ctx: Context, n: str) -> None:
    g = ctx.g
    offsets = g.nodes[n]["inputs"][2]["src"] if len(g.nodes[n]["inputs"]) > 2 else None
    members = [m for m, a in g.nodes(data=True) if a["op"] in GROUPED_OPS and ctx.free(m)
               and len(a["inputs"]) > 2 and a["inputs"][2]["src"] == offsets]
    order = {m: i for i, m in enumerate(g.nodes)}
    members.sort(key=order.get)
    first, last = g.nodes[members[0]], g.nodes[members[-1]]
    experts, hidden, up_n = (int(d) for d in first["inputs"][1]["shape"])
    inter = int(last["inputs"][1]["shape"][1])
    gated = up_n == 2 * inter or len(members) == 3
    rows = first["inputs"][0]["shape"][0]
    unit = {"B": 1, "S": 1, "L": 0}
    topk = round(evaluate(rows, **unit) / evaluate(ctx.tokens, **unit))
    scope = ".".join(first["module"].split(".")[:-1]) if len(members) > 1 and first["module"] != last["module"] \
        else first["module"]
    claimed = set(members) | {m for m in module_nodes(ctx, scope)
                              if g.nodes[m]["op"] not in GEMM_OPS or m in members}
    op = MoE(module=scope, layer_kind=first["layer_kind"], count=first["repeat"], tokens=ctx.tokens, hidden=hidden,
             inter=inter, topk=topk, experts=experts, gated=gated, dtype=first["out_dtypes"][0])
    ctx.claim(sorted(claimed, key=order.get), op)


def expert_weight(ctx: Context, src: str) -> str | None:
    """The stacked parameter (experts x out x in) a GEMM operand selects one expert's weight from (weight[e] in a
    Python loop over the experts), followed through casts and views; None for any other operand."""
    g = ctx.g
    end, passed = follow_until([src], _first_input(g), _retyped(g, layouts=True))
    selected = any(g.nodes[m]["op"] == "aten.select" and len(g.nodes[m]["inputs"][0]["shape"]) == 3
                   and g.nodes[m]["out_shapes"][0] == g.nodes[m]["inputs"][0]["shape"][1:] for m in passed)
    return end if selected and end is not None and end.startswith("param:") else None


def _expert_of(ctx: Context, n: str) -> str | None:
    """The stacked parameter whose one expert's slice is the weight operand of GEMM n (linear's weight, or the
    right operand of a matmul), or None."""
    a = ctx.g.nodes[n]
    return expert_weight(ctx, a["inputs"][1]["src"]) if a["op"] in EXPERT_GEMMS and len(a["inputs"]) > 1 else None


def _next_gemm(ctx: Context, n: str) -> str | None:
    """The nearest GEMM downstream of n through elementwise, view and memory ops only (an expert's activation)."""
    g = ctx.g
    found, _ = follow_until(g.successors(n), g.successors,
                            lambda m: g.nodes[m]["category"] in ("elementwise", "view", "memory"),
                            until=lambda m: g.nodes[m]["op"] in GEMM_OPS)
    return found


EXPERT_GEMMS = ("aten.linear", "aten.matmul", "aten.mm")


def expert_loop(ctx: Context, n: str) -> None:
    """Routed experts run one by one in a Python loop (unrolled by the trace): per expert, an up GEMM on its slice
    of a stacked parameter (or two, gate and up, on slices of two), an activation, a down GEMM on its slice of
    another; the rows each expert sees are its share of the routed tokens. One MoE op over the experts the loop
    runs, as the grouped kernels are priced; top-k is the routed rows per token, which must come out whole (else
    the GEMMs stay GEMMs)."""
    g = ctx.g
    up = _expert_of(ctx, n)
    down_node = _next_gemm(ctx, n) if up else None
    down = _expert_of(ctx, down_node) if down_node else None
    if not down or down == up:
        return
    rows = g.nodes[n]["inputs"][0]["src"]
    beside = {_expert_of(ctx, m) for m in g.successors(rows) if m != n} - {None, up, down} if rows in g else set()
    if len(beside) > 1:
        return
    kind = g.nodes[n]["layer_kind"]
    members = {p: [] for p in (up, *beside, down)}
    for m, a in g.nodes(data=True):
        if a["op"] in EXPERT_GEMMS and ctx.free(m) and a["layer_kind"] == kind and m not in ctx.unknown:
            param = _expert_of(ctx, m)
            if param in members:
                members[param].append(m)
    ups, downs = members[up], members[down]
    first, last = g.nodes[ups[0]], g.nodes[downs[0]]
    hidden, up_n = int(first["inputs"][0]["shape"][-1]), int(first["out_shapes"][0][-1])
    inter = int(last["inputs"][0]["shape"][-1])
    unit = {"B": 1, "S": 1, "L": 0}
    routed = sum(evaluate(product(g.nodes[m]["out_shapes"][0][:-1]), **unit) for m in ups)
    topk = routed / evaluate(ctx.tokens, **unit)
    sizes_fit = up_n == inter if beside else up_n in (inter, 2 * inter)  # gate and up apart, or one, or fused
    if len({len(v) for v in members.values()}) != 1 or not sizes_fit or round(topk) < 1 \
            or abs(topk - round(topk)) > 1e-6:
        return
    order = {m: i for i, m in enumerate(g.nodes)}
    gemms = [m for v in members.values() for m in v]
    scope = _parent(g, gemms)
    claimed = set(gemms) | {m for m in module_nodes(ctx, scope) if g.nodes[m]["op"] not in GEMM_OPS}
    op = MoE(module=scope, layer_kind=kind, count=first["repeat"], tokens=ctx.tokens, hidden=hidden, inter=inter,
             topk=round(topk), experts=len(ups), gated=bool(beside) or up_n == 2 * inter,
             dtype=first["out_dtypes"][0])
    ctx.claim(sorted(claimed, key=order.get), op)


# --- recurrent sequence mixers (Mamba, linear attention) ----------------------------------------------------------

def scan(ctx: Context, n: str) -> None:
    """A depthwise causal conv1d inside a module that has no attention kernel: the conv plus everything in that
    module between its input and output projections is one recurrent block (conv + scan kernels)."""
    g, a = ctx.g, ctx.g.nodes[n]
    x, w = a["inputs"][0]["shape"], a["inputs"][1]["shape"]
    if len(x) != 3 or len(w) != 3 or w[1] != "1":
        return
    scope = a["module"]
    if all(m == n or g.nodes[m]["category"] == "view" for m in module_nodes(ctx, scope)):
        scope = scope.rpartition(".")[0]  # the conv is a submodule of its own: the block is its parent
    nodes = module_nodes(ctx, scope)
    if any(g.nodes[m]["op"] in SDPA_OPS for m in nodes):
        return
    _conv(ctx, n)
    body = [m for m in nodes if m != n and g.nodes[m]["op"] not in ("aten.linear",) and ctx.free(m)
            and g.nodes[m]["category"] != "view"]
    if not body:
        return
    flops = group_flops(g, body)
    state = _state_shape(ctx, a["layer_kind"])
    heads, head_dim, size = (state + [1, 1, 1])[:3] if state else (1, 1, 1)
    variant = "delta" if any(g.nodes[m]["op"] in ("aten.linalg_vector_norm",) for m in body) or (
        state and state[1] == state[2]) else "ssm"
    if state is None and variant == "ssm":
        variant = "recurrence"  # no per-head state to size an SSM kernel by: priced by its own FLOPs and bytes
    op = Scan(module=scope, layer_kind=a["layer_kind"], count=a["repeat"], variant=variant, batch=x[0],
              length="S" if ctx.phase == "prefill" else "1", heads=heads, head_dim=head_dim, state=size, flops_expr=flops,
              bytes_expr=group_bytes(g, body, ctx.kv_writes))
    ctx.claim(body, op)


def recurrence(ctx: Context, n: str) -> None:
    """A loop over the tokens in the model's own code (folded by graph.loops: its nodes carry `steps`) that no
    scan pattern took: one recurrent kernel per module, as an engine fuses it. Its FLOPs are the loop's; its bytes
    are what a fused kernel moves: each tensor the loop reads from outside once (a per-step slice of a sequence
    tensor reads the whole tensor once over the steps) and each per-step result it hands out, once per step. The
    state carried from step to step stays on chip."""
    g, a = ctx.g, ctx.g.nodes[n]
    scope = a["module"]
    body = [m for m in module_nodes(ctx, scope) if g.nodes[m].get("steps") == a["steps"]]
    if all(g.nodes[m]["category"] == "view" for m in body):
        return  # what a scan pattern left of the loop: slicing its inputs, no work
    inside = set(body)
    flops = group_flops(g, body)
    terms, seen = [], set()
    for m in body:
        for i in g.nodes[m]["inputs"]:
            if i["src"] not in inside and i["src"] not in seen:
                seen.add(i["src"])
                terms.append(tensor_bytes_expr(i["shape"], i["dtype"]))
        if any(s not in inside for s in g.successors(m)):
            b = g.nodes[m]
            terms += [f"({a['steps']})*{tensor_bytes_expr(s, d)}" for s, d in zip(b["out_shapes"], b["out_dtypes"])]
    state = _state_shape(ctx, a["layer_kind"])
    heads, head_dim, size = (state + [1, 1, 1])[:3] if state else (1, 1, 1)
    op = Scan(module=scope, layer_kind=a["layer_kind"], count=a["repeat"], variant="recurrence", batch="B",
              length=a["steps"], heads=heads, head_dim=head_dim, state=size, flops_expr=flops,
              bytes_expr=" + ".join(terms) or "0")
    ctx.claim(body, op)


def _state_shape(ctx: Context, layer_kind) -> list[int] | None:
    """Heads, per-head width and state size of the layer's recurrent state, from the decode-cache input it reads
    that does not feed a convolution (that one is the conv window): 4-D [B, heads, head_dim, state] as Mamba-2
    and delta rules keep it, or 3-D [B, channels, state] as a Mamba-1 selective scan keeps it (one channel per
    head). Decode is matched first and leaves it for prefill, whose graph has no cache."""
    key = ("state", layer_kind)
    for n, a in ctx.g.nodes(data=True):
        if a["layer_kind"] != layer_kind:
            continue
        for i in a["inputs"]:
            if i["src"] != "input" or len(i["shape"]) not in (3, 4) or "L" in "".join(i["shape"]):
                continue
            dims = [as_int(d) for d in i["shape"][1:]]
            if all(dims) and not _feeds_conv(ctx.g, n):
                ctx.windows[key] = dims if len(dims) == 3 else [dims[0], 1, dims[1]]
    return ctx.windows.get(key)


def _feeds_conv(g: nx.DiGraph, n: str, hops: int = 4) -> bool:
    reached = nx.single_source_shortest_path_length(g, n, cutoff=hops)
    return any(g.nodes[m]["op"] in CONV_OPS for m in reached)


def conv(ctx: Context, n: str) -> None:
    _conv(ctx, n)


def _conv(ctx: Context, n: str) -> None:
    a = ctx.g.nodes[n]
    x, w = a["inputs"][0]["shape"], a["inputs"][1]["shape"]
    channels, out_channels = int(x[1]), int(w[0])
    ctx.claim([n], Conv(module=a["module"], layer_kind=a["layer_kind"], count=a["repeat"], batch=x[0],
                        length=product(x[2:]), channels=channels, out_channels=out_channels,
                        kernel=math.prod(int(d) for d in w[2:]), groups=channels // int(w[1]),
                        dtype=a["out_dtypes"][0]))


# --- GEMMs -----------------------------------------------------------------------------------------------------------

def gemm(ctx: Context, n: str) -> None:
    g, a = ctx.g, ctx.g.nodes[n]
    if a["op"] == "aten.einsum" or len(a["inputs"]) < 2:
        return _activation_gemm(ctx, n)
    x, src = a["inputs"][0]["shape"], a["inputs"][0]["src"]
    weight = weight_of(ctx, a["inputs"][1]["src"]) or (a["inputs"][1]["src"] if a["inputs"][1]["src"].startswith(
        ("param:", "buffer:")) else None)
    if a["op"] == "aten.addmm":
        x, src = a["inputs"][1]["shape"], a["inputs"][1]["src"]
        weight = weight_of(ctx, a["inputs"][2]["src"]) or a["inputs"][2]["src"]
        weight = weight if weight.startswith(("param:", "buffer:")) else None
    if weight is None:
        return _activation_gemm(ctx, n)
    out = a["out_shapes"][0]
    m, k = product(out[:-1]), int(x[-1])
    siblings = [n]
    if ctx.fuse and src in g:
        siblings += [s for s in g.successors(src) if s != n and ctx.free(s) and g.nodes[s]["op"] == a["op"]
                     and g.nodes[s]["layer_kind"] == a["layer_kind"] and g.nodes[s]["inputs"][0]["src"] == src
                     and len(g.nodes[s]["inputs"]) > 1 and weight_of(ctx, g.nodes[s]["inputs"][1]["src"])
                     and g.nodes[s]["out_shapes"][0][:-1] == out[:-1]]
    n_total = sum(int(g.nodes[s]["out_shapes"][0][-1]) for s in siblings)
    module = a["module"] if len(siblings) == 1 else _parent(g, siblings)
    ctx.claim(siblings, Gemm(module=module, layer_kind=a["layer_kind"], count=a["repeat"], m=m, n=n_total, k=k,
                             dtype=a["out_dtypes"][0]))


def _parent(g, nodes) -> str:
    return common_module([g.nodes[s]["module"] for s in nodes])


def _activation_gemm(ctx: Context, n: str) -> None:
    """A product of two computed tensors (attention written out by hand, linear-attention chunks, an indexer's
    scores of each query head against every key). One of the output's last two dims must be a number: a GEMM's n,
    or its m where the other grows with the sequence (C^T = B^T A^T: the same GEMM, m and n swapped)."""
    a = ctx.g.nodes[n]
    out = a["out_shapes"][0]
    if len(out) < 2 or not (out[-1].isdigit() or out[-2].isdigit()):
        return  # left for the unsupported report
    rows, cols = (out[-2], out[-1]) if out[-1].isdigit() else (out[-1], out[-2])
    elements = evaluate(product(out), **REFERENCE)  # at serving sizes: a dim such as S // 128 is 0 at S = 1
    if elements <= 0:
        return
    k = max(1, round(evaluate(a["flops"], **REFERENCE) / (2 * elements)))
    ctx.claim([n], Gemm(module=a["module"], layer_kind=a["layer_kind"], count=a["repeat"], m=rows,
                        n=int(cols), k=k, batch=product(out[:-2]) or "1", operand="activation",
                        dtype=a["out_dtypes"][0]))


# --- embeddings ------------------------------------------------------------------------------------------------------

def embedding(ctx: Context, n: str) -> None:
    a = ctx.g.nodes[n]
    ctx.claim([n], Embedding(module=a["module"], layer_kind=a["layer_kind"], count=a["repeat"],
                             tokens=product(a["inputs"][1]["shape"]), hidden=int(a["inputs"][0]["shape"][-1]),
                             dtype=a["out_dtypes"][0]))


# --- KV-cache writes ---------------------------------------------------------------------------------------------------

def kv_write(ctx: Context, n: str) -> None:
    """Decode appends the new token to a cache input: engines write only the new part into a paged cache, where
    HF's cat copies the whole cache. Marked here; priced as a memory-bound write of the appended bytes."""
    a = ctx.g.nodes[n]
    if ctx.phase != "decode" or not any(i["src"] == "input" for i in a["inputs"]):
        return
    new = [i for i in a["inputs"] if i["src"] != "input"]
    ctx.kv_writes[n] = " + ".join("2*" + tensor_bytes_expr(i["shape"], i["dtype"]) for i in new) or "0"


# --- work beside the routed experts ------------------------------------------------------------------------------

ADDS = ("aten.add", "aten.add_")


def beside_moe(ctx: Context) -> None:
    """Shared experts: a branch of the layer that reads only what the MoE op's inputs are made from and whose
    result is added to the MoE op's output (the first add after it, past views and casts). Every op whose nodes
    all lie on such a branch, if the branch holds a weight GEMM, is tagged as running beside that MoE op
    (concurrent_with: its module), which an engine may run on a second stream. A residual add reads the layer's
    input, which the MoE's inputs are made from: no branch."""
    g = ctx.g
    nodes_of: dict[int, list[str]] = {}
    for n, i in ctx.claimed.items():
        nodes_of.setdefault(i, []).append(n)
    for i, op in enumerate(list(ctx.ops)):
        if not isinstance(op, MoE):
            continue
        inside = set(nodes_of.get(i, ()))
        upstream = _reach(g, inside, g.predecessors, set()) - inside
        out = {m for n in inside for m in g.successors(n)} - inside
        join, passed = follow_until(out, g.successors, _retyped(g), until=lambda m: g.nodes[m]["op"] in ADDS)
        if join is None:
            continue
        sides = [s["src"] for s in g.nodes[join]["inputs"] if s["src"] in g
                 and s["src"] not in inside | set(passed) | upstream]
        branch = _reach(g, sides, g.predecessors, upstream | inside)
        if not any(g.nodes[m]["op"] in GEMM_OPS for m in branch):
            continue
        for j, nodes in nodes_of.items():
            if j >= 0 and j != i and set(nodes) <= branch:
                ctx.ops[j] = replace(ctx.ops[j], concurrent_with=op.module)


def _reach(g: nx.DiGraph, starts, step, stop: set) -> set:
    """The nodes reached from `starts` along `step`, not entering `stop` (no hop limit: a whole side of a layer)."""
    return set(follow((n for n in starts if n not in stop), lambda n: (m for m in step(n) if m not in stop),
                      lambda n: True, hops=g.number_of_nodes()))


# --- the rules, in priority order (a node belongs to the first rule that claims it) --------------------------------

RULES = (
    # attention kernels first: they take the score and value products, softmax and K/V assembly around them
    Rule("attention", SDPA_OPS, attention),                  # MLA found here too, by its projected latent
    Rule("eager_attention", SOFTMAX_OPS, eager_attention),   # attention written out: matmul, softmax, matmul
    # experts before plain GEMMs: their GEMMs are one MoE kernel
    Rule("moe", GROUPED_OPS, moe),
    Rule("expert_loop", EXPERT_GEMMS, expert_loop),
    # recurrent blocks before plain convolutions: a scan block takes its causal conv
    Rule("scan", CONV_OPS, scan),
    Rule("recurrence", lambda a: bool(a.get("steps")), recurrence),
    Rule("conv", CONV_OPS, conv),
    # what is left of the products: weight GEMMs (siblings fused) and activation GEMMs
    Rule("gemm", GEMM_OPS, gemm),
    Rule("embedding", ("aten.embedding",), embedding),
    # claims nothing: marks decode's cache appends for the memory-bound fusion that follows
    Rule("kv_write", ("aten.cat",), kv_write),
)

# passes over the matched ops, after memory-bound fusion
AFTER = (beside_moe,)
