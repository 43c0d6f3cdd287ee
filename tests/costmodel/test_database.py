"""Perf database on real aiconfigurator-core rows: exact hits, interpolation, extrapolation, roofline."""

import json
import math
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from costmodel import database, systems
from costmodel.database import COMPUTE_EFFICIENCY, MEMORY_EFFICIENCY, Database
from costmodel.overheads import load_overheads
from costmodel.tables.roots import aiconfigurator_data_root, version_key
from costmodel.tables.specs import CONTEXT_ATTENTION, GEMM, GENERATION_ATTENTION, NCCL
from core.errors import UserError

pytestmark = pytest.mark.skipif(aiconfigurator_data_root() is None, reason="aiconfigurator-core not installed")

SYSTEMS = ["a100_sxm", "b200_sxm", "gb200", "h100_sxm", "h200_sxm", "l40s", "mi300x"]


@pytest.fixture(scope="module")
def db():
    return Database("h200_sxm", backend="trtllm")


def _winning_rows(db, spec, **where):
    """Rows of the file that takes precedence for this table, filtered; duplicates -> min latency."""
    path = db.table_files(spec)[0].path
    df = pd.read_parquet(path)
    for column, value in where.items():
        df = df[df[column] == value]
    return df, path


def _gemm_slice(db):
    df, path = _winning_rows(db, GEMM, gemm_dtype="bfloat16")
    return df.groupby(["n", "k", "m"], as_index=False)["latency"].min(), path


# -- exact ------------------------------------------------------------------------------------


def test_gemm_exact_rows(db):
    rows, path = _gemm_slice(db)
    for _, r in rows.sample(25, random_state=0).iterrows():
        price = db.gemm(int(r.m), int(r.n), int(r.k), quant="bf16")
        assert price.latency_ms == r.latency
        assert price.provenance == "exact"
        assert price.source.endswith(str(path.relative_to(aiconfigurator_data_root())))


def test_context_attention_exact_row(db):
    df, path = _winning_rows(db, CONTEXT_ATTENTION, window_size=0, attn_dtype="bfloat16", kv_cache_dtype="bfloat16")
    keys = ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim"]
    rows = df.groupby(keys, as_index=False)["latency"].min()
    for _, r in rows.sample(10, random_state=1).iterrows():
        price = db.context_attention(int(r.batch_size), int(r.isl), int(r.num_heads), int(r.num_key_value_heads), int(r.head_dim))
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")
        assert path.name in price.source


def test_generation_attention_exact_row(db):
    df, _ = _winning_rows(db, GENERATION_ATTENTION, window_size=0, kv_cache_dtype="fp8")
    keys = ["batch_size", "step", "num_heads", "num_key_value_heads", "head_dim"]
    rows = df.groupby(keys, as_index=False)["latency"].min()
    for _, r in rows.sample(10, random_state=2).iterrows():
        price = db.generation_attention(
            int(r.batch_size), int(r.step), int(r.num_heads), int(r.num_key_value_heads), int(r.head_dim), kv_dtype="fp8"
        )
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")


def test_small_nvfp4_moe_takes_the_min_latency_kernel():
    """b200_sxm trtllm 1.3.0rc20 moe_perf, nvfp4, power_law_1.01, DeepSeek-V3 experts (7168 x 2048, 256, top 8) at
    moe_tp 8: 4 tokens run TensorRT-LLM's min-latency kernel (0.0318 ms; the cutlass lane's row is 0.0847 ms),
    256 tokens the main (cutlass) lane; a lane that did not measure the shape is not used."""
    b200 = Database("b200_sxm", backend="trtllm", version="1.3.0rc20")
    experts = dict(hidden=7168, inter=2048, topk=8, num_experts=256, tp=8, ep=1, quant="nvfp4")
    small = b200.moe(4, **experts)
    assert (round(small.latency_ms, 6), small.provenance) == (0.031789, "exact")
    assert round(b200.moe(4, **experts, kernel="moe_torch_flow_cutlass").latency_ms, 6) == 0.08471
    assert round(b200.moe(256, **experts).latency_ms, 6) == round(
        b200.moe(256, **experts, kernel="moe_torch_flow_cutlass").latency_ms, 6)
    # 384 experts of that size were measured on the cutlass lane alone: it prices them
    wider = {**experts, "num_experts": 384}
    assert b200.moe(4, **wider) == b200.moe(4, **wider, kernel="moe_torch_flow_cutlass")
    # fp8 has no min-latency lane: its only gated lane prices it
    assert b200.moe(4, **{**experts, "quant": "fp8"}).latency_ms == b200.moe(
        4, **{**experts, "quant": "fp8"}, kernel="moe_torch_flow_cutlass").latency_ms


