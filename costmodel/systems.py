"""GPU systems: per-GPU specs and the measured tables that exist for each.

A system's spec comes from two places. aiconfigurator-core ships one YAML per system it measured
(``aiconfigurator_core/systems/<name>.yaml``: ``gpu.mem_bw``, ``gpu.bfloat16_tc_flops``, ``node.intra_node_bw``, ...,
all per GPU in bytes, bytes/s and FLOP/s); it is read and mapped onto our field names (PACKAGE_FIELDS), each value's
source naming the package file and key. Our own ``systems/<name>.yaml`` holds the fields we state ourselves, each
with a ``sources:`` entry naming the public document behind it: a whole spec where the package has none (mi300x),
or values that replace the package's (our datasheet figures for the systems we described first). Our fields win.

Fields the package does not give (gpu name, vendor, link name, FP32 rate, L2 size) are ours alone: for a system
only the package describes, the gpu name is the system name, the vendor is nvidia where the YAML gives an SM
version (a CUDA compute capability), and the rest stay unset. `aiconfigurator_name` names the system's folder in
the package data (null where it has none, e.g. mi300x, which is priced by roofline alone).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.errors import UserError
from costmodel.tables.roots import (AICONFIGURATOR_ROOT_LABEL, REPO_SYSTEMS_DIR, TableFile,
                                    aiconfigurator_systems_dir, find_tables, version_key)

SYSTEMS_DIR = REPO_SYSTEMS_DIR

# name -> (required, allowed types); a null is allowed where a GPU lacks the feature
_NUM = (int, float)
_FIELDS: dict[str, tuple[bool, tuple[type, ...]]] = {
    "name": (True, (str,)),
    "gpu": (True, (str,)),
    "vendor": (False, (str,)),
    "aiconfigurator_name": (False, (str,)),
    "bf16_dense_flops_per_s": (True, _NUM),
    "fp8_dense_flops_per_s": (False, _NUM),
    "fp4_dense_flops_per_s": (False, _NUM),
    "int8_dense_ops_per_s": (False, _NUM),
    "fp32_flops_per_s": (False, _NUM),
    "hbm_bytes": (True, _NUM),
    "hbm_bandwidth_bytes_per_s": (True, _NUM),
    "intra_node_link": (False, (str,)),
    "intra_node_bandwidth_bytes_per_s": (True, _NUM),
    "inter_node_bandwidth_bytes_per_s": (False, _NUM),
    "gpus_per_node": (True, (int,)),
    "scale_up_domain_gpus": (True, (int,)),
    "l2_bytes": (False, _NUM),
    "sm_version": (False, (int,)),
    "sources": (True, (dict,)),
}

# our field <- the package YAML keys it is read from, first present wins. Rack-scale systems (gb200, gb300) give
# node.inter_node_bw as NVLink between trays of one rack and node.inter_rack_bw as the network beyond it, so the
# scale-up domain is the rack and the inter-node bandwidth ours means (leaving the NVLink domain) is inter_rack_bw.
PACKAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "bf16_dense_flops_per_s": ("gpu.bfloat16_tc_flops",),
    "fp8_dense_flops_per_s": ("gpu.fp8_tc_flops",),
    "fp4_dense_flops_per_s": ("gpu.fp4_tc_flops",),
    "int8_dense_ops_per_s": ("gpu.int8_tc_flops",),
    "fp32_flops_per_s": ("gpu.float32_tc_flops",),
    "hbm_bytes": ("gpu.mem_capacity",),
    "hbm_bandwidth_bytes_per_s": ("gpu.mem_bw",),
    "intra_node_bandwidth_bytes_per_s": ("node.intra_node_bw",),
    "inter_node_bandwidth_bytes_per_s": ("node.inter_rack_bw", "node.inter_node_bw"),
    "gpus_per_node": ("node.num_gpus_per_node",),
    "scale_up_domain_gpus": ("node.num_gpus_per_rack", "node.num_gpus_per_node"),
    "sm_version": ("gpu.sm_version",),
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
    vendor: str | None
    aiconfigurator_name: str | None
    bf16_dense_flops_per_s: float
    fp8_dense_flops_per_s: float | None
    fp4_dense_flops_per_s: float | None
    int8_dense_ops_per_s: float | None
    fp32_flops_per_s: float | None
    hbm_bytes: float
    hbm_bandwidth_bytes_per_s: float
    intra_node_link: str | None
    intra_node_bandwidth_bytes_per_s: float
    inter_node_bandwidth_bytes_per_s: float | None
    gpus_per_node: int
    scale_up_domain_gpus: int
    l2_bytes: float | None
    sm_version: int | None   # NVIDIA's compute capability x 10 (90 Hopper, 100 and 103 Blackwell); None elsewhere
    sources: dict = field(compare=False, repr=False)
    path: Path = field(compare=False, repr=False, default=None)  # our YAML, else the package's

    def peak_flops_per_s(self, precision: str) -> float:
        """Dense peak for a compute precision ("bf16", "fp8", "fp4", "int8", "fp32")."""
        key = _PEAK_FIELD.get(precision)
        if key is None:
            raise UserError(f"unknown compute precision {precision!r}; known: {', '.join(sorted(_PEAK_FIELD))}")
        value = getattr(self, key)
        if value is None:
            raise UserError(f"{self.name} ({self.gpu}) has no {precision} peak in {self.label}")
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
    def architecture(self) -> str | None:
        """The GPU architecture as its compute capability's major number ("sm9": Hopper, "sm10": B200/B300 and
        their NVL72 racks), for what differs per GPU generation rather than per system; None without one."""
        return None if self.sm_version is None else f"sm{self.sm_version // 10}"

    @property
    def label(self) -> str:
        """The spec's YAML as shown in roofline provenance: relative to the repo, or named in the package."""
        package = aiconfigurator_systems_dir()
        if package is not None and self.path.is_relative_to(package):
            return f"{AICONFIGURATOR_ROOT_LABEL}:systems/{self.path.name}"
        try:
            return str(self.path.relative_to(SYSTEMS_DIR.parent))
        except ValueError:
            return str(self.path)

    def tables(self, data_dirs=()) -> list[TableFile]:
        """Every measured table file of this system across the data roots, highest-priority root first."""
        return find_tables(self.name, self.aiconfigurator_name, data_dirs)


