"""Layer plan: group a model's decoder layers into distinct kinds, so one layer per kind is traced.

A layer's kind is read from structure alone, never from a model type or class name:
  - the parameter names, shapes and dtypes under the layer (dense vs MoE, per-layer sizes, Mamba vs attention),
  - the plain attributes (numbers, strings, bools) of every submodule (sliding window set on some layers),
  - the values of every per-layer list in the config at that index (`layer_types` and the like).
Attributes that merely count the layer (an int equal to the layer's index on every layer) are left out, and are
re-numbered when the plan is applied, so the reduced model indexes its cache consistently.
"""
from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field

import torch

from core.errors import UserError
from tracer.meta import quiet


@dataclass
class LayerKind:
    index: int                 # position in the reduced model
    representative: int        # original layer index traced for this kind
    count: int                 # layers of the full model with this kind
    layers: list[int] = field(default_factory=list)
    label: str = ""            # short human description (from per-layer lists and parameter shapes)
    own_params: int = 0        # parameters of one such layer that no other layer shares
    own_bytes: int = 0


@dataclass
class LayerPlan:
    num_layers: int
    stack_path: str            # dotted path of the ModuleList holding the layers
    kinds: list[LayerKind]
    per_layer_keys: list[str]  # config attributes that hold one value per layer
    index_list_keys: list[str] = field(default_factory=list)  # config attributes listing some layers by index
    parallel_paths: list[str] = field(default_factory=list)  # sibling ModuleLists holding the same layers' parts

    def kind_of_layer(self) -> dict[int, int]:
        return {i: k.index for k in self.kinds for i in k.layers}

    def to_json(self) -> list[dict]:
        return [{"kind": k.index, "label": k.label, "count": k.count, "representative_layer": k.representative,
                 "layers": k.layers} for k in self.kinds]


_PLAIN = (int, float, str, bool, type(None))


def find_layer_stack(model: torch.nn.Module, num_layers: int | None) -> tuple[str, torch.nn.ModuleList]:
    """The decoder stack: the ModuleList of length num_layers holding the most parameters; where none has that
    length (configs that count layers under another name), the ModuleList holding the most parameters."""
    lists = [(sum(p.numel() for p in mod.parameters()), name, mod) for name, mod in model.named_modules()
             if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0]
    exact = [entry for entry in lists if len(entry[2]) == num_layers]
    pool = exact or lists
    if not pool:
        raise UserError("the model has no stack of layers (no torch.nn.ModuleList) to plan")
    _, name, mod = max(pool, key=lambda entry: entry[0])
    return name, mod


def parallel_stacks(model: torch.nn.Module, stack_path: str) -> list[str]:
    """Sibling ModuleLists of the stack with its length: one layer written as parallel lists (attentions[i],
    ffns[i], norms[i]), which the plan must judge and cut together."""
    parent_path, _, attr = stack_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    n = len(getattr(parent, attr))
    prefix = f"{parent_path}." if parent_path else ""
    return [prefix + name for name, mod in parent.named_children()
            if name != attr and isinstance(mod, torch.nn.ModuleList) and len(mod) == n]


def _layer_view(model: torch.nn.Module, paths: list[str]):
    """The layers as the plan sees them: the stack's own modules, or where parallel lists hold parts of each layer,
    one ModuleDict per layer joining its parts (keyed by the lists' attribute names)."""
    stacks = [model.get_submodule(p) for p in paths]
    if len(stacks) == 1:
        return stacks[0]
    names = [p.rpartition(".")[2] for p in paths]
    return torch.nn.ModuleList([torch.nn.ModuleDict(dict(zip(names, parts))) for parts in zip(*stacks)])


def per_layer_keys(config, num_layers: int) -> list[str]:
    """Config attributes holding one entry per layer: lists or tuples of length num_layers, stored or computed
    (a read-only property deriving the per-layer list from a repeating pattern or a period and offset).

    Strings are not read as per-layer patterns: a 4-layer model's hidden_act "silu" would look like one. Pattern
    strings (hybrid_override_pattern) are expanded into lists by transformers' configs, and the parameter shapes
    tell their layer kinds apart anyway."""
    stored = [key for key, value in vars(config).items()
              if not key.startswith("_") and isinstance(value, (list, tuple)) and len(value) == num_layers]
    return stored + [key for key in computed_keys(config) if key not in stored and _is_list_of(config, key, num_layers)]


def computed_keys(config) -> list[str]:
    """Names of the config class's read-only properties (no setter)."""
    names = []
    for name in dir(type(config)):
        attr = inspect.getattr_static(type(config), name, None)
        if not name.startswith("_") and isinstance(attr, property) and attr.fset is None:
            names.append(name)
    return names


def _is_list_of(config, key: str, n: int) -> bool:
    try:
        with quiet():  # deprecated aliases among the properties warn when read
            value = getattr(config, key)
    except Exception:  # a property that refuses a global read
        return False
    return isinstance(value, (list, tuple)) and len(value) == n


