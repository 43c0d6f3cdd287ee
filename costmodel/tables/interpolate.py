"""Log-space interpolation over a table's nested, possibly ragged grid.

Linear in log space: log(latency) is interpolated against log(axis value). Axes are nested in the order a spec
lists them (outer first). At each axis the query is bracketed among the values that exist *in the current slice*
of the grid; an exact value descends into that slice alone, a value between two descends into both and mixes them
with weight t = (log x - log lo) / (log hi - log lo), i.e. latency = lo_lat * (hi_lat / lo_lat) ** t. On a full
grid this is exactly tensor-product multilinear interpolation (what scipy's RegularGridInterpolator computes on log
axes and log values); on ragged grids (the usual case) each slice brackets with its own values. Exact hits return
the stored latency unchanged (provenance "exact"); any mixing gives "interpolated".

Beyond the grid (on any axis, in any slice) the nearest edge value is used and the result keeps the measured
efficiency there: latency = cost(query) * measured(edge) / cost(edge), the edge point being the query with each
out-of-range axis clamped and cost the caller's roofline. Provenance "extrapolated".
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import numpy as np


def build_grid(axes: np.ndarray, latency: np.ndarray, file: np.ndarray):
    """Nested nodes (values, log values, children); leaves are (latency_ms, file index)."""
    ndim = axes.shape[1]
    # primary sort on axis 0 .. axis d-1, then the newest file, then the fastest row
    order = np.lexsort((latency, file, *(axes[:, j] for j in reversed(range(ndim)))))
    axes, latency, file = axes[order], latency[order], file[order]
    if len(axes) > 1:
        first = np.concatenate(([True], (axes[1:] != axes[:-1]).any(axis=1)))
        axes, latency, file = axes[first], latency[first], file[first]

    def node(lo: int, hi: int, level: int):
        if level == ndim:
            return (float(latency[lo]), int(file[lo]))
        column = axes[lo:hi, level]
        cuts = (np.flatnonzero(column[1:] != column[:-1]) + (lo + 1)).tolist()
        starts = [lo, *cuts]
        ends = [*cuts, hi]
        values = [float(axes[s, level]) for s in starts]
        return (values, [math.log(v) for v in values], [node(s, e, level + 1) for s, e in zip(starts, ends)])

    return node(0, len(axes), 0)


def evaluate(grid, point: tuple, cost: Callable[[tuple], float]):
    """Latency at point: exact, interpolated, or extrapolated with the edge's measured efficiency."""
    ndim = len(point)
    logs_q = [math.log(x) for x in point]
    edge = list(point)  # the query with out-of-range axes clamped, per branch
    used: set[int] = set()
    flags = 0
    cost_at_query = None

    def visit(node, level: int, clamped: bool) -> float:
        nonlocal flags, cost_at_query
        if level == ndim:
            latency, file = node
            used.add(file)
            if not clamped:
                return latency
            if cost_at_query is None:
                cost_at_query = cost(point)
            cost_at_edge = cost(tuple(edge))
            return latency * cost_at_query / cost_at_edge if cost_at_edge > 0 else latency
        values, logs, children = node
        x = point[level]
        i = bisect.bisect_left(values, x)
        n = len(values)
        if i < n and values[i] == x:
            return visit(children[i], level + 1, clamped)
        if i == 0 or i == n:
            e = 0 if i == 0 else n - 1
            flags |= 2
            edge[level] = values[e]
            result = visit(children[e], level + 1, True)
            edge[level] = x
            return result
        flags |= 1
        t = (logs_q[level] - logs[i - 1]) / (logs[i] - logs[i - 1])
        lo = visit(children[i - 1], level + 1, clamped)
        hi = visit(children[i], level + 1, clamped)
        return lo * (hi / lo) ** t

    value = visit(grid, 0, False)
    provenance = "extrapolated" if flags & 2 else "interpolated" if flags & 1 else "exact"
    return value, provenance, used
