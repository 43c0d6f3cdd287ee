"""tracecost command line: parse, call, print. Bad input is one line on stderr and exit 2."""
from __future__ import annotations

import json
import os
import sys
import traceback

import click

import render
from core.dtypes import FP8_INPUT_SCALES, MXFP4_MOE_ACTIVATIONS
from core.errors import UserError

TRACE_SCHEMA = "tracecost.trace/1"


def _progress(quiet: bool):
    if quiet:
        return lambda msg: None
    return lambda msg: click.echo(f"tracecost: {msg}...", err=True)


def _options(*opts):
    """Apply click options so that --help lists them in the order given."""
    def wrap(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn
    return wrap


# The one option set: each option is written once here and every command that takes it uses this definition.
_QUIET = click.option("-q", "--quiet", is_flag=True, help="Nothing on stderr but errors (no progress, no counts).")
_TRUST = click.option("--trust-remote-code", is_flag=True, help="Allow a config's own remote code to run.")
_NO_CACHE = click.option("--no-cache", is_flag=True, help="Trace again instead of reading the trace cache.")
_DATA_DIRS = click.option("--data-dir", "data_dirs", multiple=True, metavar="DIR",
                          help="Extra measured-table root, e.g. what `tracecost collect --out` wrote (repeatable).")


def _json(what: str):
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} instead of the table.")


def _model_opts(fn):
    """What every command that traces MODEL takes: remote code, the trace cache, quiet."""
    return _options(_TRUST, _NO_CACHE, _QUIET)(fn)


_SIZES = (
    click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Concurrent requests (B): the static batch, or the clients of agg and disagg."),
    click.option("--isl", type=click.IntRange(min=1), default=1024, show_default=True,
                 help="Input tokens per request (prefill length)."),
    click.option("--osl", type=click.IntRange(min=1), default=1024, show_default=True,
                 help="Output tokens per request (decode steps)."),
)


_MAX_TOKENS = click.option("--max-tokens-per-step", type=click.IntRange(min=1),
                           help="agg/disagg: the engine's token budget per step (default: the backend's, "
                                "systems/engines/overheads.yaml).")

