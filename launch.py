"""Launch files for a planned configuration (`tracecost plan --save DIR`): vLLM and SGLang server command lines,
TensorRT-LLM's trtllm-serve YAML (its LLM API options), and the candidate table as CSV. Pure functions from the
plan report and one candidate (costmodel.planner) to {file name: text}; cli.py writes them.

Option names are the engines' own, checked against their argument parsers and sources:
- vLLM (`vllm serve`, vllm 0.34 EngineArgs): --tensor-parallel-size, --pipeline-parallel-size, --data-parallel-size,
  --enable-expert-parallel, --max-num-seqs (per DP rank), --max-num-batched-tokens, --max-model-len,
  --kv-cache-dtype, --quantization, --kv-transfer-config (NixlConnector, kv_role kv_both), --speculative-config
  (JSON: method "mtp", num_speculative_tokens; vllm/config/speculative.py names the other MTP methods deprecated).
- SGLang (`python -m sglang.launch_server`, sglang 0.5.23 ServerArgs): --tp-size (all GPUs of a stage, DP
  attention included), --dp-size with --enable-dp-attention, --ep-size, --pp-size, --max-running-requests (all
  DP ranks together), --chunked-prefill-size, --context-length, --kv-cache-dtype, --quantization,
  --disaggregation-mode prefill|decode, --disaggregation-transfer-backend, --speculative-algorithm NEXTN (its name
  for the model's own MTP layers) with --speculative-num-steps, --speculative-eagle-topk,
  --speculative-num-draft-tokens.
- TensorRT-LLM (`trtllm-serve MODEL --backend pytorch --extra_llm_api_options FILE`, tensorrt_llm/llmapi/llm_args.py):
  tensor_parallel_size (all GPUs of a stage; enable_attention_dp makes each one a DP rank), pipeline_parallel_size,
  moe_expert_parallel_size, moe_tensor_parallel_size, max_batch_size (per rank), max_num_tokens, max_seq_len,
  enable_chunked_prefill, kv_cache_config.dtype, cache_transceiver_config.backend, disable_overlap_scheduler,
  speculative_config (decoding_type MTP, num_nextn_predict_layers: MTPDecodingConfig);
  `trtllm-serve disaggregated -c FILE` with context_servers / generation_servers (num_instances, urls).
"""
from __future__ import annotations

import csv
import io
import json
import shlex

import yaml

from render import describe

VLLM_PORT, SGLANG_PORT, TRTLLM_PORT = 8000, 30000, 8000
# quantization a serving engine applies itself to a bf16 checkpoint (online); other modes need a checkpoint in them
ONLINE_QUANT = {"fp8": {"vllm": "fp8", "sglang": "fp8"}}
KV_DTYPE = {"fp8": {"vllm": "fp8", "sglang": "fp8_e4m3", "trtllm": "fp8"}}   # bf16 is every engine's "auto"


def _gpu_ids(start: int, count: int, per_node: int) -> str:
    return ",".join(str((start + i) % per_node) for i in range(count))


def _quant_note(report: dict, cand: dict, engine: str) -> tuple[list[str], str | None]:
    """Extra arguments for the candidate's quantization, and a note when the checkpoint must carry it."""
    mode = cand["quant"]
    if mode == report["config_quant"]:
        return [], None
    online = ONLINE_QUANT.get(mode, {}).get(engine)
    if online:
        return ["--quantization", online], None
    return [], f"weights {mode}: serve a checkpoint quantized to {mode} (the engine reads its quantization config)"


def _draft_tokens(report: dict) -> int:
    """Tokens drafted per step with the model's own MTP layers (plan --speculative mtp); 0 without."""
    return (report.get("speculative") or {}).get("draft_tokens", 0)


def _kv(cand: dict, engine: str) -> str | None:
    return KV_DTYPE.get(cand["kv_dtype"], {}).get(engine)


def vllm_args(report: dict, cand: dict, plan: dict, batch: int, model: str, role: str | None = None) -> list[str]:
    """`vllm serve` arguments of one instance with `plan` running `batch` requests per DP rank."""
    args = ["vllm", "serve", model, "--tensor-parallel-size", str(plan["tp"]),
            "--pipeline-parallel-size", str(plan["pp"])]
    if plan["dp"] > 1:
        args += ["--data-parallel-size", str(plan["dp"])]
    if plan["ep"] > 1:
        args += ["--enable-expert-parallel"]
    args += ["--max-num-seqs", str(batch), "--max-num-batched-tokens", str(report["max_tokens_per_step"]),
             "--max-model-len", str(report["isl"] + report["osl"])]
    args += _quant_note(report, cand, "vllm")[0]
    if _kv(cand, "vllm"):
        args += ["--kv-cache-dtype", _kv(cand, "vllm")]
    if role:
        args += ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": "kv_both"},
                                                    separators=(",", ":"))]
    k = _draft_tokens(report)
    if k:
        args += ["--speculative-config", json.dumps({"method": "mtp", "num_speculative_tokens": k},
                                                    separators=(",", ":"))]
    return args


