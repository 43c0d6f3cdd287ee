"""Where measured tables live, and which version folder is newer.

Tables live under ``<root>/<system>/<family>/<backend>/<version>/<table>.parquet`` (a ``collection_meta.yaml``
sits beside them). Roots, highest priority first: extra dirs passed in (``--data-dir``, what ``tracecost collect
--out`` wrote), our own ``systems/data`` in this repo, and the installed aiconfigurator-core package's
``aiconfigurator_core/systems/data`` (found with ``importlib.util.find_spec``, without importing the package). In
the aiconfigurator root the system folder is the system's ``aiconfigurator_name``; elsewhere it is our system name.

A backend is a serving framework folder (trtllm, vllm, sglang, torch for our collector); collective libraries
(nccl, oneccl, gloo) are not backends. Versions compare as PEP 440 versions (1.3.0rc20 > 1.3.0rc10, 0.5.6.post2 <
0.5.9, 0.1.dev19262 < 0.24.0; unparseable strings sort below all valid ones).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from packaging.version import InvalidVersion, Version

from core.errors import UserError

COLLECTIVE_LIBRARIES = frozenset({"nccl", "oneccl", "gloo"})  # gloo: the collector's CPU dry run
REPO_SYSTEMS_DIR = Path(__file__).resolve().parents[2] / "systems"
OWN_DATA_ROOT = REPO_SYSTEMS_DIR / "data"
AICONFIGURATOR_PACKAGE = "aiconfigurator_core"
AICONFIGURATOR_ROOT_LABEL = "aiconfigurator-core"
OWN_ROOT_LABEL = "tracecost"


def aiconfigurator_systems_dir() -> Path | None:
    """aiconfigurator_core/systems of the installed package (system YAMLs, data/), located without importing it."""
    spec = importlib.util.find_spec(AICONFIGURATOR_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "systems"
        if (candidate / "data").is_dir():
            return candidate
    return None


def aiconfigurator_data_root() -> Path | None:
    """aiconfigurator_core/systems/data of the installed package."""
    systems_dir = aiconfigurator_systems_dir()
    return systems_dir / "data" if systems_dir else None


@dataclass(frozen=True)
class DataRoot:
    path: Path
    label: str  # short name for provenance; extra dirs are shown by absolute path
    named: bool


def data_roots(extra: Sequence[str | Path] = ()) -> list[DataRoot]:
    """Data roots, highest priority first: extra dirs, our own systems/data, aiconfigurator-core."""
    roots = []
    for d in extra:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise UserError(f"data dir not found: {path}")
        roots.append(DataRoot(path.resolve(), str(path.resolve()), False))
    roots.append(DataRoot(OWN_DATA_ROOT, OWN_ROOT_LABEL, True))
    aic = aiconfigurator_data_root()
    if aic is not None:
        roots.append(DataRoot(aic, AICONFIGURATOR_ROOT_LABEL, True))
    return roots


@dataclass(frozen=True)
class TableFile:
    family: str  # op family folder: gemm, attention, comm, ...
    table: str  # file stem: gemm_perf, nccl_perf, ...
    backend: str
    version: str
    path: Path
    label: str  # "<root>:<system>/<family>/<backend>/<version>/<file>", or the absolute path
    priority: int  # index of the root in data_roots(); 0 is highest


def find_tables(name: str, aiconfigurator_name: str | None, extra: Sequence[str | Path] = ()) -> list[TableFile]:
    """Every table file of the system `name` (aiconfigurator_name: its folder in the package data), in root order."""
    out = []
    for priority, root in enumerate(data_roots(extra)):
        folders = [aiconfigurator_name] if root.label == AICONFIGURATOR_ROOT_LABEL else [name, aiconfigurator_name]
        for folder in dict.fromkeys(f for f in folders if f):
            base = root.path / folder
            if not base.is_dir():
                continue
            for path in sorted(base.glob("*/*/*/*.parquet")):
                family, backend, version = path.parts[-4:-1]
                label = f"{root.label}:{path.relative_to(root.path)}" if root.named else str(path)
                out.append(TableFile(family, path.stem, backend, version, path, label, priority))
    return out


def version_key(version: str):
    """Sort key for version folder names: PEP 440 where it parses, a tolerant split otherwise."""
    try:
        return (1, Version(version), ())
    except InvalidVersion:
        pass
    parts = tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in re.findall(r"\d+|[A-Za-z]+", version))
    return (0, 0, parts)
