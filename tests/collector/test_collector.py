"""Collector on the CPU (--device cpu --dry-run): every collector writes a table the database loads and
queries, --resume skips, failures are recorded and the run goes on, trace's case files round-trip."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cli import main
from collector import catalog
from collector.runner import format_summary, read_cases, run_collect
from conftest import tiny_config, write_config
from core.ops import MemoryBound, Scan
from costmodel.database import Database, Price
from costmodel.pricing import Pricer, resolve_quant
from costmodel.tables.specs import NCCL, args_key
from core.errors import UserError

SYSTEM = "h100_sxm"


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    calls = []
    summary = run_collect(None, system=SYSTEM, device="cpu", dry_run=True, out_dir=out,
                          progress=lambda *a: calls.append(a))
    return out, summary, calls


def _table(summary, name):
    (row,) = [t for t in summary["tables"] if t["table"] == name]
    return row


def _rows(summary, name):
    return pd.read_parquet(_table(summary, name)["path"])


def test_every_collector_runs_and_writes(dry):
    out, summary, calls = dry
    assert summary["failed"] == 0, summary["failures"]
    names = {c.name for c in catalog.COLLECTORS.values()} - {"aten"}  # aten cases come from a case file
    assert {t["collector"] for t in summary["tables"]} == names
    for t in summary["tables"]:
        assert t["written"] and t["measured"] == t["rows"] > 0
        assert t["path"].startswith(str(out))
        df = pd.read_parquet(t["path"])
        col = catalog.COLLECTORS[t["collector"]]
        assert list(df.columns) == col.column_order  # exactly the table's schema, in order
        assert (df["framework"] == "torch").all() and (df["latency"] > 0).all()
        meta = yaml.safe_load((Path(t["path"]).parent / "collection_meta.yaml").read_text())
        assert meta["tables"][t["table"]]["status"] == "complete"
        assert meta["environment"]["torch"] == summary["torch"] and meta["environment"]["timing"]["statistic"] == "median"
    # progress: done/total with an ETA once a case has finished, and a final call at total
    assert calls[0][0] == 0 and calls[0][2] is None
    assert calls[-1][0] == calls[-1][1] == summary["total"]
    text = format_summary(summary)
    assert "gemm_perf" in text and "failed 0" in text


def test_database_loads_and_prices_measured_points(dry):
    out, summary, _ = dry
    db = Database(SYSTEM, backend="torch", data_dirs=[out])
    assert db.version == summary["torch"]
    g = _rows(summary, "gemm_perf")
    for r in g.itertuples():
        quant = "bf16" if r.gemm_dtype == "bfloat16" else r.gemm_dtype
        price = db.gemm(r.m, r.n, r.k, quant=quant)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact") and str(out) in price.source
    for r in _rows(summary, "context_attention_perf").itertuples():
        price = db.context_attention(r.batch_size, r.isl, r.num_heads, r.num_key_value_heads, r.head_dim,
                                     window=r.window_size)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")
    for r in _rows(summary, "generation_attention_perf").itertuples():
        price = db.generation_attention(r.batch_size, r.step, r.num_heads, r.num_key_value_heads, r.head_dim,
                                        window=r.window_size)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")
    for r in _rows(summary, "moe_perf").itertuples():
        price = db.moe(r.num_tokens, r.hidden_size, r.inter_size, r.topk, r.num_experts, distribution=r.distribution)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")
    for r in _rows(summary, "mamba2_perf").itertuples():
        channels = r.nheads * r.head_dim + 2 * r.n_groups * r.d_state
        price = db.causal_conv1d(r.phase, r.batch_size, r.seq_len, channels, r.d_conv)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")
    # between measured points: interpolated from our rows
    assert db.gemm(4, 64, 32).provenance == "interpolated"
    # collectives: the gloo dry-run table loads with the database's nccl schema
    gloo = _table(summary, "nccl_perf")
    assert gloo["backend"] == "gloo"
    r = _rows(summary, "nccl_perf").iloc[0]
    price = db._lookup(NCCL, (r.op_name, r.nccl_dtype), (r.num_gpus, r.message_size * 2), lambda p: 1.0,
                       kernel="gloo", backend="gloo", version=gloo["version"])
    assert (price.latency_ms, price.provenance) == (r.latency, "exact")


def test_new_tables_schema(dry):
    _, summary, _ = dry
    scan = _rows(summary, "ssm_scan_perf")
    assert set(scan["op_name"]) == {"mamba1_selective_scan", "mamba2_ssd"}
    assert set(scan["phase"]) == {"context", "generation"}
    assert (scan.loc[scan["phase"] == "generation", "seq_len"] == 1).all()
    mem = _rows(summary, "elementwise_perf")
    assert {"rmsnorm", "silu_and_mul", "residual_add"} <= set(mem["op_name"]) and (mem["bytes_moved"] > 0).all()


def test_scan_and_elementwise_tables_are_priced(tmp_path, capsys):
    """`collect --device cpu --ops scan,memory`, then the database and the pricer read ssm_scan_perf and
    elementwise_perf (from torch/, whatever backend is priced): every measured point is exact."""
    out = tmp_path / "data"
    assert main(["collect", "--system", SYSTEM, "--device", "cpu", "--dry-run", "--ops", "scan,memory",
                 "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    db = Database(SYSTEM, data_dirs=[out])
    assert db.backend == "trtllm"  # aiconfigurator-core's tables price the rest
    pricer = Pricer(db, resolve_quant(None))
    scan = pd.read_parquet(next(out.rglob("ssm_scan_perf.parquet")))
    for r in scan.itertuples():
        price = db.ssm_scan(r.phase, r.batch_size, r.seq_len, r.nheads, r.head_dim, r.d_state, r.n_groups,
                            r.chunk_size)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact") and str(out) in price.source
    # a matched Mamba-1 block (one channel per head) priced from its row
    m1 = scan[(scan.op_name == "mamba1_selective_scan") & (scan.phase == "context")].iloc[0]
    op = Scan(module="backbone.layers.0.mixer", layer_kind=0, count=1, variant="ssm", batch="B", length="S",
              heads=16, head_dim=1, state=4)
    price = pricer.price(op, {"B": 1, "S": 8, "L": 0})
    assert (m1.nheads, m1.d_state, m1.batch_size, m1.seq_len) == (16, 4, 1, 8)
    assert (price.latency_ms, price.provenance) == (m1.latency, "exact")

    mem = pd.read_parquet(next(out.rglob("elementwise_perf.parquet")))
    for r in mem.itertuples():
        price = db.elementwise((r.op_name,), r.bytes_moved)
        assert (price.latency_ms, price.provenance) == (r.latency, "exact")
    norm = mem[mem.op_name == "rmsnorm"].sort_values("bytes_moved")
    # x and the weight read once, the output written once, bf16: (2 * tokens * 64 + 64) * 2 at tokens 1 and 16
    assert list(norm.bytes_moved) == [384, 4224]
    sizes = {"B": 1, "S": 16, "L": 0}

    def memory_op(what, nbytes):
        return MemoryBound(module="model.layers.0.input_layernorm", layer_kind=0, count=1, what=what,
                           bytes_expr=str(nbytes))

    price = pricer.price(memory_op("norm", 4224), sizes)
    assert (price.latency_ms, price.provenance) == (norm.latency.iloc[1], "exact")
    between = pricer.price(memory_op("norm", 1000), sizes)
    assert between.provenance == "interpolated" and min(norm.latency) <= between.latency_ms <= max(norm.latency)
    # beyond the measured bytes, or a label engines fuse into other kernels: roofline as before
    assert pricer.price(memory_op("norm", 10**9), sizes).provenance == "roofline"
    assert pricer.price(memory_op("rotary", 4224), sizes) == Price(db.roofline(0, 4224).latency_ms, "roofline",
                                                                   "roofline: systems/h100_sxm.yaml")


def test_aten_rows_are_keyed_by_constant_arguments(tmp_path):
    """Two einsums with equal shapes and different equations are two rows, each found by its own equation."""
    shapes, equations = [[8, 8], [8, 8]], ["ij,jk->ik", "ij,kj->ik"]
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"kind": "aten", "op": "aten.einsum", "dtype": "float32", "shapes": shapes,
                                  "args": {"equation": e}} for e in equations]))
    out = tmp_path / "data"
    summary = run_collect(None, system=SYSTEM, device="cpu", dry_run=True, cases_file=cases, out_dir=out)
    assert summary["failed"] == 0, summary["failures"]
    rows = _rows(summary, "aten_perf")
    assert sorted(rows["args"]) == ['{"equation":"ij,jk->ik"}', '{"equation":"ij,kj->ik"}']
    db = Database(SYSTEM, data_dirs=[out])
    for e in equations:
        (row,) = rows[rows["args"] == args_key({"equation": e})].itertuples()
        price = db.aten("aten.einsum", shapes, {"equation": e})
        assert (price.latency_ms, price.provenance) == (row.latency, "exact")
    assert db.aten("aten.einsum", shapes, {"equation": "ij,jk->ki"}) is None
    assert db.aten("aten.einsum", shapes, {}) is None


def test_resume_skips_measured_rows(dry, tmp_path):
    out, summary, _ = dry
    before = _rows(summary, "gemm_perf")
    again = run_collect(["gemm"], system=SYSTEM, device="cpu", dry_run=True, out_dir=out, resume=True)
    (t,) = again["tables"]
    assert (t["measured"], t["skipped"], t["rows"]) == (0, len(before), len(before))
    pd.testing.assert_frame_equal(_rows(again, "gemm_perf"), before)
    # without --resume the same points are measured again and replace their rows (no duplicates)
    fresh = tmp_path / "copy"
    run_collect(["gemm"], system=SYSTEM, device="cpu", dry_run=True, out_dir=fresh)
    redo = run_collect(["gemm"], system=SYSTEM, device="cpu", dry_run=True, out_dir=fresh)
    (t,) = redo["tables"]
    assert (t["measured"], t["skipped"], t["rows"]) == (len(before), 0, len(before))
    assert len(_rows(redo, "gemm_perf")) == len(before)


def test_failing_cases_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([
        {"kind": "aten", "op": "aten.mm", "dtype": "float32", "shapes": [[4, 5], [6, 7]]},  # impossible shapes
        {"kind": "moe", "num_tokens": 4, "hidden_size": 32, "inter_size": 16, "num_experts": 2, "topk": 3},
        {"kind": "no_such_op", "x": 1},
        {"kind": "aten", "op": "aten.no_such_op", "shapes": [[2]]},
        {"kind": "gemm", "params": {"m": 4, "n": 32, "k": 32}},  # fine
        {"kind": "memory", "op_name": "rmsnorm", "num_tokens": 2, "hidden_size": 32},  # OOM below
        {"kind": "memory", "op_name": "residual_add", "num_tokens": 2, "hidden_size": 32},  # fine
    ]))
    memory = catalog.COLLECTORS["memory"]
    real = memory.measure

    def oom(case, ctx):
        if case["op_name"] == "rmsnorm":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real(case, ctx)

    monkeypatch.setattr(memory, "measure", oom)
    summary = run_collect(None, system=SYSTEM, device="cpu", dry_run=True, cases_file=cases, out_dir=tmp_path / "o")
    assert summary["ops"] == []  # a case file alone runs its cases, not the built-in grids
    assert summary["measured"] == 2 and summary["failed"] == 5
    errors = " | ".join(f["error"] for f in summary["failures"])
    for text in ("cannot be multiplied", "topk 3 > num_experts 2", "unknown case kind 'no_such_op'",
                 "no operator aten.no_such_op", "out of memory"):
        assert text in errors
    assert _table(summary, "gemm_perf")["rows"] == 1 and _table(summary, "elementwise_perf")["rows"] == 1
    meta_path = tmp_path / "o" / SYSTEM / "elementwise" / "torch" / summary["torch"] / "collection_meta.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    assert meta["tables"]["elementwise_perf"]["status"] == "partial"
    assert any("out of memory" in f["error"] for f in meta["failures"])
    assert "failed: aten" in format_summary(summary)


def test_bad_input_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read cases file"):
        read_cases(bad)
    bad.write_text(json.dumps([{"schema": "other/1", "kind": "aten"}]))
    with pytest.raises(UserError, match="schema"):
        read_cases(bad)
    with pytest.raises(UserError, match="unknown collector op"):
        run_collect(["warp_drive"], system=SYSTEM, device="cpu", dry_run=True, out_dir=tmp_path)
    with pytest.raises(UserError, match="unknown system"):
        run_collect(["gemm"], system="tpu9", device="cpu", dry_run=True, out_dir=tmp_path)
    with pytest.raises(UserError, match="--out"):
        run_collect(["gemm"], system=SYSTEM, device="cpu", dry_run=False)


def test_trace_case_file_round_trips(tmp_path, capsys):
    """trace --collector-cases of a model with an unsupported op (XLNet's relative attention, written as einsum)
    -> collect -> the measured latency is found for that op and shape."""
    config = write_config(tmp_path, tiny_config("xlnet", n_layer=2, d_model=64, n_head=4, d_head=16, d_inner=128,
                                                vocab_size=256))
    cases = tmp_path / "cases.json"
    assert main(["trace", str(config), "-q", "--batch", "2", "--isl", "16", "--osl", "8",
                 "--collector-cases", str(cases)]) == 0
    capsys.readouterr()
    written = json.loads(cases.read_text())
    assert written and {c["kind"] for c in written} == {"aten"}
    out = tmp_path / "data"
    summary = run_collect(None, system=SYSTEM, device="cpu", dry_run=True, cases_file=cases, out_dir=out)
    assert summary["failed"] == 0, summary["failures"]
    t = _table(summary, "aten_perf")
    assert t["path"].endswith(f"{SYSTEM}/aten/torch/{summary['torch']}/aten_perf.parquet")
    rows = _rows(summary, "aten_perf")
    db = Database(SYSTEM, data_dirs=[out])  # trtllm from aiconfigurator-core; aten_perf is read from torch/
    for case in written:
        price = db.aten(case["op"], case["shapes"], case["args"])
        assert price is not None and price.provenance == "exact" and price.latency_ms in set(rows["latency"])
        assert db.aten(case["op"], case["shapes"], case["args"], dtype=case["dtype"]) == price
    assert db.aten(written[0]["op"], [[1, 2, 3]], written[0]["args"]) is None
    again = run_collect(None, system=SYSTEM, device="cpu", dry_run=True, cases_file=cases, out_dir=out, resume=True)
    assert again["measured"] == 0 and again["skipped"] == len({json.dumps(c["shapes"]) for c in written})
    # the next estimate prices the op from that measurement instead of the roofline
    from costmodel.estimate import estimate
    from graph.model_graph import trace_model

    mg = trace_model(str(config))

    def unsupported(data_dirs):
        result = estimate(mg, system=SYSTEM, batch=2, isl=16, osl=8, data_dirs=data_dirs)
        return [op for op in result["breakdown"]["prefill"]["ops"] if op["type"] == "Unsupported"]

    assert unsupported(()) and {op["provenance"] for op in unsupported(())} == {"roofline"}
    measured = unsupported([out])
    assert {op["provenance"] for op in measured} == {"exact"}
    assert all(op["ms_each"] in set(rows["latency"]) for op in measured)


def test_scan_references_match_transformers():
    """The scan collectors time the same math transformers' PyTorch fallbacks run."""
    import torch
    from transformers.models.mamba import modeling_mamba as m1
    from transformers.models.mamba2 import modeling_mamba2 as m2

    from collector.kernels.scan import mamba1_scan, mamba2_ssd, mamba2_step

    torch.manual_seed(0)
    b, length, h, p, g, n = 2, 20, 4, 8, 2, 8
    x, dt = torch.randn(b, length, h, p), torch.randn(b, length, h)
    A, D = -torch.rand(h) - 0.5, torch.ones(h)
    B, C = torch.randn(b, length, g, n), torch.randn(b, length, g, n)
    y, _ = mamba2_ssd(x, dt, A, B, C, D, 8)
    torch.testing.assert_close(y, m2.mamba2_chunk_scan(x, dt, A, B, C, 8, D=D, dt_softplus=True))
    state = torch.randn(b, h, p, n)
    ref_state = state.clone()
    out = mamba2_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    ref = m2.mamba2_selective_state_update(ref_state, x[:, 0], dt[:, 0, :, None].expand(b, h, p),
                                           A[:, None, None].expand(h, p, n), B[:, 0], C[:, 0],
                                           D=D[:, None].expand(h, p), dt_softplus=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(state, ref_state)
    d = 6
    u, dt1, z = torch.randn(b, d, length), torch.randn(b, d, length), torch.randn(b, d, length)
    A1, B1, C1 = -torch.rand(d, n) - 0.5, torch.randn(b, n, length), torch.randn(b, n, length)
    y1, _ = mamba1_scan(u, dt1, A1, B1, C1, torch.ones(d), z)
    torch.testing.assert_close(y1, m1.mamba_selective_scan(u, dt1, A1, B1, C1, D=torch.ones(d), z=z,
                                                           delta_softplus=True))