# -- interpolated -----------------------------------------------------------------------------


def test_gemm_between_two_rows(db):
    rows, _ = _gemm_slice(db)
    line = rows[(rows.n == 4096) & (rows.k == 4096)].sort_values("m")
    pairs = [(a, b) for a, b in zip(line.itertuples(), line.iloc[1:].itertuples()) if b.m - a.m >= 2]
    lo, hi = next((a, b) for a, b in pairs if abs(a.latency - b.latency) > 0.01 * a.latency)
    m = (lo.m + hi.m) // 2
    price = db.gemm(m, 4096, 4096)
    assert price.provenance == "interpolated"
    assert min(lo.latency, hi.latency) < price.latency_ms < max(lo.latency, hi.latency)
    t = (math.log(m) - math.log(lo.m)) / (math.log(hi.m) - math.log(lo.m))
    assert price.latency_ms == pytest.approx(math.exp((1 - t) * math.log(lo.latency) + t * math.log(hi.latency)))


def test_generation_attention_between_steps(db):
    df, _ = _winning_rows(db, GENERATION_ATTENTION, window_size=0, kv_cache_dtype="bfloat16")
    line = df[(df.batch_size == 64) & (df.num_heads == 32) & (df.num_key_value_heads == 8) & (df.head_dim == 128)]
    line = line.groupby("step")["latency"].min()
    lo_step, hi_step = 4095, 8191
    price = db.generation_attention(64, 6000, 32, 8, 128)
    assert price.provenance == "interpolated"
    assert line[lo_step] < price.latency_ms < line[hi_step]


def test_matches_scipy_on_a_full_grid():
    """On a full grid the nested scheme is scipy's multilinear interpolation in log space."""
    from scipy.interpolate import RegularGridInterpolator

    db = Database("h200_sxm", backfill=False)
    path = db.table_files(NCCL, backend="nccl", version=db.nccl_version)[0].path
    df = pd.read_parquet(path)
    df = df[(df.op_name == "all_reduce") & (df.nccl_dtype == "half")]
    grid = df.pivot_table(index="num_gpus", columns="message_size", values="latency", aggfunc="min")
    assert not grid.isna().any().any()
    gpus, sizes = grid.index.to_numpy(float), grid.columns.to_numpy(float) * 2  # half: 2 bytes
    rgi = RegularGridInterpolator((np.log(gpus), np.log(sizes)), np.log(grid.to_numpy()))
    for n, size in [(3, 5e6), (6, 3.3e4), (5, 1.2e8)]:
        price = db.nccl("all_reduce", size, n)
        assert price.provenance == "interpolated"
        assert price.latency_ms == pytest.approx(math.exp(rgi([math.log(n), math.log(size)])[0]), rel=1e-12)


# -- extrapolated -----------------------------------------------------------------------------


def test_gemm_beyond_grid_keeps_edge_efficiency(db):
    rows, _ = _gemm_slice(db)
    line = rows[(rows.n == 8192) & (rows.k == 8192)]
    edge = line.loc[line.m.idxmax()]
    m = int(edge.m) * 2
    price = db.gemm(m, 8192, 8192)
    assert price.provenance == "extrapolated"

    def roofline(m_):
        return db.roofline(2 * m_ * 8192 * 8192, (m_ * 8192 + 8192 * 8192 + m_ * 8192) * 2).latency_ms

    assert price.latency_ms == pytest.approx(edge.latency * roofline(m) / roofline(int(edge.m)), rel=1e-12)


