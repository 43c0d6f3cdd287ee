"""KV cache: bytes per token, per sequence and per page, for every attention kind, derived from the decode graph.

What a serving engine stores, per layer kind of the plan (read from the matched decode ops and the decode graph's
cache inputs, never from a model name):

- full attention: 2 vectors per KV head per token (K of head_dim and V of v_head_dim elements; they may differ);
- MLA: the latent (kv_lora_rank) plus the shared rope key (qk_rope_head_dim) per token, not the expanded K/V some
  HF caches hold; the latent is replicated on every TP rank;
- sliding / chunked attention: the same rate per token, but the cache stops growing at the window: counted as a
  fixed size per sequence (the full window), not per token. The window is what the decode trace shows (a cache
  that stopped growing, the Attention op's `window`), else the window the config declares for layers whose
  per-layer type names sliding / local / chunked attention;
- recurrent mixers (Mamba conv + SSM state, linear-attention state): a fixed state per sequence, read from the
  decode graph's cache inputs of that layer kind (shapes and dtypes as the model keeps them; where one tensor
  stacks every layer's state and a layer selects its own entry, that entry). One exception, as every engine
  stores it (vLLM, SGLang, TensorRT-LLM): a causal conv's state holds the kernel - 1 previous inputs,
  where HF keeps `kernel` columns;
- a layer kind with attention but no cache input of its own reads another layer's cache (KV sharing): 0 bytes;
  where its decode attention runs over the whole sequence again, the model keeps no cache at all: 0 bytes.

KV dtype: the model's activation dtype by default (what engines use when not told otherwise), or the KV-cache
quantization the config declares, or the `kv_dtype` override. It applies to attention caches only; recurrent
states keep their own dtype (engines size those with separate settings).

Parallelism: TP splits KV heads across ranks, or replicates them when there are fewer KV heads than ranks (each
rank holds one head, tp / kv_heads ranks share it); recurrent states split along their head / channel dim; PP
splits layers into contiguous stages and the largest stage is reported.

Every figure is a plain int of bytes; `kv_report` returns a JSON-ready dict, `format_kv_report` its table.
"""
from __future__ import annotations

import math
from fractions import Fraction

from core.context import context_length, layer_window
from core.dtypes import canonical_kv_dtype, element_bytes, vector_bytes
from core.errors import UserError
from core.expr import evaluate
from core.ops import pipeline_stages
from core.quant_config import declared_quantization

SCHEMA = "tracecost.kv/1"


def _dtype_from_value(value) -> str | None:
    """A KV-cache dtype from a quantization setting: a name ("FP8", "fp8_e4m3", "NVFP4", "int8") or a scheme
    ({"num_bits": 8, "type": "float"} as compressed-tensors writes it)."""
    if isinstance(value, dict):
        bits, kind = value.get("num_bits"), str(value.get("type", "")).lower()
        if bits == 8:
            return "int8" if kind.startswith("int") else "fp8"
        if bits == 4 and not kind.startswith("int"):
            return "fp4"
        if bits == 16:
            return "bf16" if "b" in kind else "fp16"
        return None
    if isinstance(value, str):
        text = value.lower()
        for needle, dtype in (("fp4", "fp4"), ("int8", "int8"), ("fp8", "fp8"), ("float8", "fp8"),
                              ("e4m3", "fp8"), ("e5m2", "fp8"), ("bf16", "bf16"), ("bfloat16", "bf16"),
                              ("fp16", "fp16"), ("float16", "fp16")):
            if needle in text:
                return dtype
    return None


