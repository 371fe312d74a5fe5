"""One query's legs, run at once, each under its own timeout, and fused.

    vector   embed the query (as a query) → the namespace's faiss index
    lexical  BM25 over the namespace's memory texts (`LexicalIndexes`)
    graph    seeds → a personalized-PageRank walk over the text-derived graph and the
             callers' explicit links (`DerivedGraph.walk`). Seeds: the memories that name
             the query's rare terms (`EntityIndex`), the query's phrases found in the graph,
             and the best lexical and vector hits -- so the graph leg waits for those two
             (each bounded by its own timeout), then walks in process. On the hybrid path
             the walk is where the legs meet: it ranks what the hits and the phrases lead to.

A leg that times out or fails is left out and named in `failed`; the others still
answer. `fuse_legs` merges what answered with weighted Reciprocal Rank Fusion, keeping
every leg's rank. Everything here reads the retriever's in-process state and does no
I/O but the engines' own (faiss and the lexical engine in worker threads).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import numpy as np
import structlog

from retrieval.derived_graph import DerivedGraph
from retrieval.entities import EntityIndex
from retrieval.fusion import fuse
from retrieval.graph_store import GraphStore
from retrieval.lexical_indexes import LexicalIndexes
from retrieval.metrics import RetrievalMetrics
from retrieval.ppr import mix_seeds
from retrieval.vector_indexes import VectorIndexes

log = structlog.get_logger("rolloutd.retrieval")

LEGS = ("vector", "lexical", "graph")
Hit = tuple[int, float]


@dataclass(frozen=True)
class SearchSettings:
    weights: Mapping[str, float]
    rrf_k: int
    graph_seeds: int
    expand_limit: int
    timeouts: Mapping[str, float]  # leg → seconds


@dataclass
class LegResults:
    lists: dict[str, list[int]] = field(default_factory=dict)  # leg → keys, best first
    scores: dict[str, dict[int, float]] = field(default_factory=dict)  # leg → key → the leg's own score
    failed: list[str] = field(default_factory=list)  # "leg: why", for the answer's reasons


@dataclass(frozen=True)
class Legs:
    """What a query reads: the retriever's indexes, passed in (no copy is kept here)."""

    embed_query: Callable[[str], Awaitable[np.ndarray]]
    vectors: VectorIndexes
    lexical: LexicalIndexes
    entities: EntityIndex
    graph: DerivedGraph
    store: GraphStore
    metrics: RetrievalMetrics
    timer: Callable[[], float]

    async def run(self, s: SearchSettings, query: str, namespace: str, top_k: int, legs: Sequence[str]) -> LegResults:
        """Run `legs` for `query` concurrently; the graph leg seeds from the other two."""
        out = LegResults()
        done = {leg: anyio.Event() for leg in LEGS}
        depth = max(top_k, s.graph_seeds)

        async def leg(name: str, search: Callable[[], Awaitable[list[Hit]]]) -> None:
            timeout = s.timeouts[name]
            try:
                with anyio.move_on_after(timeout) as scope:
                    hits = await search()
                    out.lists[name] = [k for k, _ in hits]
                    out.scores[name] = dict(hits)
                if scope.cancelled_caught:
                    out.failed.append(f"{name}: timed out after {timeout * 1000:g} ms")
            except Exception as exc:  # noqa: BLE001  (one leg failing must not fail the others)
                out.failed.append(f"{name}: {type(exc).__name__}: {exc}")
                log.error("retrieval.source_failed", source=name, error=repr(exc))
            finally:
                done[name].set()

        async def graph() -> list[Hit]:
            # The seeds' legs run even when not granted as a leg of their own (the graph
            # path, or `legs` narrowed to the graph): they only choose where the walk starts,
            # never what is served, and the walk starts from the same seeds on every path.
            for name in ("vector", "lexical"):
                if name in legs:
                    await done[name].wait()
            lexical = out.lists.get("lexical")
            if lexical is None and "lexical" not in legs:
                lexical = [k for k, _ in await self.lexical.search(namespace, query, s.graph_seeds)]
            vector = out.lists.get("vector")
            if vector is None and "vector" not in legs:
                vector = await self.vector_seeds(s, namespace, query)
            seeds = self.seeds(s, namespace, query, lexical or [], vector or [])
            t = self.timer()
            walked = self.graph.walk(namespace, seeds, s.expand_limit * 2, explicit=self.store.neighbours)
            self.metrics.graph_queries.inc()
            self.metrics.stage.labels("graph").observe(self.timer() - t)
            return reached(walked, seeds, self.graph.alpha, s.expand_limit)

        async with anyio.create_task_group() as tg:
            if "vector" in legs:
                tg.start_soon(leg, "vector", lambda: self.vector(namespace, query, depth))
            if "lexical" in legs:
                tg.start_soon(leg, "lexical", lambda: self.lexical_hits(namespace, query, depth))
            if "graph" in legs:
                tg.start_soon(leg, "graph", graph)
        return out

    def seeds(
        self, s: SearchSettings, namespace: str, query: str, lexical: Sequence[int], vector: Sequence[int]
    ) -> dict[int, float]:
        """Where the walk starts: the query's phrases found in the graph, and the best hits.

        Hits are the memories naming the query's rare terms (`EntityIndex`) and the top
        `graph_seeds` lexical and vector hits, each weighing 1/(1 + rank) in its list;
        they get `HIT_SHARE` of the mass when the query has phrases in the graph, all of
        it when it has none (`ppr.mix_seeds`: heavier hit seeds only hand back the hits'
        own ranking).
        """
        hits: dict[int, float] = {}
        named = self.entities.seeds(namespace, query, s.graph_seeds)
        for ranked in (named, lexical[: s.graph_seeds], vector[: s.graph_seeds]):
            for rank, key in enumerate(ranked):
                hits[key] = hits.get(key, 0.0) + 1.0 / (1 + rank)
        return mix_seeds(self.graph.query_phrases(namespace, query), hits)

    async def vector_seeds(self, s: SearchSettings, namespace: str, query: str) -> list[int]:
        """The best vector hits for seeding only: within the vector leg's own timeout, and
        nothing (the walk starts from the rest) when the embedder fails or is slow."""
        with anyio.move_on_after(s.timeouts["vector"]):
            try:
                return [k for k, _ in await self.vector(namespace, query, s.graph_seeds)]
            except Exception as exc:  # noqa: BLE001  (seeding is best effort; the graph leg still answers)
                log.warning("retrieval.graph_seeds.vector_failed", error=repr(exc))
        return []

    async def vector(self, namespace: str, query: str, k: int) -> list[Hit]:
        if self.vectors.get(namespace) is None:
            return []
        t = self.timer()
        vector = await self.embed_query(query)
        t2 = self.timer()
        self.metrics.stage.labels("embed").observe(t2 - t)
        hits = await self.vectors.search(namespace, vector, k)
        self.metrics.stage.labels("vector").observe(self.timer() - t2)
        self.metrics.vector_searches.inc()
        return hits

    async def lexical_hits(self, namespace: str, query: str, k: int) -> list[Hit]:
        t = self.timer()
        hits = await self.lexical.search(namespace, query, k)
        self.metrics.stage.labels("lexical").observe(self.timer() - t)
        self.metrics.lexical_searches.inc()
        return hits