_SERVING = (
    click.option("--mode", default="agg", show_default=True,
                 help="static: one batch prefilled then decoded together, kernels only; agg: one engine with "
                      "in-flight batching and chunked prefill at --batch clients; disagg: prefill and decode pools."),
    _MAX_TOKENS,
    click.option("--max-num-seqs", type=click.IntRange(min=1),
                 help="agg/disagg: the most requests the engine runs at once per rank (disagg: per decode rank); "
                      "more clients queue (default: the backend's; TensorRT-LLM max_batch_size, vLLM max_num_seqs, "
                      "SGLang max_running_requests)."),
    click.option("--cuda-graph-max-batch", type=click.IntRange(min=1),
                 help="agg/disagg: the largest decode batch captured as a CUDA graph; larger ones run eager "
                      "(default: the backend's)."),
    click.option("--batch-wait-steps", type=click.IntRange(min=0),
                 help="agg: steps the scheduler may hold new prompts back, while others decode, to prefill them "
                      "together (TensorRT-LLM batch_wait_timeout_iters; default 0, none)."),
    click.option("--batch-wait-token-ratio", type=click.FloatRange(min=0, max=1),
                 help="agg: ... until the step's tokens reach this share of the token budget (TensorRT-LLM "
                      "batch_wait_max_tokens_ratio; holds nothing unless both are set)."),
    click.option("--recv-interval-steps", type=click.IntRange(min=1),
                 help="agg: decode steps between the scheduler's polls for new requests (SGLang "
                      "--scheduler-recv-interval; default 1)."),
    click.option("--mxfp4-moe-activation", type=click.Choice(MXFP4_MOE_ACTIVATIONS),
                 help="Activations the engine feeds mxfp4 experts on GPUs with FP4 tensor cores (default: the "
                      "backend's; vLLM takes mxfp8 with VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1)."),
    click.option("--fp8-input-scale", type=click.Choice(FP8_INPUT_SCALES),
                 help="How the engine scales a per-tensor FP8 GEMM's input: with the checkpoint's calibrated scale "
                      "(static, as ModelOpt checkpoints carry) or one computed per step (dynamic) (default: the "
                      "backend's; TensorRT-LLM static)."),
    click.option("--moe-kernel", multiple=True, metavar="DTYPE=FAMILY",
                 help="The kernel family the engine was launched to run experts of a MoE dtype with, a part of the "
                      "MoE table's lane names (e.g. fp8_block=vllm_fused_moe|triton for vLLM with "
                      "VLLM_USE_FLASHINFER_MOE_FP8=0; repeatable; default: the backend's, overheads.yaml "
                      "moe_kernels)."),
    click.option("--attention-dp-wait-steps", type=click.IntRange(min=0),
                 help="agg with --dp: steps new prompts wait for every attention-DP rank to have one (TensorRT-LLM "
                      "attention_dp_config enable_balance + timeout_iters; default 0, none)."),
    click.option("--mixed-prefill/--prefill-first", default=None,
                 help="agg: whether the engine runs prompt chunks in the same steps as the running requests' "
                      "decodes (TensorRT-LLM, vLLM) or prompts in prefill-only steps first, decoding only when none "
                      "waits (SGLang without --enable-mixed-chunk) (default: the backend's)."),
    click.option("--chunked-prefill/--whole-prompts", default=None,
                 help="agg/disagg: whether a step may take part of a prompt and the rest in later steps (vLLM, "
                      "SGLang, TensorRT-LLM with enable_chunked_prefill) or only whole prompts (TensorRT-LLM's "
                      "default) (default: the backend's)."),
    click.option("--requests", type=click.IntRange(min=1),
                 help="agg/disagg: requests the benchmark client sends in all; the first --batch go at once "
                      "(default: 10 x --batch, as InferenceX's client)."),
    click.option("--fixed-lengths", is_flag=True,
                 help="agg: the benchmark sends every request with exactly --isl and --osl tokens (aiperf's "
                      "synthetic prompts), which keeps an engine that prefills first in lockstep; default: lengths "
                      "vary around them as a random dataset's (InferenceX: uniform in [0.8 L, L], --isl and --osl "
                      "their means), which spreads the clients apart."),
    click.option("--prefill-workers", type=click.IntRange(min=1), default=1, show_default=True,
                 help="disagg: prefill engine instances."),
    click.option("--decode-workers", type=click.IntRange(min=1), default=1, show_default=True,
                 help="disagg: decode engine instances."),
    click.option("--prefill-tp", type=click.IntRange(min=1), help="disagg: the prefill pool's TP (default --tp)."),
    click.option("--prefill-batch", type=click.IntRange(min=1),
                 help="disagg: the most prompts a prefill worker batches (it takes those waiting, up to this; "
                      "default: the whole prompts its token budget fits, --max-tokens-per-step / --isl)."),
)


def _serving_options(max_tokens_per_step, max_num_seqs, cuda_graph_max_batch, batch_wait_steps,
                     batch_wait_token_ratio, recv_interval_steps, attention_dp_wait_steps, mxfp4_moe_activation,
                     fp8_input_scale, moe_kernel, mixed_prefill, chunked_prefill, requests, fixed_lengths,
                     prefill_workers, decode_workers, prefill_tp, prefill_batch, pp, ep, dp):
    from costmodel.overheads import EngineSettings
    from costmodel.parallel import Plan
    from costmodel.serving import Benchmark

    bad = [k for k in moe_kernel if "=" not in k]
    if bad:
        raise UserError(f"--moe-kernel takes DTYPE=FAMILY (e.g. fp8_block=triton), not {bad[0]!r}")

    engine = EngineSettings(max_tokens_per_step=max_tokens_per_step, max_num_seqs=max_num_seqs,
                            cuda_graph_max_batch=cuda_graph_max_batch, batch_wait_steps=batch_wait_steps,
                            batch_wait_token_ratio=batch_wait_token_ratio, recv_interval_steps=recv_interval_steps,
                            attention_dp_wait_steps=attention_dp_wait_steps,
                            mxfp4_moe_activation=mxfp4_moe_activation, fp8_input_scale=fp8_input_scale,
                            mixed_prefill=mixed_prefill, chunked_prefill=chunked_prefill,
                            moe_kernels=tuple(tuple(k.split("=", 1)) for k in moe_kernel) or None)
    return {"engine": engine, "bench": Benchmark(requests, fixed_lengths), "prefill_workers": prefill_workers,
            "decode_workers": decode_workers, "prefill_batch": prefill_batch,
            "prefill_plan": Plan(tp=prefill_tp, pp=pp, ep=ep, dp=dp) if prefill_tp else None}


