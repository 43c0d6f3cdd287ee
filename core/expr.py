"""Shape, FLOP and byte expressions in the symbols B (batch), S (new tokens) and L (cached tokens).

Stored as text (sympy's printing of export's symbolic sizes) so a cached graph is priced without importing torch
or sympy: the text is compiled once and evaluated with plain Python numbers.

Any other name in an expression is a data-dependent size (torch's unbacked symbol u0, u1...) that graph.build could
not bound from the graph's structure: it is counted as 0 here (the op's work is unknown, so the total is a lower
bound), and graph.match lists every op that uses one as unsupported.
"""
from __future__ import annotations

import math
from functools import lru_cache

SYMBOLS = ("B", "S", "L")

# The functions torch's symbolic shapes print (sympy's and torch.utils._sympy's), as plain Python.
_ENV = {
    "Max": max, "Min": min, "floor": math.floor, "ceiling": math.ceil, "Abs": abs,
    "FloorDiv": lambda a, b: a // b, "CleanDiv": lambda a, b: a // b, "CeilDiv": lambda a, b: -(-a // b),
    "Mod": lambda a, b: a % b, "PythonMod": lambda a, b: a % b, "IntTrueDiv": lambda a, b: a / b,
    "FloatTrueDiv": lambda a, b: a / b, "TruncToInt": int, "RoundToInt": round, "CeilToInt": math.ceil,
    "FloorToInt": math.floor, "ToFloat": float, "sqrt": math.sqrt, "OpaqueUnaryFn_sqrt": math.sqrt,
    "PowByNatural": lambda a, b: a ** b, "Piecewise": None, "__builtins__": {},
}


@lru_cache(maxsize=None)
def compile_expr(text: str):
    return compile(text, f"<expr {text[:40]}>", "eval")


UNKNOWN_VALUE = 0  # what a data-dependent size with no structural bound counts as


def evaluate(text: str, B: int = 1, S: int = 1, L: int = 0):
    if text.isdigit():
        return int(text)
    code = compile_expr(text)
    names = {"B": B, "S": S, "L": L}
    names.update((u, UNKNOWN_VALUE) for u in _unknowns(code))
    return eval(code, _ENV, names)


def _unknowns(code) -> tuple[str, ...]:
    return tuple(n for n in code.co_names if n not in _ENV and n not in SYMBOLS)


def unknowns(*texts: str) -> set[str]:
    """Data-dependent size names (neither B, S, L nor a function) the expressions use."""
    return {n for t in texts if not t.isdigit() for n in _unknowns(compile_expr(t))}


def free_symbols(text: str) -> set[str]:
    return {s for s in SYMBOLS if s in text.replace("Max", "").replace("Min", "")}