def test_nccl_beyond_the_node_adds_the_network_wire_time(db):
    """16 h200_sxm GPUs (the table measures up to 8): the 8-GPU time plus the extra all-reduce traffic
    2 (n-1)/n x size over one 400 Gb/s NIC per GPU (50 GB/s) instead of NVLink (450 GB/s), each at LINK_EFFICIENCY."""
    for size in (57344, 64 * 2**20):  # a decode step's hidden states (4 x 7168 bf16), a prefill's
        inside = db.nccl("all_reduce", size, 8)
        across = db.nccl("all_reduce", size, 16)
        assert across.provenance == "extrapolated"
        extra_s = (2 * 15 / 16 * size / 50e9 - 2 * 7 / 8 * size / 450e9) / database.LINK_EFFICIENCY
        assert across.latency_ms == pytest.approx(inside.latency_ms + extra_s * 1e3)
    # the small message stays latency-bound: a few microseconds more, not 9.6 times the 8-GPU time
    assert db.nccl("all_reduce", 57344, 16).latency_ms < 1.2 * db.nccl("all_reduce", 57344, 8).latency_ms


# -- roofline ---------------------------------------------------------------------------------


def test_mi300x_is_roofline():
    db = Database("mi300x")
    spec = yaml.safe_load((systems.SYSTEMS_DIR / "mi300x.yaml").read_text())
    m, n, k = 4096, 4096, 4096
    flops, bytes_moved = 2 * m * n * k, (m * k + k * n + m * n) * 2
    expected = max(
        flops / (spec["bf16_dense_flops_per_s"] * COMPUTE_EFFICIENCY),
        bytes_moved / (spec["hbm_bandwidth_bytes_per_s"] * MEMORY_EFFICIENCY),
    ) * 1e3
    price = db.gemm(m, n, k)
    assert price == database.Price(expected, "roofline", "roofline: systems/mi300x.yaml")
    # decode attention is bandwidth-bound on the roofline too
    decode = db.generation_attention(1, 8191, 32, 8, 128)
    assert decode.provenance == "roofline"
    kv_bytes = (8192 + 1) * 2 * 8 * 128 * 2 + 2 * 32 * 128 * 2
    assert decode.latency_ms == pytest.approx(kv_bytes / (spec["hbm_bandwidth_bytes_per_s"] * MEMORY_EFFICIENCY) * 1e3)


def test_unmeasured_precision_is_an_error():
    with pytest.raises(UserError, match="no fp8"):
        Database("a100_sxm").gemm(128, 4096, 4096, quant="fp8")


# -- errors -----------------------------------------------------------------------------------


def test_unknown_system_lists_known():
    with pytest.raises(UserError, match="h200_sxm") as err:
        Database("h900")
    assert "unknown system 'h900'" in str(err.value)


def test_unknown_backend_and_version_list_what_exists():
    with pytest.raises(UserError, match=r"backends with tables: sglang, trtllm, vllm"):
        Database("h200_sxm", backend="tensorrt")
    with pytest.raises(UserError, match=r"1\.3\.0rc20"):
        Database("h200_sxm", backend="trtllm", version="9.0")
    with pytest.raises(UserError, match="roofline alone"):
        Database("mi300x", backend="trtllm")


def test_unknown_kernel_and_quant(db):
    with pytest.raises(UserError, match="available: torch_flow"):
        db.gemm(16, 4096, 4096, kernel="cublas")
    with pytest.raises(UserError, match="unknown gemm quant"):
        db.gemm(16, 4096, 4096, quant="int3")
    with pytest.raises(UserError, match="batch must be at least 1"):
        db.context_attention(0, 128, 8, 8, 128)


def test_corrupt_parquet_names_the_file(tmp_path):
    target = tmp_path / "h200_sxm" / "gemm" / "trtllm" / "9.9.9" / "gemm_perf.parquet"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"PAR1 this is not a parquet file")
    db = Database("h200_sxm", data_dirs=[tmp_path])
    assert db.version == "9.9.9"
    with pytest.raises(UserError, match="corrupt perf table") as err:
        db.gemm(16, 4096, 4096)
    assert str(target) in str(err.value)