def _system_opts(default_system: str | None) -> tuple:
    """The hardware and the kernels' backend."""
    return (
        click.option("--system", default=default_system, show_default=bool(default_system),
                     help="GPU system (see `tracecost systems`)."),
        click.option("--backend", help="Kernel tables to price with: trtllm, vllm, sglang, torch "
                                       "(default: trtllm where measured)."),
        click.option("--backend-version", help="Version of the backend's tables (default: newest); an op that "
                     "version and the older ones never measured takes the nearest newer version's table."),
    )


def _quant_opts(choose: str = "") -> tuple:
    """The quantization and the KV-cache dtype (`choose`: how a command that searches them takes `any`)."""
    return (
        click.option("--quant", help="Weight/activation quantization: bf16, fp8, fp8_block, nvfp4, mxfp4, "
                                     f"int4_wo (default: the config's quantization_config){choose}."),
        click.option("--kv-dtype", help=f"KV-cache dtype: bf16, fp16, fp8, int8, fp4 (default: the config's){choose}."),
        _DATA_DIRS,
    )


def _pricing_opts(default_system: str | None, tp_option=None):
    """The hardware, the kernels' backend, the parallel plan and the quantization (sweep passes its own --tp list)."""
    return _options(
        *_system_opts(default_system),
        tp_option or click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size."),
        click.option("--pp", type=int, default=1, show_default=True, help="Pipeline-parallel stages."),
        click.option("--ep", type=int, default=1, show_default=True, help="Expert-parallel size."),
        click.option("--dp", type=int, default=1, show_default=True, help="Attention data-parallel ranks."),
        *_quant_opts(),
    )


def _estimate(mg, matched, *, system, backend, backend_version, tp, pp, ep, dp, quant, kv_dtype, data_dirs, batch,
              isl, osl, mode, **serving):
    from costmodel.estimate import estimate
    from costmodel.parallel import Plan

    return estimate(mg, system=system, backend=backend, version=backend_version, plan=Plan(tp=tp, pp=pp, ep=ep, dp=dp),
                    batch=batch, isl=isl, osl=osl, quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs,
                    matched=matched, mode=mode, **_serving_options(**serving, pp=pp, ep=ep, dp=dp))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """tracecost: what an LLM costs to serve, read from the model's own transformers code.

    MODEL is a Hugging Face repo id (org/name), a local directory or config.json, or a bare model_type
    (e.g. llama). Configs are looked up offline first (local path, configs bundled with aiconfigurator-core,
    the Hugging Face cache); the hub is asked for config.json only, never weights.
    """


@cli.command()
@click.argument("model")
@_options(*_SIZES)
@_json("one JSON object (schema tracecost.trace/1)")
@click.option("--graph", "graph_path", metavar="FILE", help="Write the op graphs (.graphml or .json).")
@click.option("--force", is_flag=True, help="Overwrite the --graph or --collector-cases file if it exists.")
@click.option("--no-fuse", is_flag=True, help="Show sibling GEMMs and memory-bound ops apart, as the model runs them.")
@click.option("--strict", is_flag=True, help="Exit 3 if any work is left unrecognised (the unsupported report).")
@click.option("--collector-cases", "cases_path", metavar="FILE",
              help="Write the unsupported ops as collector cases (JSON) for `tracecost collect --cases`.")
