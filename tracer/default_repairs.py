"""Repairs of the default configs of bare model types (`tracecost trace llama`), which transformers' own code
cannot always run: explicit sizes where the config implies one (repair_default_config), and, after a trace fails
with a TypeError, None fields set (none_field_repairs). Real configs are never repaired."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from tracer.model_source import ModelSource, quiet_transformers

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def repair_default_config(config: PretrainedConfig, raw: dict) -> list[str]:
    """Repair, in place in `raw` (config.to_dict()), what transformers' default config of a bare model type leaves
    inconsistent with transformers' own model code, where the value is fixed by the config itself. Generic rules,
    applied to the config and to each of its sub-configs; returns what was changed, as "where.field=old->new".

    - no head_dim while hidden_size is not a multiple of num_attention_heads: the model code derives
      hidden_size // num_attention_heads; that value is written down, so the head split is explicit.
    - rope_parameters left empty: the config class's own `default_theta` with the default RoPE type; one entry per
      layer type where the config lists layer_types (transformers' per-layer-type form).
    - a sub-config describing attention (it counts heads) without RoPE parameters, under a parent whose RoPE
      parameters give rope_theta: the sub-config gets the parent's rope_theta (its attention code reads it there).
    - a `default_<x>` choice left None where the config offers exactly one `<x>s` value: that value.

    Real configs are never passed here: this is the handling of bare model types only.
    """
    fixed: list[str] = []

    def walk(cfg, data: dict, where: str, parent_theta):
        _repair_head_split(data, where, fixed)
        _repair_empty_rope(cfg, data, where, fixed)
        if parent_theta is not None and where and _counts_heads(data) and not _has_rope(data):
            data["rope_theta"] = parent_theta
            fixed.append(f"{where}rope_theta=absent->{parent_theta} (from the parent config)")
        _repair_single_choice(data, where, fixed)
        theta = _flat_rope_theta(data)
        for key, value in data.items():
            sub = getattr(cfg, key, None) if isinstance(value, dict) else None
            if sub is not None and hasattr(sub, "to_dict"):
                walk(sub, value, f"{where}{key}.", theta)

    walk(config, raw, "", None)
    return fixed


def _repair_head_split(data: dict, where: str, fixed: list[str]) -> None:
    hidden, heads = data.get("hidden_size"), data.get("num_attention_heads")
    explicit = any("head_dim" in key or key.endswith("head_size") for key in data)
    if type(hidden) is int and type(heads) is int and heads > 0 and hidden % heads and not explicit:
        data["head_dim"] = hidden // heads
        fixed.append(f"{where}head_dim=absent->{data['head_dim']} (hidden_size // num_attention_heads)")


def _repair_empty_rope(cfg, data: dict, where: str, fixed: list[str]) -> None:
    theta = getattr(type(cfg), "default_theta", None)
    if data.get("rope_parameters") != {} or not isinstance(theta, (int, float)):
        return
    params = {"rope_type": "default", "rope_theta": float(theta)}
    layer_types = data.get("layer_types")
    if isinstance(layer_types, (list, tuple)) and layer_types and all(isinstance(t, str) for t in layer_types):
        data["rope_parameters"] = {t: dict(params) for t in dict.fromkeys(layer_types)}
    else:
        data["rope_parameters"] = params
    fixed.append(f"{where}rope_parameters={{}}->{data['rope_parameters']}")


def _counts_heads(data: dict) -> bool:
    return any("heads" in key and type(value) is int for key, value in data.items())


def _has_rope(data: dict) -> bool:
    return "rope_theta" in data or bool(data.get("rope_parameters"))


def _flat_rope_theta(data: dict):
    params = data.get("rope_parameters")
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return theta if isinstance(theta, (int, float)) else data.get("rope_theta")


def _repair_single_choice(data: dict, where: str, fixed: list[str]) -> None:
    for key, value in list(data.items()):
        if value is not None or not key.startswith("default_"):
            continue
        options = data.get(key[len("default_"):] + "s")
        if isinstance(options, (list, tuple)) and len(options) == 1 and isinstance(options[0], (str, int)):
            data[key] = options[0]
            fixed.append(f"{where}{key}=None->{options[0]!r} (the only one of {key[len('default_'):]}s)")


# Fields a default config leaves None that transformers' code uses --------------------------------------------------

# Values tried in turn for a count no config field or docstring determines: the smallest with which the model traces.
TRIAL_VALUES = (1, 2, 4)
# transformers' code that every model runs besides its own module: its None checks count as the model's
_SHARED_MODEL_CODE = ("transformers.cache_utils", "transformers.masking_utils", "transformers.modeling_rope_utils",
                      "transformers.modeling_utils", "transformers.integrations.moe")


@dataclass(frozen=True)
class Repair:
    """A bare model type's default config with its None fields set, and what was set ("field=None->value (why)")."""

    source: ModelSource
    fixed: list[str]


def none_field_repairs(src: ModelSource, failure: BaseException) -> list[Repair]:
    """Default configs to trace instead of a bare model type's, after its trace failed with a TypeError in
    transformers' code (a value of the wrong type: in a default config, a number or a per-layer list left None).
    Empty where that does not apply. Applied to the config and each of its sub-configs, to fields that are None:

    - `layer_types` (one entry per layer): what transformers' own cache code infers for a config without one
      (cache_utils.get_layer_types_and_kwargs): "sliding_attention" where sliding_window is set, else
      "chunked_attention" where attention_chunk_size is set, else "full_attention", for every layer;
    - a count (a field annotated int, not a token id) that neither the model's module nor transformers' shared model
      code tests for None (see _none_checked_names; a None the code handles, such as an unset clip or LoRA rank,
      is a choice, left alone):
      - the default its config class documents ("defaults to `X`"): a number, another field's value, or an
        arithmetic expression of the config's fields;
      - otherwise the smallest value with which the model traces: one repaired config per value of TRIAL_VALUES,
        the counts without a documented default all set to it, tried in turn by the caller.

    Real configs are never passed here: they say what they mean, and their errors are the user's to see.
    """
    if src.kind != "model_type" or not _type_error(failure):
        return []
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        with quiet_transformers():
            config = CONFIG_MAPPING[src.config["model_type"]].from_dict(dict(src.config))
    except Exception:
        return []
    determined: dict[tuple[str, ...], tuple[Any, str]] = {}  # path -> (value, why)
    trial: list[tuple[str, ...]] = []

    def walk(cfg, data: dict, path: tuple[str, ...]):
        checked = _none_checked_names(type(cfg).__module__.replace(".configuration_", ".modeling_")).union(
            *map(_none_checked_names, _SHARED_MODEL_CODE))
        aliases = getattr(type(cfg), "attribute_map", None) or {}
        for name, annotation in _field_types(cfg).items():
            if name not in data or data[name] is not None:
                continue
            if name == "layer_types" and "list" in annotation and type(data.get("num_hidden_layers")) is int:
                kind = ("sliding_attention" if data.get("sliding_window") is not None else
                        "chunked_attention" if data.get("attention_chunk_size") is not None else "full_attention")
                determined[(*path, name)] = ([kind] * data["num_hidden_layers"],
                                             "what transformers' cache code infers for a config without one")
                continue
            if not {"int", "Optional[int]"} & {part.strip() for part in annotation.split("|")} \
                    or name.endswith("_token_id"):
                continue
            if {name, *(alias for alias, field in aliases.items() if field == name)} & checked:
                continue
            documented = _documented_default(type(cfg), name, data)
            if documented is not None:
                determined[(*path, name)] = documented
            else:
                trial.append((*path, name))
        for key, value in data.items():
            sub = getattr(cfg, key, None) if isinstance(value, dict) else None
            if sub is not None and hasattr(sub, "to_dict"):
                walk(sub, value, (*path, key))

    walk(config, src.config, ())
    if not determined and not trial:
        return []
    repairs = []
    for value in TRIAL_VALUES if trial else (None,):
        raw = json.loads(json.dumps(src.config, default=str))
        fixed = []
        for path, (new, why) in determined.items():
            _set_path(raw, path, new)
            fixed.append(f"{'.'.join(path)}=None->{_short(new)} ({why})")
        for path in trial:
            _set_path(raw, path, value)
        if trial:
            tried = ", ".join(map(str, TRIAL_VALUES))
            fixed.append(", ".join(f"{'.'.join(path)}=None->{value}" for path in trial)
                         + f" (no documented default: the smallest of {tried} that traces)")
        repairs.append(Repair(ModelSource(src.name, src.kind, src.origin, raw, src.path), fixed))
    return repairs


def _type_error(failure: BaseException) -> bool:
    """Whether a failure is, or was caused by, a TypeError (the decode export reports its error as text)."""
    seen = set()
    while failure is not None and id(failure) not in seen:
        seen.add(id(failure))
        if isinstance(failure, TypeError) or re.search(r"\bTypeError: ", str(failure)):
            return True
        failure = failure.__cause__ or failure.__context__
    return False


def _field_types(cfg) -> dict[str, str]:
    """A config's dataclass fields and their annotations, as text."""
    import dataclasses

    if not dataclasses.is_dataclass(cfg):
        return {}
    return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", None) or str(f.type)
            for f in dataclasses.fields(cfg) if not f.name.startswith("_")}


