"""Shape, FLOP and byte expressions in the symbols B (batch), S (new tokens) and L (cached tokens).

Stored as text (sympy's printing of export's symbolic sizes) so a cached graph is priced without importing torch
or sympy: the text is compiled once and evaluated with plain Python numbers.
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


def evaluate(text: str, B: int = 1, S: int = 1, L: int = 0):
    if text.isdigit():
        return int(text)
    return eval(compile_expr(text), _ENV, {"B": B, "S": S, "L": L})


def free_symbols(text: str) -> set[str]:
    return {s for s in SYMBOLS if s in text.replace("Max", "").replace("Min", "")}
