"""Python loops over the new tokens: fold an unrolled recurrence back into one step that runs S times.

Some models' own code loops over the sequence in Python (a selective scan's slow path, RWKV's WKV, RG-LRU...).
Export cannot keep S symbolic through `range(S)`, so such a prefill is exported at a few fixed lengths (B stays
symbolic) and the graphs are folded here:

- Each graph is read as a sequence of tokens (op, module, layer kind) in execution order. A loop shows as a run of
  identical token blocks whose number of copies grows with S (copies = q*S + r, fitted over the traces and checked
  on all of them); a run whose copies do not change with S is ordinary code and stays as it is.
- What is left when every loop run keeps only its first copy (the skeleton) must be the same in every trace;
  otherwise the model branches on S and folding refuses.
- The kept copy is the loop body: its nodes get `steps` (e.g. "S") and the FLOPs and bytes of all their copies.
  Every shape, FLOP and byte count of the skeleton is fitted as a polynomial in S of degree <= 2 through the first
  three traces and checked on the fourth, so a folded expression is exact wherever it is checked, not guessed.

A decode step whose code fixes the cached length L (it reads the length as a Python number, or takes the whole
sequence at each step) is folded the same way, in L: traced at a few fixed L and fitted.
"""
from __future__ import annotations

import networkx as nx
import sympy

MAX_PERIOD = 512            # longest loop body looked for, in ATen ops
_S = sympy.Symbol("S")
_LOCALS = {"B": sympy.Symbol("B"), "S": _S, "L": sympy.Symbol("L")}


class FoldError(Exception):
    """The fixed-length traces do not fold into one graph (the model branches on S, or a size is not polynomial)."""


def fold_sequence_loops(graphs: dict[int, nx.DiGraph], symbol: str = "S") -> nx.DiGraph:
    """graphs: S -> prefill graph traced at that fixed S (at least four lengths). Returns one graph in B and S.
    symbol "L": graphs of the decode step at fixed cached lengths, folded into one graph in B and L."""
    lengths = sorted(graphs)
    if len(lengths) < 4:
        raise FoldError(f"folding needs traces at four lengths (fixed {symbol})")
    orders = {s: list(graphs[s].nodes) for s in lengths}  # build_graph adds nodes in execution order
    tokens = {s: [_token(graphs[s].nodes[n]) for n in orders[s]] for s in lengths}
    varying = _varying_tokens(tokens)
    parsed = {s: _parse(tokens[s], 0, len(tokens[s]), varying) for s in lengths}
    if len({_signature(parsed[s], tokens[s]) for s in lengths}) != 1:
        what = "sequence length" if symbol == "S" else "cached length"
        raise FoldError(f"the graphs at different fixed {symbol} differ beyond repeated loop bodies: "
                        f"the model branches on the {what}")
    walk = _Walk(lengths, orders, _LOCALS[symbol])
    walk.items([parsed[s] for s in lengths], [0] * len(lengths), None)
    return _folded_graph(graphs, lengths, walk)


def _token(a: dict) -> tuple:
    return a["op"], a["module"], a["layer_kind"]


def _varying_tokens(tokens: dict[int, list]) -> set:
    """Tokens whose number of occurrences changes with S: candidates for the first op of a loop body."""
    counts = [dict() for _ in tokens]
    for c, seq in zip(counts, tokens.values()):
        for t in seq:
            c[t] = c.get(t, 0) + 1
    every = set().union(*counts)
    return {t for t in every if len({c.get(t, 0) for c in counts}) > 1}


