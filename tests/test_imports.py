"""Imports point down only (DESIGN.md's layers) and nothing imports in a circle, lazy imports inside functions
included: every `import` statement of the project is read from the source."""
import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
# lowest first; a module may import its own package or any package below it
LAYERS = ("core", "tracer", "graph", "costmodel", "collector", "render", "launch", "plot", "cli")
PACKAGES = set(LAYERS)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in out if name.split(".")[0] in PACKAGES}


def import_graph() -> nx.DiGraph:
    top = ("render", "launch", "plot", "cli")   # modules of their own at the top level
    files = [*(ROOT / f"{m}.py" for m in top), *(p for pkg in LAYERS if pkg not in top for p in (ROOT / pkg).rglob("*.py"))]
    modules = {_module_name(p): p for p in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in _imports(path):
            # `from pkg import mod` names a module; `from pkg.mod import func` names the module
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                graph.add_edge(name, target)
    return graph


def test_the_walk_sees_lazy_imports():
    graph = import_graph()
    assert graph.has_edge("cli", "costmodel.estimate")  # imported inside a command function
    assert graph.number_of_edges() > 50


def test_no_module_imports_in_a_circle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import cycles: {cycles[:5]}"


def test_imports_point_down_the_layers():
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    upward = [(a, b) for a, b in import_graph().edges if rank[a.split(".")[0]] < rank[b.split(".")[0]]]
    assert upward == [], f"imports pointing up: {upward}"
