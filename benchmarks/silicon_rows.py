"""Rows of aiconfigurator-core's systems/silicon_sample.csv (real end-to-end runs) mapped onto what a tool prices.

Each row is one serving run at a fixed concurrency: agg (one engine; batch_size is the batch per attention-DP rank,
so concurrency = batch_size x attention_dp_size) or disagg (prefill and decode workers; prefill_/decode_batch_size
per DP rank of one worker, so concurrency = decode_batch_size x decode_num_workers x decode_attention_dp_size, which
every disagg row's source line confirms). `map_row` derives the model to trace, the quantization, the plans and
the request lengths, and names the written rule a row breaks, if any:

- layout: moe_tp x moe_ep != tp x attention_dp (the experts would not cover the GPUs of one stage, a layout a
  tracecost Plan cannot mean). Priced anyway with moe_tp = tp x dp / ep, so the figures can be shown with these
  rows too. An attention-DP or MoE size left empty or 0 means none (1); moe_tp = moe_ep = 1 is what the rows of
  dense models carry whatever their tp, so it is not read as a layout.
- layout: an agg row whose tp x attention_dp is its engine's GPUs times EP (rows at tp 64, or attention DP 64, on
  8-GPU nodes): the export multiplied the attention size by EP. Told by the id's own label tpN_epM (tp x dp = N x M),
  or without a label by tp x dp = moe_tp x moe_ep (both above 1) exceeding one node of the row's system. Priced at
  tp x dp / EP GPUs (the larger of tp and attention_dp divided by EP), the batch per rank as given.
- no layout: no tp, batch size or (disagg) worker count, or an EP that does not divide tp x attention_dp. Neither
  tool can price such a row (most disagg rows of the InferenceX exports give the total concurrency and the two
  layouts, but no worker counts or batch sizes).
- quant: a (GEMM, MoE) quant pair that is no tracecost quant mode (e.g. fp8 GEMMs with fp8_block experts). Priced
  anyway at the GEMM's mode. nvfp4 on a GPU without FP4 tensor cores (the gpt-oss rows on Hopper; the checkpoint
  is mxfp4): tracecost prices the config's own quantization (accuracy_silicon.without_fp4), aiconfigurator the
  row's labels. nvfp4 rows are priced with an FP8 KV cache, as the NVFP4 checkpoints declare (KV_DTYPE_OF_QUANT).
- duplicate: a row with another's mode, system, engine version, lengths, quantization and concurrency (as map_row
  reads them) and its TTFT and TPOT to 0.01 ms is the same run exported twice: an InferenceX DB dump beside its
  dated export or gap-analysis file, which may round the times, write the layout columns differently (the dump
  writes a prefill batch of 1 for every disagg run) or name DeepSeek-R1's runs DeepSeek-V3. One copy stands for the
  run (mark_duplicates): one whose launch, read off the run's own script or config, says it speculated (the run
  then stays out), else the first a tool can price within the rules, one with its launch read before one without;
  the others carry the rule, so no run counts twice or sits on both sides of a split.

Lengths: the InferenceX CI (SemiAnalysis; its DB dumps carry a workflow_run_id, its dated exports
`source_file=YYYY-MM-DD.csv; model=...`, and the two *-gap-analysis.csv files hold the same three InferenceX shapes)
runs benchmark_serving with `--random-range-ratio 0.8`: each request's input and output lengths are drawn uniformly
from [0.8 L, L], so their means are 0.9 L. Those rows are priced at the mean lengths. The rows of NVIDIA's
aic-auto-gap-analysis sweeps (gtl_job_id) are priced at the labelled lengths, every request alike (a fixed-length
benchmark, costmodel.serving.Benchmark.fixed_lengths): aiconfigurator generates aiperf runs with synthetic prompts of
exactly ISL tokens and a fixed OSL for such sweeps, and the few rows whose source names their client match it.
"""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path

from core.dtypes import QUANT_MODES
from costmodel.serving import BENCHMARK_RANGE_RATIO   # InferenceX's --random-range-ratio

