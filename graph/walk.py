"""Following data flow from a node: the one walk that patterns and graph building use to look past views, casts
and other ops that leave a value as it is (to the weight a GEMM reads, the GEMM an expert's activation feeds...).

A walk is breadth first and stays local: it steps on only from the nodes its `through` predicate accepts, and at
most MAX_HOPS steps from where it started.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator

# How far a walk looks, in steps from where it starts. What a pattern looks for is near: on the models checked
# (Llama-3.1-8B, DeepSeek-V3, Qwen3-30B-A3B, Jamba, Gemma 3, Falcon-Mamba, Qwen3-Next, BLOOM) the farthest is 7 steps,
# from an MLA kernel's K back past the cache append and the latent's norm to its projections (DeepSeek-V3 decode),
# and every limit from 7 to 1000 matches them alike. 32 leaves room for longer chains of views and casts, and keeps
# a walk whose `through` ops go on (a residual stream of adds and norms) from crossing whole layers.
MAX_HOPS = 32


def follow(starts: Iterable[Hashable], step: Callable[[Hashable], Iterable[Hashable]],
           through: Callable[[Hashable], bool], hops: int = MAX_HOPS) -> Iterator[Hashable]:
    """Every node reached from `starts`, each once, nearest first (then in the order `step` gives them): `step`
    (a node's inputs or users) is taken from each reached node that `through` accepts, up to `hops` steps away."""
    queue, seen = deque((n, 0) for n in starts), set()
    while queue:
        n, depth = queue.popleft()
        if n in seen:
            continue
        seen.add(n)
        yield n
        if depth < hops and through(n):
            queue.extend((m, depth + 1) for m in step(n))


def follow_until(starts: Iterable[Hashable], step: Callable[[Hashable], Iterable[Hashable]],
                 through: Callable[[Hashable], bool], until: Callable[[Hashable], bool] | None = None,
                 hops: int = MAX_HOPS) -> tuple[Hashable | None, list]:
    """The first node reached for which `until` holds (not walked past; by default the first node `through` does not
    accept), and the nodes `through` accepted on the way to it, in the order reached. (None, those nodes) where
    the walk ends first."""
    until = until or (lambda n: not through(n))
    passed = []
    for n in follow(starts, step, lambda n: not until(n) and through(n), hops):
        if until(n):
            return n, passed
        if through(n):
            passed.append(n)
    return None, passed
