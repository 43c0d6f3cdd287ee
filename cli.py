"""tracecost command line: parse, call, print. Bad input is one line on stderr and exit 2."""
from __future__ import annotations

import json
import os
import sys
import traceback

import click

from core.errors import UserError

TRACE_SCHEMA = "tracecost.trace/1"


def _progress(quiet: bool):
    if quiet:
        return lambda msg: None
    return lambda msg: click.echo(f"tracecost: {msg}...", err=True)


def _human(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _sizes_opts(fn):
    fn = click.option("--osl", type=click.IntRange(min=1), default=1024, show_default=True,
                      help="Output tokens per request (decode steps).")(fn)
    fn = click.option("--isl", type=click.IntRange(min=1), default=1024, show_default=True,
                      help="Input tokens per request (prefill length).")(fn)
    fn = click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
                      help="Concurrent requests (B).")(fn)
    return fn


def _serving_opts(default_system):
    """Options that choose the hardware, the kernels' backend, the parallel plan and the quantization."""
    def wrap(fn):
        opts = [
            click.option("--data-dir", "data_dirs", multiple=True, metavar="DIR",
                         help="Extra measured-table root, e.g. what `tracecost collect --out` wrote (repeatable)."),
            click.option("--kv-dtype", help="KV-cache dtype: bf16, fp16, fp8, int8, fp4 (default: the config's)."),
            click.option("--quant", help="Weight/activation quantization: bf16, fp8, fp8_block, nvfp4, mxfp4, "
                                         "int4_wo (default: the config's quantization_config)."),
            click.option("--dp", type=int, default=1, show_default=True, help="Attention data-parallel ranks."),
            click.option("--ep", type=int, default=1, show_default=True, help="Expert-parallel size."),
            click.option("--pp", type=int, default=1, show_default=True, help="Pipeline-parallel stages."),
            click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size."),
            click.option("--backend-version", help="Version of the backend's tables (default: newest)."),
            click.option("--backend", help="Kernel tables to price with: trtllm, vllm, sglang, torch "
                                           "(default: trtllm where measured)."),
            click.option("--system", default=default_system, show_default=bool(default_system),
                         help="GPU system (see `tracecost systems`)."),
        ]
        for opt in opts:
            fn = opt(fn)
        return fn
    return wrap


def _estimate(mg, matched, *, system, backend, backend_version, tp, pp, ep, dp, quant, kv_dtype, data_dirs, batch,
              isl, osl):
    from costmodel.estimate import estimate
    from costmodel.parallel import Plan

    return estimate(mg, system=system, backend=backend, version=backend_version, plan=Plan(tp=tp, pp=pp, ep=ep, dp=dp),
                    batch=batch, isl=isl, osl=osl, quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs,
                    matched=matched)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli():
    """tracecost: what an LLM costs to serve, read from the model's own transformers code.

    MODEL is a Hugging Face repo id (org/name), a local directory or config.json, or a bare model_type
    (e.g. llama). Configs are looked up offline first (local path, configs bundled with aiconfigurator-core,
    the Hugging Face cache); the hub is asked for config.json only, never weights.
    """


