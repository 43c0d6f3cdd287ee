"""What the command line prints: every table and text report of tracecost, each built from the JSON-ready dict the
same command prints with --json. Pure functions from dicts to text; cli.py echoes them."""
from __future__ import annotations


def human(value: float, unit: str) -> str:
    """A count in decimal prefixes: 1.23 T<unit>."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


# trace ---------------------------------------------------------------------------------------------------------------


def format_summary(name: str, s: dict) -> str:
    """The answer first: parameters, KV cache per token and per sequence, and the latency on one system."""
    kv, lat = s["kv"], s["latency"]
    fixed = f" + {_size(kv['fixed_bytes_per_sequence'])} fixed per sequence" if kv["fixed_bytes_per_sequence"] else ""
    lines = [f"model       {name}: {s['parameters']:,} parameters ({human(s['weight_bytes'], 'B')} of weights in "
             f"{s['dtype']})",
             f"KV cache    {kv['dtype']}: {kv['bytes_per_token']:,} B per token "
             f"({_size(kv['bytes_per_token'])}){fixed}; {_size(kv['bytes_per_sequence'])} per sequence of ISL {kv['isl']} + OSL {kv['osl']} tokens",
             f"serving     {lat['system']} ({lat['gpu']}), backend {lat['backend'] or 'none (roofline)'}"
             f"{' ' + lat['backend_version'] if lat['backend_version'] else ''}, weights {lat['quant']}; "
             f"mode {lat['mode']}, "
             f"{lat['concurrency']} concurrent request{'s' if lat['concurrency'] != 1 else ''} (--batch)"]
    if "error" in lat:
        return "\n".join(lines + [f"latency     {lat['error']}"])
    p = lat["plan"]
    rule = "as given" if lat["plan_rule"] == "given" else f"{lat['plan_rule']}; --system and --tp to choose"
    lines += [f"            TP{p['tp']} PP{p['pp']} EP{p['ep']} DP{p['dp']} = {p['gpus']} GPU(s) ({rule}), "
              f"{_gib(lat['memory_per_gpu_bytes'])} per GPU",
              f"latency     TTFT {lat['ttft_ms']:.2f} ms, TPOT {lat['tpot_ms']:.3f} ms "
              f"({lat['tokens_per_s_per_user']:.1f} tokens/s per user, {lat['tokens_per_s_per_gpu']:.1f} per GPU)"]
    return "\n".join(lines)


def format_trace(mg, phases: dict) -> str:
    """The traced model and, per phase, its ATen ops and the cost ops they were matched to."""
    plan = " + ".join(f"{k['count']} x [{k['label']}]" for k in mg.plan)
    lines = [f"model       {mg.name} ({mg.model_type})", f"source      {mg.source_kind}: {mg.source_origin}"]
    if mg.note:
        lines.append(f"note        {mg.note}")
    lines += [f"layers      {mg.num_layers} = {plan}",
              f"parameters  {mg.param_count:,} ({human(mg.weight_bytes, 'B')} of weights in {mg.dtype})",
              f"traced      {'from the trace cache' if mg.from_cache else f'in {mg.trace_seconds:.1f} s'}"]
    for phase, data in phases.items():
        s = data["sizes"]
        head = (f"prefill: B={s['B']} sequences x S={s['S']} tokens" if phase == "prefill"
                else f"decode: one step, B={s['B']} sequences over L={s['L']} cached tokens")
        lines += ["", head, f"  {'op':<44}{'category':<12}{'count':>8}{'FLOPs':>14}{'bytes':>14}"]
        for r in data["ops"]:
            lines.append(f"  {r['op']:<44}{r['category']:<12}{r['count']:>8}{human(r['flops'], 'F'):>14}"
                         f"{human(r['bytes'], 'B'):>14}")
        t = data["total"]
        lines.append(f"  {'total':<44}{'':<12}{t['count']:>8}{human(t['flops'], 'F'):>14}{human(t['bytes'], 'B'):>14}")
        share = 100 * data["matched_flops_share"]
        lines += ["", f"  cost ops ({phase}; {share:.2f}% of FLOPs matched to a kernel pattern)",
                  f"  {'type':<12}{'count':>7}{'FLOPs':>14}{'bytes':>14}  shape"]
        for r in data["cost_ops"]:
            lines.append(f"  {r['type']:<12}{r['count']:>7}{human(r['flops'], 'F'):>14}{human(r['bytes'], 'B'):>14}"
                         f"  {r['shape']}")
    return "\n".join(lines)


def format_unsupported(rows: list[dict]) -> str:
    if not rows:
        return "unsupported: none (every op with FLOPs or real bytes was matched to a cost op)"
    lines = [f"unsupported ({len(rows)}): priced by roofline; `--collector-cases FILE` writes cases to measure them",
             f"  {'phase':<9}{'op':<34}{'count':>7}{'FLOPs %':>9}{'bytes %':>9}  module / input shapes"]
    for r in rows:
        shapes = " ".join("x".join(s) for s in r["shapes"])
        lines.append(f"  {r['phase']:<9}{r['op']:<34}{r['count']:>7}{100 * r['flops_share']:>8.2f}%"
                     f"{100 * r['bytes_share']:>8.2f}%  {r['module']}  {shapes}")
    return "\n".join(lines)


# estimate and sweep --------------------------------------------------------------------------------------------------


def _gib(x: float) -> str:
    return f"{x / 1024**3:.2f} GiB"


def format_estimate(r: dict, top: int = 12) -> str:
    p, i, m = r["plan"], r["inputs"], r["memory"]
    lines = [
        f"{r['model']} on {r['system']} ({r['gpu']}), backend {r['backend'] or 'none (roofline)'}"
        f"{' ' + r['backend_version'] if r['backend_version'] else ''}",
        f"plan TP{p['tp']} PP{p['pp']} EP{p['ep']} DP{p['dp']} = {p['gpus']} GPU(s); batch {i['batch']}, "
        f"ISL {i['isl']}, OSL {i['osl']}; weights {r['quant']['mode']} ({r['quant']['source']}), "
        f"KV {r['quant']['kv_dtype']}",
        *_format_serving(r),
        *_format_speculative(r.get("speculative")),
        "",
        f"  TTFT              {r['ttft_ms']:10.3f} ms",
        f"  TPOT              {r['tpot_ms']:10.3f} ms   " + (
            f"(mean over {len(r['decode_steps'])} context lengths "
            f"{r['decode_steps'][0]['L']:g}..{r['decode_steps'][-1]['L']:g})" if r.get("mode", "static") == "static"
            else "(mean gap between a request's tokens)"),
        f"  request latency   {r['request_latency_ms']:10.3f} ms",
        f"  tokens/s          {r['tokens_per_s']:10.1f}      per GPU {r['tokens_per_s_per_gpu']:.1f}, "
        f"per user {r['tokens_per_s_per_user']:.1f}",
        "",
        f"  memory per GPU    {_gib(m['total_bytes'])} of {_gib(m['hbm_bytes'])}: {m['verdict'].upper()} "
        f"(largest batch that fits: {m['max_batch']})",
        f"    weights {_gib(m['weights_bytes'])}, KV cache {_gib(m['kv_cache_bytes'])} "
        f"({m['kv_bytes_per_token'] / 1024:.1f} KiB/token), activations {_gib(m['activation_bytes'])}, "
        f"reserve {_gib(m['reserve_bytes'])}",
        *_format_expert_slots(m.get("expert_slots"), r["plan"]["ep"]),
    ]
    for phase in ("prefill", "decode"):
        b = r["breakdown"][phase]
        prov = ", ".join(f"{k} {v:.0%}" for k, v in b["by_provenance"].items() if v > 0)
        lines += ["", f"  {phase} ({b['total_ms']:.3f} ms at B={b['sizes']['B']} S={b['sizes']['S']} "
                      f"L={b['sizes']['L']}): {prov}"]
        lines.append("    by type: " + ", ".join(f"{k} {v['share']:.0%}" for k, v in b["by_type"].items()
                                                 if v["share"] >= 0.005))
        lines.append(f"    {'op':<44} {'count':>5} {'ms':>9} {'share':>6}  provenance")
        for row in b["ops"][:top]:
            name = f"{row['type']} {row['module']}"
            hidden = f"; {row['own_ms']:.3f} ms hidden beside the routed experts" if row["hidden"] else ""
            lines.append(f"    {name[:44]:<44} {row['count']:>5} {row['ms']:>9.3f} {row['share']:>6.1%}  "
                         f"{row['provenance']}{hidden}")
    if r.get("unsupported"):
        lines += ["", f"  unsupported (roofline): {', '.join(sorted({u['op'] for u in r['unsupported']}))}"]
    return "\n".join(lines)


def _format_speculative(spec: dict | None) -> list[str]:
    if not spec:
        return []
    return [f"speculative {spec['method']} ({spec['mtp_layers']} MTP layer(s) in the config): {spec['draft_tokens']} "
            f"draft token(s), acceptance {spec['acceptance']:g} ({spec['acceptance_source']})",
            f"  step {spec['step_ms']:.3f} ms = verify {spec['verify_ms']:.3f} ms + {spec['draft_tokens']} x draft "
            f"{spec['draft_ms']:.3f} ms, {spec['tokens_per_step']:.3f} tokens per step; TPOT without "
            f"{spec['tpot_without_ms']:.3f} ms"]


def _format_expert_slots(slots: dict | None, ep: int) -> list[str]:
    if not slots:
        return []
    return [f"    EP {ep} does not divide the {slots['experts']} experts: {slots['per_gpu']} expert slots per GPU, "
            f"{slots['per_gpu'] * ep} in all, {slots['redundant']} redundant copies (the engine's expert load "
            f"balancer must be on)"]


def _format_serving(r: dict) -> list[str]:
    """The mode and its assumptions, two or three lines under the estimate's header."""
    mode, s = r.get("mode"), r.get("serving") or {}
    if mode in (None, "static"):
        return ["mode static: one batch prefilled together, then decoded together; kernel time only"]
    ov = s["overheads"]
    share = (f", {ov['graph_kernel_scale']:g} of their kernels' summed timings" if mode == "agg" else
             f"; both pools' steps at {ov['disagg_kernel_scale']:g} of their kernels' summed timings, the decode "
             f"pool's with {ov['shipped_step_ms']:g} ms of host time")
    over = (f"overheads ({ov['backend']}): {ov['step_ms']:g} ms/step + {ov['per_sequence_ms']:g} ms/sequence, "
            f"+{ov['eager_step_ms']:g} ms without CUDA graph (graphs to batch {ov['cuda_graph_max_batch']}{share}); "
            f"first token sent {ov['request_ms']:g} ms + {ov['first_token_steps']:g} decode steps after its prefill, "
            f"prompts taken in at {ov['prompt_token_us']:g} us/token one after another (a prompt waits for "
            f"{s['ingest_prompts']:.2f} of them on average, its own included)")
    if mode == "agg":
        st = s["steps"]
        d = st["decode_only"]
        if "mixed" in st:
            m = st["mixed"]
            shares = (f"{m['count']:.1f} mixed ({m['decodes']:.1f} decodes + {m['chunk_tokens']:.0f} prefill tokens, "
                      f"{m['step_ms']:.3f} ms)")
        else:
            shares = f"{st['prefill_only']['count']:.1f} prefill-only ({st['prefill_only']['step_ms']:.3f} ms)"
        held = st.get("held_steps")
        rounds = (f"  {s['requests']} requests, every round sent at once and prefilled before any decodes (fixed "
                  f"lengths, prefill first: the clients stay in lockstep)" if st.get("lockstep") else
                  f"  {s['requests']} requests: the first {s['concurrency']} at once ({st['burst']['count']} steps of "
                  f"{st['burst']['step_ms']:.3f} ms, mean TTFT {st['burst']['ttft_ms']:.3f} ms), then steady")
        return [f"mode agg ({s['model']}): {s['concurrency']} clients, {s['running_per_rank']} running per rank, "
                f"{s['max_tokens_per_step']} tokens per step",
                f"  per cycle of {st['cycle_steps']:.1f} steps: {shares}, {d['count']:.1f} decode-only "
                f"({d['decodes']:.1f} decodes, {d['step_ms']:.3f} ms); queue {s['queue_ms']:.2f} ms"
                + (f"; new prompts held {held:.1f} steps (batch waiting)" if held else ""),
                rounds, f"  {over}"]
    pf, dc, kv = s["prefill"], s["decode"], s["kv_transfer"]
    return [f"mode disagg ({s['model']}): {s['concurrency']} clients on {s['gpus']} GPUs; bottleneck "
            f"{s['bottleneck']}",
            f"  prefill {pf['workers']} x TP{pf['plan']['tp']} batch {pf['batch']} ({pf['step_ms']:.3f} ms); decode "
            f"{dc['workers']} x TP{dc['plan']['tp']} batch {dc['batch_per_worker']} "
            f"({dc['running_per_worker']} running, {dc['step_ms']:.3f} ms/step, {dc['slots']} slots)",
            f"  KV transfer {kv['bytes_per_rank'] / 2**20:.1f} MiB per rank over {kv['link']} "
            f"({kv['ms']:.3f} ms), handoff {s['handoff_ms']:.2f} ms; queue {s['queue_ms']:.2f} ms steady, "
            f"{s['first_round_wait_ms']:.2f} ms in the first round of {s['requests']} requests",
            f"  {over}"]


