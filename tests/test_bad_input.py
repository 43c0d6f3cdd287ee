"""Bad input, by category (sizes, types, files, names, flags): one line on stderr naming what is wrong, exit 2, no
traceback, nothing priced. The CLI runs in-process under click's CliRunner; a few cases run as a real process to
check the exact stderr."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from conftest import ROOT, tiny_config, write_config
from tracer.config_build import load_config
from tracer.model_source import ModelSource

LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
             num_hidden_layers=2)
MOE = dict(LLAMA, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)


def cli_error(*argv: str) -> str:
    """The one stderr line of a refused command (exit 2, nothing on stdout)."""
    with CliRunner().isolation() as (out, err, _):
        code = main(list(argv))
    stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    lines = stderr.strip().splitlines()
    assert code == 2 and not stdout, (code, stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("tracecost: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def moe_config() -> dict:
    return tiny_config("qwen3_moe", **MOE)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    write_config(directory, tiny_config("llama", **LLAMA))
    return directory


# sizes: a count or size no model can have -----------------------------------------------------------------------

SIZES = [
    ("hidden_size", 0), ("hidden_size", -64), ("num_attention_heads", 0), ("num_hidden_layers", 0),
    ("num_key_value_heads", 0), ("head_dim", 0), ("intermediate_size", 0), ("vocab_size", 0),
    ("max_position_embeddings", 0), ("max_position_embeddings", -1), ("moe_intermediate_size", 0),
    ("num_experts", 0), ("num_experts", -4), ("num_experts_per_tok", 0), ("num_experts_per_tok", -1),
    ("num_nextn_predict_layers", -1), ("n_shared_experts", -1),
]


@pytest.mark.parametrize("field, value", SIZES)
def test_sizes(tmp_path, moe_config, field, value):
    write_config(tmp_path, {**moe_config, field: value})
    line = cli_error("estimate", str(tmp_path))
    assert f"{field} must be" in line and str(value) in line


def test_more_experts_per_token_than_experts(tmp_path, moe_config):
    write_config(tmp_path, {**moe_config, "num_experts_per_tok": 8})
    assert "num_experts_per_tok 8 is more than num_local_experts 4" in cli_error("estimate", str(tmp_path))


@pytest.mark.parametrize("change", [
    # a dense member of a MoE family (as Granite 4.0 H Micro's config); to_dict writes num_local_experts, an alias
    {"num_experts": 0, "num_local_experts": 0, "num_experts_per_tok": 0},
    {"n_shared_experts": 0, "shared_expert_intermediate_size": 0, "num_nextn_predict_layers": 0},  # absent parts
])
def test_zero_where_a_part_is_absent_is_accepted(moe_config, change):
    config, _ = load_config(ModelSource("t", "local", "t", {**moe_config, **change}, None))
    assert all(getattr(config, field, value) == value for field, value in change.items())


# types: a size that is not a whole number -----------------------------------------------------------------------

TYPES = [("hidden_size", "64"), ("hidden_size", 64.5), ("num_hidden_layers", True), ("vocab_size", {"n": 256}),
         ("num_attention_heads", [4, "x"])]


@pytest.mark.parametrize("field, value", TYPES)
def test_types(tmp_path, field, value):
    write_config(tmp_path, {**tiny_config("llama", **LLAMA), field: value})
    assert f"{field} must be a positive whole number, got " in cli_error("trace", str(tmp_path))


def test_model_type_not_text(tmp_path):
    write_config(tmp_path, {**tiny_config("llama", **LLAMA), "model_type": 5})
    assert "has no model_type" in cli_error("trace", str(tmp_path))


# files: what a config file can be instead of a model config ------------------------------------------------------

FILES = [
    ("malformed", '{"model_type": "llama", "hidden_size": 64,', "malformed JSON"),
    ("empty", "", "malformed JSON"),
    ("a list", "[1, 2]", "expected a JSON object, got list"),
    ("no model_type", '{"hidden_size": 64}', "neither 'model_type' nor 'architectures'"),
    ("deeply nested", '{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("not UTF-8", b'{"model_type": "\xff"}', "cannot read"),
]


@pytest.mark.parametrize("what, content, words", FILES, ids=[f[0] for f in FILES])
def test_files(tmp_path, what, content, words):
    file = tmp_path / "config.json"
    file.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = cli_error("trace", str(file))
    assert words in line and str(file) in line


def test_directory_without_config_and_other_file(tmp_path):
    assert "has no config.json" in cli_error("trace", str(tmp_path))
    (tmp_path / "model.txt").write_text("{}")
    assert "is not a .json file" in cli_error("trace", str(tmp_path / "model.txt"))


# names: what the user typed for MODEL -----------------------------------------------------------------------------

NAMES = [
    ("", "no model given"),
    ("   ", "no model given"),
    ("a" * 5000, "model name of 5000 characters"),
    ("a" * 300, "not a path (File name too long)"),
    ("org/" + "a" * 300, "not a repo id"),
    ("no-such-org/no-such-model-xyz", "not found"),
]


@pytest.mark.parametrize("name, words", NAMES, ids=["empty", "blank", "over PATH_MAX", "over NAME_MAX",
                                                      "long repo id", "unknown"])
def test_names(name, words):
    assert words in cli_error("trace", name)


# flags: command-line values ---------------------------------------------------------------------------------------

FLAGS = [
    (["trace", "{llama}", "--batch", "0"], "--batch"),
    (["trace", "{llama}", "--isl", "-1"], "--isl"),
    (["estimate", "{llama}", "--osl", "many"], "--osl"),
    (["trace", "{llama}", "--no-such-flag"], "--no-such-flag"),
    (["sweep", "{llama}", "--batch", "1,x"], "--batch"),
    (["sweep", "{llama}", "--tp", "0"], "--tp"),
    (["models", "--kind", "nowhere"], "--kind"),
    (["estimate", "{llama}", "--system", "no_such_gpu"], "no_such_gpu"),
    (["estimate", "{llama}", "--quant", "fp3"], "fp3"),
    (["estimate", "{llama}", "--kv-dtype", "fp3"], "fp3"),
    (["estimate", "{llama}", "--tp", "0"], "tp"),
    (["kv", "{llama}", "--page-size", "0"], "page size"),
    (["trace", "{llama}", "--collector-cases", "/no/such/dir/cases.json"], "does not exist"),
    (["estimate", "{llama}", "--batch-wait-token-ratio", "1.5"], "--batch-wait-token-ratio"),
    (["estimate", "{llama}", "--recv-interval-steps", "0"], "--recv-interval-steps"),
    (["sweep", "{llama}", "--max-num-seqs", "0"], "--max-num-seqs"),
    (["estimate", "{llama}", "--mxfp4-moe-activation", "fp16"], "--mxfp4-moe-activation"),
]


@pytest.mark.parametrize("argv, words", FLAGS, ids=[" ".join(a).replace("{llama}", "M") for a, _ in FLAGS])
def test_flags(llama_dir, argv, words):
    assert words in cli_error(*(a.replace("{llama}", str(llama_dir)) for a in argv), "-q")


# the exact line, from a real process ------------------------------------------------------------------------------

def _stderr(tmp_path, *argv: str) -> tuple[int, str]:
    env = {"TRACECOST_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(ROOT / "cli.py"), *argv], capture_output=True, text=True, env=env,
                          cwd=ROOT)
    return done.returncode, done.stderr


def test_exact_lines(tmp_path, moe_config):
    write_config(tmp_path, {**moe_config, "max_position_embeddings": 0})
    file = tmp_path / "config.json"
    assert _stderr(tmp_path, "estimate", str(file)) == (
        2, f"tracecost: error: {file}: max_position_embeddings must be positive, got 0\n")
    assert _stderr(tmp_path, "trace", "a" * 5000) == (
        2, "tracecost: error: model name of 5000 characters: no path, repo id or model_type is longer than 4096 "
           "characters\n")


def test_failed_export_is_one_line(tmp_path):
    """torch logs a fake tensor's failing kernel with its traceback before the export fails: not shown."""
    config = tiny_config("deepseek_v3", hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=256, num_hidden_layers=2,
                         first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=4,
                         kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
    write_config(tmp_path, config)
    code, stderr = _stderr(tmp_path, "trace", str(tmp_path), "-q")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith("tracecost: error: torch.export of the prefill step failed: RuntimeError: ")