@click.option("--summary", "summary_only", is_flag=True, help="Show the summary block alone (no op tables).")
@click.option("--ops", "ops_only", is_flag=True, help="Show the op tables alone (no summary block).")
@_model_opts
@_pricing_opts(None)
@_options(*_SERVING)
def trace(model, batch, isl, osl, as_json, graph_path, force, no_fuse, strict, cases_path, summary_only, ops_only,
          trust_remote_code, no_cache, quiet, system, backend, backend_version, tp, pp, ep, dp, quant, kv_dtype,
          data_dirs, mode, **serving):
    """Trace MODEL into its op graph. First a summary: parameters, KV cache per token and per sequence of
    ISL + OSL tokens, and TTFT / TPOT on a system (with --system, that system's estimate; else h200_sxm with its
    default backend, mode agg at --batch concurrent requests, the smallest TP that fits). Then per phase the ATen
    ops (count, FLOPs, bytes), the cost ops they were matched to (GEMM, attention, MLA, MoE, scan,
    memory-bound...), and every op no pattern recognised.

    The prefill row is B sequences of ISL tokens; the decode row is one step (one token per sequence) at the
    middle of generation, L = ISL + OSL/2 cached tokens. Counts include every layer of the full model.
    With --system, also the serving estimate (as `tracecost estimate`).
    """
    from costmodel.overview import overview
    from graph.match import match_model
    from graph.model_graph import trace_model
    from graph.report import cost_op_rows, unsupported_rows
    from graph.summary import op_table, phase_sizes, totals

    if summary_only and ops_only:
        raise UserError("--summary and --ops exclude each other (neither: both)")
    if cases_path:
        _check_new_file(cases_path, force, "--collector-cases")
    mg = trace_model(model, trust_remote_code=trust_remote_code, use_cache=not no_cache,
                     progress=_progress(quiet or as_json))
    if graph_path:
        from graph.io import write_graph
        write_graph(mg, graph_path, overwrite=force)
    matched = match_model(mg, fuse=not no_fuse)
    phases, sizes_by_phase = {}, {}
    for phase, g in mg.phases.items():
        sizes = sizes_by_phase[phase] = phase_sizes(phase, batch, isl, osl)
        table = op_table(g, sizes)
        phases[phase] = {"sizes": sizes, "ops": table, "total": totals(table),
                         "cost_ops": cost_op_rows(matched[phase], sizes),
                         "matched_flops_share": round(matched[phase].matched_share, 6)}
    unsupported = unsupported_rows(mg, matched, sizes_by_phase)
    est = None
    if system:
        est = _estimate(mg, matched, system=system, backend=backend, backend_version=backend_version, tp=tp, pp=pp,
                        ep=ep, dp=dp, quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs, batch=batch, isl=isl,
                        osl=osl, mode=mode, **serving)
    summary = None if ops_only else overview(mg, matched, batch=batch, isl=isl, osl=osl, estimate=est, pp=pp, dp=dp,
                                             quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs)
    if cases_path:
        with open(cases_path, "w") as f:
            json.dump([row["case"] for row in unsupported], f, indent=1)
    if as_json:
        click.echo(json.dumps({
            "schema": TRACE_SCHEMA, "model": mg.name, "model_type": mg.model_type,
            "source": {"kind": mg.source_kind, "origin": mg.source_origin}, "note": mg.note, "dtype": mg.dtype,
            "num_layers": mg.num_layers, "layer_plan": mg.plan, "param_count": mg.param_count,
            "weight_bytes": mg.weight_bytes, "inputs": {"batch": batch, "isl": isl, "osl": osl},
            "summary": summary, "phases": phases, "unsupported": unsupported, "estimate": est,
            "trace_seconds": mg.trace_seconds, "from_cache": mg.from_cache, "versions": mg.versions}, indent=1))
    elif summary_only:
        click.echo(render.format_summary(mg.name, summary))
    else:
        if summary:
            click.echo(render.format_summary(mg.name, summary) + "\n")
        click.echo(render.format_trace(mg, phases))
        click.echo("\n" + render.format_unsupported(unsupported))
        if est:
            click.echo("\n" + render.format_estimate(est))
        if graph_path:
            click.echo(f"\nop graphs written to {graph_path}")
        if cases_path:
            click.echo(f"collector cases written to {cases_path} ({len(unsupported)} cases)")
    if strict and unsupported:
        click.echo(f"tracecost: --strict: {len(unsupported)} unsupported op groups", err=True)
        raise SystemExit(3)


def _check_new_file(path: str, force: bool, flag: str) -> None:
    from pathlib import Path

    target = Path(path)
    if target.exists() and not force:
        raise UserError(f"{flag} {path}: file exists; remove it or pass --force to overwrite")
    if not target.parent.exists():
        raise UserError(f"{flag} {path}: directory {target.parent} does not exist")