def format_sweep(rows: list[dict]) -> str:
    lines = [f"{'mode':>6} {'tp':>3} {'batch':>6} {'isl':>6} {'osl':>6} {'ttft_ms':>10} {'tpot_ms':>9} "
             f"{'tok/s/gpu':>10} {'tok/s/user':>10} {'fits':>5}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r.get('mode', ''):>6} {r.get('tp', ''):>3} {r.get('batch', ''):>6} {r.get('isl', ''):>6} "
                         f"{r.get('osl', ''):>6}  {r['error']}")
            continue
        lines.append(f"{r['mode']:>6} {r['tp']:>3} {r['batch']:>6} {r['isl']:>6} {r['osl']:>6} {r['ttft_ms']:>10.2f} "
                     f"{r['tpot_ms']:>9.3f} {r['tokens_per_s_per_gpu']:>10.1f} {r['tokens_per_s_per_user']:>10.1f} "
                     f"{'yes' if r['fits'] else 'no':>5}")
    return "\n".join(lines)


# KV cache ------------------------------------------------------------------------------------------------------------

def _size(n) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,} B"


def format_kv_report(report: dict) -> str:
    header = ("kind", "type", "layers", "B/token/layer", "window", "B/token", "fixed B/seq", "B/token/layer/rank",
              "heads/rank", "stage layers", "page/layer/rank", "label")
    rows = []
    for r in report["layers"]:
        heads = "-" if r["kv_heads_per_rank"] is None else (
            f"{r['kv_heads_per_rank']}" + (f" (x{r['replication']})" if r["replication"] > 1 else ""))
        rows.append((str(r["kind"]), r["type"], str(r["layers"]), f"{r['bytes_per_token_per_layer']:,}",
                     f"{r['window']:,}" if r["window"] else "-", f"{r['bytes_per_token']:,}",
                     f"{r['fixed_bytes_per_sequence']:,}", f"{r['bytes_per_token_per_layer_per_rank']:,}", heads,
                     str(r["stage_layers"]), _size(r["page_bytes_per_layer_per_rank"]), r["label"]))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {2, 3, 4, 5, 6, 7, 8, 9, 10}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [f"KV cache of {report['model']} ({report['model_type']}): kv dtype {report['kv_dtype']} "
           f"({report['kv_dtype_source']}), tp {report['tp']}, pp {report['pp']}, page {report['page_size']} tokens",
           line(header), line(["-" * w for w in widths])]
    out += [line(row).rstrip() for row in rows]
    out.append("")
    out.append(f"whole model:  {report['kv_bytes_per_token']:,} B per token ({_size(report['kv_bytes_per_token'])})"
               f" + {report['fixed_bytes_per_sequence']:,} B fixed per sequence "
               f"({_size(report['fixed_bytes_per_sequence'])}, windows full, states)")
    pr = report["per_rank"]
    out.append(f"per rank:     {pr['kv_bytes_per_token']:,} B per token + {pr['fixed_bytes_per_sequence']:,} B fixed "
               f"per sequence; largest stage {pr['stage']} ({pr['stage_layers']} layers); one page of "
               f"{report['page_size']} tokens over its layers {pr['page_bytes']:,} B ({_size(pr['page_bytes'])})")
    if pr["layout"] != "exact" and report["pp"] > 1:
        out.append(f"              stage layout: {pr['layout']}")
    if report["sequence"]:
        s, t = report["sequence"], report["total"]
        out.append(f"sequence:     L = {report['seq_len']:,} ({report['seq_len_source']}): {_size(s['bytes'])}, "
                   f"per rank {_size(s['bytes_per_rank'])} (in pages {_size(s['paged_bytes_per_rank'])})")
        out.append(f"batch:        {t['batch']} x L: {_size(t['bytes'])}, per rank {_size(t['bytes_per_rank'])}")
    if report["fit"]:
        f = report["fit"]
        fits = "-" if f["sequences"] is None else f"{f['sequences']:,}"
        out.append(f"fit:          {fits} sequences of L per GPU in {_size(f['free_bytes'])} left of "
                   f"{_size(f['gpu_memory_bytes'])} after weights {_size(f['weight_bytes_per_gpu'])} "
                   f"({f['weight_source']}) and reserve {_size(f['reserve_bytes'])}")
    notes = [f"kind {r['kind']}: {r['note']}" for r in report["layers"] if r["note"]]
    out += [f"note: {n}" for n in notes]
    return "\n".join(out)


