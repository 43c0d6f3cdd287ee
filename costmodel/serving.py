"""Serving as engines serve: in-flight batching with chunked prefill (agg) and prefill/decode pools (disagg).

Modes
-----
- static: one batch of B requests prefilled together, then decoded together; kernel time only (costmodel.estimate).
- agg: one engine instance per parallel plan (per attention-DP rank) at a fixed concurrency C, closed loop (a
  client sends its next request when its last one finishes). Every step runs the decode token of each running
  request plus prefill chunks that fill the rest of the token budget (max_tokens_per_step), first come first served;
  an engine without chunked prefill (TensorRT-LLM's default) takes only the whole prompts that fit, at least one
  (step_prompt_tokens).
- disagg: x prefill workers and y decode workers, each with its own plan; a request's KV cache moves from its
  prefill worker to a decode worker over the link between them.

Agg: an analytic steady state, checked against a request-level simulation
-------------------------------------------------------------------------
A sweep must price a point in about a millisecond, so the estimate is an analytic steady state of a handful of step
types, priced through the Estimator's caches; `simulate_agg` is the request-level simulation of the benchmark
(C clients, a few times C requests, every step scheduled and priced) that tests hold the analytic figures to.
The steady state assumes the clients' requests spread evenly over the cycle (a benchmark's clients drift apart after
warm-up; the simulation staggers its clients' first requests to the same effect). Over one cycle of N steps every
running request lives once: it waits, prefills over n_p steps (chunks of the budget left after the decodes),
then decodes OSL - 1 steps. With R running requests and K the tokens a full step holds (the budget, or the decodes
and the whole prompts that fit beside them):
  N = max(OSL - 1 + n_p, R x (ISL + OSL - 1) / K)   (the second when the budget, not the requests, is the limit)
  M = min(N, R x n_p) mixed steps carry R x ISL / M prefill tokens each; the other N - M steps only decode.
  A mixed step runs R - R x (N - OSL + 1) / M decodes; a decode-only step runs the rest of the R x (OSL - 1)
  decode tokens of the cycle.
TTFT = the request's waiting and prefill steps (mixed steps); TPOT = the mean time of the steps a request decodes
in, weighted by the decodes each carries; request latency = the cycle; C > max_num_seqs queues (Little's law).
An engine launched to hold new prompts back while others decode (TensorRT-LLM's batch_wait_timeout_iters and
batch_wait_max_tokens_ratio; Overheads.holds_prompts) adds the held steps to every request's cycle, spent in
decode-only steps, and so does one that takes in requests every n steps (SGLang's scheduler_recv_interval: (n - 1) / 2
steps on average) or holds them until every attention-DP rank has one (TensorRT-LLM's attention-DP balancing); the prompts it lets through together (k of them) prefill together, a cluster's k x ISL tokens in
full steps (fewer, bigger mixed steps), the middle prompt's first token after (k + 1) / 2 x ISL / room of them
(held_prompts: how long and how many, from the rate new prompts come at, arrival_rates: R / N in the steady state,
bunched in a benchmark's rounds). The first round is neither held nor kept waiting (nothing decodes yet).

What a benchmark client measures (agg_benchmark): it starts all C clients at once and reports means over all its
requests (N, default 10 x C). The first round is a burst: C prompts queue through full-budget steps, request k's
first token after ceil(k x ISL / (K - C/2)) of them (the requests already prefilled decode in the same steps), and
those requests decode in the burst's slower steps until it ends (agg_burst). Later rounds are taken as the steady
state: a benchmark's random lengths (e.g. uniform in [0.8 L, L]) spread the clients apart after the first round.
TPOT = steady + the burst's extra decode time / (OSL - 1) / (N/C); TTFT = (burst + (N/C - 1) x steady) / (N/C) +
the engine's delivery, request_ms + first_token_steps x TPOT (Overheads.first_token_ms), + the prompt's way in through
the engine's server front end, prompt_token_us x ISL x the prompts it waits for there (Overheads.ingest_ms): (C + 1) / 2
in the first round, its own alone in the steady rounds after it (ingest_prompts).
`simulate_agg(start="burst", range_ratio=0.8)` is the request-level check: with lengths that vary the requests
stay somewhat bunched after the first round, so the simulated TTFT runs up to ~30% above the analytic one and its
TPOT up to ~10% below (tests/costmodel/test_serving.py holds those bounds); with fixed lengths the clients stay in
lockstep and every round is a burst.

An engine that prefills first (mixed_prefill false: SGLang unless launched with --enable-mixed-chunk) runs the waiting
prompts in prefill-only steps of the whole budget and decodes the running requests only when no prompt waits
(_separate_steady_state, and agg_burst's first round: every prompt before any decode). Its TPOT is a decode step of
all R requests plus the prefill steps that the other requests' prompts put between two of them; its TTFT the prompt's
share of its group's prefill steps. With fixed lengths (Benchmark.fixed_lengths, aiperf's synthetic prompts) its
clients stay in lockstep for good, the first round's requests all starting to decode in the same step, so every round
is a burst (_lockstep; the simulation agrees to 0.1%); lengths that vary spread them as above. An engine that mixes
is priced in the steady state whatever the lengths: its simulation with fixed lengths keeps each later round in a
wave of full-budget steps (TTFT about one such step), but the measured fixed-length runs of TensorRT-LLM and vLLM do
not bear that out (benchmarks/accuracy_silicon.py's aiconfigurator sweeps, at the token budgets its generator
launched them with: h100_sxm trtllm 1.0.0rc3, 469 rows, TTFT median error 18% in the steady state, 20% simulated
with waves; vLLM 0.12, 143 rows, 14% against 69%; nor do SGLang's runs with --enable-mixed-chunk, 24% either way),
while SGLang's prefill-first runs bear out lockstep (h100_sxm Qwen3-32B 64% -> 19%).

Pricing a step at its real shape
--------------------------------
- decode-only step of n requests: the static decode step at batch n (the graph's decode ops, attention averaged over
  the request's decode contexts, as the static TPOT), padded up to the captured CUDA-graph batch size.
- mixed step of n decodes and P chunk tokens: the prefill graph's token ops (GEMMs, MoE, norms, embedding: every op
  whose size grows with S) at m = n + P tokens; its per-sequence output ops (the LM head: size independent of S) at
  the sequences that produce a token; the decode requests' attention (and recurrent-state updates) at batch n over
  their own contexts; each chunk's attention over its cached prefix + chunk as the causal difference
  attn(prefix + chunk) - attn(prefix) of the measured context-attention tables (the chunks of one prompt add up to
  the prompt's whole prefill attention).
- engine overheads per step (systems/engines/overheads.yaml via costmodel.overheads): host time per step and per
  sequence, plus launch gaps on steps not run as a CUDA graph (mixed steps, decode batches above the captured sizes);
  per request, the time outside the engine's steps before the first token reaches the client (request_ms), the
  decode steps the first token waits to be sent (first_token_steps), and the front end's host time per prompt
  token (prompt_token_us), which all clients' prompts queue for.

Disagg
------
Each prefill worker runs batches of up to `prefill_batch` prompts, by default the whole prompts its token budget fits,
as an engine batches the prompts waiting (the first round's at once, in full batches, or one batch of them where fewer;
after it the prompts that came while the worker's last batch ran, a fixed point); each decode rank holds C / (y x dp)
slots, at most max_num_seqs (TensorRT-LLM's max_batch_size), and runs the requests the clients' rate feeds it, that rate
x their residence (Little's law): all its slots only where the decode pool sets the pace; where the prefill pool does,
fewer, so TPOT is the step of that smaller batch and the clients wait in TTFT (held-out gb200 and gb300 sglang
DeepSeek-R1 rows of ISL 7373 whose six prefill workers set the pace: TPOT error +45% to +110% became -8% to -24%, TTFT
-19% to -28% became 0% to -12%). The clients beyond the pool's slots wait for one, in the queue (the decode pool's rate,
slots per decode residence, sets the pace) and in the first round for the first requests to finish (InferenceX's
dynamo-trt runs set their concurrency about 5% above their recipes' slots: held-out gb200 trtllm DeepSeek-R1 rows of
2026-02/03, TTFT median error 75% -> 21%). The KV cache of a request (costmodel.kv's paged bytes per rank at ISL tokens)
moves after its prefill finishes, each prefill rank sending its shard at once, over NVLink when both pools fit in one
node, else the network; we assume the transfer overlaps other requests' work (as engines' KV transceivers do), so it
adds to TTFT but not to either pool's throughput. Throughput is the slower pool's (or the clients' C / latency); waiting
for it is queue time in TTFT. TTFT = queue + prefill + transfer + the handoff (Overheads.handoff: the KV connector's
handshake and the stack's hops, then some of the decode pool's steps before the decode worker takes the request in) +
the engine's delivery and the prompt's way in (as agg, at the decode pool's step), the queue a mean over the rounds: the
first round's prompts wait for the prefill batches ahead of them, later rounds the steady queue; TPOT = the decode
pool's step. Both pools' steps take disagg_kernel_scale of their kernels' summed timings, fitted per GPU architecture on
disagg runs' TPOT: on Blackwell the runs' decode pools take about 0.8 of the tables' sums, and their prefill pools bear
it out (benchmarks/accuracy_silicon.py, held-out trtllm rows whose prefill pool sets the pace, at the fitted 0.84: gb300
at 3228 clients measured 70 requests/s against 75 priced, gb200 at 6144 101 against 104, b200_sxm at 370 16.5 against
18.3). The decode pools' host time per step is overheads.yaml's: they take neither agg's graph_kernel_scale nor the
step_ms fitted with it (both on agg runs' TPOT), which the measured disagg runs (another serving stack, Dynamo, in front
of the engines) do not bear out (held-out disagg rows: with the scale TPOT's median error was 22% against 15%, TTFT's
46% (p90 232%) against 32% (88%); retried on the rows counted once, with the scale and its step_ms: TPOT 19.1% against
18.7%, TTFT 48.9% against 43.5%, and fitted on h200_sxm alone TPOT p90 116% against 55%). The handoff is fitted on
disagg runs too.
"""
from __future__ import annotations