def test_parquet_missing_columns_names_the_file(tmp_path):
    target = tmp_path / "h200_sxm" / "gemm" / "trtllm" / "9.9.9" / "gemm_perf.parquet"
    target.parent.mkdir(parents=True)
    pd.DataFrame({"m": [1], "n": [2], "latency": [0.1]}).to_parquet(target)
    with pytest.raises(UserError, match="lacks column") as err:
        Database("h200_sxm", data_dirs=[tmp_path]).gemm(16, 4096, 4096)
    assert str(target) in str(err.value)


def test_extra_dir_rows_take_precedence(tmp_path):
    target = tmp_path / "h200_sxm" / "gemm" / "trtllm" / "9.9.9" / "gemm_perf.parquet"
    target.parent.mkdir(parents=True)
    pd.DataFrame(
        {"kernel_source": ["ours"], "gemm_dtype": ["bfloat16"], "m": [4096], "n": [4096], "k": [4096], "latency": [0.5]}
    ).to_parquet(target)
    db = Database("h200_sxm", data_dirs=[tmp_path])
    mine = db.gemm(4096, 4096, 4096, kernel="ours")
    assert (mine.latency_ms, mine.provenance, mine.source) == (0.5, "exact", str(target))
    # the shape the newest version measured takes its lane; a shape it did not measure, the lane with most rows
    assert db.gemm(4096, 4096, 4096).source == str(target)
    assert db.gemm(4096, 8192, 8192).source.startswith("aiconfigurator-core:")


# -- systems ----------------------------------------------------------------------------------


def test_systems_load_with_sources():
    assert set(SYSTEMS) <= set(systems.list_systems())
    for name in SYSTEMS:
        s = systems.load_system(name)
        assert s.name == name and s.bf16_dense_flops_per_s > 0 and s.sources
        for field_name in ("bf16_dense_flops_per_s", "hbm_bandwidth_bytes_per_s", "hbm_bytes", "intra_node_bandwidth_bytes_per_s"):
            assert field_name in s.sources
    assert systems.load_system("mi300x").aiconfigurator_name is None
    assert systems.load_system("h100_sxm").fp4_dense_flops_per_s is None