# listings ------------------------------------------------------------------------------------------------------------


def format_models(rows: list[dict]) -> str:
    return "\n".join(f"{r['kind']:<11} {r['name']:<60} {r.get('model_type') or ''}" for r in rows)


def format_systems(rows: list[dict], tables: bool) -> str:
    """One line per system; with `tables`, its measured tables below it."""
    lines = []
    for r in rows:
        backends = sorted({t["backend"] for t in r["tables"]})
        lines.append(f"{r['name']:<19} {r['gpu']:<34} {human(r['hbm_bytes'], 'B'):>10} HBM  "
                     f"{human(r['hbm_bandwidth_bytes_per_s'], 'B/s'):>12}  "
                     f"{human(r['bf16_dense_flops_per_s'], 'FLOP/s'):>14} bf16  "
                     f"{len(r['tables'])} tables ({', '.join(backends) or 'none: roofline only'})")
        if tables:
            lines.append(f"    spec: {r['spec']}")
            lines += [f"    {t['table']:<36} {t['backend']:<8} {t['version']}" for t in r["tables"]]
    return "\n".join(lines)


# plan ----------------------------------------------------------------------------------------------------------------


def _plan_label(p: dict) -> str:
    return f"TP{p['tp']} PP{p['pp']} EP{p['ep']} DP{p['dp']}"


