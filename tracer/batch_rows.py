"""Rows of input_ids per sequence: a model whose code needs the batch of its input to be a multiple of a constant
(one row per audio codebook) is exported with that many rows per sequence, so its batch dim counts sequences."""
from __future__ import annotations

import torch

from tracer.lengths import S0
from tracer.meta import quiet
from tracer.tracing_mode import tracing_branches

# Largest number of input rows per sequence looked for (see batch_group): codebooks, channels and the like.
MAX_GROUP = 16
# model id -> rows of input_ids per sequence, where the model's code needs a multiple of the batch (see batch_group)
_GROUPS: dict[int, int] = {}


def group(model) -> int:
    return _GROUPS.get(id(model), 1)


def probed(model) -> bool:
    """Whether batch_group has already looked at this model."""
    return id(model) in _GROUPS


def set_group(model, k: int) -> None:
    """Give a copy of a model the rows per sequence found for the original."""
    _GROUPS[id(model)] = k


def model_rows(input_ids):
    """The model's input_ids from the wrapper's: (B, k, S) -> (B*k, S) for a model that reads k rows per sequence
    (see batch_group), so that the batch dim of the export input is the number of sequences itself."""
    return input_ids.flatten(0, 1) if input_ids.dim() == 3 else input_ids


def example_ids(model, batch: int, length: int):
    """Export input of `batch` sequences of `length` tokens: (batch, length), or (batch, k, length) where the model
    reads k rows per sequence."""
    k = group(model)
    shape = (batch, k, length) if k > 1 else (batch, length)
    return torch.zeros(shape, dtype=torch.long, device="meta")


def _probe(model, rows: int) -> bool:
    """Does a plain meta forward of `rows` x S0 tokens run?"""
    ids = torch.zeros(rows, S0, dtype=torch.long, device="meta")
    try:
        with quiet(), torch.no_grad(), tracing_branches():
            model(input_ids=ids, use_cache=False)
        return True
    except Exception:
        return False


def batch_group(model) -> int:
    """Rows of input_ids per sequence, for a model whose code needs the batch of its input to be a multiple of a
    constant k: it reshapes (batch * k, S) into (batch, k, S), as an audio decoder reads one row per codebook.
    Found by probing which row counts a meta forward accepts: 1 fails, k is the least that runs, and 2k runs too.
    1 where a single row runs, or where no row count up to MAX_GROUP does (the failure is not about the batch).
    Set for the model (the export inputs then hold k rows per sequence); asked only after an export failed."""
    if id(model) in _GROUPS:
        return _GROUPS[id(model)]
    k = 1
    if not _probe(model, 1):
        k = next((n for n in range(2, MAX_GROUP + 1) if _probe(model, n)), 1)
        if k > 1 and not _probe(model, 2 * k):
            k = 1
    _GROUPS[id(model)] = k
    return k


def group_note(model) -> str:
    k = group(model)
    return (f"the model reads {k} rows of input_ids per sequence (its code reshapes the batch by {k}): B counts "
            f"sequences of {k} rows") if k > 1 else ""