_SPECULATIVE = (
    click.option("--speculative", metavar="METHOD",
                 help="Speculative decoding: mtp (the model's own multi-token-prediction layers, where its config "
                      "declares them; static and agg modes)."),
    click.option("--draft-tokens", type=click.IntRange(min=1),
                 help="--speculative: tokens drafted per step (K; default 1)."),
    click.option("--acceptance", type=float,
                 help="--speculative: chance each drafted token is accepted, in [0, 1] (default 0.85: DeepSeek-V3's "
                      "technical report gives 85-90%% for its MTP's second token)."),
)


def _speculation(speculative, draft_tokens, acceptance):
    from costmodel.speculative import DEFAULT_ACCEPTANCE, Speculation

    if speculative is None:
        if draft_tokens is not None or acceptance is not None:
            raise UserError("--draft-tokens and --acceptance need --speculative mtp")
        return None
    return Speculation(draft_tokens=1 if draft_tokens is None else draft_tokens,
                       acceptance=DEFAULT_ACCEPTANCE if acceptance is None else acceptance, method=speculative)


@cli.command()
@click.argument("model")
@_options(*_SIZES)
@_pricing_opts("h200_sxm")
@_options(*_SERVING)
@_options(*_SPECULATIVE)
@_json("one JSON object (schema tracecost.estimate/1)")
@_model_opts
def estimate(model, batch, isl, osl, system, backend, backend_version, tp, pp, ep, dp, quant, kv_dtype, data_dirs,
             mode, speculative, draft_tokens, acceptance, as_json, trust_remote_code, no_cache, quiet, **serving):
    """Serving estimate for MODEL: TTFT, TPOT, request latency, tokens/s per GPU and per user, memory per GPU
    (weights + KV cache + workspace + reserve) and whether it fits, with the time per cost op and where each
    price came from (measured exact / interpolated / extrapolated, or roofline). --mode says how the engine
    serves (default agg: in-flight batching with chunked prefill at --batch concurrent clients).
    --speculative mtp prices speculative decoding with the model's own MTP layers."""
    from graph.match import match_model
    from graph.model_graph import trace_model

    spec = _speculation(speculative, draft_tokens, acceptance)
    mg = trace_model(model, trust_remote_code=trust_remote_code, use_cache=not no_cache,
                     progress=_progress(quiet or as_json))
    if spec is None:
        result = _estimate(mg, match_model(mg), system=system, backend=backend, backend_version=backend_version,
                           tp=tp, pp=pp, ep=ep, dp=dp, quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs,
                           batch=batch, isl=isl, osl=osl, mode=mode, **serving)
    else:
        from costmodel.estimate import Estimator
        from costmodel.parallel import Plan
        from costmodel.speculative import speculative_estimate

        options = _serving_options(**serving, pp=pp, ep=ep, dp=dp)
        est = Estimator(mg, system=system, backend=backend, version=backend_version, quant=quant, kv_dtype=kv_dtype,
                        data_dirs=data_dirs, engine=options["engine"])
        result = speculative_estimate(est, mode, Plan(tp=tp, pp=pp, ep=ep, dp=dp), batch, isl, osl, spec,
                                      engine=options["engine"], bench=options["bench"])
    click.echo(json.dumps(result, indent=1) if as_json else render.format_estimate(result))