def describe(cand: dict) -> str:
    """One line naming a planned candidate's configuration (costmodel.planner)."""
    quant = f"{cand['quant']}, KV {cand['kv_dtype']}"
    if cand["mode"] == "agg":
        return f"agg {_plan_label(cand['plan'])} x {cand['replicas']}, {cand['batch_per_rank']} per rank, {quant}"
    p, d = cand["prefill"], cand["decode"]
    return (f"disagg {p['workers']} x prefill {_plan_label(p)} (batch {p['batch']}) + {d['workers']} x decode "
            f"{_plan_label(d)} ({d['batch']} per rank) x {cand['replicas']}, {quant}")


def _sla_text(sla: dict) -> str:
    limits = [f"{k.upper()} <= {sla[k + '_ms']:g} ms" for k in ("ttft", "tpot") if sla.get(k + "_ms")]
    return " and ".join(limits) or "none"


def _plan_row(label: str, c: dict) -> str:
    return (f"  {label:<9}{c['tokens_per_s_per_gpu']:>10.1f}{c['tokens_per_s_per_user']:>11.1f}{c['ttft_ms']:>10.1f}"
            f"{c['tpot_ms']:>9.2f}{c['concurrency']:>7}  {describe(c)}")


_PLAN_HEAD = f"  {'':<9}{'tok/s/gpu':>10}{'tok/s/user':>11}{'TTFT ms':>10}{'TPOT ms':>9}{'conc':>7}  configuration"


