"""Op graph files: GraphML (for graph tools) and JSON (node-link, for scripts)."""
from __future__ import annotations

import json
from pathlib import Path

import networkx as nx

from core.errors import UserError

FORMATS = (".graphml", ".json")


def _flat_attrs(attrs: dict) -> dict:
    # GraphML holds scalars only: lists and dicts travel as JSON text, None as "".
    out = {}
    for key, value in attrs.items():
        if value is None:
            out[key] = ""
        elif isinstance(value, (list, dict)):
            out[key] = json.dumps(value)
        else:
            out[key] = value
    return out


def write_graph(model_graph, path: str, *, overwrite: bool = False) -> Path:
    target = Path(path)
    if target.suffix not in FORMATS:
        raise UserError(f"--graph {path}: unknown format '{target.suffix}', use one of {', '.join(FORMATS)}")
    if target.exists() and not overwrite:
        raise UserError(f"--graph {path}: file exists; remove it or pass --force to overwrite")
    if not target.parent.exists():
        raise UserError(f"--graph {path}: directory {target.parent} does not exist")
    if target.suffix == ".json":
        data = {"model": model_graph.name, "phases": {p: nx.node_link_data(g, edges="edges")
                                                      for p, g in model_graph.phases.items()}}
        target.write_text(json.dumps(data))
    else:
        union = nx.DiGraph(model=model_graph.name)
        for phase, g in model_graph.phases.items():
            for node, attrs in g.nodes(data=True):
                union.add_node(f"{phase}:{node}", phase=phase, **_flat_attrs(attrs))
            union.add_edges_from((f"{phase}:{u}", f"{phase}:{v}") for u, v in g.edges())
        nx.write_graphml(union, target)
    return target