@cli.command()
@click.argument("model")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size (KV heads split or replicated).")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages (layers split; the largest shown).")
@click.option("--kv-dtype", help="bf16, fp16, fp32, fp8, int8 or fp4 (default: the config's, else the model's dtype).")
@click.option("--page-size", type=int, default=16, show_default=True, help="Tokens per KV page.")
@click.option("--seq-len", type=int, help="Tokens per sequence (default: the config's max_position_embeddings).")
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences, for the batch total.")
@click.option("--system", help="GPU system: also say how many sequences of --seq-len fit beside the weights.")
@_json("one JSON object (schema tracecost.kv/1)")
@_model_opts
def kv(model, tp, pp, kv_dtype, page_size, seq_len, batch, system, as_json, trust_remote_code, no_cache, quiet):
    """KV-cache size of MODEL from its recognised attention and state ops: bytes per token that grow with the
    context, bytes per sequence that do not (sliding windows, Mamba / linear-attention states), per GPU under
    TP / PP, per page, and the totals for a sequence and a batch."""
    from costmodel.kv import kv_report
    from graph.model_graph import trace_model

    mg = trace_model(model, trust_remote_code=trust_remote_code, use_cache=not no_cache,
                     progress=_progress(quiet or as_json))
    memory = {}
    if system:
        from costmodel.estimate import RUNTIME_RESERVE_BYTES
        from costmodel.systems import load_system

        memory = {"gpu_memory_bytes": int(load_system(system).hbm_bytes), "reserve_bytes": RUNTIME_RESERVE_BYTES}
    report = kv_report(mg, tp=tp, pp=pp, kv_dtype=kv_dtype, page_size=page_size, seq_len=seq_len, batch=batch,
                       **memory)
    click.echo(json.dumps(report, indent=1) if as_json else render.format_kv_report(report))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,8,64") from None
    if not values or any(v < 1 for v in values):
        raise UserError(f"{flag} {text!r}: every value must be a positive integer")
    return values


@cli.command()
@click.argument("model")
@click.option("--batch", "batches", default="1,8,32,128", show_default=True,
              help="Concurrent requests per point (B), comma-separated.")
@click.option("--isl", "isls", default="1024,4096", show_default=True,
              help="Input tokens per request, comma-separated.")
@click.option("--osl", "osls", default="128,1024", show_default=True,
              help="Output tokens per request, comma-separated.")
@_pricing_opts("h200_sxm", tp_option=click.option("--tp", "tps", default="1,2,4,8", show_default=True,
                                                    help="Tensor-parallel sizes, comma-separated."))
@_options(*_SERVING)
@_json("the rows as a JSON list (one object per point, as `tracecost estimate --json` gives)")
@_model_opts
def sweep(model, batches, isls, osls, system, backend, backend_version, tps, pp, ep, dp, quant, kv_dtype, data_dirs,
          mode, as_json, trust_remote_code, no_cache, quiet, **serving):
    """Estimates over a grid of batch x ISL x OSL x TP from one trace: one row per point (a table, or JSON).
    Points whose plan does not divide the model, or whose KV cache does not fit (agg, disagg), carry an error
    instead of figures. In disagg the TP list is the decode pool's."""
    from costmodel.estimate import sweep as run_sweep
    from graph.match import match_model
    from graph.model_graph import trace_model

    grid = {"batches": _int_list(batches, "--batch"), "isls": _int_list(isls, "--isl"),
            "osls": _int_list(osls, "--osl"), "tps": _int_list(tps, "--tp")}
    mg = trace_model(model, trust_remote_code=trust_remote_code, use_cache=not no_cache,
                     progress=_progress(quiet or as_json))
    rows = run_sweep(mg, **grid, pp=pp, ep=ep, dp=dp, system=system, backend=backend, version=backend_version,
                     quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs, matched=match_model(mg), mode=mode,
                     **_serving_options(**serving, pp=pp, ep=ep, dp=dp))
    click.echo(json.dumps(rows, indent=1) if as_json else render.format_sweep(rows))