@cli.command()
@click.argument("model")
@_sizes_opts
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (schema tracecost.trace/1).")
@click.option("--graph", "graph_path", metavar="FILE", help="Write the op graphs (.graphml or .json).")
@click.option("--force", is_flag=True, help="Overwrite the --graph file if it exists.")
@click.option("--trust-remote-code", is_flag=True, help="Allow a config's own remote code to run.")
@click.option("--no-cache", is_flag=True, help="Trace again instead of reading the trace cache.")
@click.option("--no-fuse", is_flag=True, help="Show sibling GEMMs and memory-bound ops apart, as the model runs them.")
@click.option("--strict", is_flag=True, help="Exit 3 if any work is left unrecognised (the unsupported report).")
@click.option("--collector-cases", "cases_path", metavar="FILE",
              help="Write the unsupported ops as collector cases (JSON) for `tracecost collect --cases`.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
@_serving_opts(None)
def trace(model, batch, isl, osl, as_json, graph_path, force, trust_remote_code, no_cache, no_fuse, strict,
          cases_path, quiet, system, backend, backend_version, tp, pp, ep, dp, quant, kv_dtype, data_dirs):
    """Trace MODEL into its op graph; show per phase the ATen ops (count, FLOPs, bytes), the cost ops they were
    matched to (GEMM, attention, MLA, MoE, scan, memory-bound...), and every op no pattern recognised.

    The prefill row is B sequences of ISL tokens; the decode row is one step (one token per sequence) at the
    middle of generation, L = ISL + OSL/2 cached tokens. Counts include every layer of the full model.
    With --system, also the serving estimate (as `tracecost estimate`).
    """
    from graph.match import match_model
    from graph.model_graph import trace_model
    from graph.report import cost_op_rows, unsupported_rows
    from graph.summary import op_table, phase_sizes, totals

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
                        osl=osl)
    if cases_path:
        with open(cases_path, "w") as f:
            json.dump([row["case"] for row in unsupported], f, indent=1)
    if as_json:
        click.echo(json.dumps({
            "schema": TRACE_SCHEMA, "model": mg.name, "model_type": mg.model_type,
            "source": {"kind": mg.source_kind, "origin": mg.source_origin}, "note": mg.note, "dtype": mg.dtype,
            "num_layers": mg.num_layers, "layer_plan": mg.plan, "param_count": mg.param_count,
            "weight_bytes": mg.weight_bytes, "inputs": {"batch": batch, "isl": isl, "osl": osl},
            "phases": phases, "unsupported": unsupported, "estimate": est, "trace_seconds": mg.trace_seconds,
            "from_cache": mg.from_cache, "versions": mg.versions}, indent=1))
    else:
        from costmodel.estimate import format_estimate

        _print_trace(mg, phases)
        _print_unsupported(unsupported)
        if est:
            click.echo("\n" + format_estimate(est))
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


def _print_unsupported(rows):
    if not rows:
        click.echo("\nunsupported: none (every op with FLOPs or real bytes was matched to a cost op)")
        return
    click.echo(f"\nunsupported ({len(rows)}): priced by roofline; `--collector-cases FILE` writes cases to measure them")
    click.echo(f"  {'phase':<9}{'op':<34}{'count':>7}{'FLOPs %':>9}{'bytes %':>9}  module / input shapes")
    for r in rows:
        shapes = " ".join("x".join(s) for s in r["shapes"])
        click.echo(f"  {r['phase']:<9}{r['op']:<34}{r['count']:>7}{100 * r['flops_share']:>8.2f}%"
                   f"{100 * r['bytes_share']:>8.2f}%  {r['module']}  {shapes}")


def _print_trace(mg, phases):
    click.echo(f"model       {mg.name} ({mg.model_type})")
    click.echo(f"source      {mg.source_kind}: {mg.source_origin}")
    if mg.note:
        click.echo(f"note        {mg.note}")
    plan = " + ".join(f"{k['count']} x [{k['label']}]" for k in mg.plan)
    click.echo(f"layers      {mg.num_layers} = {plan}")
    click.echo(f"parameters  {mg.param_count:,} ({_human(mg.weight_bytes, 'B')} of weights in {mg.dtype})")
    traced = "from the trace cache" if mg.from_cache else f"in {mg.trace_seconds:.1f} s"
    click.echo(f"traced      {traced}")
    for phase, data in phases.items():
        s = data["sizes"]
        head = (f"prefill: B={s['B']} sequences x S={s['S']} tokens" if phase == "prefill"
                else f"decode: one step, B={s['B']} sequences over L={s['L']} cached tokens")
        click.echo(f"\n{head}")
        click.echo(f"  {'op':<44}{'category':<12}{'count':>8}{'FLOPs':>14}{'bytes':>14}")
        for r in data["ops"]:
            click.echo(f"  {r['op']:<44}{r['category']:<12}{r['count']:>8}{_human(r['flops'], 'F'):>14}"
                       f"{_human(r['bytes'], 'B'):>14}")
        t = data["total"]
        click.echo(f"  {'total':<44}{'':<12}{t['count']:>8}{_human(t['flops'], 'F'):>14}{_human(t['bytes'], 'B'):>14}")
        share = 100 * data["matched_flops_share"]
        click.echo(f"\n  cost ops ({phase}; {share:.2f}% of FLOPs matched to a kernel pattern)")
        click.echo(f"  {'type':<12}{'count':>7}{'FLOPs':>14}{'bytes':>14}  shape")
        for r in data["cost_ops"]:
            click.echo(f"  {r['type']:<12}{r['count']:>7}{_human(r['flops'], 'F'):>14}{_human(r['bytes'], 'B'):>14}"
                       f"  {r['shape']}")


