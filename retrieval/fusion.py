"""Weighted Reciprocal Rank Fusion: several ranked lists in, one ranked list out.

    score(d) = Σ_s  w_s / (k + rank_s(d))        rank_s counts from 1; k = 60 by default

(Cormack, Clarke & Büttcher, SIGIR 2009). Documents are identified by memory id, never
by text, so two memories with the same words stay two results, and one memory found by
both the vector search and the graph expansion is one result with both ranks kept, so a
caller can explain why it ranked where it did. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_K = 60


@dataclass(frozen=True)
class Fused:
    id: str
    score: float
    ranks: Mapping[str, int | None] = field(default_factory=dict)  # source → 1-based rank, None if absent


def fuse(
    ranked: Mapping[str, Sequence[str]],
    *,
    weights: Mapping[str, float] | None = None,
    k: int = DEFAULT_K,
    limit: int | None = None,
) -> list[Fused]:
    """Fuse `ranked` (source name → ids, best first) into one list, best first.

    A source's repeated id counts once, at its best rank. Ties break by the best single
    rank, then by id, so the order is deterministic.
    """
    if k < 1:
        raise ValueError(f"RRF k must be at least 1, got {k}")
    weights = weights or {}
    scores: dict[str, float] = {}
    ranks: dict[str, dict[str, int]] = {}
    for source, ids in ranked.items():
        weight = weights.get(source, 1.0)
        if weight < 0:
            raise ValueError(f"weight of {source!r} must not be negative, got {weight}")
        seen: set[str] = set()
        for position, memory_id in enumerate(ids, start=1):
            if memory_id in seen:
                continue
            seen.add(memory_id)
            scores[memory_id] = scores.get(memory_id, 0.0) + weight / (k + position)
            ranks.setdefault(memory_id, {})[source] = position
    order = sorted(scores, key=lambda i: (-scores[i], min(ranks[i].values()), i))
    if limit is not None:
        order = order[:limit]
    return [Fused(i, scores[i], {s: ranks[i].get(s) for s in ranked}) for i in order]