def sglang_args(report: dict, cand: dict, plan: dict, batch: int, model: str, role: str | None = None) -> list[str]:
    """`python -m sglang.launch_server` arguments of one instance (batch: requests per DP rank)."""
    args = ["python", "-m", "sglang.launch_server", "--model-path", model, "--tp-size", str(plan["tp"] * plan["dp"]),
            "--pp-size", str(plan["pp"])]
    if plan["dp"] > 1:
        args += ["--dp-size", str(plan["dp"]), "--enable-dp-attention"]
    if plan["ep"] > 1:
        args += ["--ep-size", str(plan["ep"])]
    args += ["--max-running-requests", str(batch * plan["dp"]), "--chunked-prefill-size",
             str(report["max_tokens_per_step"]), "--context-length", str(report["isl"] + report["osl"])]
    args += _quant_note(report, cand, "sglang")[0]
    if _kv(cand, "sglang"):
        args += ["--kv-cache-dtype", _kv(cand, "sglang")]
    if role:
        args += ["--disaggregation-mode", role, "--disaggregation-transfer-backend", "nixl"]
    k = _draft_tokens(report)
    if k:
        args += ["--speculative-algorithm", "NEXTN", "--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                 "--speculative-num-draft-tokens", str(k + 1)]
    return args


def trtllm_options(report: dict, cand: dict, plan: dict, batch: int, role: str | None = None) -> dict:
    """trtllm-serve's LLM API options (the --extra_llm_api_options YAML) of one instance."""
    width = plan["tp"] * plan["dp"]
    opts = {"tensor_parallel_size": width, "pipeline_parallel_size": plan["pp"]}
    if plan["dp"] > 1:
        opts["enable_attention_dp"] = True
    if plan["ep"] > 1:
        opts["moe_expert_parallel_size"] = plan["ep"]
        opts["moe_tensor_parallel_size"] = width // plan["ep"]
    opts.update({"max_batch_size": batch, "max_num_tokens": report["max_tokens_per_step"],
                 "max_seq_len": report["isl"] + report["osl"], "enable_chunked_prefill": role is None})
    kv = {"dtype": _kv(cand, "trtllm") or "auto"}
    opts["kv_cache_config"] = kv
    if role:
        opts["cache_transceiver_config"] = {"backend": "DEFAULT"}
        if role == "prefill":
            opts["disable_overlap_scheduler"] = True   # context servers run without the overlap scheduler
    k = _draft_tokens(report)
    if k:
        opts["speculative_config"] = {"decoding_type": "MTP", "num_nextn_predict_layers": k}
    return opts


def _header(report: dict, cand: dict, engine: str) -> list[str]:
    sla = report["sla"]
    limits = ", ".join(f"{k.upper()} <= {sla[k + '_ms']:g} ms" for k in ("ttft", "tpot") if sla[k + "_ms"])
    lines = [f"# {report['model']} on {cand['gpus'] * cand['replicas']} x {report['system']}: {describe(cand)}",
             f"# planned by tracecost with {report['backend']} {report['backend_version']} tables: "
             f"{cand['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, {cand['tokens_per_s_per_user']:.1f} tokens/s/user, "
             f"TTFT {cand['ttft_ms']:.0f} ms, TPOT {cand['tpot_ms']:.1f} ms at {cand['concurrency']} clients per "
             f"{'instance' if cand['mode'] == 'agg' else 'x:y group'}" + (f" ({limits})" if limits else "")]
    note = _quant_note(report, cand, engine)[1]
    if note:
        lines.append(f"# {note}")
    return lines


def _workers(cand: dict) -> list[tuple[str | None, dict, int, int]]:
    """(role, plan, batch per rank, first GPU) of every engine instance, all replicas."""
    out, gpu = [], 0
    for _ in range(cand["replicas"]):
        if cand["mode"] == "agg":
            out.append((None, cand["plan"], cand["batch_per_rank"], gpu))
            gpu += cand["gpus"]
            continue
        for role, pool in (("prefill", cand["prefill"]), ("decode", cand["decode"])):
            for _ in range(pool["workers"]):
                out.append((role, pool, pool["batch"], gpu))
                gpu += pool["tp"] * pool["pp"] * pool["dp"]
    return out


MODEL = "${MODEL}"   # the scripts' first line sets it; a caller may export another path or id


def _command(args: list[str]) -> str:
    """A shell command line; the model is the script's $MODEL."""
    return " ".join('"$MODEL"' if a == MODEL else shlex.quote(a) for a in args)


def _script(lines: list[str], model: str) -> str:
    return f"#!/bin/sh\nMODEL=\"${{MODEL:-{model}}}\"\n" + "\n".join(lines) + "\n"


def launch_files(report: dict, cand: dict, candidates: list[dict], model: str, gpus_per_node: int) -> dict[str, str]:
    """{file name: text} for `cand`: vllm.sh, sglang.sh, trtllm.sh with its YAML files, and candidates.csv."""
    files: dict[str, str] = {}
    vllm, sglang, trtllm = (_header(report, cand, engine) for engine in ("vllm", "sglang", "trtllm"))
    servers: dict[str, list[str]] = {"prefill": [], "decode": []}
    for i, (role, plan, batch, first) in enumerate(_workers(cand)):
        gpus = plan["tp"] * plan["pp"] * plan["dp"]
        env = f"CUDA_VISIBLE_DEVICES={_gpu_ids(first, gpus, gpus_per_node)}"
        node = f"# node {first // gpus_per_node}" if first + gpus > gpus_per_node else None
        for lines in (vllm, sglang, trtllm):
            if node:
                lines.append(node)
        vllm_line = vllm_args(report, cand, plan, batch, MODEL, role) + ["--port", str(VLLM_PORT + i)]
        sglang_line = sglang_args(report, cand, plan, batch, MODEL, role) + ["--port", str(SGLANG_PORT + i)]
        vllm.append(f"{env} {_command(vllm_line)} &")
        sglang.append(f"{env} {_command(sglang_line)} &")
        name = f"trtllm_{role or 'agg'}.yaml"
        files.setdefault(name, yaml.safe_dump(trtllm_options(report, cand, plan, batch, role), sort_keys=False))
        port = TRTLLM_PORT + 1 + i
        trtllm_line = ["trtllm-serve", MODEL, "--host", "localhost", "--port", str(port), "--backend", "pytorch",
                       "--extra_llm_api_options", name]
        trtllm.append(f"{env} {_command(trtllm_line)} &")
        if role:
            servers[role].append(f"localhost:{port}")
    if cand["mode"] == "disagg":
        files["trtllm_disagg.yaml"] = yaml.safe_dump({
            "hostname": "localhost", "port": TRTLLM_PORT, "backend": "pytorch",
            "context_servers": {"num_instances": len(servers["prefill"]), "urls": servers["prefill"]},
            "generation_servers": {"num_instances": len(servers["decode"]), "urls": servers["decode"]}},
            sort_keys=False)
        trtllm.append("trtllm-serve disaggregated -c trtllm_disagg.yaml")
        route = "# a prefill/decode router in front sends each request to a prefill, then a decode instance"
        vllm.append(route)
        sglang.append(route)
    files["vllm.sh"], files["sglang.sh"] = _script(vllm, model), _script(sglang, model)
    files["trtllm.sh"] = _script(trtllm + ["wait"], model)
    files["candidates.csv"] = candidates_csv(candidates)
    return files


CSV_COLUMNS = ("mode", "quant", "kv_dtype", "gpus", "replicas", "concurrency", "batch_per_rank", "tp", "pp", "ep",
               "dp", "prefill_workers", "prefill_tp", "prefill_pp", "prefill_ep", "prefill_dp", "prefill_batch",
               "decode_workers", "ttft_ms", "tpot_ms", "request_latency_ms", "tokens_per_s_per_gpu",
               "tokens_per_s_per_user", "memory_per_gpu_bytes")


def candidates_csv(candidates: list[dict]) -> str:
    """Every candidate, one row each (disagg: tp..dp are the decode pool's)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for c in candidates:
        row = {k: c[k] for k in CSV_COLUMNS if k in c}
        row.update(c["plan"])
        if c["prefill"]:
            row.update({f"prefill_{k}": c["prefill"][k] for k in ("workers", "tp", "pp", "ep", "dp", "batch")})
            row["decode_workers"] = c["decode"]["workers"]
        for k in ("ttft_ms", "tpot_ms", "request_latency_ms", "tokens_per_s_per_gpu", "tokens_per_s_per_user"):
            row[k] = f"{c[k]:.4f}"
        row["memory_per_gpu_bytes"] = int(c["memory_per_gpu_bytes"])
        writer.writerow(row)
    return out.getvalue()
