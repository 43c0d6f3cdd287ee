"""The trace command as a user runs it: output, JSON schema, graph files, the cache, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import networkx as nx
import pytest

from cli import main
from conftest import ROOT, shared_config, tiny_config, write_config

SMALL = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2, vocab_size=1000,
             num_hidden_layers=4)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    write_config(d, tiny_config("llama", **SMALL))
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_trace_json_schema(capsys, llama_dir):
    code, out, _ = run(capsys, "trace", str(llama_dir), "--json", "--batch", "2", "--isl", "64", "--osl", "8")
    assert code == 0
    data = json.loads(out)
    assert data["schema"] == "tracecost.trace/1"
    assert data["source"]["kind"] == "local"
    # embedding 1000x256 + 4 layers x (attn 256*(256+64+64+256) + mlp 3*256*512 + 2 norms) + final norm + head
    per_layer = 256 * (256 + 64 + 64 + 256) + 3 * 256 * 512 + 2 * 256
    assert data["param_count"] == 1000 * 256 + 4 * per_layer + 256 + 1000 * 256
    assert isinstance(data["param_count"], int) and isinstance(data["weight_bytes"], int)
    assert data["weight_bytes"] == 2 * data["param_count"]
    assert [(k["count"], k["representative_layer"]) for k in data["layer_plan"]] == [(4, 0)]
    prefill = data["phases"]["prefill"]
    assert prefill["sizes"] == {"B": 2, "S": 64, "L": 0}
    assert data["phases"]["decode"]["sizes"] == {"B": 2, "S": 1, "L": 68}
    linear = next(r for r in prefill["ops"] if r["op"] == "aten.linear")
    # 7 projections per layer x 4 layers + the LM head
    assert linear["count"] == 29
    # per layer 2*B*S*(in*out summed over the 7 projections); the head sees the last token only
    assert linear["flops"] == 4 * 2 * 2 * 64 * (256 * (256 + 64 + 64 + 256) + 3 * 256 * 512) + 2 * 2 * 256 * 1000
    assert all(isinstance(r["count"], int) and isinstance(r["bytes"], int) for r in prefill["ops"])


def test_trace_text_output(capsys, llama_dir):
    code, out, _ = run(capsys, "trace", str(llama_dir), "-q")
    assert code == 0
    assert "layers      4 = 4 x [" in out
    assert "parameters  " in out and "prefill: B=1 sequences x S=1024 tokens" in out
    assert "aten.scaled_dot_product_attention" in out


def test_graph_files(capsys, llama_dir, tmp_path):
    code, _, _ = run(capsys, "trace", str(llama_dir), "-q", "--graph", str(tmp_path / "g.graphml"))
    assert code == 0
    g = nx.read_graphml(tmp_path / "g.graphml")
    linear = [a for _, a in g.nodes(data=True) if a["op"] == "aten.linear" and a["phase"] == "prefill"]
    assert len(linear) == 8  # 7 projections of the one traced layer + the head
    code, _, _ = run(capsys, "trace", str(llama_dir), "-q", "--graph", str(tmp_path / "g.json"))
    data = json.loads((tmp_path / "g.json").read_text())
    assert set(data["phases"]) == {"prefill", "decode"}
    # an existing file is not overwritten without --force
    before = (tmp_path / "g.json").read_bytes()
    code, _, err = run(capsys, "trace", str(llama_dir), "-q", "--graph", str(tmp_path / "g.json"))
    assert code == 2 and "exists" in err and (tmp_path / "g.json").read_bytes() == before


def test_warm_run_reads_cache_without_torch(capsys, monkeypatch, llama_dir, tmp_path):
    env_cache = str(tmp_path / "cache")
    # the cold run here (it imports torch anyway); the warm one in a fresh process, to see what it imports
    monkeypatch.setenv("TRACECOST_CACHE", env_cache)
    code, out, _ = run(capsys, "trace", str(llama_dir), "-q")
    assert code == 0 and "traced      in" in out
    code = ("import sys; sys.path.insert(0, %r); from cli import main; rc = main(['trace', %r, '-q']); "
            "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules); sys.exit(rc)")
    cmd = [sys.executable, "-c", code % (str(ROOT), str(llama_dir))]
    env = {"TRACECOST_CACHE": env_cache, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    warm = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    assert warm.returncode == 0 and "from the trace cache" in warm.stdout
    assert "TORCH False False" in warm.stdout


def _one_line_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracecost: error: "), err
    return lines[0]


def test_bad_input_unknown_model_offline(capsys):
    line = _one_line_error(capsys, "trace", "no-such-org/no-such-model-xyz")
    assert "not found" in line


def test_bad_input_malformed_config(capsys, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,')
    line = _one_line_error(capsys, "trace", str(tmp_path))
    assert "config.json" in line


@pytest.mark.parametrize("field,value", [("hidden_size", 0), ("num_attention_heads", -4), ("vocab_size", 0)])
def test_bad_input_zero_or_negative_sizes(capsys, tmp_path, field, value):
    write_config(tmp_path, {**tiny_config("llama", **SMALL), field: value})
    assert field in _one_line_error(capsys, "trace", str(tmp_path))


def test_bad_input_hidden_not_divisible_by_heads(capsys, tmp_path):
    cfg = tiny_config("llama", **SMALL)
    cfg["hidden_size"] = 250
    cfg.pop("head_dim", None)
    write_config(tmp_path, cfg)
    assert "divisible" in _one_line_error(capsys, "trace", str(tmp_path))


def test_bad_input_remote_code_without_flag(capsys, tmp_path):
    write_config(tmp_path, {"model_type": "made_up_arch", "architectures": ["MadeUpForCausalLM"],
                            "auto_map": {"AutoConfig": "configuration_made_up.MadeUpConfig"},
                            "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2})
    assert "--trust-remote-code" in _one_line_error(capsys, "trace", str(tmp_path))


@pytest.mark.parametrize("flag", ["--batch", "--isl", "--osl"])
def test_bad_input_sizes_on_command_line(capsys, llama_dir, flag):
    assert flag in _one_line_error(capsys, "trace", str(llama_dir), flag, "0")


def test_models_lists_bundled_and_types(capsys):
    code, out, _ = run(capsys, "models", "--json")
    rows = json.loads(out)
    names = {r["name"] for r in rows}
    assert "meta-llama/Meta-Llama-3.1-8B" in names and "llama" in names


def test_every_command_explains_itself_and_takes_quiet():
    import click

    from cli import cli

    for name, command in cli.commands.items():
        assert command.help and len(command.help) > 60, name
        options = [p for p in command.params if isinstance(p, click.Option)]
        assert all(o.help for o in options), (name, [o.name for o in options if not o.help])
        assert any(o.opts == ["-q", "--quiet"] for o in options), name


def test_trace_summary_comes_first(capsys):
    """`make run`'s command: the answer (parameters, KV cache, latency on the default system) before the tables."""
    from costmodel import serving
    from costmodel.estimate import Estimator
    from costmodel.parallel import Plan
    from graph.model_graph import trace_model

    code, out, _ = run(capsys, "trace", "meta-llama/Llama-3.1-8B", "-q")
    assert code == 0
    assert out.startswith("model       meta-llama/Llama-3.1-8B: 8,030,261,248 parameters")
    # 32 layers x (K + V) x 8 KV heads x 128 dims x 2 bytes; a sequence of ISL 1024 + OSL 1024 tokens: 256 MiB
    assert "KV cache    bf16: 131,072 B per token (128.00 KiB); 256.00 MiB per sequence of ISL 1024 + OSL 1024" in out
    assert "serving     h200_sxm (NVIDIA H200 SXM 141GB), backend trtllm" in out
    assert "mode agg, 1 concurrent request (--batch)" in out and "TP1 PP1 EP1 DP1 = 1 GPU(s) (smallest TP" in out
    row = serving.agg_point(Estimator(trace_model("meta-llama/Llama-3.1-8B"), system="h200_sxm"), Plan(), 1, 1024, 1024)
    assert f"latency     TTFT {row['ttft_ms']:.2f} ms, TPOT {row['tpot_ms']:.3f} ms" in out
    assert out.index("latency     TTFT") < out.index("prefill: B=1 sequences")