# A fine-tune or a re-quantised checkpoint has its base model's architecture; its quantization is the row's.
BASE_ARCHITECTURE = {
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "meta-llama/Llama-3.1-8B",
    "nvidia/Qwen3-32B-NVFP4": "Qwen/Qwen3-32B",
    "nvidia/DeepSeek-R1-NVFP4": "deepseek-ai/DeepSeek-R1",
    # the organisation's earlier name on the hub: the same checkpoint, published today as zai-org/GLM-5
    "zhipuai/GLM-5": "zai-org/GLM-5",
}
# The NVFP4 checkpoints these runs serve declare an FP8 KV cache: kv_cache_quant_algo FP8 in every nvidia/*-NVFP4
# hf_quant_config.json that aiconfigurator-core bundles (DeepSeek-V3.1/V3.2, GLM-5, Kimi-K2.6, MiniMax-M2.5, ...).
# The rows name the base model (BASE_ARCHITECTURE), whose config has no KV quantization, so the row's quant says it.
KV_DTYPE_OF_QUANT = {"nvfp4": "fp8"}
_LABEL_GPUS = re.compile(r"_tp(\d+)_ep\d+")   # an agg row id's own layout label, e.g. ..._c32_tp8_ep8_1
_DATED_EXPORT = re.compile(r"source_file=\d{4}-\d{2}-\d{2}\.csv")
_STATED_CONCURRENCY = re.compile(r"silicon_concurrency=(\d+)")


def silicon_csv() -> Path:
    """aiconfigurator-core's silicon_sample.csv (None-safe: the path may not exist)."""
    spec = find_spec("aiconfigurator_core")
    root = Path(spec.origin).parent if spec and spec.origin else Path("/nonexistent")
    return root / "systems" / "silicon_sample.csv"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def source_kind(source: str) -> str:
    """'inferencex' or 'aic-gap-analysis' (see the module docstring), else 'other'."""
    if "workflow_run_id=" in source or _DATED_EXPORT.match(source) or re.match(r"source_file=[\w.-]+-gap-analysis\.csv",
                                                                              source):
        return "inferencex"
    if "aic-auto-gap-analysis/" in source:
        return "aic-gap-analysis"
    return "other"


def stated_concurrency(row: dict) -> int | None:
    """The benchmark's concurrency as the row's source states it (silicon_concurrency=N), if it does."""
    m = _STATED_CONCURRENCY.search(row.get("silicon_data_source", ""))
    return int(m.group(1)) if m else None


def fixed_lengths(kind: str) -> bool:
    """Whether a source's benchmark sent every request at its labelled lengths (all but InferenceX's)."""
    return kind != "inferencex"


def mean_length(label: int, kind: str) -> int:
    """The mean request length of a row labelled `label` tokens: (0.8 L + L) / 2 for InferenceX rows."""
    if fixed_lengths(kind):
        return label
    return round(label * (1 + BENCHMARK_RANGE_RATIO) / 2)


@dataclass(frozen=True)
class Layout:
    """One engine's layout as a tracecost Plan reads it (tp, pp, ep, dp) and its batch per DP rank."""
    tp: int
    pp: int
    ep: int
    dp: int
    moe_tp: int
    batch: int
    workers: int = 1


