"""The decode cache: a meta prefill builds whatever cache the model uses (KV, sliding-window, recurrent states,
state kept on its own modules), and the cache's tensors are found, with setters, and their batch and length dims
read from their sizes."""
from __future__ import annotations

import contextlib
import inspect
import weakref

import torch

from tracer.batch_rows import group
from core.errors import UserError
from tracer.lengths import B0, B1, compression_rate, decode_lengths
from tracer.meta import one_line, quiet
from tracer.tracing_mode import tracing_branches

def cache_contents(cache, length: int):
    """Every tensor a cache object holds, and every plain int counter equal to the cached length, each with a
    setter that puts a replacement in its place.

    Walks attributes, lists and dicts generically: KV layers, sliding layers and recurrent states alike.
    """
    tensors: list[tuple[torch.Tensor, callable]] = []
    counters: list[callable] = []
    seen: set[int] = set()

    def walk(obj, put, get, depth):
        if isinstance(obj, torch.Tensor):
            tensors.append((obj, put))
            return
        if type(obj) is int:
            if obj == length and put is not None:
                counters.append(put)
            return
        if depth > 6 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, list):
            for i, item in enumerate(obj):
                walk(item, lambda v, o=obj, i=i: o.__setitem__(i, v), lambda o=obj, i=i: o[i], depth + 1)
        elif isinstance(obj, tuple) and put is not None:
            # immutable: an item is replaced by putting a new tuple (of the same type) where the current one is
            for i, item in enumerate(obj):
                walk(item, lambda v, i=i, put=put, get=get: put(_replaced(get(), i, v)),
                     lambda i=i, get=get: get()[i], depth + 1)
        elif isinstance(obj, dict):
            for key, item in obj.items():
                walk(item, lambda v, o=obj, k=key: o.__setitem__(k, v), lambda o=obj, k=key: o[k], depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            for key, item in list(vars(obj).items()):
                if not key.startswith("__"):
                    walk(item, lambda v, o=obj, k=key: setattr(o, k, v), lambda o=obj, k=key: getattr(o, k),
                         depth + 1)

    walk(cache, None, None, 0)
    return tensors, counters


def _replaced(items: tuple, i: int, value) -> tuple:
    new = [value if j == i else item for j, item in enumerate(items)]
    return type(items)(*new) if hasattr(items, "_fields") else type(items)(new)


def returned_cache(model, out) -> tuple[str, object]:
    """(forward argument, cache object) of what a use_cache=True prefill returned: `past_key_values`, else the one
    output field that forward() also takes as an argument and that is neither a tensor nor a plain value (recurrent
    models name their state object otherwise, e.g. `cache_params`). A model that made a cache for the call but did
    not return it (the caller is expected to pass one in, as generate() does) gives the one it made, where forward()
    takes it back as `past_key_values`."""
    if getattr(out, "past_key_values", None) is not None:
        return "past_key_values", out.past_key_values
    params = inspect.signature(model.forward).parameters
    fields = out.items() if hasattr(out, "items") else vars(out).items()
    for key, value in fields:
        if key in params and value is not None and (_tensor_list(value) or
                                                     not isinstance(value, (torch.Tensor, *_PLAIN_VALUES))):
            # a tuple of state tensors becomes a list: the decode wrapper puts symbolic tensors in its slots
            return key, list(value) if isinstance(value, tuple) else value
    made = _MADE_CACHES.get(id(out))
    if made is not None and "past_key_values" in params:
        return "past_key_values", made
    return "past_key_values", None


# output id -> the cache object the model made inside that prefill and passed down to its layers
_MADE_CACHES: dict[int, object] = {}


def forget_made_caches() -> None:
    """Drop the caches kept for prefill outputs, once their cache has been taken (returned_cache)."""
    _MADE_CACHES.clear()


@contextlib.contextmanager
def _watch_caches(model, seen: list):
    """Record every cache object (transformers' Cache) handed to a submodule while the model runs."""
    from transformers.cache_utils import Cache

    def hook(module, args, kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, Cache) and not any(v is value for v in seen):
                seen.append(value)

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _module_tensors(model) -> dict[tuple[str, str], object]:
    """Plain tensor (or None) attributes of every submodule: neither parameters nor buffers."""
    return {(path, key): value for path, mod in model.named_modules() for key, value in vars(mod).items()
            if not key.startswith("_") and (value is None or isinstance(value, torch.Tensor))}


def _module_states(model, before: dict) -> list[tuple[torch.Tensor, callable]]:
    """State a model keeps on its own modules between calls (a recurrent layer's conv and scan states set as plain
    attributes by the prefill): each tensor attribute the prefill assigned, with a setter that puts a replacement
    in its place."""
    found = []
    for (path, key), value in _module_tensors(model).items():
        if isinstance(value, torch.Tensor) and before.get((path, key), None) is not value:
            mod = model.get_submodule(path) if path else model
            found.append((value, lambda v, m=mod, k=key: setattr(m, k, v)))
    return found


_PLAIN_VALUES = (int, float, str, bool, tuple, list)


def _tensor_list(value) -> bool:
    """A recurrent state returned as a plain list of tensors (one per state kind)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, torch.Tensor) for v in value)


class _CachePrefill(torch.nn.Module):
    """The use_cache=True prefill, as an export input: keeps what the model returned (with its cache)."""

    def __init__(self, model, returned: list):
        super().__init__()
        self.model = model
        self.returned = returned  # a plain list outside the module: export restores module attributes it sees set

    def forward(self, input_ids):
        out = self.model(input_ids=input_ids, use_cache=True)
        # export restores the module attributes the prefill set: keep them with the output
        self.returned.append((out, {k: v for k, v in _module_tensors(self.model).items() if v is not None}))
        return out.logits


def _give_cache_layer_count(config) -> None:
    """transformers' cache code sizes the cache a model makes for itself by the layer count of the config it is given
    (DynamicCache(config=...) reads get_text_config(decoder=True).num_hidden_layers). A composite config whose
    sub-models each count their own layers (an encoder, a global transformer and a decoder) has none, and the
    model's own cache construction fails on it. Such a config is given the largest layer count of its sub-configs:
    every sub-model's layer index then has a cache layer, and layers none of them uses stay empty (they hold no
    tensors). Set after the layer plan, which cuts only the counts of the stack it reduces."""
    if config is None:
        return
    try:
        target = config.get_text_config(decoder=True)
    except Exception:
        target = config
    try:
        getattr(target, "num_hidden_layers")
        return
    except AttributeError:
        pass
    counts = [getattr(sub, "num_hidden_layers", None) for sub in vars(target).values() if hasattr(sub, "to_dict")]
    counts = [c for c in counts if type(c) is int and c > 0]
    if counts:
        target.num_hidden_layers = max(counts)


def cache_prefill(model, l0: int, batch: int = B0):
    """Run a use_cache=True prefill of B0 x l0 tokens on the meta device; return the model's output (its cache)
    and the state it left on its own modules (see _module_states).

    On plain meta tensors first: they cannot answer value checks (.item() on a mask), so the prefill takes the
    traced branches as the export does. Where the model still reads values (expert counts with .tolist(), a length
    check with .item()), the prefill is traced with static sizes instead, as the export traces (those values become
    symbols), and the cache it leaves is remade of plain meta tensors of the same sizes."""
    ids = torch.zeros(batch * group(model), l0, dtype=torch.long, device="meta")
    _give_cache_layer_count(getattr(model, "config", None))
    before = _module_tensors(model)
    made = []
    try:
        with quiet(), torch.no_grad(), tracing_branches(), _watch_caches(model, made):
            out = model(input_ids=ids, use_cache=True)
        if made:
            _MADE_CACHES[id(out)] = made[0]
        return out, _module_states(model, before)
    except Exception as exc:
        first = exc
    returned = []
    made.clear()
    wrapper = _CachePrefill(model, returned)
    try:
        with quiet(), torch.no_grad(), tracing_branches(), _watch_caches(model, made):
            torch.export.export(wrapper, (ids,), strict=False)
    except Exception:
        raise UserError("the prefill that builds the decode cache (use_cache=True) fails in the model's own code: "
                        f"{one_line(first)}") from first
    out, assigned = returned[-1]
    if made:
        _MADE_CACHES[id(out)] = made[0]
    for (path, key), value in assigned.items():  # put back the module state export restored
        if before.get((path, key)) is not value:
            setattr(model.get_submodule(path) if path else model, key, value)
    _, cache = returned_cache(model, out)
    states = _module_states(model, before)
    held = (cache_contents(cache, l0)[0] if cache is not None else []) + states
    for tensor, put in held:
        if not all(type(d) is int for d in tensor.shape):
            raise UserError("the decode cache's sizes depend on token values: decode cannot be traced")
        put(torch.empty_strided(tuple(tensor.shape), tuple(tensor.stride()), dtype=tensor.dtype, device="meta"))
    return out, _module_states(model, before)



def state_roles(model, states: list[torch.Tensor], l0: int) -> list[dict[int, str]]:
    """Per cache tensor, its dims of role "B" (batch) and "L" (cached length), read from their sizes: B0 and l0.
    Where a tensor has a B0-sized dim other than one leading batch dim (a conv state of width B0 + 1, a state laid
    out with the batch elsewhere), a size cannot tell: the cache is built again for B1 sequences, and the dims that
    followed the batch are B."""
    roles = [{d: ("B" if size == B0 else "L") for d, size in enumerate(t.shape) if size in (B0, l0)}
             for t in states]
    if all([d for d, r in r_.items() if r == "B"] in ([0], []) for r_ in roles):
        return roles
    out, module_states = cache_prefill(model, l0, batch=B1)
    _, cache = returned_cache(model, out)
    forget_made_caches()
    other = [t for t, _ in (cache_contents(cache, l0)[0] if cache is not None else []) + module_states]
    if len(other) != len(states) or any(a.dim() != b.dim() for a, b in zip(states, other)):
        return roles
    return [{d: ("B" if (a.shape[d], b.shape[d]) == (B0, B1) else "L") for d in range(a.dim())
             if (a.shape[d], b.shape[d]) == (B0, B1) or a.shape[d] == l0} for a, b in zip(states, other)]


# model -> {(l0, the states' shapes, their roles): compressed_dims' answer}: a decode export is tried more than once
# over the same cache (at another length, chunked, with L fixed), and the probe prefills at the longest decode length
_COMPRESSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compressed_dims(model, states: list[torch.Tensor], roles: list[dict[int, str]], l0: int) -> list[dict[int, int]]:
    """Per cache tensor, its dims that grow with the cached length at a rate of their own, as {dim: r} for a dim
    of floor(L / r) entries (a cache compressed along the length, r tokens to one entry). Only tensors with no dim
    of l0 are candidates, so a plain KV cache costs nothing more; for them, the cache is built again at the decode
    length farthest from l0 and each dim's two sizes give its rate (tracer.lengths.compression_rate). Answered once
    per model and cache (_COMPRESSED)."""
    key = (l0, tuple(tuple(t.shape) for t in states), tuple(tuple(sorted(r.items())) for r in roles))
    known = _COMPRESSED.setdefault(model, {})
    if key not in known:
        known[key] = _compressed_dims(model, states, roles, l0)
    return [dict(rates) for rates in known[key]]


def _compressed_dims(model, states: list[torch.Tensor], roles: list[dict[int, str]], l0: int) -> list[dict[int, int]]:
    candidates = [i for i, r in enumerate(roles) if "L" not in r.values() and states[i].dim() > 1]
    l1 = max(decode_lengths(model.config), key=lambda n: abs(n - l0))
    if not candidates or l1 == l0:
        return [{} for _ in states]
    out, module_states = cache_prefill(model, l1)
    _, cache = returned_cache(model, out)
    forget_made_caches()
    other = [t for t, _ in (cache_contents(cache, l1)[0] if cache is not None else []) + module_states]
    if len(other) != len(states) or any(a.dim() != b.dim() for a, b in zip(states, other)):
        return [{} for _ in states]
    (short, s_short), (long, s_long) = sorted([(l0, states), (l1, other)], key=lambda p: p[0])
    rates = [{} for _ in states]
    for i in candidates:
        for d in range(states[i].dim()):
            rate = None if d in roles[i] else compression_rate(short, s_short[i].shape[d], long, s_long[i].shape[d])
            if rate:
                rates[i][d] = rate
    return rates