def _progress_bar(quiet: bool, what: str):
    """A progress bar on stderr (tqdm) as a (done, total) callback; nothing with -q."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=what, unit="task", file=sys.stderr, leave=False, dynamic_ncols=True)

    def tick(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return tick, bar.close


@cli.command()
@click.argument("model")
@click.option("--gpus", type=click.IntRange(min=1), required=True, help="GPUs in the budget.")
@click.option("--isl", type=click.IntRange(min=1), default=1024, show_default=True, help="Input tokens per request.")
@click.option("--osl", type=click.IntRange(min=1), default=1024, show_default=True, help="Output tokens per request.")
@click.option("--ttft", type=click.FloatRange(min=0, min_open=True), metavar="MS", help="TTFT limit (ms).")
@click.option("--tpot", type=click.FloatRange(min=0, min_open=True), metavar="MS", help="TPOT limit (ms).")
@click.option("--mode", type=click.Choice(["agg", "disagg", "both"]), default="both", show_default=True,
              help="agg: one engine per instance; disagg: prefill and decode pools; both.")
@_options(*_system_opts("h200_sxm"), *_quant_opts("; `any` searches every one the system's tables price"),
          _MAX_TOKENS)
@click.option("--plot", "plot_path", metavar="FILE", help="Draw the Pareto fronts (.png or .svg; needs matplotlib).")
@click.option("--save", "save_dir", metavar="DIR",
              help="Write launch files of the best configuration (vLLM, SGLang, trtllm-serve) and the candidates CSV.")
@click.option("--force", is_flag=True, help="Overwrite files in --save DIR.")
@click.option("--strict", is_flag=True, help="Exit 3 when nothing meets the SLA.")
@_options(*_SPECULATIVE)
@_json("one JSON object (schema tracecost.plan/1)")
@_model_opts
def plan(model, gpus, isl, osl, ttft, tpot, mode, system, backend, backend_version, quant, kv_dtype, data_dirs,
         max_tokens_per_step, plot_path, save_dir, force, strict, speculative, draft_tokens, acceptance, as_json,
         trust_remote_code, no_cache, quiet):
    """Search deployments of MODEL on --gpus GPUs of --system: parallel plans (TP, PP, EP, attention DP),
    concurrency, quantization and KV dtype for agg; prefill and decode pools (plans, batch, x:y workers) for
    disagg. Every candidate must fit in memory. Prints the best configuration per mode and overall (most
    tokens/s per GPU that meets --ttft and --tpot) and the Pareto fronts of tokens/s per GPU against tokens/s per
    user. --speculative mtp prices agg candidates with the model's own MTP layers (disagg is then not searched)."""
    from costmodel.planner import plan_deployment
    from graph.match import match_model
    from graph.model_graph import trace_model

    spec = _speculation(speculative, draft_tokens, acceptance)
    if plot_path:
        from plot import check_path
        check_path(plot_path)
    if save_dir:
        _check_save_dir(save_dir, force)
    mg = trace_model(model, trust_remote_code=trust_remote_code, use_cache=not no_cache,
                     progress=_progress(quiet or as_json))
    tick, close = _progress_bar(quiet, "plan")
    try:
        report, candidates = plan_deployment(
            mg, match_model(mg), system=system, gpus=gpus, isl=isl, osl=osl, ttft_ms=ttft, tpot_ms=tpot,
            modes=("agg", "disagg") if mode == "both" else (mode,), backend=backend, version=backend_version,
            quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs, max_tokens_per_step=max_tokens_per_step,
            progress=tick, speculation=spec)
    finally:
        close()
    chosen = report["best"]["overall"] or (report["closest"] or [None])[0]
    if plot_path:
        from plot import plot_plan
        plot_plan(report, plot_path)
    if save_dir:
        from launch import launch_files
        from costmodel.systems import load_system

        files = launch_files(report, chosen, candidates, model, load_system(system).gpus_per_node)
        for name, text in files.items():
            path = os.path.join(save_dir, name)
            with open(path, "w") as f:
                f.write(text)
            if name.endswith(".sh"):
                os.chmod(path, 0o755)
        report["saved"] = sorted(files)
    click.echo(json.dumps(report, indent=1) if as_json else render.format_plan(report))
    if not quiet and not as_json:
        if plot_path:
            click.echo(f"\nfronts drawn to {plot_path}")
        if save_dir:
            click.echo(f"launch files of the {'best' if report['sla_met'] else 'closest'} configuration written to "
                       f"{save_dir}: {', '.join(report['saved'])}")
    if not report["sla_met"]:
        c = report["closest"][0]
        over = ", ".join(f"{k.upper()} by {100 * v:.0f}%" for k, v in c["miss"].items() if v > 0)
        click.echo(f"tracecost: nothing meets the SLA; the closest misses {over}", err=True)
        if strict:
            raise SystemExit(3)


def _check_save_dir(path: str, force: bool) -> None:
    from pathlib import Path

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"--save {path}: not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise UserError(f"--save {path}: directory is not empty; pass --force to overwrite its files")
    target.mkdir(parents=True, exist_ok=True)