def test_trace_summary_smallest_tp_that_fits(capsys):
    """DeepSeek-V3's 671 B parameters at fp8 (its config's quantization) do not fit 4 H200s; 8 do."""
    import render

    code, out, _ = run(capsys, "trace", str(shared_config("deepseek-ai--DeepSeek-V3")), "-q", "--json", "--isl",
                       "4000", "--osl", "500")
    data = json.loads(out)
    s = data["summary"]
    # MLA: 61 layers x (latent 512 + rope key 64) x 2 bytes per token
    assert s["kv"]["bytes_per_token"] == 70272 and s["kv"]["bytes_per_sequence"] == 70272 * 4500
    assert s["latency"]["quant"] == "fp8_block" and s["latency"]["plan"]["tp"] == 8
    assert "TP8 PP1 EP1 DP1 = 8 GPU(s) (smallest TP that fits" in render.format_summary(data["model"], s)


def test_trace_summary_or_ops_alone(capsys, llama_dir):
    code, out, _ = run(capsys, "trace", str(llama_dir), "-q", "--summary")
    assert code == 0 and "latency     TTFT" in out and "prefill:" not in out
    code, out, _ = run(capsys, "trace", str(llama_dir), "-q", "--ops")
    assert code == 0 and "KV cache" not in out and out.startswith("model       ")
    code, out, _ = run(capsys, "trace", str(llama_dir), "-q", "--ops", "--json")
    assert json.loads(out)["summary"] is None
    assert "exclude each other" in _one_line_error(capsys, "trace", str(llama_dir), "--ops", "--summary")