def declared_kv_dtype(config: dict) -> tuple[str, str] | None:
    """The KV-cache quantization a config declares, and where: any setting whose name speaks of the KV cache
    (kv_cache_quant_algo, kv_cache_scheme, kv_cache_dtype...) at the top level or under a quantization block, a
    composite's sub-config's included (core.quant_config)."""
    def walk(obj, path, depth):
        if not isinstance(obj, dict) or depth > 3:
            return None
        for key, value in obj.items():
            name = str(key).lower()
            if value is not None and ("kv_cache" in name or (name.startswith("kv") and (
                    "quant" in name or "dtype" in name or "scheme" in name))):
                dtype = _dtype_from_value(value)
                if dtype:
                    return dtype, f"{path}{key}={value}"
        for key, value in obj.items():
            if isinstance(value, dict) and "quant" in str(key).lower():
                found = walk(value, f"{path}{key}.", depth + 1)
                if found:
                    return found
        return None

    declared = declared_quantization(config)
    return walk(config or {}, "", 0) or (walk(declared[1], f"{declared[0]}.", 1) if declared else None)


def _layer_type(config: dict, kind: int, kinds: int) -> str | None:
    """The per-layer type string the (reduced) config gives this layer kind: its per-layer lists hold one entry
    per kind of the plan."""
    for key, value in (config or {}).items():
        if isinstance(value, list) and len(value) == kinds and kind < kinds and isinstance(value[kind], str) \
                and "type" in key.lower():
            return value[kind]
    return None


# --- the decode graph ---------------------------------------------------------------------------------------------

_SELECT_VIEWS = ("aten.slice", "aten.select")


def _layer_entry(graph, n: str) -> tuple[list[str], bool]:
    """The part of a cache tensor a layer reads through node n, and whether the layer writes it: HF keeps some
    recurrent states of all layers in one tensor, and a layer selects its own entry (a select after full slices);
    an in-place op whose first operand is that entry writes it."""
    a = graph.nodes[n]
    if a["op"] not in _SELECT_VIEWS:
        return None, a["op"].endswith("_")
    shape, node = a["out_shapes"][0], n
    while True:
        nxt = [m for m in graph.successors(node) if graph.nodes[m]["op"] in _SELECT_VIEWS]
        b = graph.nodes[node]
        if b["op"] == "aten.select":
            shape = b["out_shapes"][0]
        elif b["op"] == "aten.slice" and b["out_shapes"][0] != b["inputs"][0]["shape"]:
            return None, False   # a narrower slice (a window of the cache), not a layer's entry
        if len(nxt) != 1:
            break
        node = nxt[0]
    written = any(graph.nodes[m]["op"].endswith("_") and graph.nodes[m]["inputs"]
                  and graph.nodes[m]["inputs"][0]["src"] == node for m in graph.successors(node))
    return shape, written


def _cache_inputs(graph, kind: int) -> list[dict]:
    """Cache tensors a layer kind reads: graph inputs (src "input") of its decode nodes, with a batch dim, as the
    layer's entry where it selects one (see _layer_entry)."""
    out = []
    for n, a in graph.nodes(data=True):
        if a.get("layer_kind") != kind:
            continue
        for position, i in enumerate(a["inputs"]):
            if i["src"] == "input" and len(i["shape"]) >= 2 and i["shape"][0] == "B":
                entry, written = _layer_entry(graph, n) if position == 0 else (None, False)
                # an in-place op's first operand is the tensor it writes: the cache's update
                shape = entry if entry and len(entry) >= 2 and entry[0] == "B" else i["shape"]
                out.append({**i, "shape": shape, "op": a["op"], "written": written and position == 0})
    return out


def _grows(shape) -> bool:
    return any("L" in d for d in shape)


def _growth(expr: str) -> tuple[Fraction, int]:
    """(entries per cached token, entries at L = 0) of a size in L: 1 for a cache of every token, 1/4 for one
    compressed along the length (floor(L/4)), 0 for a window."""
    far = 1 << 30
    at_zero = int(evaluate(str(expr), L=0))
    return Fraction(int(evaluate(str(expr), L=far)) - at_zero, far).limit_denominator(1 << 12), at_zero