@cli.command()
@click.argument("model")
@_sizes_opts
@_serving_opts("h200_sxm")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (schema tracecost.estimate/1).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a config's own remote code to run.")
def estimate(model, batch, isl, osl, system, backend, backend_version, tp, pp, ep, dp, quant, kv_dtype, data_dirs,
             as_json, trust_remote_code):
    """Serving estimate for MODEL: TTFT, TPOT, request latency, tokens/s per GPU and per user, memory per GPU
    (weights + KV cache + workspace + reserve) and whether it fits, with the time per cost op and where each
    price came from (measured exact / interpolated / extrapolated, or roofline)."""
    from costmodel.estimate import format_estimate
    from graph.match import match_model
    from graph.model_graph import trace_model

    mg = trace_model(model, trust_remote_code=trust_remote_code, progress=_progress(as_json))
    result = _estimate(mg, match_model(mg), system=system, backend=backend, backend_version=backend_version, tp=tp,
                       pp=pp, ep=ep, dp=dp, quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs, batch=batch,
                       isl=isl, osl=osl)
    click.echo(json.dumps(result, indent=1) if as_json else format_estimate(result))


@cli.command()
@click.argument("model")
@click.option("--tp", type=int, default=1, show_default=True, help="Tensor-parallel size (KV heads split or replicated).")
@click.option("--pp", type=int, default=1, show_default=True, help="Pipeline stages (layers split; the largest shown).")
@click.option("--kv-dtype", help="bf16, fp16, fp32, fp8, int8 or fp4 (default: the config's, else the model's dtype).")
@click.option("--page-size", type=int, default=16, show_default=True, help="Tokens per KV page.")
@click.option("--seq-len", type=int, help="Tokens per sequence (default: the config's max_position_embeddings).")
@click.option("--batch", type=int, default=1, show_default=True, help="Sequences, for the batch total.")
@click.option("--system", help="GPU system: also say how many sequences of --seq-len fit beside the weights.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (schema tracecost.kv/1).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a config's own remote code to run.")
def kv(model, tp, pp, kv_dtype, page_size, seq_len, batch, system, as_json, trust_remote_code):
    """KV-cache size of MODEL from its recognised attention and state ops: bytes per token that grow with the
    context, bytes per sequence that do not (sliding windows, Mamba / linear-attention states), per GPU under
    TP / PP, per page, and the totals for a sequence and a batch."""
    from costmodel.kv import format_kv_report, kv_report
    from graph.model_graph import trace_model

    mg = trace_model(model, trust_remote_code=trust_remote_code, progress=_progress(as_json))
    memory = {}
    if system:
        from costmodel.estimate import RUNTIME_RESERVE_BYTES
        from costmodel.systems import load_system

        memory = {"gpu_memory_bytes": int(load_system(system).hbm_bytes), "reserve_bytes": RUNTIME_RESERVE_BYTES}
    report = kv_report(mg, tp=tp, pp=pp, kv_dtype=kv_dtype, page_size=page_size, seq_len=seq_len, batch=batch,
                       **memory)
    click.echo(json.dumps(report, indent=1) if as_json else format_kv_report(report))


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
@click.option("--batch", "batches", default="1,8,32,128", show_default=True, help="Batch sizes, comma-separated.")
@click.option("--isl", "isls", default="1024,4096", show_default=True, help="Input lengths, comma-separated.")
@click.option("--osl", "osls", default="128,1024", show_default=True, help="Output lengths, comma-separated.")
@click.option("--tp", "tps", default="1,2,4,8", show_default=True, help="TP sizes, comma-separated.")
@click.option("--pp", type=int, default=1, show_default=True)
@click.option("--ep", type=int, default=1, show_default=True)
@click.option("--dp", type=int, default=1, show_default=True)
@click.option("--system", default="h200_sxm", show_default=True)
@click.option("--backend")
@click.option("--backend-version")
@click.option("--quant")
@click.option("--kv-dtype")
@click.option("--data-dir", "data_dirs", multiple=True, metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def sweep(model, batches, isls, osls, tps, pp, ep, dp, system, backend, backend_version, quant, kv_dtype, data_dirs,
          as_json):
    """Estimates over a grid of batch x ISL x OSL x TP from one trace: one row per point (CSV-like table or JSON).
    Points whose plan does not divide the model carry an error instead of figures."""
    from costmodel.estimate import sweep as run_sweep
    from graph.match import match_model
    from graph.model_graph import trace_model

    grid = {"batches": _int_list(batches, "--batch"), "isls": _int_list(isls, "--isl"),
            "osls": _int_list(osls, "--osl"), "tps": _int_list(tps, "--tp")}
    mg = trace_model(model, progress=_progress(as_json))
    rows = run_sweep(mg, **grid, pp=pp, ep=ep, dp=dp, system=system, backend=backend, version=backend_version,
                     quant=quant, kv_dtype=kv_dtype, data_dirs=data_dirs, matched=match_model(mg))
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(f"{'tp':>3} {'batch':>6} {'isl':>6} {'osl':>6} {'ttft_ms':>10} {'tpot_ms':>9} {'tok/s/gpu':>10} "
               f"{'tok/s/user':>10} {'fits':>5}")
    for r in rows:
        if "error" in r:
            click.echo(f"{r.get('tp', ''):>3} {r.get('batch', ''):>6} {'':>6} {'':>6}  {r['error']}")
            continue
        click.echo(f"{r['tp']:>3} {r['batch']:>6} {r['isl']:>6} {r['osl']:>6} {r['ttft_ms']:>10.2f} "
                   f"{r['tpot_ms']:>9.3f} {r['tokens_per_s_per_gpu']:>10.1f} {r['tokens_per_s_per_user']:>10.1f} "
                   f"{'yes' if r['fits'] else 'no':>5}")


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
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def collect(ops, cases_file, system, device, dry_run, out_dir, resume, as_json):
    """Measure kernels on this machine's GPU and write them as tables in the database's schema
    (systems/data/<system>/<op>/torch/<torch version>/). A failing case is recorded and the run goes on."""
    from collector.runner import format_summary, progress_bar, run_collect

    summary = run_collect(ops, system=system, device=device, dry_run=dry_run, cases_file=cases_file,
                          out_dir=out_dir, resume=resume, progress=None if as_json else progress_bar())
    click.echo(json.dumps(summary, indent=1, default=str) if as_json else format_summary(summary))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.option("--kind", type=click.Choice(["bundled", "hf-cache", "model_type"]), help="Only this source.")
def models(as_json, kind):
    """List the models available offline: bundled configs, the Hugging Face cache, transformers' model types."""
    from tracer.source import list_offline

    rows = [r for r in list_offline() if kind is None or r["kind"] == kind]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        click.echo(f"{r['kind']:<11} {r['name']:<60} {r.get('model_type') or ''}")
    click.echo(f"{len(rows)} models", err=True)


@cli.command()
@click.argument("name", required=False)
@click.option("--data-dir", "data_dirs", multiple=True, metavar="DIR", help="Extra measured-table root (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def systems(name, data_dirs, as_json):
    """List GPU systems (specs, and which measured (op table, backend, version) exist); NAME for one system."""
    from costmodel.systems import list_systems, load_system, table_summary

    names = [name] if name else list_systems()
    rows = []
    for n in names:
        s = load_system(n)
        tables = table_summary(n, data_dirs)
        rows.append({"name": s.name, "gpu": s.gpu, "spec": s.label, "hbm_bytes": int(s.hbm_bytes),
                     "hbm_bandwidth_bytes_per_s": s.hbm_bandwidth_bytes_per_s,
                     "bf16_dense_flops_per_s": s.bf16_dense_flops_per_s, "gpus_per_node": s.gpus_per_node,
                     "tables": [{"table": t, "backend": b, "version": v} for t, b, v in tables]})
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    for r in rows:
        backends = sorted({t["backend"] for t in r["tables"]})
        click.echo(f"{r['name']:<19} {r['gpu']:<34} {_human(r['hbm_bytes'], 'B'):>10} HBM  "
                   f"{_human(r['hbm_bandwidth_bytes_per_s'], 'B/s'):>12}  {_human(r['bf16_dense_flops_per_s'], 'FLOP/s'):>14} bf16  "
                   f"{len(r['tables'])} tables ({', '.join(backends) or 'none: roofline only'})")
        if name:
            click.echo(f"    spec: {r['spec']}")
            for t in r["tables"]:
                click.echo(f"    {t['table']:<36} {t['backend']:<8} {t['version']}")


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