def _package_yaml(name: str) -> Path | None:
    """The package's YAML of a system it has measured tables for."""
    package = aiconfigurator_systems_dir()
    if package is None:
        return None
    path = package / f"{name}.yaml"
    return path if path.is_file() and (package / "data" / name).is_dir() else None


def list_systems() -> list[str]:
    own = {p.stem for p in SYSTEMS_DIR.glob("*.yaml")}
    package = aiconfigurator_systems_dir()
    measured = {p.stem for p in package.glob("*.yaml") if _package_yaml(p.stem)} if package else set()
    return sorted(own | measured)


def load_system(name: str) -> System:
    if not isinstance(name, str) or "/" in name or not name:
        raise UserError(f"unknown system {name!r}; known systems: {', '.join(list_systems())}")
    own, package = SYSTEMS_DIR / f"{name}.yaml", _package_yaml(name)
    if not own.is_file() and package is None:
        raise UserError(f"unknown system {name!r}; known systems: {', '.join(list_systems())}")
    values = _from_package(name, package) if package else {"name": name, "sources": {}}
    if own.is_file():
        ours = _read_own(own)
        values["sources"] = {**values["sources"], **ours.pop("sources")}
        values.update(ours)
    path = own if own.is_file() else package
    for key, (required, _) in _FIELDS.items():
        if values.get(key) is None:
            if required:
                raise UserError(f"malformed system file {path}: missing {key}")
            values[key] = None
    return System(**values, path=path)


def _load_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"malformed system file {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"malformed system file {path}: expected a mapping of fields")
    return raw


def _check(path: Path, key: str, value) -> None:
    types = _FIELDS[key][1]
    if isinstance(value, bool) or not isinstance(value, types):
        # bool is an int subclass; "1979e12" without a sign parses as a string in YAML 1.1
        raise UserError(f"malformed system file {path}: {key} = {value!r} is not a {types[0].__name__}")
    if isinstance(value, (int, float)) and value <= 0:
        raise UserError(f"malformed system file {path}: {key} must be positive")


def _read_own(path: Path) -> dict:
    raw = _load_yaml(path)
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise UserError(f"malformed system file {path}: unknown fields {', '.join(unknown)}")
    if raw.get("name") != path.stem:
        raise UserError(f"malformed system file {path}: name {raw.get('name')!r} does not match the file name")
    if not isinstance(raw.get("sources"), dict):
        raise UserError(f"malformed system file {path}: missing sources (the document behind each figure)")
    for key, value in raw.items():
        if value is not None:
            _check(path, key, value)
    return raw


def _from_package(name: str, path: Path) -> dict:
    raw = _load_yaml(path)
    source = f"{AICONFIGURATOR_ROOT_LABEL} {importlib.metadata.version('aiconfigurator-core')} systems/{path.name}"
    values: dict = {"name": name, "gpu": name, "sources": {}}
    for ours, keys in PACKAGE_FIELDS.items():
        for key in keys:
            section, _, item = key.partition(".")
            value = (raw.get(section) or {}).get(item)
            if value is not None:
                _check(path, ours, value)
                values[ours] = value
                values["sources"][ours] = f"{source}: {key}"
                break
    data_dir = raw.get("data_dir")
    values["aiconfigurator_name"] = Path(data_dir).name if isinstance(data_dir, str) else name
    if (raw.get("gpu") or {}).get("sm_version") is not None:
        values["vendor"] = "nvidia"
        values["sources"]["vendor"] = f"{source}: gpu.sm_version (a CUDA compute capability)"
    return values


def table_summary(name: str, data_dirs=()) -> list[tuple[str, str, str]]:
    """Sorted unique (table, backend, version) triples that exist for a system."""
    triples = {(t.table, t.backend, t.version) for t in load_system(name).tables(data_dirs)}
    return sorted(triples, key=lambda t: (t[0], t[1], version_key(t[2])))