import math
import random
import weakref
from collections import deque
from dataclasses import dataclass, replace

from core.errors import UserError, require_int
from core.ops import MLA, Attention, Conv, Scan
from costmodel.kv import kv_report
from costmodel.overheads import EngineSettings, Overheads
from costmodel.parallel import Plan
from costmodel.steps import step_ms

MODES = ("static", "agg", "disagg")
SEQUENCE_OPS = (Attention, MLA, Scan, Conv)   # ops whose work is per sequence over its own context


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}; known: {', '.join(MODES)}")
    return mode


class StepPricer:
    """Prices engine steps of one plan from an Estimator's ops and caches."""

    def __init__(self, est, plan: Plan, overheads: Overheads):
        self.est, self.plan, self.ov = est, plan, overheads
        self.price = est.pricer.price
        sizes_1, sizes_2 = {"B": 1, "S": 1, "L": 0}, {"B": 1, "S": 2, "L": 0}
        self.token_ops, self.output_ops, self.seq_ops = [], [], []
        for op in est.ops(plan, "prefill"):
            if isinstance(op, SEQUENCE_OPS):
                self.seq_ops.append(op)
            elif op.flops(sizes_1) == op.flops(sizes_2) and op.bytes(sizes_1) == op.bytes(sizes_2):
                self.output_ops.append(op)
            else:
                self.token_ops.append(op)
        self.decode_state_ops = [op for op in est.decode_split(plan)[0] if isinstance(op, SEQUENCE_OPS)]
        self._cache: dict[tuple, float] = {}

    def _sum(self, key: tuple, ops, sizes: dict) -> float:
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = step_ms(self.price, ops, sizes, self.ov)
        return v

    def token_ms(self, tokens: int) -> float:
        """Ops whose size grows with the step's tokens (GEMMs at m = tokens, MoE, norms, embedding)."""
        return self._sum(("tok", tokens), self.token_ops, {"B": 1, "S": tokens, "L": 0})

    def output_ms(self, sequences: int) -> float:
        """Ops run once per sequence that produces a token (the LM head)."""
        return self._sum(("out", sequences), self.output_ops, {"B": sequences, "S": 1, "L": 0})

    def prompt_attention_ms(self, length: int) -> float:
        """Attention (and scans) of one prompt of `length` tokens with no cached prefix."""
        if length <= 0:
            return 0.0
        return self._sum(("seq", length), self.seq_ops, {"B": 1, "S": length, "L": 0})

    def chunk_attention_ms(self, prefix: int, chunk: int) -> float:
        """A chunk's attention over its cached prefix + itself: the causal difference of two whole prompts."""
        return self.prompt_attention_ms(prefix + chunk) - self.prompt_attention_ms(prefix)

    def decode_group_ms(self, n: int, isl: int, osl: int) -> float:
        """The decode requests' own-context work in a mixed step: attention over their contexts, state updates."""
        if n <= 0:
            return 0.0
        state = self._sum(("state", n), self.decode_state_ops, {"B": n, "S": 1, "L": 0})
        return self.est.mean_context_ms(self.plan, n, isl, osl) + state

    def mixed_step_ms(self, decodes: float, chunk_tokens: float, outputs: float, chunk_attention_ms: float,
                      isl: int, osl: int) -> float:
        """A step of `decodes` decode tokens and `chunk_tokens` prompt tokens, `outputs` of its sequences producing
        a token (a prefill-only step at decodes 0); an analytic state's mean counts are fractional, priced linearly
        between the integers around them."""
        kernels = (self.token_ms(max(1, round(decodes + chunk_tokens))) + _lerp(self.output_ms, outputs)
                   + _lerp(lambda n: self.decode_group_ms(n, isl, osl), decodes) + chunk_attention_ms)
        return kernels + self.ov.step_overhead_ms(outputs, graph=False)

    def decode_step_ms(self, n: int, isl: int, osl: int, pool: bool = False) -> float:
        """A decode-only step of n requests, padded to the captured CUDA-graph size where one fits; `pool`: a disagg
        decode pool's (Overheads.decode_step_ms, the module docstring)."""
        padded = self.ov.graph_batch(n)
        return self.ov.decode_step_ms(self.est.tpot_ms(self.plan, padded or n, isl, osl), n, padded is not None,
                                      pool=pool)


