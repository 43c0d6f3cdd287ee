"""Exported program -> networkx DiGraph: one node per ATen op, attributes as plain dicts.

Node attributes: op ("aten.linear"), category (matmul / attention / conv / elementwise / reduction / memory /
view), module (dotted module path), layer_kind (index into the layer plan, or None outside the layer stack),
repeat (layers of that kind in the full model, 1 outside), inputs (list of {src, shape, dtype}: src is a node name,
"param:<fqn>", "buffer:<fqn>", "input" or "const"), out_shapes / out_dtypes, flops and bytes (expressions in B, S,
L as text). Edges carry data flow between op nodes.
"""
from __future__ import annotations

import operator

import networkx as nx
import sympy
import torch

from core.aten import CASTS, INDEXING
from graph import formulas
from graph.walk import follow_until
from core.expr import unknowns as expr_unknowns

WRAPPER_PREFIX = "model."  # the export wrapper holds the model as attribute `model`
# view-category ops that make a new tensor rather than an alias of their input
ALLOCATIONS = ("aten.new_empty", "aten.empty_like", "aten.empty", "aten.empty_strided", "aten.scalar_tensor")


def _placeholder_sources(program) -> dict[str, str]:
    sig = program.graph_signature
    src = {name: f"param:{fqn}" for name, fqn in sig.inputs_to_parameters.items()}
    src.update({name: f"buffer:{fqn}" for name, fqn in sig.inputs_to_buffers.items()})
    src.update({name: "const" for name in sig.inputs_to_lifted_tensor_constants})
    for name in sig.user_inputs:
        src.setdefault(name, "input")
    return src


def _text(expr, rename: dict) -> str:
    if isinstance(expr, int):
        return str(expr)
    if isinstance(expr, torch.SymInt):
        expr = expr.node.expr
    expr = sympy.sympify(expr)
    return str(_renamed(expr, rename)) if expr.free_symbols else str(int(expr))


def _renamed(expr, rename: dict):
    """Export's symbols replaced by their roles, matched by name: export's symbols carry assumptions (sizes are
    positive, data-dependent ones only integer) that a plain Symbol of the same name does not."""
    by_name = {s.name: role for s, role in rename.items()}
    return expr.xreplace({s: by_name[s.name] for s in expr.free_symbols if s.name in by_name})


def _shape(t, rename) -> list[str]:
    return [_text(d, rename) for d in t.shape]


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path[len(WRAPPER_PREFIX):] if path.startswith(WRAPPER_PREFIX) else path