@dataclass
class MappedRow:
    id: str
    mode: str               # agg | disagg
    system: str
    backend: str
    backend_version: str    # the measured engine's version ("" when the row has none)
    model_path: str         # as the row names it
    model: str              # what tracecost resolves and aiconfigurator reads (BASE_ARCHITECTURE applied)
    source_kind: str
    isl: int                # labelled
    osl: int
    isl_used: int           # priced (mean lengths for InferenceX rows)
    osl_used: int
    fixed_lengths: bool     # every request at the labelled lengths (else drawn around isl_used, osl_used)
    gemm_quant: str         # the row's (bfloat16 where it names none)
    moe_quant: str
    quant: str              # tracecost quant mode
    kv_dtype: str | None    # the KV-cache dtype to price with (None: the config's own)
    concurrency: int
    layouts: dict = field(default_factory=dict)  # "agg" or "prefill"/"decode" -> Layout
    rule: str = ""          # the written rule the row breaks, priced anyway ("" if none)
    no_layout: str = ""     # why no tool can price the row ("" if one can)
    ttft_ms: float = math.nan
    tpot_ms: float = math.nan
    engine: object = None   # the launch settings an agg run's engine ran with (costmodel EngineSettings), if known
    launch: str = ""        # where they were read (inferencex_launch.py)
    draft_tokens: int = 0   # MTP draft tokens the run speculated with, where its launch says exactly (0: none)

    def add_rule(self, *rules: str) -> None:
        """Adds written rules the row breaks to those it already breaks."""
        self.rule = "; ".join(filter(None, [self.rule, *rules]))


def _int(value: str) -> int | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if f == int(f) and f > 0 else None


def _multiplied_by_ep(row: dict, gpus: int, ep: int, moe_tp: int | None) -> bool:
    """An agg row whose tp x attention_dp is its engine's GPU count times EP: its id labels it tpN_epM with
    gpus = N x M, or (no label) gpus = moe_tp x moe_ep with both above 1 and more GPUs than one node of its system."""
    label = _LABEL_GPUS.search(row.get("id", ""))
    if label:
        return gpus > int(label.group(1)) and gpus == int(label.group(1)) * ep
    from costmodel.systems import load_system
    return bool(moe_tp) and moe_tp > 1 and moe_tp * ep == gpus and gpus > load_system(row["system"]).gpus_per_node