def test_package_systems_read_from_the_aiconfigurator_yaml(capsys):
    """Systems only aiconfigurator-core describes: its systems/<name>.yaml mapped onto our fields, sources named."""
    b300, gb300 = systems.load_system("b300_sxm"), systems.load_system("gb300")
    assert b300.hbm_bandwidth_bytes_per_s == 7_750_000_000_000  # gpu.mem_bw: 7.75 TB/s
    assert b300.hbm_bytes == 288_400_343_040 and b300.bf16_dense_flops_per_s == 2.25e15
    assert (b300.fp8_dense_flops_per_s, b300.fp4_dense_flops_per_s, b300.int8_dense_ops_per_s) == (4.5e15, 14e15, 153.5e12)
    assert (b300.gpus_per_node, b300.scale_up_domain_gpus, b300.inter_node_bandwidth_bytes_per_s) == (8, 8, 100e9)
    assert b300.sources["hbm_bandwidth_bytes_per_s"] == "aiconfigurator-core 0.12.0 systems/b300_sxm.yaml: gpu.mem_bw"
    assert (b300.label, b300.aiconfigurator_name, b300.vendor) == ("aiconfigurator-core:systems/b300_sxm.yaml",
                                                                    "b300_sxm", "nvidia")
    assert b300.fp32_flops_per_s is None and b300.l2_bytes is None  # not in the package's YAML
    # rack scale: NVLink across the 72-GPU rack (node.num_gpus_per_rack), the network (inter_rack_bw) beyond it
    assert gb300.hbm_bandwidth_bytes_per_s == 8e12 and gb300.hbm_bytes == 298_013_687_808
    assert (gb300.gpus_per_node, gb300.scale_up_domain_gpus) == (4, 72)
    assert gb300.link_bandwidth_bytes_per_s(72) == 900e9 and gb300.link_bandwidth_bytes_per_s(144) == 100e9
    assert gb300.sources["inter_node_bandwidth_bytes_per_s"].endswith("gb300.yaml: node.inter_rack_bw")
    # priced from the package's tables, and by roofline on the package's figures
    db = Database("b300_sxm")
    df = pd.read_parquet(db.table_files(GEMM)[0].path)
    r = df[df.gemm_dtype == "bfloat16"].groupby(["m", "n", "k"], as_index=False)["latency"].min().iloc[100]
    price = db.gemm(int(r.m), int(r.n), int(r.k))
    assert (price.latency_ms, price.provenance) == (r.latency, "exact")
    hbm_bound = db.roofline(0, 7.75e12 * MEMORY_EFFICIENCY * 1e-3)  # 1 ms of traffic at 0.75 of 7.75 TB/s
    assert hbm_bound == database.Price(pytest.approx(1.0), "roofline", "roofline: aiconfigurator-core:systems/b300_sxm.yaml")
    # our own YAMLs keep their cited figures (the package says 989e12 for H100 SXM bf16)
    h100 = systems.load_system("h100_sxm")
    assert h100.bf16_dense_flops_per_s == 989.5e12 and "datasheet" in h100.sources["bf16_dense_flops_per_s"]
    assert h100.label == "systems/h100_sxm.yaml"
    package_only = {"b300_sxm", "gb300", "rtx_pro_6000_server", "l4", "a30", "b60", "h100_pcie", "a100_pcie"}
    assert package_only | set(SYSTEMS) == set(systems.list_systems())
    from cli import main

    assert main(["systems", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed.keys() == package_only | set(SYSTEMS)
    assert listed["gb300"]["spec"] == "aiconfigurator-core:systems/gb300.yaml" and listed["gb300"]["tables"]


def test_table_summary():
    summary = systems.table_summary("h200_sxm")
    assert ("gemm_perf", "trtllm", "1.3.0rc20") in summary
    assert ("nccl_perf", "nccl", "2.29.2") in summary
    assert systems.table_summary("mi300x") == []


def test_malformed_yaml_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(systems, "SYSTEMS_DIR", tmp_path)
    (tmp_path / "bad.yaml").write_text("name: bad\ngpu: [unclosed\n")
    with pytest.raises(UserError, match="malformed system file") as err:
        systems.load_system("bad")
    assert str(tmp_path / "bad.yaml") in str(err.value)
    good = yaml.safe_load((ROOT / "systems" / "h200_sxm.yaml").read_text())
    good.update(name="typo", hbm_bandwidth_bytes_per_s="4.8TB/s")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(good))
    with pytest.raises(UserError, match="hbm_bandwidth_bytes_per_s") as err:
        systems.load_system("typo")
    assert "typo.yaml" in str(err.value)


def test_version_order():
    ordered = ["0.1.dev19262", "0.5.6.post2", "0.5.9", "0.5.10", "0.24.0", "1.3.0rc10", "1.3.0rc20", "1.3.0"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert version_key("not-a-version") < version_key("0.0.1")


def test_gemm_queries_are_fast(db):
    db.gemm(100, 4096, 4096)  # load the table
    rng = np.random.default_rng(0)
    ms = rng.integers(1, 40000, 2000).tolist()
    start = time.perf_counter()
    for m in ms:
        db.gemm(m, 7168, 4096)
    per_query = (time.perf_counter() - start) / len(ms)
    assert per_query < 1e-3  # measured ~6 us; the bound only catches a pathological regression


def test_moe_lane_is_the_newest_that_measured_the_shape():
    """b200_sxm vllm moe_perf, int4_wo, power_law_1.01, Kimi-K2.5's experts (7168 x 2048, 384, top 8) at moe_tp 8:
    0.24.0 measured them on its Marlin lane (16 tokens: 0.146144 ms); 0.19.0's older lane (vllm_marlin_int4_moe,
    0.339398 ms) has more rows over all shapes but must not outvote the newer measurement of the same shape. A
    shape only 0.19.0 measured still takes its lane."""
    b200 = Database("b200_sxm", backend="vllm", version="0.24.0")
    kimi = dict(hidden=7168, inter=2048, topk=8, num_experts=384, tp=8, ep=1, quant="int4_wo")
    new = b200.moe(16, **kimi)
    assert (round(new.latency_ms, 6), new.provenance) == (0.146144, "exact")
    assert new.source.endswith("b200_sxm/moe/vllm/0.24.0/moe_perf.parquet")
    assert round(b200.moe(16, **kimi, kernel="vllm_marlin_int4_moe").latency_ms, 6) == 0.339398
    older = b200.moe(16, **{**kimi, "num_experts": 256})
    assert (older.provenance, older.source.split("/")[-2]) == ("exact", "0.19.0")


def test_a_gemm_lane_that_timed_its_host_is_not_read():
    # vLLM 0.24.0's fp8_block GEMM lanes on h200_sxm never go below 55 us, even at m = 1, n = 64 (their host time),
    # 23-65x the file's bf16 lane at such shapes; the version's fp8 lane prices fp8_block in their place (the same
    # fp8 math, the same bytes within the scales)
    db = Database("h200_sxm", backend="vllm", version="0.24.0")
    table = db._table(GEMM)
    assert table.kernel_counts.get(("fp8_block",)) is None
    assert "CutlassFP8ScaledMMLinearKernel" in table.kernel_counts[("fp8",)]
    block, fp8 = db.gemm(16, 1536, 4096, quant="fp8_block"), db.gemm(16, 1536, 4096, quant="fp8")
    assert block.latency_ms == fp8.latency_ms < 0.03
    assert block.provenance == "extrapolated"
    assert block.source == f"{fp8.source} (fp8 lane for fp8_block)"
    # TensorRT-LLM's own fp8_block lane (4 us at its smallest) is read as measured
    assert Database("h200_sxm", backend="trtllm").gemm(16, 1536, 4096, quant="fp8_block").source.endswith(
        "gemm_perf.parquet")


def test_an_op_no_file_up_to_the_version_measured_takes_the_nearest_newer_release():
    # aiconfigurator-core measured vLLM's GEMMs on b200_sxm only at 0.24.0: a 0.19.0 engine's GEMMs are priced from
    # that release's rows (a measured kernel of the next release, not a roofline); with backfill off, a roofline
    old, new = Database("b200_sxm", backend="vllm", version="0.19.0"), Database("b200_sxm", backend="vllm",
                                                                                version="0.24.0")
    assert not old.table_files(GEMM)
    price = old.gemm(16, 4096, 4096, quant="bf16")
    assert price == new.gemm(16, 4096, 4096, quant="bf16")
    assert price.provenance != "roofline" and price.source.endswith("b200_sxm/gemm/vllm/0.24.0/gemm_perf.parquet")
    alone = Database("b200_sxm", backend="vllm", version="0.19.0", backfill=False).gemm(16, 4096, 4096, quant="bf16")
    assert alone.provenance == "roofline"


def test_a_static_fp8_input_scale_takes_the_dynamic_scale_off_tensorrt_llms_fp8_lane():
    """TensorRT-LLM's fp8 GEMM lane times a dynamic input scale (its collector's weights carry no input_scale): at
    m = 1, 4096 x 4096 on h100_sxm 18.49 us, of which the computescale table's 7.19 us. Served with a checkpoint's
    calibrated scale (overheads.yaml fp8_input_scale: static for trtllm) it takes 11.30 us; bf16 is as measured."""
    db = Database("h100_sxm", backend="trtllm", version="1.3.0rc23")
    assert db.gemm(1, 4096, 4096, "fp8").latency_ms == pytest.approx(0.0184907, abs=1e-7)
    assert db.compute_scale(1, 4096).latency_ms == pytest.approx(0.0071936, abs=1e-7)
    static = db.gemm(1, 4096, 4096, "fp8", static_input_scale=True)
    assert static.latency_ms == pytest.approx(0.0112971, abs=1e-7)
    assert static.source.endswith("quantize/trtllm/1.3.0rc20/computescale_perf.parquet (static input scale)")
    assert db.gemm(1, 4096, 4096, "bf16", static_input_scale=True) == db.gemm(1, 4096, 4096, "bf16")
    assert load_overheads("trtllm", None, "h100_sxm").fp8_input_scale == "static"
    assert load_overheads("vllm", None, "h100_sxm").fp8_input_scale == "dynamic"
