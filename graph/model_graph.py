"""The trace driver: a model name in, a traced model out (source, layer plan, parameter figures, one op graph per
phase), cached on disk.

`trace_model` runs the whole front half of the data flow, in order: resolve the name (tracer.source), read the cache,
build the config (tracer.config_build), build the model on the meta device (tracer.meta) and plan its layers
(tracer.layers), export each phase (tracer.export) and build its op graph (graph.build), with the fallbacks where the
model's code does not export in one piece (a loop over the sequence, a fixed batch or cached length: traced at fixed
sizes and folded, graph.loops), and, for a bare model type's default config, the repairs of tracer.default_repairs.
The result is cached as JSON keyed by the config, the trust flag, the torch/transformers versions and the code of
tracer/ and graph/, so a warm run reads one file and imports neither torch, transformers nor sympy: the modules that
import them (config_build, meta, layers, export, build, loops) are imported inside the functions of the cold path, and
only those.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx

from core.errors import UserError, join_notes
from core.quant_config import KEY as QUANT_KEY, declared_quantization
from tracer.default_repairs import none_field_repairs
from tracer.lengths import LOOP_LENGTHS, fold_lengths
from tracer.source import resolve

CACHE_FORMAT = 1
_CODE_DIRS = ("tracer", "graph")


@dataclass
class ModelGraph:
    name: str
    source_kind: str
    source_origin: str
    note: str
    model_type: str
    dtype: str
    num_layers: int
    plan: list[dict]                 # kind, label, count, representative_layer
    param_count: int
    weight_bytes: int
    config: dict                     # the traced (text) config, as transformers' to_dict()
    trace_seconds: float
    versions: dict[str, str]
    phases: dict[str, nx.DiGraph] = field(default_factory=dict)
    from_cache: bool = False

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("from_cache")
        data["phases"] = {p: nx.node_link_data(g, edges="edges") for p, g in self.phases.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ModelGraph":
        phases = {p: nx.node_link_graph(g, edges="edges") for p, g in data.pop("phases").items()}
        return cls(**data, phases=phases)


def versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "tracecost"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "none"
    return out


def _code_digest() -> str:
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for d in _CODE_DIRS:
        for f in sorted((root / d).glob("*.py")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    base = os.environ.get("TRACECOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tracecost")
    return Path(base)


def cache_key(config: dict, trust_remote_code: bool) -> str:
    payload = json.dumps({"config": config, "trust": trust_remote_code, "versions": versions(),
                          "code": _code_digest(), "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _read_cache(path: Path) -> ModelGraph | None:
    try:
        with open(path) as f:
            graph = ModelGraph.from_json(json.load(f))
    except (OSError, ValueError, TypeError, KeyError):
        return None  # missing or unreadable: trace again and overwrite
    graph.from_cache = True
    return graph


def _write_cache(path: Path, graph: ModelGraph) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(graph.to_json(), f, separators=(",", ":"))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as exc:
        print(f"tracecost: warning: trace cache not written ({exc})", file=sys.stderr)


def trace_model(name: str, *, trust_remote_code: bool = False, use_cache: bool = True,
                progress=lambda msg: None) -> ModelGraph:
    src = resolve(name)
    path = cache_dir() / f"{cache_key(src.config, trust_remote_code)}.json"
    if use_cache:
        cached = _read_cache(path)
        if cached is not None:
            # the same config may have been traced under another name or path: report this request's source
            cached.name, cached.source_kind, cached.source_origin = src.name, src.kind, src.origin
            return cached
    with _logs_muted():
        graph = _trace_repairing(src, trust_remote_code, progress)
    if use_cache:
        _write_cache(path, graph)
    return graph


@contextlib.contextmanager
def _logs_muted():
    """torch logs some failures with their traceback at error level before it raises them (a fake tensor's kernel
    that fails during export); the exception reaches the user as one line, and the log would bury it."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _trace_repairing(src, trust_remote_code: bool, progress) -> ModelGraph:
    """_trace; where a bare model type's default config fails in transformers' code with a TypeError (a size or a
    per-layer list left None), again with those fields set (tracer.default_repairs.none_field_repairs), each
    repaired config in turn until one traces. What was set is in the note, which the cache keeps with the trace."""
    try:
        return _trace(src, trust_remote_code, progress)
    except UserError as exc:
        first, repairs = exc, none_field_repairs(src, exc)
        if not repairs:
            raise
    failures = []
    for repair in repairs:
        progress(f"the default config fails with a TypeError; tracing again with {', '.join(repair.fixed)}")
        try:
            graph = _trace(repair.source, trust_remote_code, progress)
        except UserError as exc:
            failures.append(exc)
            continue
        graph.note = join_notes(f"default config repaired after a TypeError in transformers' code: "
                                f"{', '.join(repair.fixed)}", graph.note)
        return graph
    more = f" (and {len(repairs) - 1} with larger values)" if len(repairs) > 1 else ""
    raise UserError(f"{first}; repaired ({', '.join(repairs[0].fixed)}){more}, it fails again: {failures[0]}") \
        from None


