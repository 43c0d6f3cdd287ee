"""Replay one ATen op from a collector case (``trace --collector-cases``): the op looked up in torch.ops, its
overload chosen by how many tensor inputs the case has, random tensors of the case's shapes and dtype for
its tensor arguments, the traced op's own constant arguments where the case gives them ("args": an einsum's
equation, a dim), defaults (or a small heuristic: dim=-1, k=1, ...) for the rest. Table aten_perf
(costmodel.tables.specs.ATEN), keyed by the op, dtype, input shapes and constant arguments; num_elements is the
total of input elements. Read back by the database's ``aten`` query.
"""
from __future__ import annotations

import math

import torch

from collector.common import TABLE_DTYPE, torch_dtype
from collector.registry import collector
from collector.timing import time_call
from costmodel.tables.specs import ATEN, args_key, shapes_key

INDEX_NAMES = {"index", "indices", "offsets", "target", "idx", "src_index"}


def _tensor_kind(arg) -> str | None:
    t = arg.type
    if isinstance(t, torch._C.OptionalType):
        t = t.getElementType()
    if isinstance(t, torch._C.TensorType):
        return "tensor"
    if isinstance(t, torch._C.ListType) and isinstance(t.getElementType(), (torch._C.TensorType, torch._C.OptionalType)):
        return "list"
    return None


def _fits(schema, n: int) -> bool:
    if any(a.is_out for a in schema.arguments) or schema.overload_name.startswith("out"):
        return False
    kinds = [(a, _tensor_kind(a)) for a in schema.arguments]
    if any(k == "list" for _, k in kinds):
        return n >= 1
    required = sum(1 for a, k in kinds if k == "tensor" and not a.has_default_value()
                   and not isinstance(a.type, torch._C.OptionalType))
    optional = sum(1 for _, k in kinds if k == "tensor") - required
    return required <= n <= required + optional


def resolve(op: str, n_tensors: int):
    """The OpOverload for 'aten.name[.overload]' taking n_tensors tensor inputs."""
    parts = op.split(".")
    if len(parts) < 2:
        raise ValueError(f"op {op!r} is not namespace.name[.overload]")
    ns, name = parts[0], parts[1]
    try:
        packet = getattr(getattr(torch.ops, ns), name)
    except (AttributeError, RuntimeError):
        raise ValueError(f"no operator {ns}.{name} in this torch ({torch.__version__})") from None
    names = packet.overloads()
    wanted = [parts[2]] if len(parts) > 2 else ["default", "Tensor", *sorted(names)]
    for o in dict.fromkeys(wanted):
        if o in names:
            overload = getattr(packet, o)
            if len(parts) > 2 or _fits(overload._schema, n_tensors):
                return overload
    raise ValueError(f"no overload of {ns}.{name} takes {n_tensors} tensor inputs")


def _filler(arg, shapes):
    """A value for a required non-tensor argument."""
    name, t = arg.name, str(arg.type)
    if t == "int" or t == "SymInt":
        return {"dim": -1, "k": 1, "chunks": 1, "split_size": 1, "groups": 1, "start": 0, "end": 1}.get(name, 1)
    if t in ("int[]", "SymInt[]") or t.startswith("int[") or t.startswith("SymInt["):
        if name in ("dims",):
            return list(reversed(range(len(shapes[0])))) if shapes else [0]
        if name in ("size", "shape", "sizes") and shapes:
            return list(shapes[0])
        return [-1] if name == "dim" else [1]
    if t in ("float", "Scalar", "number"):
        return 1.0
    if t == "bool":
        return False
    if t == "str":
        return {"reduce": "sum", "approximate": "none", "padding": "valid"}.get(name, "none")
    raise ValueError(f"no value for the required argument {name}: {t}")


def build_call(op: str, shapes: list, dtype: torch.dtype, ctx, consts: dict | None = None):
    """(overload, make_args) where make_args() -> (kwargs,) with fresh random tensors; the non-tensor arguments
    from `consts` (the traced op's own: an einsum's equation, a dim) where given, else defaults or fillers."""
    overload = resolve(op, len(shapes))
    schema = overload._schema
    plan = []  # (name, kind, payload)
    remaining = list(shapes)
    consts = consts or {}
    for arg in schema.arguments:
        kind = _tensor_kind(arg)
        if kind is None and arg.name in consts:
            plan.append((arg.name, "value", consts[arg.name]))
        elif kind == "list" and remaining:
            plan.append((arg.name, "list", remaining))
            remaining = []
        elif kind == "tensor" and remaining:
            plan.append((arg.name, "tensor", remaining.pop(0)))
        elif arg.has_default_value() or isinstance(arg.type, torch._C.OptionalType):
            continue
        else:
            plan.append((arg.name, "value", _filler(arg, shapes)))
    if remaining:
        raise ValueError(f"{op}: {len(remaining)} input shapes left over")

    def tensor(name, shape):
        if name in INDEX_NAMES:
            return torch.zeros(shape, device=ctx.device, dtype=torch.int64)
        if "mask" in name:
            return torch.ones(shape, device=ctx.device, dtype=torch.bool)
        return torch.randn(shape, device=ctx.device, dtype=torch.float32).to(dtype)

    def make():
        kwargs = {}
        for name, kind, payload in plan:
            if kind == "tensor":
                kwargs[name] = tensor(name, payload)
            elif kind == "list":
                kwargs[name] = [tensor(name, s) for s in payload]
            else:
                kwargs[name] = payload
        return (kwargs,)

    return overload, make


def _parse(case):
    op = case.get("op")
    if not isinstance(op, str):
        raise ValueError("aten case lacks 'op'")
    shapes = case.get("shapes")
    if not isinstance(shapes, list) or not all(isinstance(s, list) for s in shapes):
        raise ValueError("aten case lacks 'shapes' (a list of input shapes)")
    if any(int(d) < 0 for s in shapes for d in s):
        raise ValueError(f"negative size in shapes {shapes}")
    dtype = torch_dtype(case.get("dtype", "bfloat16"))
    consts = case.get("args", {})
    if not isinstance(consts, dict):
        raise ValueError("aten case 'args' must be an object of argument name -> value")
    return op, [[int(d) for d in s] for s in shapes], dtype, consts


@collector("aten", spec=ATEN)
def aten(case: dict, ctx) -> float:
    op, shapes, dtype, consts = _parse(case)
    overload, make = build_call(op, shapes, dtype, ctx, consts)

    def run(kwargs):
        return overload(**kwargs)

    return time_call(run, make, ctx)


@aten.normalizer
def _row(case: dict, ctx) -> dict:
    op, shapes, dtype, consts = _parse(case)
    return {"op_name": op, "kernel_source": "aten", "dtype": TABLE_DTYPE.get(dtype, str(dtype).replace("torch.", "")),
            "shapes": shapes_key(shapes), "args": args_key(consts), "num_elements": sum(math.prod(s) for s in shapes)}