def _layer_kind(module: str, stack_path: str):
    prefix = stack_path + "."
    if not module.startswith(prefix):
        return None
    head = module[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _vals(arg):
    """Replace fx nodes in an argument structure by their recorded values."""
    if isinstance(arg, torch.fx.Node):
        return arg.meta.get("val")
    if isinstance(arg, (list, tuple)):
        return type(arg)(_vals(a) for a in arg)
    return arg


def _split_part_means(program, rename: dict) -> tuple[dict, list[str]]:
    """Data-dependent sizes (export's unbacked symbols: a `.tolist()` of per-expert token counts) that are the parts
    of one split of a dimension of known size: each is priced at its mean, dim / parts, i.e. balanced routing
    (tokens x top-k / experts for an MoE's dispatch). Returns {symbol: mean} and a note."""
    means, notes = {}, []
    for node in program.graph.nodes:
        if node.op != "call_function" or formulas.op_name(node.target) != "aten.split_with_sizes" \
                or len(node.args) < 2 or not isinstance(node.args[0], torch.fx.Node):
            continue
        sizes = [_vals(a) for a in node.args[1]]
        syms = [s.node.expr for s in sizes if isinstance(s, torch.SymInt)]
        if len(syms) != len(sizes) or not all(isinstance(s, sympy.Symbol) and _unbacked(s) for s in syms) \
                or len(set(syms)) != len(syms) or all(s in means for s in syms):
            continue
        val = node.args[0].meta.get("val")
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if not isinstance(val, torch.Tensor):
            continue
        total = val.shape[dim]
        total = _renamed(sympy.sympify(total.node.expr if isinstance(total, torch.SymInt) else total), rename)
        if any(_unbacked(s) for s in total.free_symbols):
            continue
        mean = total / len(syms)
        means.update({s: mean for s in syms})
        notes.append(f"{total} rows split {len(syms)} ways: {mean}")
    if means:
        names = sorted((str(s) for s in means), key=lambda n: int(n[1:]))
        notes = [f"data-dependent sizes {names[0]}..{names[-1]} (parts of a split of known total, e.g. per-expert "
                 f"token counts) priced at their mean, as under balanced routing ({'; '.join(dict.fromkeys(notes))})"]
    return means, notes


# selections by value (nonzero; torch.where with the condition alone): their row count depends on the data
SELECTION_OPS = ("aten.nonzero", "aten.where", "aten.argwhere")


def _one_hot_count_means(program, rename: dict) -> tuple[dict, list[str]]:
    """Data-dependent counts of a selection from (a view of) a one-hot encoding over C classes, such as the tokens
    an MoE routed to one expert (nonzero of expert_mask[e], the mask one_hot(top-k indices, experts)): each is
    priced at its mean, the selected tensor's element count / C, as under balanced routing (every class equally
    likely). C counts the classes the indices can reach: top-k indices over E experts one-hot over E + 1 classes
    (a sentinel for dropped tokens) reach E. Returns {symbol: mean} and a note."""
    means, seen = {}, {}
    for node in program.graph.nodes:
        bindings = node.meta.get("unbacked_bindings") or {}
        if not bindings or node.op != "call_function" or not isinstance(node.args[0], torch.fx.Node) \
                or formulas.op_name(node.target) not in SELECTION_OPS or len(node.args) != 1:
            continue
        classes = _one_hot_classes(node.args[0])
        val = node.args[0].meta.get("val")
        if classes is None or not isinstance(val, torch.Tensor):
            continue
        numel = sympy.Integer(1)
        for d in val.shape:
            numel *= _renamed(sympy.sympify(d.node.expr if isinstance(d, torch.SymInt) else d), rename)
        if any(_unbacked(s) for s in numel.free_symbols):
            continue
        for symbol in bindings:
            means[symbol] = numel / classes
        seen[f"{numel} elements of a one-hot over {classes} classes: {numel / classes}"] = True
    notes = [f"data-dependent sizes (selections from a one-hot encoding, e.g. the tokens routed to one expert) "
             f"priced at their mean, as under balanced routing ({'; '.join(seen)})"] if means else []
    return means, notes


_INDEXING = {f"aten.{name}": rule for name, rule in INDEXING.items()}


def _first_arg(node) -> list:
    """A walk's step from an fx node to its first argument."""
    return [node.args[0]]


def _passes_value(node, stop: tuple[str, ...], casts: bool = True) -> bool:
    """Whether fx node `node` hands on its first argument's values as they are (a view, or with casts a cast; not a
    getitem and none of `stop`), so a walk back may go on through it."""
    if node.op != "call_function" or node.target is operator.getitem or not node.args \
            or not isinstance(node.args[0], torch.fx.Node):
        return False
    name = formulas.op_name(node.target)
    return name not in stop and (formulas.category_of(name) == "view" or casts and name in CASTS)


def _index_range(node) -> int | None:
    """How many values an index tensor can take (n for indices into a dim of size n: top-k, sort, argmax), followed
    back through view ops and casts; None where not known."""
    node, _ = follow_until([node], _first_arg, lambda n: _passes_value(n, tuple(_INDEXING)))
    if node is None or node.op != "call_function":
        return None
    picked = None
    if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        picked, node = node.args[1], node.args[0]  # one output of a multi-output op
    name = formulas.op_name(node.target) if node.op == "call_function" else None
    if name not in _INDEXING:
        return None
    out, position, default = _INDEXING[name]
    if out != picked or not isinstance(node.args[0], torch.fx.Node):
        return None
    dim = node.args[position] if len(node.args) > position else node.kwargs.get("dim", default)
    if dim is None:
        return None
    size = node.args[0].meta["val"].shape[dim]
    return size if type(size) is int else None


def _one_hot_classes(node) -> int | None:
    """The class count of the one-hot encoding `node` views (through view ops only), or None."""
    node, _ = follow_until([node], _first_arg, lambda n: _passes_value(n, ("aten.one_hot",), casts=False))
    if node is None or node.op != "call_function" or formulas.op_name(node.target) != "aten.one_hot":
        return None
    size = node.meta["val"].shape[-1]
    if type(size) is not int:
        return None
    reached = _index_range(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
    return min(size, reached) if reached else size


def _unbacked(sym) -> bool:
    """An unbacked (data-dependent) size symbol of torch's symbolic shapes: u0, u1..."""
    return str(sym).startswith("u") and str(sym)[1:].isdigit()


def build_graph(phase, plan) -> nx.DiGraph:
    """phase: tracer.export.ExportedPhase; plan: tracer.layers.LayerPlan (for layer kinds and repeat counts)."""
    program = phase.program
    # a role is B, S or L, or an expression in them (the bound of a data-dependent size, e.g. B*S)
    roles = {r: sympy.Symbol(r) for r in ("B", "S", "L")}
    rename = {sympy.Symbol(name): sympy.sympify(role, locals=roles) for name, role in phase.symbols.items()}
    means, notes = _split_part_means(program, rename)
    rename.update(means)
    selected, selected_notes = _one_hot_count_means(program, rename)
    rename.update(selected)
    notes += selected_notes
    counts = {k.index: k.count for k in plan.kinds}
    sources = _placeholder_sources(program)
    g = nx.DiGraph(phase=phase.phase)
    for node in program.graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, (torch._ops.OpOverload,
                                                                        torch._ops.HigherOrderOperator)):
            continue  # python arithmetic on symbolic sizes is bookkeeping, not a kernel
        name = formulas.op_name(node.target)
        args = _vals(node.args)
        out = node.meta.get("val")
        inputs = []
        for a in _tensor_args(node):
            val = a.meta.get("val")
            if not isinstance(val, torch.Tensor):
                continue
            src = sources.get(a.name, a.name) if a.op == "placeholder" else _producer(a)
            inputs.append({"src": src, "shape": _shape(val, rename), "dtype": str(val.dtype).replace("torch.", "")})
        outs = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
        module = _module_path(node)
        kind = _layer_kind(module, plan.stack_path)
        g.add_node(node.name,
                   op=name,
                   category=formulas.category_of(name),
                   module=module,
                   layer_kind=kind,
                   repeat=counts[kind] if kind is not None else 1,
                   inputs=inputs,
                   out_shapes=[_shape(t, rename) for t in outs],
                   out_dtypes=[str(t.dtype).replace("torch.", "") for t in outs],
                   consts=_constants(node),
                   flops=_text(formulas.flops(name, args, out), rename),
                   bytes=_text(formulas.bytes_moved(name, args, out), rename))
        g.add_edges_from((_producer(a), node.name) for a in node.all_input_nodes if _producer(a) in g)
    _mutation_edges(g, program)
    unknown = sorted({name for _, a in g.nodes(data=True) for name in expr_unknowns(a["flops"], a["bytes"])})
    if unknown:
        notes.append(f"data-dependent sizes {', '.join(unknown)} with no structural bound are counted as 0 (a lower "
                     f"bound); the ops that use them are listed as unsupported")
    if notes:
        g.graph["note"] = "; ".join(notes)
    return g


def _constants(node) -> dict:
    """The op's plain constant arguments by name (an einsum's equation, a dim, a scale): what a replay of the op
    needs besides its input shapes. Sizes, dtypes and tensors are left out."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    named = {arg.name: value for arg, value in zip(schema.arguments, node.args)}
    named.update(node.kwargs)
    plain = (bool, int, float, str)
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in named.items()
            if type(v) in plain or (isinstance(v, (list, tuple)) and v and all(type(x) in plain for x in v))}


def _tensor_args(node) -> list:
    """The node's fx-node arguments in call order, repeats kept (SDPA's K and V may be one tensor)."""
    found = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
    return found


def _producer(node) -> str:
    """The op that made a value: `getitem` picks one output of a multi-output op (split, topk...) and is no op."""
    made, _ = follow_until([node], _first_arg, lambda n: n.op == "call_function" and n.target is operator.getitem
                           and isinstance(n.args[0], torch.fx.Node))
    return made.name


def _mutation_edges(g: nx.DiGraph, program) -> None:
    """In-place ops (copy_ into a slice of a fresh buffer, index_put_...) write a tensor that later ops read
    through its base: add an edge from the writer to every later reader of that base, so data flow is complete."""
    order = [n for n in program.graph.nodes if n.name in g]
    position = {n.name: i for i, n in enumerate(order)}
    for node in order:
        parts = str(node.target).split(".")  # "aten.copy_.default"; a higher-order op's name may have no dot
        if len(parts) < 2 or not parts[-2].endswith("_") or not node.all_input_nodes:
            continue
        base = node.args[0] if isinstance(node.args[0], torch.fx.Node) else None
        if base is not None:  # through aliases (slice, view, transpose...) to the tensor they share storage with
            base, _ = follow_until([base], _first_arg, lambda n: n.name in g and g.nodes[n.name]["category"] == "view"
                                   and g.nodes[n.name]["op"] not in ALLOCATIONS
                                   and isinstance(n.args[0], torch.fx.Node))
        if base is None:
            continue
        for user in base.users:
            if user.name in g and user is not node and position.get(user.name, -1) > position[node.name]:
                g.add_edge(node.name, user.name)