def _lerp(f, x: float) -> float:
    """f at a fractional count: linear between the integers around it."""
    lo = math.floor(x)
    if lo == x:
        return f(int(x))
    return f(lo) + (f(lo + 1) - f(lo)) * (x - lo)


def _check_fits(est, plan: Plan, batch: int, isl: int, osl: int, what: str) -> dict:
    mem = est.memory(plan, batch, isl, osl)
    hbm = est.db.system.hbm_bytes
    if mem["total_bytes"] > hbm:
        raise UserError(f"{what}: {batch} requests of ISL {isl} + OSL {osl} need {mem['total_bytes'] / 2**30:.1f} "
                        f"GiB per GPU (KV {mem['kv_cache_bytes'] / 2**30:.1f} GiB) but {est.db.system.name} has "
                        f"{hbm / 2**30:.1f} GiB; lower the concurrency or add GPUs")
    return mem


# ---------------------------------------------------------------------------------------------
# agg
# ---------------------------------------------------------------------------------------------


# A benchmark client draws each request's lengths uniformly from [BENCHMARK_RANGE_RATIO x L, L]: InferenceX runs with
# --random-range-ratio 0.8 (.github/workflows/benchmark-tmpl.yml, RANDOM_RANGE_RATIO, @ 843c6254 of
# SemiAnalysisAI/InferenceX). Only the spread of the output lengths is used: it sets how bunched the rounds after a
# burst stay, and so how many held prompts come together (arrival_rates).
BENCHMARK_RANGE_RATIO = 0.8


def arrival_rates(running: float, cycle_steps: float, osl: float, rounds: float | None) -> list[float]:
    """New prompts per step as a held prompt sees them. Steady state (rounds None): the R requests of a cycle spread
    over its N steps, R / N. A benchmark's rounds after its burst (rounds = requests / C): round j's prompts come
    when the requests of the round before finish, and each round adds a length drawn from an interval of width
    a = 2 (1 - ratio) / (1 + ratio) x the mean OSL, so round j's arrivals are spread like the sum of j - 1 such
    draws: about normal with sigma = a sqrt((j - 1) / 12), which an arrival sees at a density of R / (2 sigma
    sqrt(pi)) = R / (a sqrt(pi (j - 1) / 3)) (round 2: about R / a, the uniform spread); never below R / N, the rounds
    spread over the whole cycle."""
    if rounds is None or rounds < 2:
        return [running / cycle_steps]
    spread = 2 * (1 - BENCHMARK_RANGE_RATIO) / (1 + BENCHMARK_RANGE_RATIO) * osl
    return [running / min(cycle_steps, max(1.0, spread * math.sqrt(math.pi * (j - 1) / 3)))
            for j in range(2, round(rounds) + 1)]


def _hold_threshold(ov: Overheads, running: float) -> float:
    """The prompt tokens that let batch waiting's held prompts through beside the other requests' decodes."""
    return ov.batch_wait_token_ratio * ov.max_tokens_per_step - (running - 1)


def holds_to_timeout(ov: Overheads, running: float, isl: int) -> bool:
    """Whether batch waiting always holds new prompts its whole window: the whole prompts a step takes beside the
    other requests' decodes never reach its token threshold (chunked prefill off). Each release then lets through
    only those prompts and holds the rest for another window (the engine counts the window from its last release)."""
    room = ov.max_tokens_per_step - (running - 1)
    return ov.holds_prompts() and step_prompt_tokens(ov, room, isl) < _hold_threshold(ov, running)


def held_prompts(ov: Overheads, rates: list[float], running: float, isl: int, ranks: int = 1) -> tuple[float, float]:
    """(steps a new prompt is held back on average, prompts let through together as one prompt sees them), the
    mean over `rates` (new prompts per step, arrival_rates), for an engine that holds prompts back.
    Batch waiting (Overheads.holds_prompts): the first prompt to come opens a window that closes after
    batch_wait_steps, or once m prompts wait, m those whose tokens with the other requests' decodes reach the
    threshold (never more than the running requests: when nothing decodes the engine holds nothing; all of them
    where the whole prompts a step takes fall short of it, holds_to_timeout), so after
    T = min(W, (m - 1) / rate) steps. Prompts keep coming at `rate` in it (memoryless: the window's opening says
    nothing about later arrivals), mu = rate x T of them on average: the first waits T, the others T / 2 on average,
    a prompt (T + mu T / 2) / (1 + mu) and its cluster 1 + mu prompts. Polling every n steps (recv_interval_steps):
    a prompt waits (n - 1) / 2 steps and is taken in with the rate x (n - 1) others that came in the interval.
    Balancing `ranks` attention-DP ranks (attention_dp_wait_steps, in place of batch waiting, as TensorRT-LLM does):
    the window closes once every other rank has a prompt too, ranks - 1 more at the engine's rate ranks x rate (new
    prompts go to the ranks with room), T = min(W, (ranks - 1) / (ranks x rate)); `rates` are one rank's."""
    poll = ov.recv_interval_steps - 1
    balance = ov.balances_ranks(ranks)
    if running <= 1 or (not ov.holds_prompts() and poll == 0 and not balance):
        return 0.0, 1.0
    needed = 1
    if ov.holds_prompts() and not balance:
        needed = running if holds_to_timeout(ov, running, isl) else min(running, math.ceil(
            _hold_threshold(ov, running) / isl))
    wait = together = 0.0
    for rate in rates:
        if balance:
            window = min(float(ov.attention_dp_wait_steps), (ranks - 1) / (ranks * rate))
        else:
            window = min(float(ov.batch_wait_steps), (needed - 1) / rate) if needed > 1 else 0.0
        mu = rate * window
        wait += window * (1 + mu / 2) / (1 + mu) + poll / 2
        together += 1 + mu + rate * poll
    return wait / len(rates), together / len(rates)


