"""GPU systems: the specs in systems/<name>.yaml and the measured tables that exist for each.

A system YAML holds per-GPU peak figures (dense tensor FLOP/s per precision, FP32, memory size and
bandwidth, intra/inter-node link bandwidth, node size, L2) with a `sources:` entry naming the
public document behind each figure. `aiconfigurator_name` names the system's folder in the
aiconfigurator-core data (null where it has none, e.g. mi300x, which is priced by roofline alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import UserError

SYSTEMS_DIR = Path(__file__).resolve().parent.parent / "systems"

# name -> (required, allowed types); a null is allowed where a GPU lacks the feature
_NUM = (int, float)
_FIELDS: dict[str, tuple[bool, tuple[type, ...]]] = {
    "name": (True, (str,)),
    "gpu": (True, (str,)),
    "vendor": (True, (str,)),
    "aiconfigurator_name": (False, (str,)),
    "bf16_dense_flops_per_s": (True, _NUM),
    "fp8_dense_flops_per_s": (False, _NUM),
    "fp4_dense_flops_per_s": (False, _NUM),
    "int8_dense_ops_per_s": (False, _NUM),
    "fp32_flops_per_s": (True, _NUM),
    "hbm_bytes": (True, _NUM),
    "hbm_bandwidth_bytes_per_s": (True, _NUM),
    "intra_node_link": (True, (str,)),
    "intra_node_bandwidth_bytes_per_s": (True, _NUM),
    "inter_node_bandwidth_bytes_per_s": (False, _NUM),
    "gpus_per_node": (True, (int,)),
    "scale_up_domain_gpus": (True, (int,)),
    "l2_bytes": (True, _NUM),
    "sources": (True, (dict,)),
}

# Precision names as the tables and callers spell them -> the YAML peak they run at.
_PEAK_FIELD = {
    "bf16": "bf16_dense_flops_per_s",
    "bfloat16": "bf16_dense_flops_per_s",
    "fp16": "bf16_dense_flops_per_s",  # same tensor-core rate as bf16 on every listed GPU
    "float16": "bf16_dense_flops_per_s",
    "fp8": "fp8_dense_flops_per_s",
    "fp4": "fp4_dense_flops_per_s",
    "int8": "int8_dense_ops_per_s",
    "fp32": "fp32_flops_per_s",
    "float32": "fp32_flops_per_s",
}


@dataclass(frozen=True)
class System:
    name: str
    gpu: str
    vendor: str
    aiconfigurator_name: str | None
    bf16_dense_flops_per_s: float
    fp8_dense_flops_per_s: float | None
    fp4_dense_flops_per_s: float | None
    int8_dense_ops_per_s: float | None
    fp32_flops_per_s: float
    hbm_bytes: float
    hbm_bandwidth_bytes_per_s: float
    intra_node_link: str
    intra_node_bandwidth_bytes_per_s: float
    inter_node_bandwidth_bytes_per_s: float | None
    gpus_per_node: int
    scale_up_domain_gpus: int
    l2_bytes: float
    sources: dict = field(compare=False, repr=False)
    path: Path = field(compare=False, repr=False, default=None)

    def peak_flops_per_s(self, precision: str) -> float:
        """Dense peak for a compute precision ("bf16", "fp8", "fp4", "int8", "fp32")."""
        key = _PEAK_FIELD.get(precision)
        if key is None:
            raise UserError(f"unknown compute precision {precision!r}; known: {', '.join(sorted(_PEAK_FIELD))}")
        value = getattr(self, key)
        if value is None:
            raise UserError(f"{self.name} ({self.gpu}) has no {precision} tensor cores")
        return float(value)

    def link_bandwidth_bytes_per_s(self, num_gpus: int) -> float:
        """Per-GPU one-direction bandwidth for traffic among num_gpus GPUs."""
        if num_gpus <= self.scale_up_domain_gpus:
            return float(self.intra_node_bandwidth_bytes_per_s)
        if self.inter_node_bandwidth_bytes_per_s is None:
            raise UserError(
                f"{self.name}: {num_gpus} GPUs span nodes but {self.path} gives no inter_node_bandwidth_bytes_per_s"
            )
        return float(self.inter_node_bandwidth_bytes_per_s)

    @property
    def label(self) -> str:
        """The YAML path as shown in roofline provenance (relative to the repo where possible)."""
        try:
            return str(self.path.relative_to(SYSTEMS_DIR.parent))
        except (ValueError, AttributeError):
            return str(self.path)


def list_systems() -> list[str]:
    return sorted(p.stem for p in SYSTEMS_DIR.glob("*.yaml"))


def load_system(name: str) -> System:
    path = SYSTEMS_DIR / f"{name}.yaml"
    if not isinstance(name, str) or "/" in name or not path.is_file():
        raise UserError(f"unknown system {name!r}; known systems: {', '.join(list_systems())}")
    return _parse(path)


def _parse(path: Path) -> System:
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed system file {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"malformed system file {path}: expected a mapping of fields")
    values = {}
    for key, (required, types) in _FIELDS.items():
        value = raw.get(key)
        if value is None:
            if required:
                raise UserError(f"malformed system file {path}: missing {key}")
        elif isinstance(value, bool) or not isinstance(value, types):
            # bool is an int subclass; "1979e12" without a sign parses as a string in YAML 1.1
            raise UserError(f"malformed system file {path}: {key} = {value!r} is not a {types[0].__name__}")
        elif isinstance(value, (int, float)) and value <= 0:
            raise UserError(f"malformed system file {path}: {key} must be positive")
        values[key] = value
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise UserError(f"malformed system file {path}: unknown fields {', '.join(unknown)}")
    if values["name"] != path.stem:
        raise UserError(f"malformed system file {path}: name {values['name']!r} does not match the file name")
    return System(**values, path=path)


def list_tables(name: str, data_dirs=()) -> list:
    """Every measured table for a system across the data roots, as database.TableFile records
    (family, table, backend, version, path, root), highest-priority root first."""
    from costmodel import database  # database imports this module; import late to avoid a cycle

    return database.find_tables(load_system(name), data_dirs)


def table_summary(name: str, data_dirs=()) -> list[tuple[str, str, str]]:
    """Sorted unique (table, backend, version) triples that exist for a system."""
    from costmodel.database import version_key

    triples = {(t.table, t.backend, t.version) for t in list_tables(name, data_dirs)}
    return sorted(triples, key=lambda t: (t[0], t[1], version_key(t[2])))
