"""The trace command as a user runs it: output, JSON schema, graph files, the cache, and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import networkx as nx
import pytest

from cli import main
from conftest import ROOT, tiny_config, write_config

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
