"""Matching a traced model onto cost ops: the rules of graph/patterns.py, in their priority order, run by the
engine of graph/engine.py. Joined here so that neither imports the other's side: the rules use the engine's
helpers, the engine takes whatever rule list it is given."""
from __future__ import annotations

import networkx as nx

from graph.engine import Matched, run
from graph.patterns import AFTER, RULES


def match_graph(g: nx.DiGraph, phase: str, *, fuse: bool = True, windows: dict | None = None) -> Matched:
    return run(g, phase, RULES, fuse=fuse, windows=windows, after=AFTER)


def match_model(model_graph, *, fuse: bool = True) -> dict[str, Matched]:
    """Both phases. Decode is matched first: a sliding-window layer shows its window there (a cache that stops
    growing), and prefill's attention of the same layer takes that window."""
    out = {}
    windows: dict = {}
    if "decode" in model_graph.phases:
        out["decode"] = match_graph(model_graph.phases["decode"], "decode", fuse=fuse, windows=windows)
    if "prefill" in model_graph.phases:
        out["prefill"] = match_graph(model_graph.phases["prefill"], "prefill", fuse=fuse, windows=windows)
    return {p: out[p] for p in ("prefill", "decode") if p in out}
