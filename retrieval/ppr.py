"""Personalized PageRank by local forward push (Andersen, Chung and Lang, FOCS 2006).

The walk restarts at the seeds with probability `alpha` at every step; a node's score is
the probability of being there when the walk stops. Forward push never touches the whole
graph: every node holds an estimate `p` and a residual `r` (mass not yet spread, all on
the seeds at first); pushing a node moves `alpha * r[u]` into `p[u]` and spreads the rest
over its out-edges. Only nodes whose residual exceeds `epsilon` times their degree are
pushed, and each push removes at least `alpha * epsilon * deg(u)` of residual mass from a
total of 1, so the edge operations of one walk are at most `1 / (alpha * epsilon)`,
whatever the graph's size. `max_edge_ops` is a hard ceiling on top of that bound (for
explicit neighbour lists the caller did not cap), and the result says whether it was hit.

The phrase-memory graph the walk runs on is `PhraseGraph` (kept up to date by
`retrieval.derived_graph`); its transition rule is here, beside the walk. A memory leaves
for its phrases in proportion to their idf, log(1 + N/df), or, when the caller's explicit
links name any, sends `EXPLICIT_SHARE` along those; a phrase sends `NAMES_SHARE` to the
memories it names and the rest evenly to the memories mentioning it.

Pure: the graph comes in as a `neighbours` function returning the nodes a node leads to
and the probability of moving to each (summing to 1; none: a dangling node keeps its
mass). The push order is first-in first-out from the seeds sorted by (weight desc, node),
so the same graph and seeds give the same scores, bit for bit.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Edges = tuple[Sequence[int], Sequence[float]]  # neighbours, and the probability of moving to each
Neighbours = Callable[[int], Edges]

DEFAULT_ALPHA = 0.15  # PageRank's classic 0.85 damping; beat HippoRAG's 0.5 on both multi-hop sets
DEFAULT_EPSILON = 1e-3
DEFAULT_MAX_EDGE_OPS = 20_000
NAMES_SHARE = 0.5  # of a phrase's outgoing mass, to the memories it names
EXPLICIT_SHARE = 0.5  # of a memory's outgoing mass, to its explicit links when it has any
HIT_SHARE = 0.05  # of the seed mass on the caller's lexical/vector hits (see mix_seeds)

Explicit = Callable[[int], Sequence[int]] | Mapping[int, Sequence[int]]


@dataclass(frozen=True, slots=True)
class Walk:
    """Scores of the nodes reached, and what the walk cost."""

    scores: dict[int, float]
    pushes: int
    edge_ops: int
    capped: bool  # stopped by `max_edge_ops` before every residual fell under its threshold


def push(
    seeds: Mapping[int, float],
    neighbours: Neighbours,
    alpha: float = DEFAULT_ALPHA,
    epsilon: float = DEFAULT_EPSILON,
    max_edge_ops: int = DEFAULT_MAX_EDGE_OPS,
    degree: Callable[[int], int] | None = None,
) -> Walk:
    """Approximate PPR from `seeds` (weights, normalised here; non-positive ones ignored).

    `degree` (cheap, at least 1) spares building the edges of a node that turns out to hold
    too little residual to push; without it every node reached has its edges built.
    """
    if not 0 < alpha <= 1 or epsilon <= 0:
        raise ValueError(f"alpha {alpha} must be in (0, 1] and epsilon {epsilon} > 0")
    start = sorted(((n, w) for n, w in seeds.items() if w > 0), key=lambda nw: (-nw[1], nw[0]))
    total = sum(w for _, w in start)
    if not start:
        return Walk({}, 0, 0, False)
    residual = {n: w / total for n, w in start}
    estimate: dict[int, float] = {}
    degrees: dict[int, int] = {}
    degree_of = degree or (lambda node: max(1, len(neighbours(node)[0])))
    edges: dict[int, Edges] = {}
    queue = deque(n for n, _ in start)
    queued = set(queue)
    pushes = ops = 0
    while queue and ops < max_edge_ops:
        node = queue.popleft()
        queued.discard(node)
        mass = residual.pop(node)
        out = edges.get(node)
        if out is None:
            out = edges[node] = neighbours(node)
        targets, probabilities = out
        estimate[node] = estimate.get(node, 0.0) + (alpha * mass if targets else mass)
        pushes += 1
        spread = (1 - alpha) * mass
        for other, probability in zip(targets, probabilities, strict=True):
            r = residual.get(other, 0.0) + spread * probability
            residual[other] = r
            if other in queued:
                continue
            d = degrees.get(other)
            if d is None:
                d = degrees[other] = degree_of(other)
            if r > epsilon * d:
                queue.append(other)
                queued.add(other)
        ops += len(targets)
    # What is left in a residual reaches its own node with probability >= alpha: count that
    # share too (still a lower bound of the exact PPR, and a tighter one).
    for node, mass in residual.items():
        estimate[node] = estimate.get(node, 0.0) + alpha * mass
    return Walk(estimate, pushes, ops, bool(queue))


def ranked(scores: Mapping[int, float], limit: int, keep: Callable[[int], bool]) -> list[tuple[int, float]]:
    """The `limit` best nodes that `keep` accepts, by score desc then node asc."""
    chosen = [(n, s) for n, s in scores.items() if keep(n)]
    chosen.sort(key=lambda ns: (-ns[1], ns[0]))
    return chosen[:limit]


def mix_seeds(
    phrase_seeds: Mapping[int, float], hits: Mapping[int, float], hit_share: float = HIT_SHARE
) -> dict[int, float]:
    """Seeds for a walk: `hit_share` of the mass on lexical/vector hits (by score), the rest on phrases.

    When one side is empty the other gets all of it. HippoRAG 2 weighs passage seeds 0.05
    against its phrase seeds, and for the reason measured here: a seed keeps at least
    `alpha` of its mass, so heavy hit seeds only hand back the hits' own ranking.
    """
    phrase_total = sum(w for w in phrase_seeds.values() if w > 0)
    hit_total = sum(w for w in hits.values() if w > 0)
    if phrase_total <= 0 or hit_total <= 0:
        hit_share = 0.0 if hit_total <= 0 else 1.0
    seeds = {n: (1 - hit_share) * w / phrase_total for n, w in phrase_seeds.items() if w > 0}
    for node, weight in hits.items():
        if weight > 0:
            seeds[node] = seeds.get(node, 0.0) + hit_share * weight / hit_total
    return seeds


@dataclass
class PhraseGraph:
    """One namespace's phrase-memory graph: postings both ways, and what each memory contributed.

    Phrase nodes are negative, memory nodes positive; a phrase over `max_df` is in `common`
    and has no postings left.
    """

    mentions: dict[int, set[int]] = field(default_factory=dict)  # phrase → memories mentioning it
    named: dict[int, set[int]] = field(default_factory=dict)  # phrase → memories it names
    common: set[int] = field(default_factory=set)  # phrases over max_df, dropped for good
    phrases: dict[int, array] = field(default_factory=dict)  # memory → its phrase nodes, sorted
    names: dict[int, array] = field(default_factory=dict)  # memory → its name nodes, sorted

    def is_node(self, node: int) -> bool:
        if node > 0:
            return node in self.phrases
        return node not in self.common and (node in self.mentions or node in self.named)

    def idf(self, phrase: int) -> float:
        return math.log1p(len(self.phrases) / (len(self.mentions.get(phrase, ())) or 1))

    def degree(self, node: int) -> int:
        """Edges out of a node, counted without building them (the push threshold's degree)."""
        if node > 0:
            return max(1, len(self.phrases.get(node, ())) + len(self.names.get(node, ())))
        return max(1, len(self.mentions.get(node, ())) + len(self.named.get(node, ())))

    def neighbours(self, explicit: Explicit | None = None) -> Neighbours:
        """The transition rule (module docstring), with the caller's explicit links."""
        mentions, named, common, memories, linked_to = (
            self.mentions,
            self.named,
            self.common,
            self.phrases,
            _explicit_of(explicit),
        )
        size = len(memories)

        def memory(node: int) -> Edges:
            weights: dict[int, float] = {}
            for phrase in (*memories.get(node, ()), *self.names.get(node, ())):
                holders = mentions.get(phrase)  # absent: common, or only a name
                if holders is not None:
                    weights[phrase] = math.log1p(size / len(holders))
                elif phrase in named and phrase not in common:
                    weights[phrase] = math.log1p(size)
            linked = sorted({k for k in linked_to(node) if k in memories and k != node})
            total = sum(weights.values())
            nodes, probabilities = list(weights), [w / total for w in weights.values()]
            if linked:
                keep = 1.0 - EXPLICIT_SHARE if nodes else 0.0
                nodes += linked
                probabilities = [p * keep for p in probabilities] + [(1.0 - keep) / len(linked)] * len(linked)
            return nodes, probabilities

        def phrase(node: int) -> Edges:
            if node in common:
                return (), ()
            names, mentioning = sorted(named.get(node, ())), sorted(mentions.get(node, ()))
            if not names or not mentioning:
                both = names or mentioning
                return both, [1.0 / len(both)] * len(both) if both else []
            share, rest = NAMES_SHARE / len(names), (1 - NAMES_SHARE) / len(mentioning)
            return names + mentioning, [share] * len(names) + [rest] * len(mentioning)

        return lambda node: memory(node) if node > 0 else phrase(node)


def _explicit_of(explicit: Explicit | None) -> Callable[[int], Sequence[int]]:
    if explicit is None:
        return lambda _: ()
    if isinstance(explicit, Mapping):
        return lambda key: explicit.get(key, ())
    return explicit