def test_plan_json_and_launch_files(capsys, llama_dir, tmp_path):
    save = tmp_path / "launch"
    code, out, err = run(capsys, "plan", str(llama_dir), "--gpus", "2", "--isl", "64", "--osl", "8", "--json", "-q",
                         "--mode", "agg", "--save", str(save))
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["schema"] == "tracecost.plan/1" and data["sla_met"]
    assert data["candidates"]["total"] == data["candidates"]["agg"] > 0 and data["modes"] == ["agg"]
    assert data["saved"] == ["candidates.csv", "sglang.sh", "trtllm.sh", "trtllm_agg.yaml", "vllm.sh"]
    rows = (save / "candidates.csv").read_text().splitlines()
    assert len(rows) == 1 + data["candidates"]["total"]
    assert "--tensor-parallel-size" in (save / "vllm.sh").read_text()
    # the same DIR again is refused without --force: one line, exit 2
    code, _, err = run(capsys, "plan", str(llama_dir), "--gpus", "2", "--isl", "64", "--osl", "8", "-q",
                       "--save", str(save))
    assert code == 2 and err.count("\n") == 1 and "--force" in err


def test_plan_text_and_an_sla_nothing_meets(capsys, llama_dir):
    args = ("plan", str(llama_dir), "--gpus", "1", "--isl", "64", "--osl", "8", "--ttft", "0.001", "-q")
    code, out, err = run(capsys, *args)
    assert code == 0
    assert "nothing meets the SLA (TTFT <= 0.001 ms); the closest:" in out and "misses: TTFT +" in out
    assert err.startswith("tracecost: nothing meets the SLA; the closest misses TTFT by ")
    code, _, _ = run(capsys, *args, "--strict")
    assert code == 3


def test_plan_impossible_budgets_are_one_line(capsys, llama_dir):
    code, _, err = run(capsys, "plan", str(llama_dir), "--gpus", "0")
    assert code == 2 and err.count("\n") == 1 and "--gpus" in err
    # 1 KiB of KV per token (4 layers x K, V x 2 heads x 32 dims x 2 bytes): 160M tokens need a second GPU
    code, _, err = run(capsys, "plan", str(llama_dir), "--gpus", "1", "--isl", "160000000", "--osl", "1", "-q",
                       "--mode", "agg")
    assert code == 2 and err.count("\n") == 1
    assert "the smallest plan that fits needs 2 GPUs (TP2 PP1 EP1 DP1)" in err


def test_plan_plot(capsys, llama_dir, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "fronts.svg"
    code, _, _ = run(capsys, "plan", str(llama_dir), "--gpus", "2", "--isl", "64", "--osl", "8", "--tpot", "5",
                     "-q", "--plot", str(path))
    assert code == 0 and "TPOT 5 ms" in path.read_text()
    code, _, err = run(capsys, "plan", str(llama_dir), "--gpus", "2", "-q", "--plot", str(tmp_path / "f.jpg"))
    assert code == 2 and ".png or .svg" in err
