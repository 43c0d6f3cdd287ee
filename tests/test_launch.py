"""Launch files of a planned configuration (launch.py): each engine's own option names and the values a plan
maps to (attention DP, EP, batch per rank or per instance), and the disagg router config."""
from __future__ import annotations

import shlex

import yaml

import launch

REPORT = {"model": "org/moe", "system": "h200_sxm", "backend": "trtllm", "backend_version": "1.3.0rc20",
          "isl": 4000, "osl": 500, "sla": {"ttft_ms": 1000.0, "tpot_ms": 50.0}, "config_quant": "fp8_block",
          "max_tokens_per_step": 8192}
FIGURES = {"ttft_ms": 900.0, "tpot_ms": 45.0, "request_latency_ms": 23355.0, "tokens_per_s_per_gpu": 200.0,
           "tokens_per_s_per_user": 22.2, "memory_per_gpu_bytes": 1.2e11}
DP8 = {"tp": 1, "pp": 1, "ep": 8, "dp": 8}
AGG = {"mode": "agg", "quant": "fp8_block", "kv_dtype": "fp8", "plan": DP8, "gpus": 8, "replicas": 1,
       "concurrency": 96, "batch_per_rank": 12, "prefill": None, "decode": None, **FIGURES}


def _lines(text: str, start: str) -> list[list[str]]:
    return [shlex.split(line.split(" ", 1)[1].rstrip(" &")) for line in text.splitlines() if start in line
            and line.startswith("CUDA_VISIBLE_DEVICES=")]


def test_attention_dp_with_expert_parallel_in_each_engine():
    files = launch.launch_files(REPORT, AGG, [AGG], "org/moe", gpus_per_node=8)
    vllm = _lines(files["vllm.sh"], "vllm serve")[0]
    assert vllm == ["vllm", "serve", "$MODEL", "--tensor-parallel-size", "1", "--pipeline-parallel-size", "1",
                    "--data-parallel-size", "8", "--enable-expert-parallel", "--max-num-seqs", "12",
                    "--max-num-batched-tokens", "8192", "--max-model-len", "4500", "--kv-cache-dtype", "fp8",
                    "--port", "8000"]
    sglang = _lines(files["sglang.sh"], "sglang.launch_server")[0]
    assert sglang == ["python", "-m", "sglang.launch_server", "--model-path", "$MODEL", "--tp-size", "8",
                      "--pp-size", "1", "--dp-size", "8", "--enable-dp-attention", "--ep-size", "8",
                      "--max-running-requests", "96", "--chunked-prefill-size", "8192", "--context-length", "4500",
                      "--kv-cache-dtype", "fp8_e4m3", "--port", "30000"]
    assert yaml.safe_load(files["trtllm_agg.yaml"]) == {
        "tensor_parallel_size": 8, "pipeline_parallel_size": 1, "enable_attention_dp": True,
        "moe_expert_parallel_size": 8, "moe_tensor_parallel_size": 1, "max_batch_size": 12, "max_num_tokens": 8192,
        "max_seq_len": 4500, "enable_chunked_prefill": True, "kv_cache_config": {"dtype": "fp8"}}
    assert files["vllm.sh"].splitlines()[1] == 'MODEL="${MODEL:-org/moe}"'
    assert "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 " in files["vllm.sh"]


def test_disagg_pools_and_router():
    cand = {**AGG, "mode": "disagg", "kv_dtype": "bf16", "quant": "fp8", "gpus": 5, "replicas": 1,
            "plan": {"tp": 2, "pp": 1, "ep": 1, "dp": 1},
            "prefill": {"tp": 1, "pp": 1, "ep": 1, "dp": 1, "workers": 3, "batch": 1},
            "decode": {"tp": 2, "pp": 1, "ep": 1, "dp": 1, "workers": 1, "batch": 96}}
    files = launch.launch_files(REPORT, cand, [cand], "org/dense", gpus_per_node=8)
    vllm = _lines(files["vllm.sh"], "vllm serve")
    assert len(vllm) == 4 and all("--kv-transfer-config" in a for a in vllm)
    assert vllm[3][vllm[3].index("--quantization") + 1] == "fp8"      # not the config's fp8_block: quantized online
    sglang = _lines(files["sglang.sh"], "sglang")
    assert [a[a.index("--disaggregation-mode") + 1] for a in sglang] == ["prefill"] * 3 + ["decode"]
    assert "CUDA_VISIBLE_DEVICES=3,4 " in files["sglang.sh"]
    assert yaml.safe_load(files["trtllm_disagg.yaml"]) == {
        "hostname": "localhost", "port": 8000, "backend": "pytorch",
        "context_servers": {"num_instances": 3, "urls": ["localhost:8001", "localhost:8002", "localhost:8003"]},
        "generation_servers": {"num_instances": 1, "urls": ["localhost:8004"]}}
    prefill = yaml.safe_load(files["trtllm_prefill.yaml"])
    assert prefill["cache_transceiver_config"] == {"backend": "DEFAULT"} and prefill["disable_overlap_scheduler"]
    assert yaml.safe_load(files["trtllm_decode.yaml"])["max_batch_size"] == 96
    assert "# weights fp8" not in files["vllm.sh"] and "# weights fp8: serve a checkpoint" in files["trtllm.sh"]


def test_candidates_csv_columns():
    text = launch.candidates_csv([AGG])
    header, row = text.splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert (values["mode"], values["tp"], values["dp"], values["ep"], values["concurrency"]) == ("agg", "1", "8", "8",
                                                                                                 "96")
    assert values["tokens_per_s_per_gpu"] == "200.0000" and values["prefill_workers"] == ""


def test_mtp_speculative_options_in_each_engine():
    report = {**REPORT, "speculative": {"method": "mtp", "draft_tokens": 2, "acceptance": 0.85}}
    files = launch.launch_files(report, AGG, [AGG], "org/moe", gpus_per_node=8)
    vllm = _lines(files["vllm.sh"], "vllm serve")[0]
    i = vllm.index("--speculative-config")
    assert vllm[i + 1] == '{"method":"mtp","num_speculative_tokens":2}'
    sglang = _lines(files["sglang.sh"], "sglang.launch_server")[0]
    i = sglang.index("--speculative-algorithm")
    assert sglang[i:i + 8] == ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", "2",
                               "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "3"]
    assert yaml.safe_load(files["trtllm_agg.yaml"])["speculative_config"] == {"decoding_type": "MTP",
                                                                             "num_nextn_predict_layers": 2}