def _trace(src, trust_remote_code: bool, progress) -> ModelGraph:
    from tracer.config_build import load_config  # cold path: this and the next import load transformers and torch
    from tracer.layers import apply_plan, parameter_totals, plan_layers
    from tracer.meta import DTYPE, build_meta_model

    start = time.perf_counter()
    config, note = load_config(src, trust_remote_code=trust_remote_code)  # bad input fails here, before progress
    progress(f"building {config.model_type} on the meta device (traced once, then read from the cache)")
    model = build_meta_model(config, trust_remote_code=trust_remote_code)
    config = model.config
    plan = plan_layers(model, config)
    apply_plan(model, config, plan)
    param_count, weight_bytes = parameter_totals(model, plan)
    phases = _export_graphs(model, plan, progress)
    note = join_notes(note, *(f"{p}: {g.graph['note']}" for p, g in phases.items() if g.graph.get("note")))
    return ModelGraph(
        name=src.name, source_kind=src.kind, source_origin=src.origin, note=note, model_type=config.model_type,
        dtype=str(DTYPE).replace("torch.", ""), num_layers=plan.num_layers, plan=plan.to_json(),
        param_count=param_count, weight_bytes=weight_bytes, config=_with_quantization(config.to_dict(), src.config),
        trace_seconds=round(time.perf_counter() - start, 3), versions=versions(), phases=phases)


def _export_graphs(model, plan, progress) -> dict[str, nx.DiGraph]:
    """Export and graph both phases. Where the OS can fork, decode runs in a child process beside prefill in the
    parent: the two exports are independent and each takes seconds. The child sends its graph back as JSON."""
    import torch  # cold path

    from tracer.export import BatchFixedDecode, LengthFixed, SequenceLoop, export_phase

    def one(phase):
        try:
            exported = export_phase(model, phase, progress)
        except SequenceLoop:
            return _folded_prefill(model, plan, progress)
        except BatchFixedDecode as exc:
            return _chunk_decode(model, plan, progress, exc)
        except LengthFixed as fixed:
            return _folded_decode(model, plan, progress, fixed)
        return _graph(exported, plan)

    if not hasattr(os, "fork"):
        return {p: one(p) for p in ("prefill", "decode")}
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: decode
        os.close(read_fd)
        # GNU OpenMP does not survive a fork: a CPU kernel run in parallel here (tracer.export computes values it
        # knows, such as positions, on the CPU) would wait forever on the parent's threads
        torch.set_num_threads(1)
        try:
            payload = {"graph": nx.node_link_data(one("decode"), edges="edges")}
        except Exception as exc:  # sent back and raised again in the parent
            payload = {"error": str(exc), "user": type(exc).__name__ == "UserError"}
        with os.fdopen(write_fd, "w") as pipe:
            json.dump(payload, pipe)
        os._exit(0)
    os.close(write_fd)
    try:
        prefill = one("prefill")
    finally:
        with os.fdopen(read_fd) as pipe:
            text = pipe.read()
        os.waitpid(pid, 0)
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {"error": "the decode export process died", "user": False}
    if "error" in payload:
        raise (UserError if payload["user"] else RuntimeError)(payload["error"])
    return {"prefill": prefill, "decode": nx.node_link_graph(payload["graph"], edges="edges")}