def reached(walked: Sequence[Hit], seeds: Mapping[int, float], alpha: float, limit: int) -> list[Hit]:
    """The walk's memories ranked by the mass the graph brought them: a seed keeps at least
    `alpha` of its own seed weight, which says only that another leg found it (and is
    counted there in the fusion), so that part is taken off; a seed nothing led back to
    drops out of the graph leg's list."""
    total = sum(w for w in seeds.values() if w > 0) or 1.0
    brought = [(key, score - alpha * seeds.get(key, 0.0) / total) for key, score in walked]
    kept = [(key, score) for key, score in brought if score > 1e-9]
    return sorted(kept, key=lambda h: (-h[1], h[0]))[:limit]


def fuse_legs(s: SearchSettings, found: LegResults, top_k: int) -> list[tuple[int, float, dict[str, int | None]]]:
    """(key, score, ranks per leg) best first: one leg's own order and score, or weighted RRF
    of each leg's top `top_k` (measured on the multi-hop sets: cutting every leg at k beat
    fusing deeper lists, retrieval/README.md)."""
    if len(found.lists) == 1:
        ((name, keys),) = found.lists.items()
        return [
            (k, found.scores[name][k], {leg: (rank if leg == name else None) for leg in LEGS})
            for rank, k in enumerate(keys[:top_k], start=1)
        ]
    fused = fuse(  # each leg's top k only: deeper lists let a leg's tail outvote another's head
        {name: [str(k) for k in keys[:top_k]] for name, keys in found.lists.items()},
        weights=s.weights,
        k=s.rrf_k,
        limit=top_k,
    )
    return [(int(f.id), f.score, {leg: f.ranks.get(leg) for leg in LEGS}) for f in fused]


def path_of(ran: Sequence[str]) -> str:
    """The path an answer reports, from the legs that answered: hybrid when the graph was
    fused with another leg; vector when the vector leg answered without the graph; else
    the one leg's name."""
    legs = set(ran)
    if "graph" in legs and len(legs) > 1:
        return "hybrid"
    if "vector" in legs:
        return "vector"
    return next(iter(legs)) if len(legs) == 1 else "vector"
