"""torch.export (non-strict) of the prefill and decode steps with symbolic batch, new-token and cache lengths.

Prefill: B sequences of S new tokens, no cache.  Decode: one new token per sequence over L cached tokens.

Decode holds the cache on the wrapper: a meta prefill of B0 x L0 tokens builds whatever cache the model uses
(KV, sliding-window, Mamba conv/SSM states...). The wrapper takes that cache's tensors as export inputs and puts them
back into the cache object before each call, so their batch and length dims can be symbolic. Which dims are B and L
is read from their sizes: B0 and L0 are primes no model dimension is expected to equal. A sliding-window layer
whose window is shorter than L0 stores a fixed window, so its cache stays constant, as engines store it. L0 stays
within the config's context length. Where the model's code fixes L whatever L0 (LengthFixed), decode is traced at
a few fixed L and folded into one graph in L by the caller (graph.loops), as a prefill that loops over S is.
"""
from __future__ import annotations

import copy
import inspect
import re
from dataclasses import dataclass

import sympy
import torch

from tracer.batch_rows import batch_group, example_ids, group, group_note, model_rows, probed, set_group
from tracer.decode_cache import (cache_contents, cache_prefill, compressed_dims, forget_made_caches,
                                 returned_cache, state_roles)
from core.errors import UserError, join_notes
from tracer.lengths import (B0, L0_TRIES, S0, compressed_length, compressed_role, context_length, decode_lengths,
                            next_prime)
from tracer.meta import one_line, quiet
from tracer.tracing_mode import tracing_branches


class SequenceLoop(Exception):
    """Export had to fix the new-token count S: the model's code loops over the sequence in Python."""


class LengthFixed(Exception):
    """Export had to fix the cached length L at every length tried: the model's decode code reads it as a Python
    number (int() of the cache's length, a list as long as the sequence), or takes the whole sequence at each step
    (`whole_sequence`). Decode is then traced at fixed lengths (B stays symbolic) and folded into one graph in L."""

    def __init__(self, message: str, whole_sequence: bool = False):
        super().__init__(message)
        self.whole_sequence = whole_sequence


@dataclass
class ExportedPhase:
    phase: str                       # "prefill" | "decode"
    program: torch.export.ExportedProgram
    symbols: dict[str, str]          # export's symbol name -> "B" | "S" | "L"
    note: str = ""                   # how the phase was traced, where it is not the usual way


def _forward_kwargs(model) -> dict:
    # Engines compute logits for the last position only; ask the model to do the same where it can.
    params = inspect.signature(model.forward).parameters
    return {"logits_to_keep": 1} if "logits_to_keep" in params else {}


class _Prefill(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids):
        return self.model(input_ids=model_rows(input_ids), use_cache=False, **self.extra).logits


class _Decode(torch.nn.Module):
    def __init__(self, model, cache, setters, lengths, length_ref, cache_arg="past_key_values"):
        super().__init__()
        self.model = model
        self.cache = cache
        self.cache_arg = cache_arg    # the forward argument the cache goes back in (the output field it came from)
        self.setters = setters
        self.lengths = lengths        # setters of the cache's plain int counters equal to the cached length
        self.length_ref = length_ref  # (state index, dim) of one L-sized dim, to read the symbolic length from
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids, states):
        for put, tensor in zip(self.setters, states):
            put(tensor)
        if self.length_ref is not None:
            length = states[self.length_ref[0]].shape[self.length_ref[1]]
            for put in self.lengths:
                put(length)
        return self.model(input_ids=model_rows(input_ids), use_cache=True, **{self.cache_arg: self.cache},
                          **self.extra).logits


def _dims():
    # Dim.DYNAMIC, not named Dims: export then records guards it cannot prove over a whole range (such as
    # min(128 + 128*L, 512 + 512*L) == 128 + 128*L from stride arithmetic) instead of refusing, and still fails
    # if a dim would be specialised to one value. The graph stays valid for every size.
    return torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC


def _symbol_names(program, roles: list[tuple[int, int, str]]) -> dict[str, str]:
    """Map export's symbols (s0, s17...) to B / S / L from the user inputs' placeholder shapes."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user = [n for n in placeholders if n.name in set(program.graph_signature.user_inputs)]
    names = {}
    for input_index, dim, role in roles:
        size = user[input_index].meta["val"].shape[dim]
        if isinstance(size, torch.SymInt):
            names[str(size.node.expr)] = role
    return names


# ops that read a tensor's value into a symbol (.item())
_VALUE_READS = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default)


def _bound_masked_sizes(program, symbols: dict[str, str]) -> tuple[dict[str, str], str]:
    """Sizes that depend on data: the rows a boolean mask selects (hidden[mask], as a per-language adapter routes
    its tokens). Each is given its bound, the mask's element count in B / S / L (every element selected), so the
    graph stays priced in B, S and L; noted, as an upper bound. Returns the added symbols and the note."""
    roles = {r: sympy.Symbol(r) for r in ("B", "S", "L")}
    added = {}
    for node in program.graph.nodes:
        bindings = node.meta.get("unbacked_bindings") or {}
        if not bindings or node.op != "call_function" or node.target in _VALUE_READS:
            continue  # a value read (.item()) is no row count
        masks = [a for a in (node.args[1] if len(node.args) > 1 and isinstance(node.args[1], (list, tuple))
                             else node.args[:1]) if isinstance(a, torch.fx.Node)]
        masks = [m.meta["val"] for m in masks if getattr(m.meta.get("val"), "dtype", None) == torch.bool]
        if len(masks) != 1:
            continue
        numel = sympy.Integer(1)
        for d in masks[0].shape:
            numel *= sympy.sympify(d.node.expr if isinstance(d, torch.SymInt) else d)
        named = {s: roles[symbols[s.name]] for s in numel.free_symbols if symbols.get(s.name) in roles}
        if len(named) != len(numel.free_symbols):
            continue
        for symbol in bindings:
            added[str(symbol)] = str(numel.xreplace(named))
    note = ("data-dependent sizes (rows a boolean mask selects) priced at their bound: "
            + ", ".join(sorted(set(added.values())))) if added else ""
    return added, note


def _with_bounds(phase: ExportedPhase) -> ExportedPhase:
    added, note = _bound_masked_sizes(phase.program, phase.symbols)
    if added:
        phase.symbols.update(added)
        phase.note = join_notes(phase.note, f"{phase.phase}: {note}")
    return phase


def _bounds(phase: ExportedPhase, role: str) -> tuple[int, int | None] | None:
    """(lower, upper) of the range export kept for the symbol of `role`; upper None where unbounded."""
    for symbol, vr in phase.program.range_constraints.items():
        if phase.symbols.get(str(symbol)) == role:
            upper = int(vr.upper) if isinstance(vr.upper, (int, sympy.Integer)) else None  # else torch's int_oo
            return int(vr.lower), upper
    return None


def _short(upper: int | None, role: str, context: int | None) -> bool:
    """An upper bound below what the model takes: S up to the context length, L up to one less, are the model's
    own limits, not a branch."""
    limit = {"S": context, "L": context - 1 if context else None}.get(role)
    return upper is not None and (limit is None or upper < limit)


def _range_note(phase: ExportedPhase, config) -> str:
    """Where export bounded B, S or L (the model's code branches on the size: block-sparse attention that falls
    back to full attention for short sequences, chunked linear attention that runs a recurrent kernel below its
    chunk), the graph holds only within the bounds: said in the note. Upper bounds at the model's own limits are
    not noted, nor lower bounds of the cached length (a sliding window traced in its steady state)."""
    context = context_length(config) if config is not None else None
    bounds = []
    for role in ("B", "S", "L"):
        found = _bounds(phase, role)
        if found is None:
            continue
        lower, upper = found
        low = role == "S" and lower > 2
        if _short(upper, role, context):
            bounds.append(f"{lower} <= {role} <= {upper}" if low else f"{role} <= {upper}")
        elif low:
            bounds.append(f"{role} >= {lower}")
    if not bounds:
        return ""
    return (f"the {phase.phase} graph holds only for {', '.join(bounds)}: elsewhere the model's code takes another "
            "path, which this graph does not show (other sizes are priced as if it did not)")


# Longer prefill lengths tried, at most, where the trace holds only for short sequences (see _past_short_paths).
LONGER_TRIES = 3


def export_prefill(model, length: int | None = None) -> ExportedPhase:
    """Prefill with S symbolic, or fixed at `length` (the sequence-loop fallback; B stays symbolic). A model that
    reads several input rows per sequence (batch_group) is exported with that many rows per sequence; one whose
    symbolic trace holds only for short sequences is traced again past them (_past_short_paths)."""
    pristine = None if length else _twin(model)
    try:
        phase = _export_prefill(model, length)
    except SequenceLoop:
        raise
    except Exception:
        if probed(model) or batch_group(model) == 1:
            raise
        if pristine is not None:
            set_group(pristine, group(model))
        phase = _export_prefill(model, length)
    return phase if length else _past_short_paths(pristine, phase)


def _twin(model):
    """A copy of the model as it is now (a meta model copies in milliseconds): a model may change itself when it
    runs (BigBird swaps its block-sparse attention for full attention on a short sequence, for good), and a second
    trace at another length must start from the model as built. The model itself where it cannot be copied."""
    try:
        twin = copy.deepcopy(model)
    except Exception:
        return model
    if probed(model):
        set_group(twin, group(model))
    _TWINS.append(twin)  # kept alive: rows per sequence are kept by id
    return twin


_TWINS: list = []


def _past_short_paths(pristine, phase: ExportedPhase) -> ExportedPhase:
    """A prefill whose trace holds only up to some S below the model's context (its code takes another path for
    longer sequences: chunked attention, block-sparse attention, a kernel chosen by length) is exported again, from
    a copy of the model as built, at a prime length past that bound, up to LONGER_TRIES times, so the graph shows
    the path that serving lengths take. Where a longer trace fails, the last one that worked is kept; its note says
    where it holds."""
    context = context_length(getattr(pristine, "config", None))
    for _ in range(LONGER_TRIES):
        _, upper = _bounds(phase, "S") or (0, None)
        if not _short(upper, "S", context) or (context and upper + 1 >= context):
            break
        try:
            phase = _export_prefill(_twin(pristine), None, next_prime(upper))
        except Exception:
            break
    return phase


def _export_prefill(model, length: int | None, s0: int = S0) -> ExportedPhase:
    B, S, _ = _dims()
    ids = example_ids(model, B0, length or s0)
    seq = ids.dim() - 1
    dims = {0: B} if length else {0: B, seq: S}
    try:
        with quiet(), torch.no_grad(), tracing_branches():
            program = torch.export.export(_Prefill(model), (ids,), dynamic_shapes={"input_ids": dims}, strict=False)
    except Exception as exc:
        # range(S) in the model's code makes export fix S and refuse the dynamic dim
        if not length and "Constraints violated" in str(exc) and f"input_ids'].size()[{seq}]" in str(exc):
            raise SequenceLoop(one_line(exc)) from exc
        if "Constraints violated" in str(exc) and "input_ids'].size()[0]" in str(exc):
            raise UserError(f"the prefill fixes the batch size (export specialised B to {B0}): the model's code "
                            "depends on the number of sequences in Python, e.g. a loop over the sequences of a batch: "
                            f"{one_line(exc)}") from exc
        raise
    roles = [(0, 0, "B")] if length else [(0, 0, "B"), (0, seq, "S")]
    return ExportedPhase("prefill", program, _symbol_names(program, roles), note=group_note(model))


def export_decode(model, chunk: bool = False, length: int | None = None) -> ExportedPhase:
    """Decode with B and L symbolic: one new token per sequence, or with `chunk` (see BatchFixedDecode) a chunk of
    S new tokens over the cache, S symbolic or fixed at `length`. A model that reads several input rows per
    sequence (batch_group) is exported with that many rows per sequence. Raises LengthFixed where every length
    tried fixed L, or where the step fails fed one new token because the model takes the whole sequence at each
    step (its generation code says so)."""
    try:
        return _export_decode(model, chunk, length)
    except (SequenceLoop, BatchFixedDecode, LengthFixed):
        raise
    except Exception:
        if probed(model) or batch_group(model) == 1:
            raise
    return _export_decode(model, chunk, length)


class BatchFixedDecode(Exception):
    """Export had to fix the batch of the one-token decode step: the model's one-token code does not keep the
    sequences of a batch apart (a token shift that broadcasts a (B, H) state against (B, 1, H) hidden states is
    right only for one sequence). The caller may trace decode as a chunk of new tokens over the cache instead (the
    model's multi-token path, which keeps the batch), priced at one token."""


def _export_decode(model, chunk: bool, length: int | None) -> ExportedPhase:
    errors = []
    lengths = decode_lengths(model.config)
    for l0 in lengths:
        try:
            return _export_decode_at(model, l0, chunk, length)
        except UserError:
            raise
        except Exception as exc:
            errors.append(exc)
            # range(S) over the new tokens of a chunk makes export fix S: traced at fixed lengths by the caller
            if chunk and not length and "Constraints violated" in str(exc) and _specialised_roles(exc) >= {"S"}:
                raise SequenceLoop(one_line(exc)) from exc
            # another cached length only helps where the trace fixed a length; a fixed batch stays fixed (and the
            # longer prefill of a model that loops over the tokens in Python would run for a long time)
            if "specialized" not in str(exc) or _specialised_roles(exc) == {"B"}:
                break
    last = errors[-1]
    roles = _specialised_roles(last)
    if roles == {"B"}:
        message = ("the decode step fixes the batch size: the model's one-token code does not keep the batch "
                   f"separate (export specialised B to {B0}): {one_line(last)}")
        if chunk:
            raise UserError(f"{message}, nor does its multi-token path with a cache") from last
        raise BatchFixedDecode(message) from last
    if "specialized" in str(last) and "L" in roles and "B" not in roles:
        raise LengthFixed(f"the decode step fixes the cached length at every length tried "
                          f"({', '.join(map(str, lengths[:len(errors)]))}): {one_line(last)}") from last
    if not chunk and "specialized" not in str(last) and _takes_whole_sequence(model, lengths[0]):
        raise LengthFixed("the model takes the whole sequence at each decode step (its generation code passes every "
                          f"token, not only the new one; fed one token: {one_line(last)})", whole_sequence=True) \
            from last
    raise last


def _takes_whole_sequence(model, l0: int) -> bool:
    """Whether the model's generate() hands forward the whole sequence at a decode step, not only the new token: what
    its prepare_inputs_for_generation returns for l0 cached tokens + 1 new one over the cache a prefill built (a model
    that slices the cached prefix off itself, inside forward, asks for every token)."""
    prepare = getattr(model, "prepare_inputs_for_generation", None)
    if prepare is None:
        return False
    ids = torch.zeros(B0, l0 + 1, dtype=torch.long, device="meta")
    try:
        out, _ = cache_prefill(model, l0)
        _, cache = returned_cache(model, out)
        forget_made_caches()
        with quiet(), torch.no_grad(), tracing_branches():
            inputs = prepare(ids, next_sequence_length=1, past_key_values=cache, use_cache=True)
    except Exception:
        return False
    given = inputs.get("input_ids") if hasattr(inputs, "get") else None
    return isinstance(given, torch.Tensor) and given.dim() == 2 and given.shape[1] == l0 + 1


_SPECIALISED = re.compile(r"L\['(input_ids|states)'\](?:\[(\d+)\])?\.size\(\)\[(\d+)\]")


def _specialised_roles(exc: Exception) -> set[str]:
    """Roles ("B", "S", "L", "?" where not known) of the decode inputs' dims that export's error says it
    specialised."""
    roles_of = getattr(exc, "state_roles", None)
    seq = getattr(exc, "seq_dim", None)
    found = set()
    for name, index, dim in _SPECIALISED.findall(str(exc)):
        if name == "input_ids":
            found.add("B" if dim == "0" else "S" if int(dim) == seq else "?")
        else:
            found.add(roles_of[int(index)].get(int(dim), "?") if roles_of is not None else "?")
    return found


def _export_decode_at(model, l0: int, chunk: bool = False, length: int | None = None, fixed: bool = False,
                      whole_sequence: bool = False) -> ExportedPhase:
    """Decode over a cache of l0 tokens, B and L symbolic: one new token, or a chunk of S (`chunk`, S fixed at
    `length` if given); `fixed`: L fixed at l0 (B symbolic), for folding; `whole_sequence`: the step is given all
    l0 + 1 tokens, as the model's generate() gives them."""
    B, S, L = _dims()
    out, module_states = cache_prefill(model, l0)
    cache_arg, cache = returned_cache(model, out)
    forget_made_caches()
    if cache is None:
        return _export_decode_without_cache(model)
    held, counters = cache_contents(cache, l0)
    held += module_states
    states = [t for t, _ in held]
    roles_of = state_roles(model, states, l0)
    if fixed:
        roles_of = [{d: role for d, role in r.items() if role == "B"} for r in roles_of]
    else:
        rates = compressed_dims(model, states, roles_of, l0)
        # export fixes a dim of size 1: where a compressed cache holds fewer than two entries, trace longer
        short = max((r for i, rs in enumerate(rates) for d, r in rs.items() if states[i].shape[d] < 2), default=0)
        longer = compressed_length(model.config, short) if short else None
        if longer is not None and longer > l0:
            return _export_decode_at(model, longer, chunk, length, fixed, whole_sequence)
        # each compressed dim is a symbol of its own, named by its size in L
        roles_of = [{**r, **{d: compressed_role(rate) for d, rate in rs.items() if states[i].shape[d] >= 2}}
                    for i, (r, rs) in enumerate(zip(roles_of, rates))]
    dyn = [{d: (B if role == "B" else L) for d, role in r.items()} for r in roles_of]
    length_ref = next(((i, d) for i, r in enumerate(roles_of) for d, role in r.items() if role == "L"), None)
    ids = example_ids(model, B0, l0 + 1 if whole_sequence else (length or S0) if chunk else 1)
    seq = ids.dim() - 1
    ids_dims = {0: B, seq: S} if chunk and not length else {0: B}
    wrapper = _Decode(model, cache, [put for _, put in held], counters, length_ref, cache_arg)
    try:
        with quiet(), torch.no_grad(), tracing_branches():
            program = torch.export.export(wrapper, (ids, states), dynamic_shapes={"input_ids": ids_dims, "states": dyn},
                                          strict=False)
    except Exception as exc:
        exc.state_roles = roles_of  # which dims were B and L: a fixed length may be retried longer, a batch not
        exc.seq_dim = seq if chunk and not length else None
        raise
    roles = [(0, 0, "B")] + ([(0, seq, "S")] if chunk and not length else [])
    for i, r in enumerate(roles_of):
        roles += [(1 + i, dim, role) for dim, role in r.items()]
    note = join_notes(_CHUNK_NOTE if chunk else "", group_note(model))
    return ExportedPhase("decode", program, _symbol_names(program, roles), note=note)


_CHUNK_NOTE = ("decode traced as a chunk of S new tokens over the cache (the model's multi-token path) and priced "
               "at S = 1: its one-token code does not keep the sequences of a batch apart")


class _Recompute(torch.nn.Module):
    """Decode of a model that keeps no cache: the new token appended to the L tokens before it, and the whole
    sequence of L + 1 tokens run again, as such a model generates."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.extra = _forward_kwargs(model)

    def forward(self, input_ids, history):
        ids = torch.cat([history, input_ids], dim=-1)
        return self.model(input_ids=model_rows(ids), use_cache=False, **self.extra).logits


_RECOMPUTE_NOTE = ("decode recomputes: the model keeps no KV cache, so each step is traced as a full forward over "
                   "the L + 1 tokens")


def _export_decode_without_cache(model) -> ExportedPhase:
    """A model that returns no cache from a use_cache=True prefill recomputes the whole sequence at every step:
    that full forward over L cached + 1 new tokens is its decode step, and is traced as such (noted)."""
    B, _, L = _dims()
    ids, history = example_ids(model, B0, 1), example_ids(model, B0, L0_TRIES[0])
    seq = ids.dim() - 1
    with quiet(), torch.no_grad(), tracing_branches():
        program = torch.export.export(_Recompute(model), (ids, history),
                                      dynamic_shapes={"input_ids": {0: B}, "history": {0: B, seq: L}}, strict=False)
    return ExportedPhase("decode", program, _symbol_names(program, [(0, 0, "B"), (1, 0, "B"), (1, seq, "L")]),
                         note=join_notes(_RECOMPUTE_NOTE, group_note(model)))


def export_phase(model, phase: str, progress=lambda msg: None, length: int | None = None,
                 chunk: bool = False, cached: int | None = None, whole_sequence: bool = False) -> ExportedPhase:
    """Export one phase ("prefill" or "decode"). Prefill at a fixed S given `length`; decode as a chunk of new
    tokens given `chunk` (S fixed at `length` if given), or over a fixed cached length `cached` (`whole_sequence`:
    fed every token, see LengthFixed). Export's own failures become one-line UserErrors, except SequenceLoop,
    LengthFixed and BatchFixedDecode, which ask the caller to trace another way."""
    at = f" at S={length}" if length else f" at L={cached}" if cached else ""
    progress(f"torch.export of the {phase} step" + (" as a chunk of new tokens" if chunk else "") + at)
    try:
        if phase == "prefill":
            exported = export_prefill(model, length)
        elif cached:
            exported = _export_decode_at(model, cached, fixed=True, whole_sequence=whole_sequence)
        else:
            exported = export_decode(model, chunk, length)
    except (UserError, SequenceLoop, BatchFixedDecode, LengthFixed):
        raise
    except Exception as exc:
        raise UserError(f"torch.export of the {phase} step{at} failed: {one_line(exc)}") from exc
    bounded = _range_note(exported, getattr(model, "config", None))
    if bounded:
        exported.note = join_notes(exported.note, bounded)
    return _with_bounds(exported)


def export_phases(model, progress=lambda msg: None) -> dict[str, ExportedPhase]:
    return {phase: export_phase(model, phase, progress) for phase in ("prefill", "decode")}