def set_computed(config, values: dict[str, object]) -> None:
    """Give the config fixed values for some of its read-only properties: its class is swapped for a subclass of
    the same name where those names are plain attributes, so the cut per-layer lists are read as set, whatever the
    fields the property computed them from (a pattern repeated to num_hidden_layers, a period and an offset)."""
    cls = type(config)
    fixed = [key for key in values if isinstance(inspect.getattr_static(cls, key, None), property)]
    if fixed:
        config.__class__ = type(cls.__name__, (cls,), {"__module__": cls.__module__, **{k: None for k in fixed}})
    for key, value in values.items():
        setattr(config, key, value)


def layer_index_keys(config, num_layers: int) -> list[str]:
    """Config attributes that name some of the layers by index (a list of distinct layer indices, such as the
    layers that cross-attend or stay dense): a field named for layers whose value is a shorter list of distinct ints
    in range(num_layers). A layer's membership is part of its kind, and the indices are renumbered with the plan."""
    keys = []
    for key, value in vars(config).items():
        if key.startswith("_") or "layer" not in key.lower() or not isinstance(value, (list, tuple)):
            continue
        if (0 < len(value) < num_layers and all(type(v) is int and 0 <= v < num_layers for v in value)
                and len(set(value)) == len(value)):
            keys.append(key)
    return keys


def _module_attrs(layer: torch.nn.Module) -> dict[str, object]:
    attrs = {}
    for path, mod in layer.named_modules():
        for key, value in vars(mod).items():
            if key.startswith("_") or key == "training" or not isinstance(value, _PLAIN):
                continue
            attrs[f"{path}.{key}"] = value
    return attrs


def index_attributes(layers: torch.nn.ModuleList) -> dict[str, tuple[int, int]]:
    """Attribute paths whose value counts the layer wherever they occur, each with its rule (a, b): the value is
    a * i + b on layer i. Mostly a = 1, b = 0 (layer_idx); a layer made of `a` sub-blocks that each take a global
    index numbers sub-block b of layer i as a * i + b (0 <= b < a), in an attribute named for an index.

    Judged per path, over the layers that have it: hybrid stacks hold the index under different submodules.
    """
    seen: dict[str, list[tuple[int, object]]] = {}
    for i, layer in enumerate(layers):
        for path, value in _module_attrs(layer).items():
            seen.setdefault(path, []).append((i, value))
    found = {}
    for path, hits in seen.items():
        rule = _counting_rule(path, hits, len(layers))
        if rule is not None:
            found[path] = rule
    return found


def _counting_rule(path: str, hits: list[tuple[int, object]], n_layers: int) -> tuple[int, int] | None:
    """(a, b) where every value is a * i + b on layer i; None where the values do not count the layers."""
    if not all(type(v) is int for _, v in hits):
        return None
    if all(v == i for i, v in hits) and (n_layers == 1 or any(i for i, _ in hits)):
        return 1, 0
    (i0, v0), (i1, v1) = hits[0], hits[-1]
    if i1 == i0 or (v1 - v0) % (i1 - i0):
        return None
    a = (v1 - v0) // (i1 - i0)
    b = v0 - a * i0
    named = any(word in path.rpartition(".")[2].lower() for word in ("idx", "index"))
    if not (named and a > 1 and 0 <= b < a and all(v == a * i + b for i, v in hits)):
        return None
    return a, b


def _signature(layer, i, config, keys, skip, index_keys=()) -> tuple:
    params = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in layer.named_parameters())
    attrs = tuple(sorted((p, repr(v)) for p, v in _module_attrs(layer).items() if p not in skip))
    lists = tuple((k, repr(getattr(config, k)[i])) for k in keys)
    listed = tuple((k, i in getattr(config, k)) for k in index_keys)
    return params, attrs, lists, listed


def _label(layer, i, config, keys) -> str:
    bits = [f"{k}={getattr(config, k)[i]}" for k in keys if isinstance(getattr(config, k)[i], (str, int, bool))]
    n_params = sum(p.numel() for p in layer.parameters())
    bits.append(f"{n_params:,} params")
    return ", ".join(bits)


def plan_layers(model: torch.nn.Module, config) -> LayerPlan:
    path, _ = find_layer_stack(model, getattr(config, "num_hidden_layers", None))
    parallel = parallel_stacks(model, path)
    layers = _layer_view(model, [path, *parallel])
    n = len(layers)
    keys = per_layer_keys(config, n)
    index_keys = layer_index_keys(config, n)
    skip = index_attributes(layers)
    # weights some layers share (a block reused at several depths) exist once, whatever the repeat count
    owners = Counter(id(p) for layer in layers for p in layer.parameters())
    groups: dict[tuple, LayerKind] = {}
    for i, layer in enumerate(layers):
        sig = _signature(layer, i, config, keys, skip, index_keys)
        kind = groups.get(sig)
        if kind is None:
            own = [p for p in layer.parameters() if owners[id(p)] == 1]
            kind = groups[sig] = LayerKind(index=len(groups), representative=i, count=0,
                                           label=_label(layer, i, config, keys),
                                           own_params=sum(p.numel() for p in own),
                                           own_bytes=sum(p.numel() * p.element_size() for p in own))
        kind.count += 1
        kind.layers.append(i)
    return LayerPlan(num_layers=n, stack_path=path, kinds=list(groups.values()), per_layer_keys=keys,
                     index_list_keys=index_keys, parallel_paths=parallel)