def _fixed_dims(shape) -> list[int]:
    """The dims of a cache tensor other than the batch and the cached length."""
    return [int(d) for d in shape[1:] if d.isdigit()]


def _explained(shape, ops) -> bool:
    """Whether a cache tensor is an attention op's K / V (growing, or a sliding window at steady state): its dims
    besides batch and length are (KV heads, head dim) in some order; for MLA the latent, the rope key, or the
    expanded per-head K / V some HF caches hold."""
    dims = sorted(_fixed_dims(shape))
    if not _grows(shape):
        if len(dims) < 2:
            return False
        # a window: one fixed dim is the length; the rest must still be the K / V dims
        options = [sorted(dims[:i] + dims[i + 1:]) for i in range(len(dims))]
    else:
        options = [dims]
    return any(o in op.cache_dims() for op in ops for o in options)


def _states(inputs, attention_ops, ops) -> list[dict]:
    """Recurrent states: fixed cache inputs that are no attention cache. The graph does not name its inputs and
    a tensor read by several ops shows once per reader, so states are told apart by shape and dtype; tensors of
    one shape and dtype count as many times as in-place updates write one (at least once)."""
    seen, out = set(), []
    for i in inputs:
        shape = i["shape"]
        if _grows(shape) or _explained(shape, attention_ops) or not all(d.isdigit() for d in shape[1:]):
            continue
        key = (tuple(shape), i["dtype"])
        if key in seen:
            continue
        seen.add(key)
        copies = max(1, sum(1 for j in inputs if j["written"] and (tuple(j["shape"]), j["dtype"]) == key))
        dims = [int(d) for d in shape[1:]]
        bits = element_bytes(i["dtype"]) * 8
        role, kept = next((found for found in (op.state_dims(dims) for op in ops) if found), ("state", dims))
        out += [{"role": role, "shape": shape, "dtype": i["dtype"], "dims": kept, "element_bits": bits,
                 "bytes": int(math.prod(kept) * bits) // 8, "hf_bytes": int(math.prod(dims) * bits) // 8}] * copies
    return out


def _extra_growing(inputs, dtype) -> int:
    """Per-token bytes of growing caches no attention op explains (an indexer's keys beside MLA, or attention
    left unrecognised), at the KV dtype. K and V look alike, so each cache counts once per op appending to it
    (a cat), or once per distinct shape where nothing appends."""
    grown = [i for i in inputs if _grows(i["shape"]) and _fixed_dims(i["shape"])]
    cats = [i for i in grown if i["op"] == "aten.cat"]
    if not cats:
        cats = list({(tuple(i["shape"]), i["dtype"]): i for i in grown}.values())
    total = 0
    for i in cats:
        dims = _fixed_dims(i["shape"])
        per_entry = math.prod(dims[:-1]) * vector_bytes(dims[-1], dtype)
        total += math.ceil(per_entry * _growth(next(d for d in i["shape"] if "L" in d))[0])
    return total


# --- parallel layout -----------------------------------------------------------------------------------------------

def _stages(plan: list[dict], num_layers: int, pp: int) -> tuple[list[dict[int, int]], str]:
    """Layers of each kind in each PP stage (contiguous stages, the first num_layers % pp one layer longer).
    Exact where the plan lists each kind's layers; else each kind spread evenly over the stages."""
    sizes = pipeline_stages(num_layers, pp)
    if pp == 1:
        return [{k["kind"]: k["count"] for k in plan}], "exact"
    if all("layers" in k for k in plan):
        kind_of = {i: k["kind"] for k in plan for i in k["layers"]}
        stages, start = [], 0
        for size in sizes:
            counts: dict[int, int] = {}
            for i in range(start, start + size):
                if i in kind_of:
                    counts[kind_of[i]] = counts.get(kind_of[i], 0) + 1
            stages.append(counts)
            start += size
        return stages, "exact"
    stages = [dict() for _ in range(pp)]
    offset = 0
    for k in plan:
        base, extra = divmod(k["count"], pp)
        for s in range(pp):
            stages[s][k["kind"]] = base + (1 if (s - offset) % pp < extra else 0)
        offset = (offset + extra) % pp
    return stages, "even split of each layer kind (the plan does not list layer indices)"


# --- the report ----------------------------------------------------------------------------------------------------

def _decode_ops(model_graph, matched):
    if matched is None:
        from graph.match import match_graph
        if "decode" not in model_graph.phases:
            raise UserError("the model has no decode trace: its KV cache cannot be derived")
        return match_graph(model_graph.phases["decode"], "decode").ops
    if isinstance(matched, dict):
        matched = matched["decode"]
    return matched.ops


def _check(name, value, minimum):
    if value is not None and (type(value) is not int or value < minimum):
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _kind_row(k, plan, config, graph, ops, dtype, tp) -> dict:
    kind = k["kind"]
    mine = [op for op in ops if op.layer_kind == kind]
    att = [op for op in mine if op.kv_cache(dtype) is not None]
    inputs = _cache_inputs(graph, kind)
    states = _states(inputs, att, mine)
    row = {"kind": kind, "label": k.get("label", ""), "type": "none", "layers": k["count"],
           "bytes_per_token_per_layer": 0, "bytes_per_token": 0, "window": 0, "window_source": None,
           "state_bytes_per_layer": sum(s["bytes"] for s in states), "fixed_bytes_per_sequence": 0,
           "kv_heads": None, "kv_heads_per_rank": None, "replication": 1,
           "bytes_per_token_per_layer_per_rank": 0, "state_bytes_per_layer_per_rank": 0,
           "states": [{k2: s[k2] for k2 in ("role", "shape", "dtype", "bytes", "hf_bytes")} for s in states],
           "note": ""}
    types, grow, grow_rank, windows = [], 0, 0, []   # windows: (rate, rate per rank, window) of sliding ops
    for op in att:
        op.check_split(tp)
        cache = op.kv_cache(dtype, tp)
        rate, rate_rank = cache.bytes_per_token, cache.bytes_per_token_per_rank
        if cache.kind == "mla":
            types.append("mla")
        row.update(cache.dims)
        row.update(kv_heads=cache.heads, kv_heads_per_rank=cache.heads_per_rank, replication=cache.replication)
        window, source = (cache.window, "trace") if cache.window else (0, None)
        if not window and cache.kind == "full":
            declared = layer_window(config, _layer_type(config, kind, len(plan)))
            if declared:
                window, source = declared[0], f"config {declared[1]}"
        growth, entries = _growth(op.kv_len)
        if window:
            types.append("sliding")
            windows.append((rate, rate_rank, window))
            row.update(window=window, window_source=source)
        elif 0 < growth < 1:
            # a cache compressed along the length (floor(L/4) entries) beside a fixed part (a window): the fixed
            # entries, less the new token's, count as a window; the rest grows at its rate
            types.append("compressed")
            windows.append((rate, rate_rank, entries - 1))
            rate, rate_rank = math.ceil(rate * growth), math.ceil(rate_rank * growth)
            grow += rate
            grow_rank += rate_rank
        else:
            if cache.kind == "full":
                types.append("full")
            grow += rate
            grow_rank += rate_rank
        row["bytes_per_token_per_layer"] += rate
        row["bytes_per_token_per_layer_per_rank"] += rate_rank
    extra = _extra_growing([i for i in inputs if not _explained(i["shape"], att)], dtype)
    if extra:
        grow += extra
        grow_rank += extra
        row["bytes_per_token_per_layer"] += extra
        row["bytes_per_token_per_layer_per_rank"] += extra
        row["extra_bytes_per_token_per_layer"] = extra
        if not att:
            types.append("cache")
        row["note"] = (f"{extra:,} B per token per layer of cache tensors " +
                       ("beside the attention op's K / V" if att else "with no recognised attention op") +
                       ": read from the cache inputs at the KV dtype, not split by TP")
    if att and not inputs:
        # attention without a cache of its own: it reads another layer's KV (shared), counted there; or the model
        # keeps no cache at all and its decode step runs context attention over the whole sequence again
        recompute = all(getattr(op, "phase", "") == "context" for op in att)
        types, grow, grow_rank, windows = ["none" if recompute else "shared"], 0, 0, []
        row.update(bytes_per_token_per_layer=0, bytes_per_token_per_layer_per_rank=0, window=0, window_source=None)
        row["note"] = ("keeps no KV cache: each decode step recomputes the whole sequence" if recompute else
                       "reads another layer's KV cache (no cache input of its own): counted once, there")
    if states:
        types.append("recurrent")
        row["state_bytes_per_layer_per_rank"] = sum(
            int(math.prod(s["dims"][1:]) * math.ceil(s["dims"][0] / tp) * s["element_bits"]) // 8 for s in states)
        row["scan"] = [info for info in (op.state_info() for op in mine) if info]
    row["type"] = "+".join(dict.fromkeys(types)) or "none"
    row["_grow"], row["_grow_rank"] = grow, grow_rank
    row["_windows"] = windows
    row["bytes_per_token"] = grow * k["count"]
    row["fixed_bytes_per_sequence"] = (sum(r * w for r, _, w in windows) + row["state_bytes_per_layer"]) * k["count"]
    row["fixed_bytes_per_layer_per_rank"] = sum(r * w for _, r, w in windows) + row["state_bytes_per_layer_per_rank"]
    return row


def _sequence_bytes(rows, layers_of, length: int, per_rank: bool, page: int | None = None) -> int:
    """Bytes one sequence of `length` tokens holds in the given layers (page: round tokens up to whole pages)."""
    def tokens(n):
        return -(-n // page) * page if page else n

    total = 0
    for r in rows:
        n = layers_of(r)
        grow = r["_grow_rank"] if per_rank else r["_grow"]
        total += n * grow * tokens(length)
        for rate, rate_rank, window in r["_windows"]:
            total += n * (rate_rank if per_rank else rate) * tokens(min(length, window))
        total += n * (r["state_bytes_per_layer_per_rank"] if per_rank else r["state_bytes_per_layer"])
    return total


def kv_report(model_graph, *, tp: int = 1, pp: int = 1, kv_dtype: str | None = None, page_size: int = 16,
              seq_len: int | None = None, batch: int = 1, gpu_memory_bytes: int | None = None,
              weight_bytes_per_gpu: int | None = None, reserve_bytes: int = 0, matched=None) -> dict:
    """KV-cache figures of a traced model (graph.model_graph.ModelGraph), as a JSON-ready dict of plain ints.

    seq_len: tokens per sequence for the totals (default: the config's max_position_embeddings, where set).
    gpu_memory_bytes: memory per GPU; with it, the sequences of seq_len that fit in what weights
    (weight_bytes_per_gpu, default the model's weight bytes / (tp x pp)) and reserve_bytes leave.
    matched: the result of graph.match.match_model (or its decode Matched), to skip matching again."""
    _check("page size", page_size, 1)
    _check("tp", tp, 1)
    _check("pp", pp, 1)
    _check("sequence length", seq_len, 0)
    _check("batch", batch, 0)
    _check("GPU memory", gpu_memory_bytes, 0)
    _check("weight bytes per GPU", weight_bytes_per_gpu, 0)
    _check("reserve bytes", reserve_bytes, 0)
    config = model_graph.config or {}
    plan = model_graph.plan
    num_layers = model_graph.num_layers
    if pp > num_layers:
        raise UserError(f"--pp {pp}: more pipeline stages than the model's {num_layers} layers")
    if kv_dtype is not None:
        dtype, dtype_source = canonical_kv_dtype(kv_dtype), "override"
    else:
        declared = declared_kv_dtype(config)
        if declared:
            dtype, dtype_source = declared[0], f"config {declared[1]}"
        else:
            dtype, dtype_source = canonical_kv_dtype(model_graph.dtype), "activation dtype"

    ops = _decode_ops(model_graph, matched)
    graph = model_graph.phases["decode"]
    rows = [_kind_row(k, plan, config, graph, ops, dtype, tp) for k in plan]
    stages, layout = _stages(plan, num_layers, pp)

    def stage_bytes(stage):
        return (sum(stage.get(r["kind"], 0) * r["_grow_rank"] for r in rows),
                sum(stage.get(r["kind"], 0) * r["fixed_bytes_per_layer_per_rank"] for r in rows))

    reference = seq_len if seq_len is not None else context_length(config) or 0
    largest = max(range(pp), key=lambda s: (_sequence_bytes(rows, lambda r: stages[s].get(r["kind"], 0),
                                                             reference, True), stage_bytes(stages[s])))
    stage = stages[largest]
    for r in rows:
        r["stage_layers"] = stage.get(r["kind"], 0)
        r["page_bytes_per_layer_per_rank"] = page_size * r["bytes_per_token_per_layer_per_rank"]
        r["page_bytes_per_block_per_rank"] = r["page_bytes_per_layer_per_rank"] * r["stage_layers"]
    rank_grow, rank_fixed = stage_bytes(stage)

    report = {
        "schema": SCHEMA, "model": model_graph.name, "model_type": model_graph.model_type,
        "kv_dtype": dtype, "kv_dtype_source": dtype_source, "tp": tp, "pp": pp, "page_size": page_size,
        "num_layers": num_layers,
        "layers": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "kv_bytes_per_token": sum(r["bytes_per_token"] for r in rows),
        "fixed_bytes_per_sequence": sum(r["fixed_bytes_per_sequence"] for r in rows),
        "per_rank": {"stage": largest, "stage_layers": sum(stage.values()), "layout": layout,
                     "kv_bytes_per_token": rank_grow, "fixed_bytes_per_sequence": rank_fixed,
                     "page_bytes": sum(r["page_bytes_per_block_per_rank"] for r in rows)},
        "seq_len": None, "seq_len_source": None, "batch": batch, "sequence": None, "total": None, "fit": None,
    }
    if seq_len is None and context_length(config):
        seq_len, report["seq_len_source"] = context_length(config), "config context length"
    elif seq_len is not None:
        report["seq_len_source"] = "given"
    if seq_len is not None:
        one = _sequence_bytes(rows, lambda r: r["layers"], seq_len, False)
        one_rank = _sequence_bytes(rows, lambda r: r["stage_layers"], seq_len, True)
        paged = _sequence_bytes(rows, lambda r: r["stage_layers"], seq_len, True, page_size)
        report.update(seq_len=seq_len)
        report["sequence"] = {"bytes": one, "bytes_per_rank": one_rank, "paged_bytes_per_rank": paged}
        report["total"] = {"batch": batch, "bytes": one * batch, "bytes_per_rank": one_rank * batch,
                           "paged_bytes_per_rank": paged * batch}
        if gpu_memory_bytes is not None:
            weights = weight_bytes_per_gpu if weight_bytes_per_gpu is not None else \
                -(-model_graph.weight_bytes // (tp * pp))
            free = gpu_memory_bytes - weights - reserve_bytes
            report["fit"] = {"gpu_memory_bytes": gpu_memory_bytes, "weight_bytes_per_gpu": weights,
                             "weight_source": "given" if weight_bytes_per_gpu is not None else
                             "model weight bytes / (tp x pp)", "reserve_bytes": reserve_bytes,
                             "free_bytes": max(free, 0), "bytes_per_sequence": paged,
                             "sequences": (max(free, 0) // paged) if paged else None}
    return report
