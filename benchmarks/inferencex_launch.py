"""How the InferenceX CI launched each engine for the rows of silicon_sample.csv it measured, read from its
repository's history at each row's date into data files (each entry names the script or config and commit):
- benchmarks/inferencex_launch_*.yaml (agg rows): the launch settings its scripts set over the engines' defaults
  (a bigger token budget, a CUDA-graph max batch, TensorRT-LLM's batch waiting and attention-DP balancing, SGLang's
  receive interval, an FP8 KV cache), the layout the script ran where the csv's columns say another (the exports
  multiply or drop EP and attention DP), and speculative decoding where it ran; likewise
  benchmarks/aic_gap_launch.yaml for aiconfigurator's own gap-analysis sweeps, launched by its generator (each file
  names the source_kind of the rows it covers);
- benchmarks/inferencex_disagg_layouts.yaml (disagg rows whose csv gives no worker counts): the prefill and decode
  workers, their layouts and batches, from the master config.
A row's first matching entry applies. Settings beyond tracecost's EngineSettings are recorded, not priced;
speculative decoding is named (`unpriced`) so the accuracy benchmark holds such rows apart by a written rule.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from functools import lru_cache
from pathlib import Path

import yaml

from costmodel.overheads import EngineSettings, load_overheads
from costmodel.serving import prompts_per_step
from silicon_rows import Layout, stated_concurrency

_HERE = Path(__file__).parent
FILES = [*sorted(_HERE.glob("inferencex_launch_*.yaml")), _HERE / "aic_gap_launch.yaml"]
PRICED = ("max_tokens_per_step", "max_num_seqs", "cuda_graph_max_batch", "batch_wait_steps", "batch_wait_token_ratio",
          "recv_interval_steps", "attention_dp_wait_steps", "mxfp4_moe_activation", "moe_kernels", "mixed_prefill")
NAMED = ("mxfp4_moe_activation", "moe_kernels", "mixed_prefill")   # settings given by value, not computed
_MEASURED = re.compile(r"measured=(\d{4}-\d{2}-\d{2})")
_MTP = re.compile(r"mtp (\d+)")   # an exact draft-token count ("mtp 3"; not "mtp 3 or none")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.GtE: operator.ge, ast.Gt: operator.gt, ast.LtE: operator.le, ast.Lt: operator.lt, ast.Eq: operator.eq}
_CALLS = {"min": min, "max": max}


def evaluate(expr, names: dict) -> int | float:
    """A setting: a number, or an expression of the script's variables (conc, isl, osl, tp, ep, dp) with + - * //,
    comparisons, min(), max() and `a if cond else b`."""
    if isinstance(expr, (int, float)):
        return expr

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _OPS:
            return _OPS[type(node.ops[0])](ev(node.left), ev(node.comparators[0]))
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            return _CALLS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"not a launch-setting expression: {ast.dump(node)[:80]}")

    return ev(ast.parse(str(expr), mode="eval"))


@lru_cache(maxsize=None)
def entries() -> tuple:
    out = []
    for path in FILES:
        data = yaml.safe_load(path.read_text())
        out += [dict(e, file=path.name, columns=data["layout_columns"], source_kind=data["source_kind"])
                for e in data["entries"]]
    return tuple(out)


def _is(value, wanted) -> bool:
    return value in wanted if isinstance(wanted, list) else value == wanted


def _measured(row: dict) -> str | None:
    m = _MEASURED.search(row.get("silicon_data_source", ""))
    return m.group(1) if m else None


def _matches(entry: dict, fields: dict, measured: str | None) -> bool:
    """Whether every match key of `entry` holds for a row's `fields`; `measured` [from, to) on the row's date (an
    entry with a date window never matches an undated row)."""
    match = dict(entry["match"])
    window = match.pop("measured", None)
    if window and not (measured and str(window[0]) <= measured < str(window[1])):
        return False
    return all(_is(fields[k], v) for k, v in match.items())


def _column(row: dict, name: str) -> int:
    """A layout column of the csv as an integer (0 where empty)."""
    return int(float(row[name])) if row.get(name) else 0


def _ran(gpus: int, ep: int, attention_dp: bool, batch: int, workers: int = 1, pp: int = 1) -> Layout:
    """An engine of `gpus` GPUs as a script launched it: attention DP puts one rank per GPU, else one TP group over
    them all; the experts over `ep` of them."""
    dp = gpus if attention_dp else 1
    return Layout(tp=gpus // dp, pp=pp, ep=ep, dp=dp, moe_tp=gpus // ep, batch=batch, workers=workers)


def _fields(row: dict, m, columns: str) -> dict:
    """What an entry's match keys and expressions read of row `row` (mapped as `m`): its tp, ep and attention DP as
    the csv writes them (columns "csv") or as silicon_rows.map_row reads them ("mapped"), as the file says."""
    lay = m.layouts["agg"]
    if columns == "csv":
        tp, ep, dp = (_column(row, c) for c in ("tp_size", "moe_ep_size", "attention_dp_size"))
    else:
        tp, ep, dp = lay.tp, lay.ep, lay.dp
    return {"backend": m.backend, "version": m.backend_version, "system": m.system, "model_path": m.model_path,
            "gemm_quant": row["gemm_quant_mode"], "isl": m.isl, "osl": m.osl, "tp": tp, "ep": ep,
            "attention_dp": dp > 1, "conc": m.concurrency}


def launch(row: dict, m) -> dict | None:
    """The first entry matching agg row `row` (a silicon_sample.csv dict, mapped by silicon_rows.map_row as `m`):
    {"engine": EngineSettings, "kv_dtype": str | None, "source": str, "unpriced": [what the run had that the
    estimate leaves out], "layout": the Layout the script ran or None, "draft_tokens": MTP draft tokens or 0}, or
    None where no entry matches."""
    measured = _measured(row)
    for e in entries():
        if e["source_kind"] == m.source_kind and _matches(e, _fields(row, m, e["columns"]), measured):
            lay = m.layouts["agg"]
            names = {"conc": m.concurrency, "isl": m.isl, "osl": m.osl, "tp": lay.tp, "ep": lay.ep, "dp": lay.dp}
            s = {k: v for k, v in e["settings"].items() if v is not None}
            if not s.get("attention_dp_balance"):   # the DP timeout holds prompts only with balancing on
                s.pop("attention_dp_wait_steps", None)
            engine = EngineSettings(**{k: s[k] if k in NAMED else evaluate(s[k], names) for k in PRICED if k in s})
            unpriced = [f"speculative decoding ({s['speculative']})"] if s.get("speculative") else []
            mtp = _MTP.fullmatch(str(s.get("speculative", "")))
            return {"engine": engine, "kv_dtype": s.get("kv_cache_dtype"), "source": f"{e['file']}: {e['source']}",
                    "unpriced": unpriced, "layout": _launched_layout(s, lay, m.concurrency, names),
                    "draft_tokens": int(mtp.group(1)) if mtp else 0}
    return None


def _launched_layout(settings: dict, lay: Layout, concurrency: int, names: dict) -> Layout | None:
    """The layout the script ran where its entry says (launched_gpus, launched_ep, launched_attention_dp; each
    defaults to the row's own), or None when it is the row's; the concurrency is split over the DP ranks."""
    if not any(f"launched_{k}" in settings for k in ("gpus", "ep", "attention_dp")):
        return None
    gpus = evaluate(settings.get("launched_gpus", lay.tp * lay.dp), names)
    attention_dp = bool(evaluate(settings.get("launched_attention_dp", lay.dp > 1), names))
    ran = _ran(gpus, evaluate(settings.get("launched_ep", lay.ep), names), attention_dp,
               math.ceil(concurrency / (gpus if attention_dp else 1)), lay.workers, lay.pp)
    return None if ran == lay else ran


DISAGG_FILE = Path(__file__).with_name("inferencex_disagg_layouts.yaml")


@lru_cache(maxsize=None)
def disagg_entries() -> tuple:
    return tuple(yaml.safe_load(DISAGG_FILE.read_text())["entries"]) if DISAGG_FILE.exists() else ()


def _worker(layout: dict, phase: str, batch: int, workers: int) -> Layout:
    return _ran(layout[f"{phase}_tp"], layout[f"{phase}_ep"], layout[f"{phase}_attention_dp"], batch, workers)


def prefill_cap(m, budget: int | None = None) -> int:
    """The most prompts of row `m`'s mean length that one prefill step takes where the run's config caps none: those
    that fit its token budget (`budget`, else the engine's default)."""
    return prompts_per_step(budget or load_overheads(m.backend, None, m.system).max_tokens_per_step, m.isl_used)


def disagg_launch(row: dict, m) -> dict | None:
    """The workers of a disagg row whose csv gives none (inferencex_disagg_layouts.yaml, read off the master config
    at the row's date): {"layouts": {"prefill": Layout, "decode": Layout}, "concurrency", "engine", "source",
    "unpriced"}, or None where no entry matches. A prefill worker's batch is capped where the config sets its
    most prompts (PREFILL_MAX_BATCH_SIZE), else by its token budget (the prompts of mean length that fit it); a
    decode rank's at the recipe's max batch (the engine's max_num_seqs) where the entry gives it."""
    conc = stated_concurrency(row)
    measured = _measured(row)
    if not conc:
        return None
    fields = {"system": m.system, "backend": m.backend, "model_path": m.model_path,
              "gemm_quant": row["gemm_quant_mode"], "isl": m.isl, "osl": m.osl, "conc": conc,
              **{f"{p}_{k}": _column(row, f"{p}_{c}") for p in ("prefill", "decode")
                 for k, c in (("tp", "tp_size"), ("ep", "moe_ep_size"))}}
    for e in disagg_entries():
        if _matches(e, fields, measured):
            lay, s = e["layout"], e.get("settings") or {}
            names = {"conc": conc, "isl": m.isl, "osl": m.osl}
            x, y = int(lay["prefill_workers"]), int(lay["decode_workers"])
            budget = s.get("max_tokens_per_step")
            cap = (int(evaluate(lay["prefill_batch"], names)) if "prefill_max_batch" in s
                   else prefill_cap(m, int(evaluate(budget, names)) if budget else None))
            layouts = {"prefill": _worker(lay, "prefill", cap, x),
                       "decode": _worker(lay, "decode", int(evaluate(lay["decode_batch"], names)), y)}
            spec = s.get("speculative") or ""
            decode_cap = s.get("decode_max_batch")   # the decode ranks' max batch: the pool's slots
            engine = EngineSettings(max_tokens_per_step=int(evaluate(budget, names)) if budget else None,
                                    max_num_seqs=int(evaluate(decode_cap, names)) if decode_cap else None)
            return {"layouts": layouts, "concurrency": conc, "source": f"{DISAGG_FILE.name}: {e['source']}",
                    "engine": engine if budget or decode_cap else None,
                    "unpriced": [f"speculative decoding ({spec})"] if spec else []}
    return None