def _layout(row: dict, prefix: str, batch_col: str, rules: list) -> Layout | None:
    """The layout of one engine (prefix "" for agg, "prefill_"/"decode_" for disagg). An attention-DP or MoE size
    left empty or 0 means none (1): dense models carry moe sizes of 0."""
    tp, batch = _int(row.get(f"{prefix}tp_size", "")), _int(row.get(batch_col, ""))
    workers = _int(row.get(f"{prefix}num_workers", "")) if prefix else 1
    missing = [name for name, v in (("tp", tp), ("batch", batch), ("num_workers", workers)) if v is None]
    if missing:
        rules.append(f"no layout: {prefix}{'/'.join(missing)} missing")
        return None
    pp, dp = _int(row.get(f"{prefix}pp_size", "")) or 1, _int(row.get(f"{prefix}attention_dp_size", "")) or 1
    ep, moe_tp = _int(row.get(f"{prefix}moe_ep_size", "")) or 1, _int(row.get(f"{prefix}moe_tp_size", ""))
    multiplied = not prefix and ep > 1 and _multiplied_by_ep(row, tp * dp, ep, moe_tp)
    if multiplied:
        # the attention size is the engine's GPUs times EP: an export that multiplied it (tp 64 on one 8-GPU node)
        tp, dp = (tp, dp // ep) if dp > 1 else (tp // ep, dp)
        rules.append(f"layout: tp x attention_dp {tp * dp * ep} is the engine's GPUs times moe_ep {ep}; "
                     f"priced at {tp * dp} GPUs")
    if (tp * dp) % ep:
        rules.append(f"no layout: {prefix}moe_ep {ep} does not divide tp x attention_dp {tp * dp}")
        return None
    if moe_tp and moe_tp * ep != tp * dp and (moe_tp, ep) != (1, 1) and not multiplied:  # 1 x 1: the sizes a dense model's row carries
        rules.append(f"layout: {prefix}moe_tp x moe_ep {moe_tp * ep} != tp x attention_dp {tp * dp}")
    return Layout(tp, pp, ep, dp, tp * dp // ep, batch, workers)


def _quant(gemm: str, moe: str, rules: list) -> str:
    for name, mode in QUANT_MODES.items():
        if (mode.gemm, mode.moe) == (gemm, moe):
            return name
    rules.append(f"quant: ({gemm} GEMMs, {moe} MoE) is no tracecost mode; priced at the GEMMs'")
    return next(name for name, mode in QUANT_MODES.items() if mode.gemm == gemm)


DUPLICATE_RULE = "duplicate: the same run as "   # + the id of the copy that stands for the run
LAUNCH_RULE = "launch: "   # + what the run's own launch ran that is not priced (speculative decoding)


def _run(m: MappedRow) -> tuple:
    """What a row says its run was and what it measured to 0.01 ms (one copy may be rounded to it). Not its layout:
    the exports write the layout columns differently (the DB dump gives every disagg run a prefill batch of 1)."""
    return (m.mode, m.system, m.backend, m.backend_version, m.isl, m.osl, m.gemm_quant, m.moe_quant, m.concurrency,
            round(m.ttft_ms, 2), round(m.tpot_ms, 2))


def mark_duplicates(mapped: list[MappedRow]) -> int:
    """The duplicate rule (module docstring), in the rows' order: of each set of copies one stands for the run, the
    others carry the rule. Where a copy's launch (read off the script or config the run ran) says the run did what
    is not priced, that copy, so the run stays out; else the first that a tool can price within the other rules,
    one whose launch was read before one without; else the first. Returns how many rows it marked."""
    copies: dict[tuple, list[MappedRow]] = {}
    for m in mapped:
        copies.setdefault(_run(m), []).append(m)
    marked = 0
    for rows in copies.values():
        if len(rows) < 2:
            continue
        priceable = [m for m in rows if not m.rule and not m.no_layout]
        kept = next((m for m in rows if LAUNCH_RULE in m.rule and not m.no_layout),
                    next((m for m in priceable if m.launch), priceable[0] if priceable else rows[0]))
        for m in rows:
            if m is not kept:
                m.add_rule(DUPLICATE_RULE + kept.id)
                marked += 1
    return marked


def map_row(row: dict) -> MappedRow:
    rules: list[str] = []
    kind = source_kind(row["silicon_data_source"])
    isl, osl = int(row["isl"]), int(row["osl"])
    gemm = row["gemm_quant_mode"] or "bfloat16"
    moe = row["moe_quant_mode"] or gemm
    quant = _quant(gemm, moe, rules)
    mode = row["mode"]
    if mode == "agg":
        layouts = {"agg": _layout(row, "", "batch_size", rules)}
        lay = layouts["agg"]
        concurrency = lay.batch * lay.dp if lay else 0
        stated = stated_concurrency(row)
        if lay and stated and stated != concurrency:
            # the benchmark's concurrency as its source states it; some exports divide the batch column by the
            # (multiplied) attention size or by TP (74 agg rows): the batch per rank follows the stated figure
            concurrency = stated
            layouts["agg"] = replace(lay, batch=math.ceil(concurrency / lay.dp))
    else:
        layouts = {p: _layout(row, f"{p}_", f"{p}_batch_size", rules) for p in ("prefill", "decode")}
        lay = layouts["decode"]
        concurrency = lay.batch * lay.dp * lay.workers if lay else 0
    model = row["model_path"]
    return MappedRow(
        id=row["id"], mode=mode, system=row["system"], backend=row["backend"],
        backend_version=row["backend_version"], model_path=model, model=BASE_ARCHITECTURE.get(model, model),
        source_kind=kind, isl=isl, osl=osl, isl_used=mean_length(isl, kind), osl_used=mean_length(osl, kind),
        fixed_lengths=fixed_lengths(kind),
        gemm_quant=gemm, moe_quant=moe, quant=quant, kv_dtype=KV_DTYPE_OF_QUANT.get(quant), concurrency=concurrency,
        layouts={k: v for k, v in layouts.items() if v is not None},
        rule="; ".join(x for x in rules if not x.startswith("no layout")),
        no_layout="; ".join(x for x in rules if x.startswith("no layout")),
        ttft_ms=float(row["silicon_ttft_ms"]), tpot_ms=float(row["silicon_tpot_ms"]),
    )