def _set_path(model: torch.nn.Module, path: str, value) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_path) if parent_path else model, attr, value)


def apply_plan(model: torch.nn.Module, config, plan: LayerPlan) -> None:
    """Keep one layer per kind, renumber its index attributes and cut every per-layer list to match."""
    paths = [plan.stack_path, *plan.parallel_paths]
    layers = _layer_view(model, paths)
    skip = index_attributes(layers)
    reps = [k.representative for k in plan.kinds]
    for new_index, r in enumerate(reps):
        layer = layers[r]
        for path in skip.keys() & _module_attrs(layer).keys():
            mod_path, _, key = path.rpartition(".")
            a, b = skip[path]
            setattr(layer.get_submodule(mod_path) if mod_path else layer, key, a * new_index + b)
    for path in paths:
        stack = model.get_submodule(path)
        _set_path(model, path, torch.nn.ModuleList([stack[r] for r in reps]))
    # all read before any is set: a computed list may derive from another per-layer list or from the layer count
    values = {key: getattr(config, key) for key in plan.per_layer_keys}
    set_computed(config, {key: type(value)(value[r] for r in reps) for key, value in values.items()})
    for key in plan.index_list_keys:
        value = getattr(config, key)
        renumbered = type(value)(new for new, r in enumerate(reps) if r in value)
        setattr(config, key, renumbered)
        # modules that kept their own copy of the list at construction read it, not the config; a lookup keyed
        # by the listed layers (layer index -> slot in a shared block's own lists) keeps its slots under new keys
        for mod in model.modules():
            for attr_name, attr_value in list(vars(mod).items()):
                if attr_name.startswith("_"):
                    continue
                if isinstance(attr_value, (list, tuple)) and attr_value == value:
                    setattr(mod, attr_name, type(attr_value)(renumbered))
                elif isinstance(attr_value, dict) and attr_value and set(attr_value) == set(value):
                    setattr(mod, attr_name, {new: attr_value[r] for new, r in enumerate(reps) if r in attr_value})
    # the layer count, in the config and where the stack's owner kept its own copy (iterated as range(n_layers)),
    # unless a weight outside the stack is packed per layer by that count (it is reshaped by it)
    if not packed_per_layer(model, config, plan):
        for key in layer_count_keys(config, plan.num_layers):
            try:
                setattr(config, key, len(reps))
            except Exception:  # a derived count some configs refuse to set (the sum of encoder and decoder layers)
                pass
        owner_path = plan.stack_path.rpartition(".")[0]
        owner = model.get_submodule(owner_path) if owner_path else model
        for key, value in list(vars(owner).items()):
            if not key.startswith("_") and "layer" in key.lower() and type(value) is int and value == plan.num_layers:
                setattr(owner, key, len(reps))


def packed_per_layer(model: torch.nn.Module, config, plan: LayerPlan) -> list[str]:
    """Parameters outside the layer stack with a dimension packing one slice per layer: num_layers x k, where k is
    a per-layer size the config declares (an int field named for layers, e.g. a per-layer input width). The model
    reshapes such a weight by the config's layer count, so that count must stay the full model's; the slices are
    computed once for the whole model, as the full model does."""
    n = plan.num_layers
    fields = config.to_dict() if hasattr(config, "to_dict") else vars(config)
    sizes = {v for k, v in fields.items() if "layer" in k.lower() and type(v) is int and v > 1 and v != n}
    inside = tuple(f"{p}." for p in (plan.stack_path, *plan.parallel_paths))
    found = []
    for name, param in model.named_parameters():
        if name.startswith(inside):
            continue
        if any(d % n == 0 and d // n in sizes for d in param.shape):
            found.append(name)
    return found


def layer_count_keys(config, num_layers: int) -> list[str]:
    """Config fields that count the stack's layers: num_hidden_layers, and any int field named num_*_layers
    equal to the stack's length (num_decoder_layers where num_hidden_layers is derived from it and cannot be set)."""
    keys = []
    for key in dict.fromkeys(["num_hidden_layers", *vars(config)]):
        if key != "num_hidden_layers" and not (key.startswith("num_") and key.endswith("_layers")):
            continue
        try:
            value = getattr(config, key, None)
        except Exception:  # a per-layer field of a heterogeneous config refuses a global read
            continue
        if type(value) is int and value == num_layers:
            keys.append(key)
    return keys


def parameter_totals(reduced_model: torch.nn.Module, plan: LayerPlan) -> tuple[int, int]:
    """Parameter count and bytes of the full model, from the reduced one: each kind's own (unshared) weights
    counted `count` times, shared ones once."""
    count = sum(p.numel() for p in reduced_model.parameters())
    size = sum(p.numel() * p.element_size() for p in reduced_model.parameters())
    for kind in plan.kinds:
        count += (kind.count - 1) * kind.own_params
        size += (kind.count - 1) * kind.own_bytes
    return count, size