@cli.command()
@click.option("--ops", help="Collectors to run, comma-separated: gemm, attention, moe, conv1d, scan, memory, nccl, "
                            "aten (default: every built-in grid, or only the cases of --cases).")
@click.option("--cases", "cases_file", type=click.Path(exists=True, dir_okay=False),
              help="Collector cases written by `tracecost trace --collector-cases FILE`.")
@click.option("--system", default="h100_sxm", show_default=True, help="System the tables are filed under.")
@click.option("--device", default="cuda", show_default=True, help="cuda, cuda:N or cpu.")
@click.option("--dry-run", is_flag=True, help="Tiny cases, same code path (with --device cpu: what CI runs).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Write tables here (then price with `--data-dir`); default systems/data of this checkout.")
@click.option("--resume", is_flag=True, help="Skip rows already measured in the output tables.")
@_json("the run summary as JSON")
@_options(_QUIET)
def collect(ops, cases_file, system, device, dry_run, out_dir, resume, as_json, quiet):
    """Measure kernels on this machine's GPU and write them as tables in the database's schema
    (systems/data/<system>/<op>/torch/<torch version>/). A failing case is recorded and the run goes on."""
    from collector.runner import format_summary, progress_bar, run_collect

    summary = run_collect(ops, system=system, device=device, dry_run=dry_run, cases_file=cases_file,
                          out_dir=out_dir, resume=resume, progress=None if as_json or quiet else progress_bar())
    click.echo(json.dumps(summary, indent=1, default=str) if as_json else format_summary(summary))


@cli.command()
@click.option("--kind", type=click.Choice(["bundled", "hf-cache", "model_type"]), help="Only this source.")
@_json("a JSON list (name, kind, model_type, origin)")
@_options(_QUIET)
def models(kind, as_json, quiet):
    """List the models available offline (any of them is a MODEL for the other commands): configs bundled with
    aiconfigurator-core, the Hugging Face cache, transformers' causal-LM model types."""
    from tracer.catalogue import list_offline

    rows = [r for r in list_offline() if kind is None or r["kind"] == kind]
    click.echo(json.dumps(rows, indent=1) if as_json else render.format_models(rows))
    if not quiet and not as_json:
        click.echo(f"{len(rows)} models", err=True)


@cli.command()
@click.argument("name", required=False)
@_options(_DATA_DIRS)
@_json("a JSON list")
@_options(_QUIET)
def systems(name, data_dirs, as_json, quiet):
    """List GPU systems: memory, bandwidth, dense bf16 FLOP/s, and which measured (op table, backend, version)
    exist for each; NAME for one system with its tables listed."""
    from costmodel.systems import list_systems, load_system, table_summary

    rows = []
    for n in [name] if name else list_systems():
        s = load_system(n)
        tables = table_summary(n, data_dirs)
        rows.append({"name": s.name, "gpu": s.gpu, "spec": s.label, "hbm_bytes": int(s.hbm_bytes),
                     "hbm_bandwidth_bytes_per_s": s.hbm_bandwidth_bytes_per_s,
                     "bf16_dense_flops_per_s": s.bf16_dense_flops_per_s, "gpus_per_node": s.gpus_per_node,
                     "tables": [{"table": t, "backend": b, "version": v} for t, b, v in tables]})
    click.echo(json.dumps(rows, indent=1) if as_json else render.format_systems(rows, tables=bool(name)))


def main(argv=None) -> int:
    """Console entry: one line on stderr and exit 2 for bad input, whatever part of the tool found it."""
    try:
        cli.main(args=argv, prog_name="tracecost", standalone_mode=False)
    except UserError as exc:
        if os.environ.get("TRACECOST_DEBUG") and exc.__cause__ is not None:  # where in the model's code it failed
            traceback.print_exception(exc.__cause__)
        click.echo(f"tracecost: error: {exc}", err=True)
        return 2
    except click.UsageError as exc:
        click.echo(f"tracecost: error: {exc.format_message()} (see --help)", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("tracecost: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # a bug of ours: say so in one line; the traceback on request
        if os.environ.get("TRACECOST_DEBUG"):
            raise
        click.echo(f"tracecost: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                   " (set TRACECOST_DEBUG=1 for the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