@lru_cache(maxsize=None)
def _none_checked_names(module_name: str) -> frozenset[str]:
    """Names a module tests for None: compared with it (`x.clip_qkv is not None`, `getattr(c, "q_lora_rank", None)
    is None`), replaced when falsy (`c.head_dim or hidden // heads`) or tested (`if self.q_lora_rank:`); and the
    names they were read from (`self.clip_qkv = attn_config.clip_qkv`): fields whose None the code handles."""
    import ast
    import importlib
    import inspect

    try:
        tree = ast.parse(inspect.getsource(importlib.import_module(module_name)))
    except Exception:  # no modeling module beside the config (or no source): nothing is known to be handled
        return frozenset()

    def terminal(node):
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node, ast.Name):
            return node.id
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            return node.args[1].value
        return None

    def is_none(node):
        return isinstance(node, ast.Constant) and node.value is None

    read_from: dict[str, set[str]] = {}
    checked: set[str] = set()
    for node in ast.walk(tree):
        tested = []
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, source = terminal(node.targets[0]), terminal(node.value)
            if isinstance(target, str) and isinstance(source, str):
                read_from.setdefault(target, set()).add(source)
        elif (isinstance(node, ast.Compare) and len(node.ops) == 1
              and isinstance(node.ops[0], (ast.Is, ast.IsNot, ast.Eq, ast.NotEq))):
            left, right = node.left, node.comparators[0]
            tested = [left] if is_none(right) else [right] if is_none(left) else []
        elif isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            tested = node.values[:-1]  # `x or default`: a None (or 0) x is replaced
        elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
            tested = [node.test.operand if isinstance(node.test, ast.UnaryOp) else node.test]  # `if x:`, `if not x:`
        checked.update(name for name in map(terminal, tested) if isinstance(name, str))
    return frozenset(checked.union(*(read_from.get(name, ()) for name in list(checked))))