def _parse(seq: list, lo: int, hi: int, varying: set) -> list[tuple]:
    """seq[lo:hi] as items: ("tok", start) or ("run", start, period, copies, children), where a run is >= 2
    identical consecutive blocks starting at a varying token and children parse its first block (loops nest: an
    outer loop over heads around the loop over S). The period covering the most ops wins, the shorter on a tie."""
    out, i = [], lo
    while i < hi:
        best = None
        if seq[i] in varying:
            for k in range(1, min(MAX_PERIOD, (hi - i) // 2) + 1):
                if seq[i + k] != seq[i] or seq[i:i + k] != seq[i + k:i + 2 * k]:
                    continue
                copies = 2
                while i + (copies + 1) * k <= hi and seq[i + copies * k:i + (copies + 1) * k] == seq[i:i + k]:
                    copies += 1
                if best is None or copies * k > best[0] * best[1]:
                    best = (k, copies)
        if best:
            k, copies = best
            children = _parse(seq, i, i + k, varying) if k > 1 else [("tok", i)]
            out.append(("run", i, k, copies, children))
            i += k * copies
        else:
            out.append(("tok", i))
            i += 1
    return out


def _signature(items: list[tuple], seq: list) -> tuple:
    """The ops and their structure without the copy counts and positions: equal across traces when only loop
    counts differ."""
    return tuple(seq[it[1]] if it[0] == "tok" else ("run", _signature(it[4], seq)) for it in items)


class _Walk:
    """Walks the parsed traces side by side: keeps every node of code that does not grow with S and the first
    copy of each loop body, maps the other copies' nodes (in the first trace) to the kept ones, and gives kept
    body nodes their step count."""

    def __init__(self, lengths, orders, x: sympy.Symbol = _S):
        self.lengths, self.orders, self.x = lengths, orders, x
        self.kept = {s: [] for s in lengths}
        self.rep: dict[str, str] = {}
        self.steps: dict[str, str] = {}
        self.copies: dict[int, dict[str, list[str]]] = {s: {} for s in lengths}  # body node -> all its copies

    def items(self, per_trace: list[list], offsets: list[int], steps: str | None) -> None:
        for position in range(len(per_trace[0])):
            its = [items[position] for items in per_trace]
            if its[0][0] == "tok":
                self._keep([it[1] + off for it, off in zip(its, offsets)], steps)
                continue
            copies = [it[3] for it in its]
            loop = self._loop_steps(copies)
            starts = [it[1] + off for it, off in zip(its, offsets)]
            if loop is None:   # repeated code whose count does not change with S: every copy kept
                for c in range(copies[0]):
                    self.items([it[4] for it in its], [st - it[1] + c * it[2] for st, it in zip(starts, its)], steps)
                continue
            inner = loop if steps is None else f"({steps})*({loop})"
            self.items([it[4] for it in its], [st - it[1] for st, it in zip(starts, its)], inner)
            for s, start, it, count in zip(self.lengths, starts, its, copies):
                order, period = self.orders[s], it[2]
                for o, first in enumerate(order[start:start + period]):
                    group = [order[start + c * period + o] for c in range(count)]
                    self.copies[s][first] = group
                    if s == self.lengths[0]:
                        self.rep.update({n: first for n in group[1:]})

    def _keep(self, positions: list[int], steps: str | None) -> None:
        for s, p in zip(self.lengths, positions):
            self.kept[s].append(self.orders[s][p])
        if steps is not None:
            self.steps[self.kept[self.lengths[0]][-1]] = steps

    def _loop_steps(self, copies: list[int]) -> str | None:
        """None when the copies do not change with S, else the step count as text ("S", "S - 1", "2*S")."""
        if len(set(copies)) == 1:
            return None
        (s0, c0), (s1, c1) = zip(self.lengths[:2], copies[:2])
        q = sympy.Rational(c1 - c0, s1 - s0)
        r = c0 - q * s0
        if q <= 0 or any(q * s + r != c for s, c in zip(self.lengths, copies)):
            raise FoldError(f"a repeated block's copies {copies} at {self.x}={self.lengths} are not linear in {self.x}")
        return str(sympy.expand(q * self.x + r))


def _fit(texts: list[str], lengths: list[int], x: sympy.Symbol = _S) -> str:
    """One expression in x (S) through the values the traces give at fixed lengths: degree <= 2 through the first
    three, checked on the rest."""
    if all(t == texts[0] for t in texts):
        return texts[0]
    values = [sympy.sympify(t, locals=_LOCALS) for t in texts]
    xs, ys = lengths[:3], values[:3]
    poly = sympy.expand(sum(y * sympy.prod([(x - xj) / (xi - xj) for xj in xs if xj != xi])
                            for xi, y in zip(xs, ys)))
    for at, y in zip(lengths[3:], values[3:]):
        if sympy.expand(poly.subs(x, at) - y) != 0:
            raise FoldError(f"a size is not polynomial in {x}: {texts} at {x}={lengths}")
    return str(poly)


def _folded_graph(graphs, lengths, walk: _Walk) -> nx.DiGraph:
    names, rep = walk.kept, walk.rep
    base = lengths[0]
    if len({len(v) for v in names.values()}) != 1:
        raise FoldError("the loop bodies of the graphs do not line up across lengths")
    g0 = graphs[base]
    index = {n: i for i, n in enumerate(names[base])}
    out = nx.DiGraph(**g0.graph)
    for i, n in enumerate(names[base]):
        attrs = [graphs[s].nodes[names[s][i]] for s in lengths]
        a = dict(attrs[0])
        a["out_shapes"] = [[_fit([x["out_shapes"][k][d] for x in attrs], lengths, walk.x)
                            for d in range(len(shape))] for k, shape in enumerate(a["out_shapes"])]
        a["inputs"] = _fold_inputs(attrs, lengths, rep, walk.x)
        for key in ("flops", "bytes"):
            # a body node stands for all its copies: the first step may differ (it reads the initial state)
            a[key] = _fit([_total(graphs[s], walk.copies[s].get(names[s][i], [names[s][i]]), key)
                           for s in lengths], lengths, walk.x)
        if n in walk.steps:
            a["steps"] = walk.steps[n]
        out.add_node(n, **a)
    for u, v in g0.edges:
        if v not in index:
            continue  # a dropped copy's inputs: the kept copy has the same ones
        u = rep.get(u, u)
        if u not in index or u == v:
            continue
        if index[u] >= index[v]:
            continue  # carried from one step to the next: the kept body reads it from itself
        out.add_edge(u, v)
    return out


def _total(g: nx.DiGraph, nodes: list[str], key: str) -> str:
    texts = [g.nodes[n][key] for n in nodes]
    if len(texts) == 1:
        return texts[0]
    return str(sympy.expand(sum(sympy.sympify(t, locals=_LOCALS) for t in texts)))


def _fold_inputs(attrs: list[dict], lengths: list[int], rep: dict, x: sympy.Symbol = _S) -> list[dict]:
    """A node's inputs with dropped copies mapped to the kept body. An op that gathers one value per step (a stack
    of the step outputs) reads a number of inputs that grows with S: it keeps one entry per distinct producer."""
    base = [{**i, "src": rep.get(i["src"], i["src"])} for i in attrs[0]["inputs"]]
    if len({len(a["inputs"]) for a in attrs}) == 1:
        return [{**i, "shape": [_fit([a["inputs"][k]["shape"][d] for a in attrs], lengths, x)
                                for d in range(len(i["shape"]))]} for k, i in enumerate(base)]
    seen, out = set(), []
    for i in base:
        key = (i["src"], tuple(i["shape"]), i["dtype"])
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out