def _graph(exported, plan) -> nx.DiGraph:
    """The op graph of an exported phase, with the export's note (how it was traced) before the graph's own."""
    from graph.build import build_graph  # cold path

    graph = build_graph(exported, plan)
    if exported.note:
        graph.graph["note"] = join_notes(exported.note, graph.graph.get("note"))
    return graph


def _folded_prefill(model, plan, progress, chunk: bool = False) -> nx.DiGraph:
    """Prefill of a model whose code loops over the sequence: traced at fixed lengths and folded (graph.loops).
    With `chunk`, the same for the decode step traced as a chunk of new tokens over the cache."""
    from graph.loops import FoldError, fold_sequence_loops  # cold path
    from tracer.export import export_phase

    phase = "decode" if chunk else "prefill"
    progress(f"the model loops over the sequence in Python: {phase} traced at fixed lengths and folded")
    graphs = {s: _graph(export_phase(model, phase, progress, length=s, chunk=chunk), plan) for s in LOOP_LENGTHS}
    try:
        folded = fold_sequence_loops(graphs)
    except FoldError as exc:
        raise UserError(f"{phase} loops over the sequence and cannot be folded into one trace: {exc}") from None
    note = (f"{phase} loops over the sequence in Python: traced at S = {', '.join(map(str, LOOP_LENGTHS))} and "
            f"folded into one graph in S")
    folded.graph["note"] = join_notes(graphs[LOOP_LENGTHS[0]].graph.get("note"), note)
    return folded


def _chunk_decode(model, plan, progress, fixed) -> nx.DiGraph:
    """Decode of a model whose one-token code does not keep the batch apart (tracer.export.BatchFixedDecode):
    traced as a chunk of S new tokens over the cache, the model's multi-token path, which decode sizes price at
    S = 1 (folded like prefill where that path loops over the new tokens)."""
    from tracer.export import SequenceLoop, export_phase  # cold path

    progress("the one-token decode step fixes the batch: decode traced as a chunk of new tokens over the cache")
    try:
        try:
            exported = export_phase(model, "decode", progress, chunk=True)
        except SequenceLoop:
            return _folded_prefill(model, plan, progress, chunk=True)
    except UserError as exc:
        raise UserError(f"{fixed}; traced as a chunk of new tokens over the cache instead, it fails too: {exc}") \
            from None
    return _graph(exported, plan)


def _folded_decode(model, plan, progress, fixed) -> nx.DiGraph:
    """Decode of a model whose code fixes the cached length L (see tracer.export.LengthFixed): traced at fixed
    lengths, B symbolic, and folded into one graph in L (graph.loops)."""
    from graph.loops import FoldError, fold_sequence_loops  # cold path
    from tracer.export import export_phase

    lengths = fold_lengths(model.config)
    whole = " (the model takes the whole sequence at each step)" if fixed.whole_sequence else ""
    progress(f"the decode step fixes the cached length{whole}: decode traced at fixed lengths and folded")
    graphs = {n: _graph(export_phase(model, "decode", progress, cached=n, whole_sequence=fixed.whole_sequence), plan)
              for n in lengths}
    try:
        folded = fold_sequence_loops(graphs, symbol="L")
    except FoldError as exc:
        raise UserError(f"decode fixes the cached length and cannot be folded into one trace: {exc}") from None
    how = "fed the whole sequence, as the model's generation code feeds it, " if fixed.whole_sequence else ""
    folded.graph["note"] = (f"decode fixes the cached length in the model's code: {how}traced at L = "
                            f"{', '.join(map(str, lengths))} and folded into one graph in L")
    return folded


def _with_quantization(traced: dict, declared: dict) -> dict:
    """The traced config, with the quantization its checkpoint declares where the traced part lacks it: a composite
    declares it at its top level or in its text sub-config, and transformers' text sub-config keeps neither."""
    found = None if declared_quantization(traced) else declared_quantization(declared)
    return _plain({**traced, QUANT_KEY: found[1]} if found else traced)


def _plain(value):
    """JSON-safe copy of a config dict (dtypes and other objects become text)."""
    return json.loads(json.dumps(value, default=str))