def _documented_default(cls: type, name: str, data: dict) -> tuple[int, str] | None:
    """The default a config class's docstring gives a field ("... will default to `num_attention_heads`."): an int,
    another field's int value, or + - * // of those; None where it gives none or it does not evaluate."""
    import ast

    doc = cls.__doc__ or ""
    entry = re.search(rf"^\s*{re.escape(name)} \(.*?\):\n(.*?)(?=^\s*\w+ \(|\Z)", doc, re.S | re.M)
    said = re.search(r"defaults? to\s+`([^`]+)`", entry.group(0)) if entry else None
    if said is None:
        return None
    ops = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__, ast.FloorDiv: int.__floordiv__}

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name) and type(data.get(node.id)) is int:
            return data[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            left, right = value(node.left), value(node.right)
            if left is not None and right is not None and not (type(node.op) is ast.FloorDiv and right == 0):
                return ops[type(node.op)](left, right)
        return None

    try:
        result = value(ast.parse(said.group(1).strip(), mode="eval").body)
    except SyntaxError:
        return None
    return (result, f"its documented default, {said.group(1).strip()}") if isinstance(result, int) and result > 0 \
        else None


def _set_path(data: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _short(value) -> str:
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        return f"[{value[0]!r}] * {len(value)}"
    return repr(value)