def format_plan(r: dict) -> str:
    """The plan report: the search, the best configuration per mode and overall, each mode's Pareto front."""
    n = r["candidates"]
    lines = [f"{r['model']} on {r['gpus']} x {r['system']} ({r['gpu']}), backend {r['backend'] or 'none (roofline)'}"
             f"{' ' + r['backend_version'] if r['backend_version'] else ''}; ISL {r['isl']}, OSL {r['osl']}; "
             f"SLA {_sla_text(r['sla'])}",
             f"searched: quant {', '.join(r['searched']['quant'])}; KV {', '.join(r['searched']['kv_dtype'])}; "
             f"{n['total']} candidates evaluated ("
             + ", ".join(f"{m} {n[m]}" for m in r["modes"]) + f"), {n['meeting_sla']} meet the SLA"]
    spec = r.get("speculative")
    if spec:
        lines.append(f"speculative {spec['method']}: {spec['draft_tokens']} draft token(s) per step, acceptance "
                     f"{spec['acceptance']:g} ({spec['tokens_per_step']:.2f} tokens per step); agg only")
    lines.append("")
    if r["sla_met"]:
        lines += ["best at the SLA (most tokens/s per GPU)", _PLAN_HEAD]
        lines += [_plan_row(m, r["best"][m]) if r["best"][m] else
                  f"  {m:<9}{'nothing meets the SLA' if n[m] else 'no candidate fits the GPU budget'}"
                  for m in r["modes"]]
        lines.append(_plan_row("overall", r["best"]["overall"]))
    else:
        lines += [f"nothing meets the SLA ({_sla_text(r['sla'])}); the closest:", _PLAN_HEAD]
        for c in r["closest"]:
            over = ", ".join(f"{k.upper()} +{100 * v:.0f}%" for k, v in c["miss"].items() if v > 0)
            lines.append(_plan_row("", c) + f"  (misses: {over})")
    for m in r["modes"]:
        front = r["fronts"][m]
        lines += ["", f"Pareto front ({m}): tokens/s/GPU against tokens/s/user"
                      + (f", TTFT <= {r['sla']['ttft_ms']:g} ms" if r["sla"].get("ttft_ms") else "")
                      + ("" if front else ": no candidate")]
        if front:
            chosen = r["best"][m]
            lines.append(_PLAN_HEAD)
            lines += [_plan_row("  *" if c is chosen or c == chosen else "", c) for c in front]
    return "\n".join(lines)