def prompts_per_step(budget: int, isl: int) -> int:
    """The most whole prompts of `isl` tokens a step of `budget` tokens takes (at least one): what an engine batches
    of the waiting prompts when nothing else caps it."""
    return max(1, int(budget // isl))


def step_prompt_tokens(ov: Overheads, room: float, isl: int) -> float:
    """The prompt tokens a step with `room` tokens of its budget left takes from a queue of prompts of `isl`
    tokens: all of the room, the last prompt cut to fit (Overheads.chunked_prefill), or the whole prompts that fit,
    at least one (an engine without chunked prefill stops at the first prompt that does not fit)."""
    return room if ov.chunked_prefill else prompts_per_step(room, isl) * isl


def agg_steady_state(sp: StepPricer, concurrency: int, isl: int, osl: int, rounds: float | None = None) -> dict:
    """The analytic steady state of one engine at `concurrency` clients (see the module docstring). `rounds`: the
    rounds of a benchmark after its burst (agg_benchmark), whose prompts come bunched (arrival_rates); only an
    engine that holds prompts back prices differently with it."""
    ov = sp.ov
    if not ov.mixed_prefill:
        return _separate_steady_state(sp, concurrency, isl, osl, rounds)
    budget = ov.max_tokens_per_step
    running = min(concurrency, ov.max_num_seqs)
    if running >= budget:
        raise UserError(f"--max-tokens-per-step {budget} leaves no room for a prefill beside {running} decodes; "
                        f"raise it above the concurrency")
    R = running
    n_p, n_cycle, mixed, mixed_decodes, held, together, cluster_steps = 1, osl, 1, 0.0, 0.0, 1.0, 1
    take = step_prompt_tokens(ov, budget, isl)   # the prompt tokens of a full step
    step_tokens = budget   # all a full step holds: less where whole prompts leave part of the budget unused
    # a hold that always times out lets one step's whole prompts through per window and its release step
    timeout = holds_to_timeout(ov, R, isl) and not ov.balances_ranks(sp.plan.dp)
    for _ in range(12):   # n_p and the hold depend on the cycle: a fixed point, reached in a few rounds
        n_cycle = max(osl - 1 + n_p + held, R * (isl + osl - 1) / step_tokens)
        if timeout:
            n_cycle = max(n_cycle, R * (ov.batch_wait_steps + 1) * isl / take)
        mixed = min(n_cycle, R / together * cluster_steps)   # prompts let through together prefill together
        mixed_decodes = max(0.0, R - R * (n_cycle - osl + 1 - held) / mixed)   # held prompts wait in decode steps
        room = max(1.0, budget - mixed_decodes)
        take = step_prompt_tokens(ov, room, isl)
        full, step_tokens = step_tokens, mixed_decodes + take
        wait, cluster = held_prompts(ov, arrival_rates(R, n_cycle, osl, rounds), R, isl, sp.plan.dp)
        # a cluster of k prompts takes k x ISL / take full steps, first come first served: the middle one has its
        # first token after (k + 1) / 2 x ISL / take of them; never fewer than one prompt alone, ceil(ISL / take)
        alone = math.ceil(isl / take)
        new = (max(alone, (cluster + 1) / 2 * isl / take), max(alone, cluster * isl / take))
        if (abs(new[0] - n_p) < 1e-3 and abs(new[1] - cluster_steps) < 1e-3 and abs(wait - held) < 1e-3
                and abs(cluster - together) < 1e-3 and abs(step_tokens - full) < 1e-3):
            break
        (n_p, cluster_steps), held, together = new, wait, cluster
    chunk_tokens = R * isl / mixed
    outputs = mixed_decodes + R / mixed
    pure = n_cycle - mixed
    pure_decodes = (R * (osl - 1) - mixed * mixed_decodes) / pure if pure > 1e-9 else 0.0
    prompt_attention = R / mixed * sp.prompt_attention_ms(isl)
    t_mixed = sp.mixed_step_ms(mixed_decodes, chunk_tokens, outputs, prompt_attention, isl, osl)
    t_pure = _lerp(lambda n: sp.decode_step_ms(n, isl, osl), pure_decodes) if pure_decodes > 0 else 0.0
    cycle = mixed * t_mixed + pure * t_pure
    wait_steps = n_cycle - osl + 1 - n_p
    ttft = n_p * t_mixed + wait_steps * cycle / n_cycle
    decode_tokens = R * (osl - 1)
    tpot = (mixed * mixed_decodes * t_mixed + pure * pure_decodes * t_pure) / decode_tokens if decode_tokens else 0.0
    return _closed_loop(R, concurrency, ttft, tpot, cycle, {
        "cycle_steps": n_cycle, "prefill_steps_per_request": n_p, "held_steps": held, "prompts_together": together,
        "mixed": {"count": mixed, "decodes": mixed_decodes, "chunk_tokens": chunk_tokens, "step_ms": t_mixed},
        "decode_only": {"count": pure, "decodes": pure_decodes, "step_ms": t_pure}})


def _closed_loop(running: int, concurrency: int, ttft: float, tpot: float, latency: float, steps: dict) -> dict:
    """A state of `running` requests, each taking `latency` (first token after `ttft`): the clients beyond them
    (concurrency > max_num_seqs) wait their turn, Little's law's queue, in TTFT and latency."""
    queue = latency * (concurrency / running - 1)
    return {"ttft_ms": ttft + queue, "tpot_ms": tpot, "request_latency_ms": latency + queue,
            "requests_per_s": running / latency * 1e3 if latency > 0 else 0.0, "running": running, "queue_ms": queue,
            "steps": steps}


def _prefill_step_ms(sp: StepPricer, tokens: float, isl: int, osl: int) -> float:
    """A prefill-only step of `tokens` prompt tokens, whole prompts of ISL or chunks of them: each prompt's share
    of its attention, the LM head for the prompts it finishes."""
    prompts = tokens / isl
    return sp.mixed_step_ms(0, tokens, prompts, prompts * sp.prompt_attention_ms(isl), isl, osl)


def _separate_steady_state(sp: StepPricer, concurrency: int, isl: int, osl: int, rounds: float | None) -> dict:
    """The steady state of an engine that runs prompts in prefill-only steps first (mixed_prefill false). Requests
    finish in decode steps, so their clients' next prompts come at a decode step's end: a rate r a step (R / (OSL -
    1) spread evenly, or bunched in a benchmark's rounds: arrival_rates), taken in every recv_interval_steps n, so
    c = max(1, r x n) come together (a / c times a step, a = R / (OSL - 1)). They prefill in max(1, c x ISL / K)
    steps of the budget K before the next decode step, which runs all R requests. TPOT: a decode step and the
    prefill steps the other R - 1 requests' prompts add between a request's decodes; TTFT: the middle prompt's share
    of its group's prefill steps, (c + 1) / 2 x ISL / K of them (at least one), after (n - 1) / 2 decode steps
    waiting for the poll. A mean over the rates."""
    ov = sp.ov
    R = min(concurrency, ov.max_num_seqs)
    decodes = max(1, osl - 1)
    n = ov.recv_interval_steps
    t_decode = sp.decode_step_ms(R, isl, osl)
    rates = arrival_rates(R, decodes, osl, rounds)
    ttft = tpot = together = prefill_steps = t_prefill = 0.0
    take = step_prompt_tokens(ov, ov.max_tokens_per_step, isl)
    for rate in rates:
        c = max(1.0, rate * n)
        steps = max(1.0, c * isl / take)
        t_step = _prefill_step_ms(sp, c * isl / steps, isl, osl)
        between = (R - 1) / decodes / c * steps * t_step   # prefill time after each of a request's decode steps
        ttft += max(1.0, (c + 1) / 2 * isl / take) * t_step + (n - 1) / 2 * (t_decode + between)
        tpot += t_decode + between
        together, prefill_steps, t_prefill = together + c, prefill_steps + R / c * steps, t_prefill + t_step
    ttft, tpot, together, prefill_steps, t_prefill = (x / len(rates) for x in (ttft, tpot, together, prefill_steps,
                                                                               t_prefill))
    return _closed_loop(R, concurrency, ttft, tpot, ttft + (osl - 1) * tpot, {
        "cycle_steps": decodes + prefill_steps, "held_steps": (n - 1) / 2, "prompts_together": together,
        "prefill_only": {"count": prefill_steps, "step_ms": t_prefill},
        "decode_only": {"count": decodes, "decodes": R, "step_ms": t_decode}})


def _lockstep(sp: StepPricer, concurrency: int, isl: int, osl: int) -> dict:
    """Fixed lengths on an engine that prefills first (mixed_prefill false): the first round's requests all
    start decoding once the last prompt is in, so they finish in the same step and every round is a burst. With
    OSL 1 nothing decodes between the prompts, so every round is one whatever the lengths."""
    R = min(concurrency, sp.ov.max_num_seqs)
    t_decode = sp.decode_step_ms(R, isl, osl)
    burst = agg_burst(sp, R, isl, osl, t_decode)
    tpot = t_decode + burst["extra_decode_ms"] / (osl - 1) if osl > 1 else 0.0
    cycle = burst["steps"] * burst["step_ms"] + (osl - 1) * t_decode
    return _closed_loop(R, concurrency, burst["ttft_ms"], tpot, cycle, {
        "cycle_steps": burst["steps"] + osl - 1, "lockstep": True,
        "prefill_only": {"count": burst["steps"], "step_ms": burst["step_ms"]},
        "decode_only": {"count": osl - 1, "decodes": R, "step_ms": t_decode}})


# A benchmark client sends this many requests per client unless told otherwise: InferenceX's runs use
# num_prompts = 10 x concurrency (its benchmark_serving call, --num-prompts $(( $CONC * 10 ))).
ROUNDS_DEFAULT = 10


@dataclass(frozen=True)
class Benchmark:
    """The benchmark client: the requests it sends in all (None: ROUNDS_DEFAULT rounds of its clients), and whether
    every request has exactly ISL and OSL tokens (fixed_lengths, as aiperf's synthetic prompts) or lengths drawn
    around them (a random dataset such as InferenceX's, ISL and OSL their means)."""
    requests: int | None = None
    fixed_lengths: bool = False

    def __post_init__(self):
        if self.requests is not None:
            require_int("requests", self.requests)

    def total(self, concurrency: int) -> int:
        """The requests it sends in all at `concurrency` clients."""
        return self.requests or ROUNDS_DEFAULT * concurrency

    def per_rank(self, ranks: int) -> "Benchmark":
        """The share of one of `ranks` attention-DP ranks."""
        return replace(self, requests=self.requests and math.ceil(self.requests / ranks))


CLIENT = Benchmark()   # the default client: ROUNDS_DEFAULT rounds, lengths drawn around ISL and OSL


def ingest_prompts(clients: int, rounds: float, bursts: bool = False) -> float:
    """The prompts a prompt waits for at the server's front end (Overheads.ingest_ms), its own included, a mean over
    a benchmark's rounds: the first round's C prompts arrive together, (C + 1) / 2 on average; a later round's come
    one at a time, the clients having drifted apart (the steady state), so a prompt waits for its own alone; every
    round is like the first when the clients stay in lockstep (`bursts`)."""
    together = (clients + 1) / 2
    return together if bursts else (together + rounds - 1) / rounds


def agg_benchmark(sp: StepPricer, concurrency: int, isl: int, osl: int, bench: Benchmark = CLIENT,
                  clients: int | None = None) -> dict:
    """What a benchmark client at `concurrency` measures: its first round is a burst (every client at once,
    agg_burst), the rounds after it the steady state (agg_steady_state); TTFT and TPOT are means over all
    `bench`'s requests, TTFT plus the engine's time per request outside its steps.
    `clients`: all the clients the server's front end takes prompts from (default `concurrency`; more when the
    engine's attention-DP ranks share one front end). With fixed lengths (or OSL 1) on an engine that prefills
    first, the clients stay in lockstep (_lockstep)."""
    rounds = max(1.0, bench.total(concurrency) / concurrency)
    lockstep = not sp.ov.mixed_prefill and (bench.fixed_lengths or osl <= 1)   # nothing decodes between prompts
    waiting = ingest_prompts(clients or concurrency, rounds, bursts=lockstep)

    def delivered(ttft: float, tpot: float) -> float:   # the engine's time outside its steps, the prompt's way in
        return ttft + sp.ov.first_token_ms(tpot) + sp.ov.ingest_ms(isl, waiting)

    if lockstep:
        state = _lockstep(sp, concurrency, isl, osl)
        ttft = delivered(state["ttft_ms"], state["tpot_ms"])
        return dict(state, ttft_ms=ttft, rounds=rounds, ingest_prompts=waiting,
                    request_latency_ms=state["request_latency_ms"] - state["ttft_ms"] + ttft)
    steady = agg_steady_state(sp, concurrency, isl, osl, rounds)
    burst = agg_burst(sp, steady["running"], isl, osl, steady["steps"]["decode_only"]["step_ms"] or steady["tpot_ms"])
    tpot = steady["tpot_ms"] + (burst["extra_decode_ms"] / (osl - 1) / rounds if osl > 1 else 0.0)
    ttft = delivered((burst["ttft_ms"] + (rounds - 1) * steady["ttft_ms"]) / rounds, tpot)
    out = dict(steady, ttft_ms=ttft, tpot_ms=tpot, rounds=rounds, ingest_prompts=waiting,
               request_latency_ms=steady["request_latency_ms"] - steady["ttft_ms"] + ttft)
    out["steps"] = dict(steady["steps"], burst={"count": burst["steps"], "step_ms": burst["step_ms"],
                                                "ttft_ms": burst["ttft_ms"]})
    return out


def agg_burst(sp: StepPricer, running: int, isl: int, osl: int, decode_step_ms: float) -> dict:
    """The benchmark's first round: `running` requests sent at once (a benchmark client starts all its clients
    together). Their prompts go through full-budget steps first come first served; the requests whose prefill is
    done decode in the same steps (decodes first), on average half of them, so each step carries K - R/2 prompt
    tokens. Request k's first token comes at step ceil(k x ISL / (K - R/2)); after it, it decodes in the burst's
    remaining steps, slower than a decode-only step by (burst step - decode_step_ms) each. An engine that prefills
    first (mixed_prefill false) runs every prompt in prefill-only steps of the whole budget before any decode, so
    request k waits the steps after its first token for the prompts behind it."""
    budget = sp.ov.max_tokens_per_step
    R = running
    prompt_tokens = R * isl
    if not sp.ov.mixed_prefill:
        take = step_prompt_tokens(sp.ov, budget, isl)
        steps = math.ceil(prompt_tokens / take)
        t_step = _prefill_step_ms(sp, prompt_tokens / steps, isl, osl)
        first = [math.ceil(k * isl / take) for k in range(1, R + 1)]
        return {"ttft_ms": t_step * sum(first) / R, "extra_decode_ms": t_step * sum(steps - s for s in first) / R,
                "steps": steps, "step_ms": t_step}
    if prompt_tokens + R <= budget:   # one step holds every prompt
        steps, per_step, decodes = 1, prompt_tokens, 0.0
    else:
        decodes = R / 2
        per_step = step_prompt_tokens(sp.ov, budget - decodes, isl)
        steps = math.ceil(prompt_tokens / per_step)
    outputs = decodes + R / steps
    t_step = sp.mixed_step_ms(decodes, min(per_step, prompt_tokens), outputs,
                              R * sp.prompt_attention_ms(isl) / steps, isl, osl)
    first = [math.ceil(k * isl / per_step) for k in range(1, R + 1)]
    slower = max(0.0, t_step - decode_step_ms)
    extra = sum(min(steps - s, osl - 1) for s in first) * slower / R
    return {"ttft_ms": t_step * sum(first) / R, "extra_decode_ms": extra, "steps": steps, "step_ms": t_step}


def simulate_agg(sp: StepPricer, concurrency: int, isl: int, osl: int, requests: int | None = None,
                 start: str = "staggered", range_ratio: float = 1.0, seed: int = 0) -> dict:
    """The request-level reference: C closed-loop clients, `requests` in all (default 4 x C), every step scheduled
    (decodes first, then prefill chunks first come first served under the budget, whole prompts only where chunked
    prefill is off) and priced at its shape.
    start="staggered": client i starts at step i x OSL / C, and the means are over the requests after the first C
    (warm-up) and before the last C (the drain): the steady state. start="burst": every client starts at once and
    the means are over every request, as a benchmark client reports them. range_ratio < 1 draws each request's
    lengths uniformly from [ratio x L, L] (a benchmark's random dataset); steps are priced at the mean lengths."""
    ov = sp.ov
    budget, max_seqs = ov.max_tokens_per_step, ov.max_num_seqs
    total = requests or 4 * concurrency
    burst = start == "burst"
    rng = random.Random(seed)

    def draw(length: int) -> int:
        return length if range_ratio >= 1 else rng.randint(max(1, math.ceil(range_ratio * length)), length)

    mean_isl = isl if range_ratio >= 1 else round((1 + range_ratio) / 2 * isl)
    mean_osl = osl if range_ratio >= 1 else round((1 + range_ratio) / 2 * osl)
    start_step = {i: 0 if burst else i * osl // concurrency for i in range(concurrency)}
    waiting: deque = deque()
    running: list[dict] = []
    done: list[dict] = []
    sent, now, step, held = 0, 0.0, 0, 0

    def send(client: int) -> None:
        nonlocal sent
        waiting.append({"client": client, "arrival": now, "prefilled": 0, "tokens": [], "id": sent,
                        "isl": draw(isl), "osl": draw(osl)})
        sent += 1

    while len(done) < total:
        for client, s in list(start_step.items()):
            if s <= step and sent < total:
                send(client)
                del start_step[client]
        polls = not running or step % ov.recv_interval_steps == 0   # an idle engine polls at once
        while polls and waiting and len(running) < max_seqs:
            running.append(waiting.popleft())
        decoding = [r for r in running if r["prefilled"] == r["isl"]]
        if not ov.mixed_prefill and any(r["prefilled"] < r["isl"] for r in running):
            decoding = []   # prefill first: a step with prompts to prefill runs them alone
        room = budget - len(decoding)
        chunks = []
        for r in running:
            if r["prefilled"] < r["isl"] and room > 0:
                left = r["isl"] - r["prefilled"]
                if not ov.chunked_prefill and left > room and chunks:
                    break   # whole prompts only, first come first served (at least one a step)
                c = left if not ov.chunked_prefill else min(left, room)
                chunks.append((r, c))
                room -= c
        n = len(decoding)
        if chunks and decoding and ov.holds_prompts():   # the engine may hold the prompts back (batch_wait_*)
            if held < ov.batch_wait_steps and sum(c for _, c in chunks) + n < ov.batch_wait_token_ratio * budget:
                chunks, held = [], held + 1
            else:
                held = 0
        if chunks:
            finishing = sum(1 for r, c in chunks if r["prefilled"] + c == r["isl"])
            attention = sum(sp.chunk_attention_ms(r["prefilled"], c) for r, c in chunks)
            dt = sp.mixed_step_ms(n, sum(c for _, c in chunks), n + finishing, attention, mean_isl, mean_osl)
        elif n:
            dt = sp.decode_step_ms(n, mean_isl, mean_osl)
        else:
            step += 1
            continue
        now += dt
        step += 1
        for r in decoding:
            r["tokens"].append(now)
        for r, c in chunks:
            r["prefilled"] += c
            if r["prefilled"] == r["isl"]:
                r["tokens"].append(now)
        for r in [r for r in running if len(r["tokens"]) == r["osl"]]:
            running.remove(r)
            done.append(r)
            if sent < total:
                send(r["client"])
    measured = done if burst else [r for r in done if concurrency <= r["id"] < total - concurrency] or done
    ttft = sum(r["tokens"][0] - r["arrival"] for r in measured) / len(measured)
    gaps = [(r["tokens"][-1] - r["tokens"][0]) / (r["osl"] - 1) for r in measured if r["osl"] > 1] or [0.0]
    latency = sum(r["tokens"][-1] - r["arrival"] for r in measured) / len(measured)
    return {"ttft_ms": ttft, "tpot_ms": sum(gaps) / len(gaps), "request_latency_ms": latency}


# ---------------------------------------------------------------------------------------------
# estimates
# ---------------------------------------------------------------------------------------------


def figures(out: dict, requests_per_s: float, osl: int, gpus: int) -> dict:
    """TTFT, TPOT and latency of `out` with the throughput of `requests_per_s` requests of OSL tokens on `gpus`."""
    tokens_per_s = requests_per_s * osl
    return {"ttft_ms": out["ttft_ms"], "tpot_ms": out["tpot_ms"], "request_latency_ms": out["request_latency_ms"],
            "tokens_per_s": tokens_per_s, "tokens_per_s_per_gpu": tokens_per_s / gpus,
            "tokens_per_s_per_user": 1e3 / out["tpot_ms"] if out["tpot_ms"] > 0 else 0.0}


_STEP_PRICERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Estimator -> {(plan, engine): StepPricer}


def step_pricer(est, plan: Plan, engine: EngineSettings | None = None) -> StepPricer:
    """The plan's StepPricer under the engine's launch settings, kept as long as its Estimator so a sweep prices
    each shape once."""
    cache = _STEP_PRICERS.setdefault(est, {})
    key = (plan, engine)
    sp = cache.get(key)
    if sp is None:
        sp = cache[key] = StepPricer(est, plan, est.overheads.with_settings(engine))
    return sp


def agg_run(est, plan: Plan, concurrency: int, isl: int, osl: int, engine: EngineSettings | None,
            bench: Benchmark = CLIENT, steps: StepPricer | None = None, tokens_per_step: float = 1.0):
    """One agg point: its compact row, agg_benchmark's output and the step pricer, the memory checked. `steps`: a
    step pricer whose decode steps each give a request `tokens_per_step` tokens (speculative decoding), in place of
    the plan's own; a request then needs 1 + (OSL - 1) / tokens_per_step decode steps, TPOT is per token."""
    sp = step_pricer(est, plan, engine)
    per_rank = math.ceil(require_int("batch", concurrency) / plan.dp)
    running = min(per_rank, sp.ov.max_num_seqs)
    mem = _check_fits(est, plan, running, isl, osl, f"agg TP{plan.tp} PP{plan.pp} EP{plan.ep} DP{plan.dp}")
    decode_steps = osl if steps is None else 1 + (osl - 1) / tokens_per_step
    out = agg_benchmark(steps or sp, per_rank, isl, decode_steps, bench.per_rank(plan.dp),
                        clients=concurrency)
    out = dict(out, tpot_ms=out["tpot_ms"] / tokens_per_step)
    row = {"mode": "agg", "tp": plan.tp, "pp": plan.pp, "ep": plan.ep, "dp": plan.dp, "gpus": plan.gpus,
           "batch": concurrency, "isl": isl, "osl": osl,
           **figures(out, out["requests_per_s"] * plan.dp, osl, plan.gpus),
           "memory_per_gpu_bytes": mem["total_bytes"], "fits": True}
    return row, out, sp


def agg_point(est, plan: Plan, concurrency: int, isl: int, osl: int, engine: EngineSettings | None = None,
              bench: Benchmark = CLIENT) -> dict:
    """The compact figures of one agg point (what sweep returns); concurrency C is split over the DP ranks."""
    return agg_run(est, plan, concurrency, isl, osl, engine, bench)[0]


FIGURES = ("ttft_ms", "tpot_ms", "request_latency_ms", "tokens_per_s", "tokens_per_s_per_gpu",
            "tokens_per_s_per_user")


def agg_estimate(est, plan: Plan, concurrency: int, isl: int, osl: int,
                 engine: EngineSettings | None = None, bench: Benchmark = CLIENT) -> dict:
    row, out, sp = agg_run(est, plan, concurrency, isl, osl, engine, bench)
    result = est.estimate(plan, out["running"], isl, osl)
    result.update({k: row[k] for k in FIGURES})
    result["inputs"]["batch"] = concurrency
    result["mode"] = "agg"
    result["serving"] = {
        "model": ("analytic: every round sent at once, as fixed lengths keep an engine that prefills first in "
                  "lockstep" if out["steps"].get("lockstep") else
                  "analytic: a first round sent at once, then the steady state") + "; checked against a "
                 "request-level simulation",
        "concurrency": concurrency, "concurrency_per_rank": math.ceil(concurrency / plan.dp),
        "requests": bench.total(concurrency), "rounds": out["rounds"], "ingest_prompts": out["ingest_prompts"],
        "fixed_lengths": bench.fixed_lengths,
        "benchmark_range_ratio": None if bench.fixed_lengths else BENCHMARK_RANGE_RATIO,
        "running_per_rank": out["running"], "queue_ms": out["queue_ms"],
        "max_tokens_per_step": sp.ov.max_tokens_per_step, "steps": out["steps"],
        "overheads": sp.ov.to_json(),
    }
    return result


def static_estimate(est, plan: Plan, batch: int, isl: int, osl: int) -> dict:
    result = est.estimate(plan, batch, isl, osl)
    result["mode"] = "static"
    result["serving"] = {"model": "one static batch: prefilled together, then decoded together; kernel time only",
                         "concurrency": batch}
    return result


_KV_PAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Estimator -> {(tp, pp, isl): (bytes, page)}


def _kv_transfer(est, prefill: Plan, decode: Plan, workers: tuple[int, int], isl: int) -> dict:
    pages = _KV_PAGES.setdefault(est, {})
    key = (prefill.tp, prefill.pp, isl)
    if key not in pages:   # one KV report per prefill shape, however many pools a search tries
        report = kv_report(est.model, tp=prefill.tp, pp=prefill.pp, kv_dtype=est.kv_cache_dtype, seq_len=isl,
                           matched=est.matched)
        pages[key] = (float(report["sequence"]["paged_bytes_per_rank"]), report["page_size"])
    nbytes, page_size = pages[key]
    gpus = workers[0] * prefill.gpus + workers[1] * decode.gpus
    cross = gpus > est.db.system.gpus_per_node
    price = est.db.p2p(nbytes, cross_node=cross)
    return {"bytes_per_rank": nbytes, "page_size": page_size, "cross_node": cross,
            "link": "network" if cross else est.db.system.intra_node_link, "ms": price.latency_ms}


def disagg_estimate(est, prefill: Plan, decode: Plan, concurrency: int, isl: int, osl: int, *,
                    prefill_workers: int = 1, decode_workers: int = 1, prefill_batch: int | None = None,
                    engine: EngineSettings | None = None, bench: Benchmark = CLIENT,
                    full: bool = True) -> dict:
    """x prefill workers and y decode workers at `concurrency` clients (see the module docstring). prefill_batch:
    the most prompts a prefill rank batches; None: those its token budget fits (prompts_per_step)."""
    x, y = require_int("prefill-workers", prefill_workers), require_int("decode-workers", decode_workers)
    rounds = max(1.0, bench.total(concurrency) / concurrency)
    for plan in (prefill, decode):
        est.ops(plan, "prefill")
        est.ops(plan, "decode")
    sp_p = step_pricer(est, prefill, engine)
    sp_d = step_pricer(est, decode, engine)
    prefill_batch = (prompts_per_step(sp_p.ov.max_tokens_per_step, isl) if prefill_batch is None
                     else require_int("prefill-batch", prefill_batch))
    # a decode rank runs at most max_num_seqs requests; the clients beyond the pool's slots wait for one
    per_worker = min(math.ceil(concurrency / (y * decode.dp)), sp_d.ov.max_num_seqs)
    decode_slots = y * decode.dp * per_worker
    _check_fits(est, prefill, prefill_batch, isl, 1, f"disagg prefill pool TP{prefill.tp}")
    _check_fits(est, decode, per_worker, isl, osl, f"disagg decode pool TP{decode.tp}")
    ov_p = sp_p.ov
    take = step_prompt_tokens(ov_p, ov_p.max_tokens_per_step, isl)   # the prompt tokens of one prefill step

    def batch_ms(b: int) -> float:   # b prompts in budget-sized steps
        steps = math.ceil(b * isl / take)
        return (ov_p.disagg_kernel_scale * est.prefill_ms(prefill, b, isl)
                + steps * ov_p.step_overhead_ms(b, graph=False))

    t_full = batch_ms(prefill_batch)
    xfer = _kv_transfer(est, prefill, decode, (x, y), isl)
    prefill_rate = x * prefill.dp * prefill_batch / t_full
    decode_rate = (decode_slots / ((osl - 1) * sp_d.decode_step_ms(per_worker, isl, osl, pool=True)) if osl > 1
                   else math.inf)
    # after the first round a prefill rank takes the prompts that came while its last batch ran, up to prefill_batch
    # (all of it when the prefill pool sets the pace: prompts queue for it), and a decode rank runs the requests the
    # rate feeds it, the rate x their residence (Little's law; all its slots where the decode pool sets the pace): a
    # fixed point, the decode batch only shrinking from its slots (where a captured graph size makes it swing between
    # two counts, the smaller)
    batch, running = 1, per_worker
    for _ in range(30):
        t_prefill, t_decode = batch_ms(batch), sp_d.decode_step_ms(running, isl, osl, pool=True)
        handoff = sp_d.ov.handoff(t_decode)
        unloaded = t_prefill + xfer["ms"] + handoff + (osl - 1) * t_decode
        rate = min(prefill_rate, decode_rate, concurrency / unloaded)
        came = prefill_batch if rate >= prefill_rate else min(
            prefill_batch, max(1, math.ceil(rate / (x * prefill.dp) * t_prefill)))
        fed = running if rate >= decode_rate else min(
            running, max(1, math.ceil(rate / (y * decode.dp) * (osl - 1) * t_decode)))
        if (came, fed) == (batch, running):
            break
        batch, running = came, fed
    queue = concurrency / rate - unloaded
    # the first round arrives at once: full batches of every worker in turn, the j-th batch's prompts wait j - 1;
    # fewer clients than a batch per rank prefill in one batch of theirs
    slots = x * prefill.dp * prefill_batch
    batches = math.ceil(concurrency / slots)
    burst_wait = t_full * sum(min(slots, concurrency - j * slots) * j for j in range(batches)) / concurrency
    t_first = batch_ms(min(prefill_batch, math.ceil(concurrency / (x * prefill.dp))))
    # and the first round's requests beyond the decode slots wait for the first ones to finish
    slot_wait = max(0, concurrency - decode_slots) / concurrency * (osl - 1) * t_decode
    waiting = ingest_prompts(concurrency, rounds)
    ttft = (((t_first + burst_wait + slot_wait) + (rounds - 1) * (t_prefill + queue)) / rounds + xfer["ms"] + handoff
            + sp_d.ov.first_token_ms(t_decode) + sp_d.ov.ingest_ms(isl, waiting))
    gpus = x * prefill.gpus + y * decode.gpus
    out = {"ttft_ms": ttft, "tpot_ms": t_decode,
           "request_latency_ms": ttft + (osl - 1) * t_decode}
    row = {"mode": "disagg", "tp": decode.tp, "pp": decode.pp, "ep": decode.ep, "dp": decode.dp, "gpus": gpus,
           "batch": concurrency, "isl": isl, "osl": osl, **figures(out, rate * 1e3, osl, gpus),
           "memory_per_gpu_bytes": est.memory(decode, per_worker, isl, osl)["total_bytes"], "fits": True}
    if not full:
        return row
    result = est.estimate(decode, per_worker, isl, osl)
    result.update({k: row[k] for k in FIGURES})
    result["inputs"]["batch"] = concurrency
    result["mode"] = "disagg"
    result["serving"] = {
        "model": ("analytic: the slower pool's rate, a decode rank running the requests that rate feeds it, KV moved "
                  "after prefill and overlapped with other work"),
        "concurrency": concurrency, "gpus": gpus,
        "prefill": {"workers": x, "plan": prefill.to_json(), "batch": prefill_batch, "steady_batch": batch,
                    "step_ms": t_prefill, "full_batch_ms": t_full, "requests_per_s": prefill_rate * 1e3},
        "decode": {"workers": y, "plan": decode.to_json(), "batch_per_worker": per_worker, "slots": decode_slots,
                   "running_per_worker": running, "step_ms": t_decode,
                   "requests_per_s": decode_rate * 1e3 if decode_rate != math.inf else None},
        "kv_transfer": xfer, "handoff_ms": handoff, "queue_ms": queue,
        "first_round_wait_ms": burst_wait + slot_wait,
        "requests": bench.total(concurrency), "rounds": rounds, "ingest_prompts": waiting,
        "bottleneck": "prefill" if prefill_rate <= decode_rate else "decode",
        "overheads": sp_d.ov.to_json(),
    }
    return result


def mode_estimate(est, mode: str, plan: Plan, batch: int, isl: int, osl: int, *,
                  engine: EngineSettings | None = None, prefill_plan: Plan | None = None,
                  prefill_workers: int = 1, decode_workers: int = 1, prefill_batch: int | None = None,
                  bench: Benchmark = CLIENT) -> dict:
    """One estimate in `mode` (static, agg, disagg); for disagg, `plan` is the decode pool's, `prefill_plan` the
    prefill pool's (default the same)."""
    mode = check_mode(mode)
    if mode == "static":
        return static_estimate(est, plan, batch, isl, osl)
    if mode == "agg":
        return agg_estimate(est, plan, batch, isl, osl, engine, bench)
    return disagg_estimate(est, prefill_plan or plan, plan, batch, isl, osl, prefill_workers=prefill_workers,
                           decode_workers=decode_workers, prefill_batch=prefill_batch,
                           engine=engine, bench=bench)


def point_function(est, mode: str, *, engine: EngineSettings | None = None, prefill_plan: Plan | None = None,
                   prefill_workers: int = 1, decode_workers: int = 1, prefill_batch: int | None = None,
                   bench: Benchmark = CLIENT):
    """(plan, batch, isl, osl) -> the compact row of one sweep point in `mode`."""
    mode = check_mode(mode)
    if mode == "static":
        return lambda plan, b, s, o: {"mode": "static", **est.point(plan, b, s, o)}
    if mode == "agg":
        return lambda plan, b, s, o: agg_point(est, plan, b, s, o, engine, bench)
    return lambda plan, b, s, o: disagg_estimate(
        est, prefill_plan or plan, plan, b, s, o, prefill_workers=prefill_workers, decode_workers=decode_workers,
        prefill_batch=prefill_batch, engine=engine, bench=bench, full=False)
