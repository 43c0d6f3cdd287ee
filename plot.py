"""Plots of planned deployments: Pareto fronts of tokens/s per GPU against tokens/s per user. matplotlib is the
optional extra `plot` (pip install 'tracecost[plot]'), imported here only when a plot is drawn."""
from __future__ import annotations

from pathlib import Path

from core.errors import UserError

FORMATS = (".png", ".svg")
STYLES = {"agg": ("o-", "tab:blue"), "disagg": ("s-", "tab:orange")}


def check_path(path: str) -> None:
    if Path(path).suffix.lower() not in FORMATS:
        raise UserError(f"--plot {path}: the file name must end in {' or '.join(FORMATS)}")
    if not Path(path).resolve().parent.is_dir():
        raise UserError(f"--plot {path}: directory {Path(path).parent} does not exist")


def plot_fronts(series: list[dict], path: str, *, title: str, tpot_ms: float | None = None) -> None:
    """Draw each series {label, points: [(tokens/s/user, tokens/s/GPU)], chosen: point or None, style, color} as a
    front with its chosen point starred, and the TPOT limit as the vertical line tokens/s/user = 1000 / TPOT."""
    check_path(path)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'tracecost[plot]'") from None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for s in series:
        if not s["points"]:
            continue
        xs, ys = zip(*s["points"])
        ax.plot(xs, ys, s.get("style", "o-"), color=s.get("color"), label=s["label"], markersize=4, linewidth=1.2)
        if s.get("chosen"):
            ax.plot(*s["chosen"], "*", color=s.get("color"), markersize=16, markeredgecolor="black",
                    label=f"{s['label']}: chosen")
    if tpot_ms:
        ax.axvline(1000.0 / tpot_ms, linestyle="--", color="grey", label=f"SLA: TPOT {tpot_ms:g} ms")
    ax.set_xlabel("tokens/s per user")
    ax.set_ylabel("tokens/s per GPU")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _point(c: dict) -> tuple[float, float]:
    return c["tokens_per_s_per_user"], c["tokens_per_s_per_gpu"]


def plan_series(report: dict, prefix: str = "") -> list[dict]:
    """The fronts of a plan report (costmodel.planner) as plot series, the best of each mode as its chosen point."""
    out = []
    for mode in report["modes"]:
        style, color = STYLES[mode]
        best = report["best"][mode]
        out.append({"label": f"{prefix}{mode}", "points": [_point(c) for c in report["fronts"][mode]],
                    "chosen": _point(best) if best else None, "style": style, "color": color})
    return out


def plot_plan(report: dict, path: str) -> None:
    title = (f"{report['model']} on {report['gpus']} x {report['system']} ({report['backend']}), "
             f"ISL {report['isl']} OSL {report['osl']}")
    plot_fronts(plan_series(report), path, title=title, tpot_ms=report["sla"]["tpot_ms"])
