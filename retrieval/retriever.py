"""The hybrid retriever: vector, lexical and graph legs, fused, cached, per namespace.

    retrieve(query, namespace, top_k, route, legs)
      ├─ cache lookup (route.cache)                key: path, legs, top_k, query; epoch per namespace
      ├─ the legs at once, each under its own timeout (`retrieval.search`):
      │    vector:  embed the query → the namespace's faiss index
      │    lexical: BM25 over the namespace's texts
      │    graph:   seeds (named things, best lexical and vector hits) → personalized
      │             PageRank over the text-derived graph and the explicit links
      ├─ weighted RRF by memory id, every leg's rank kept
      └─ texts from the in-process mirror; the answer cached unless degraded

What the process holds, rebuilt from the system of record on `open()` and changed only
after a write to it succeeded: the store's adjacency of explicit links (the store owns
it; `resolve`, `expand`, `neighbours` and `count` do no I/O), a text mirror (vid → text,
so an answer needs no database round trip and survives a MongoDB outage), the entity
index, the derived graph, and per namespace a vector index and a lexical index (both
saved on disk with the fingerprints of the texts they hold, so a restart redoes only
what changed).

Degraded answers (`degraded: true`, with `reasons`): a leg that timed out or failed is
left out and the rest is served; while the graph store does not answer (`ping` every
`health_interval`, or a write that found it down) the graph leg is skipped -- its
system of record cannot vouch for the links -- and writes raise `StoreUnavailable`.
Degraded answers are never cached. A retrieval fails (`RetrievalFailed`) only when no
leg answered.

Writes are serialised: embed first (an embedder failure writes nothing), then the store
(links checked there; an error leaves everything as it was), then the indexes, the
mirror, the entity index, the derived graph, and the cache invalidate of the namespace.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import structlog

from retrieval.cache import RetrievalCache
from retrieval.defaults import DEFAULT_RRF_K, DEFAULT_WEIGHTS
from retrieval.derived_graph import DerivedGraph
from retrieval.embedder import Embedder
from retrieval.entities import EntityIndex
from retrieval.faults import Faults, InjectedFault
from retrieval.gating import Route
from retrieval.graph_store import GraphStore, StoreUnavailable
from retrieval.index_files import fingerprint
from retrieval.lexical_indexes import LexicalIndexes
from retrieval.memory import Memory, memory_vid
from retrieval.metrics import RetrievalMetrics
from retrieval.search import LEGS, Legs, SearchSettings, fuse_legs, path_of
from retrieval.vector_index import Kind
from retrieval.vector_indexes import VectorIndexes

log = structlog.get_logger("rolloutd.retrieval")

MAX_TOP_K = 100
EMBED_BATCH = 512


class RetrievalFailed(RuntimeError):
    """No source answered; the message says why for each."""


class NotReady(RuntimeError):
    """The retriever is still loading (or could not load); the message says which."""


@dataclass(frozen=True)
class RetrieverSettings:
    index_kind: Kind = "flat"  # "flat" (exact), "ivf" or "hnsw"
    rrf_k: int = DEFAULT_RRF_K
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    graph_seeds: int = 5  # lexical and vector hits that seed the walk
    expand_limit: int = 100  # memories the walk returns at most
    vector_timeout: float = 0.5  # seconds, per leg
    lexical_timeout: float = 0.5
    graph_timeout: float = 0.5
    save_interval: float = 30.0  # write changed index files this often
    health_interval: float = 2.0  # ping the graph store this often

    def search(self) -> SearchSettings:
        return SearchSettings(
            weights=self.weights,
            rrf_k=self.rrf_k,
            graph_seeds=self.graph_seeds,
            expand_limit=self.expand_limit,
            timeouts={"vector": self.vector_timeout, "lexical": self.lexical_timeout, "graph": self.graph_timeout},
        )


@dataclass(frozen=True)
class Result:
    id: str
    score: float
    text: str
    ranks: Mapping[str, int | None]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text, "ranks": dict(self.ranks)}


@dataclass(frozen=True)
class Answer:
    results: list[Result]
    path: str
    cache: str  # "hit" | "miss" | "bypass"
    degraded: bool
    reasons: tuple[str, ...]
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        out = {
            "results": [r.to_dict() for r in self.results],
            "path": self.path,
            "cache": self.cache,
            "degraded": self.degraded,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.reasons:
            out["reasons"] = list(self.reasons)
        return out


class Retriever:
    def __init__(
        self,
        store: GraphStore,
        cache: RetrievalCache,
        embedder: Embedder,
        directory: Path,
        settings: RetrieverSettings | None = None,
        metrics: RetrievalMetrics | None = None,
        timer: Callable[[], float] = time.perf_counter,
        faults: Faults | None = None,
    ) -> None:
        self.store, self.cache, self.embedder = store, cache, embedder
        self.faults = faults  # injected on purpose (the demo); None in production
        self.directory = Path(directory)
        self.settings = settings or RetrieverSettings()
        self._search_settings = self.settings.search()  # frozen: built once, read by every query
        self.metrics = metrics or RetrievalMetrics()
        self._quiet = RetrievalMetrics()  # a private registry nobody scrapes: `retrieve(quiet=True)`
        self._timer = timer
        self._lexical = LexicalIndexes(self.directory / "lexical")
        self._reset()
        self._write_lock = anyio.Lock()
        self.problem: str | None = "the retriever is loading"  # None once open and serving
        self.store_problem: str | None = None  # why the graph store is considered down

    def _reset(self) -> None:
        self._vectors = VectorIndexes(
            self.directory / "vectors", self._embedder_name, lambda: self.embedder.dim, self.settings.index_kind
        )
        self._lexical.close()  # open() may be a retry: the indexes are opened afresh
        self._lexical = LexicalIndexes(self.directory / "lexical")
        self._texts: dict[int, str] = {}
        self._entities = EntityIndex()
        self._graph = DerivedGraph()

    def _legs(self, metrics: RetrievalMetrics) -> Legs:
        return Legs(
            self._embed_query,
            self._vectors,
            self._lexical,
            self._entities,
            self._graph,
            self.store,
            metrics,
            self._timer,
        )

    # --- lifecycle ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.problem is None

    async def open(self) -> None:
        """Open the store, rebuild the in-process mirror and bring every index up to date."""
        started = time.monotonic()
        self.problem = "the retriever is loading: checking the embedder"
        await self.embedder.embed(["rolloutd"])  # loads a model, learns an HTTP endpoint's dimension
        self._reset()  # open() may be a retry after a failed one; the dimension is known now
        self.problem = "the retriever is loading: opening the graph store"
        await self.store.open()
        try:
            await self._load(started)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.close()  # a retry opens it afresh
            raise

    async def _load(self, started: float) -> None:
        self.problem = "the retriever is loading: reading every memory"
        current: dict[str, dict[int, int]] = defaultdict(dict)
        async for memory in self.store.iter_all():
            key = memory.vid
            self._texts[key] = memory.text
            self._entities.put(memory.namespace, memory.id, memory.text)
            self._graph.put(memory.namespace, key, memory.text)
            current[memory.namespace][key] = fingerprint(memory.text)
        self.problem = "the retriever is loading: vector and lexical indexes"
        (self.directory / "vectors").mkdir(parents=True, exist_ok=True)
        embedded = indexed = 0
        for namespace, prints in current.items():
            embedded += await self._vectors.load(namespace, prints, self._texts, self._embed)
            indexed += await self._lexical.load(namespace, prints, self._texts)
        self._vectors.drop_files_except(list(current))
        await self._lexical.drop_except(list(current))
        for namespace in current:
            self.metrics.memories.labels(namespace).set(len(current[namespace]))
            # A shared Redis outlives this process: entries cached before a restart may
            # predate writes made meanwhile (a restore, another writer, a crash before an
            # invalidate), so a start always moves every namespace's epoch on.
            await self.cache.invalidate(namespace)
        self.metrics.store_up.set(1)
        self.problem = None
        log.info(
            "retrieval.opened",
            memories=len(self._texts),
            namespaces=len(current),
            embedded=embedded,
            lexically_indexed=indexed,
            derived_graph=self._graph.stats(),
            index=self.settings.index_kind,
            embedder=self._embedder_name,
            seconds=round(time.monotonic() - started, 3),
        )

    @property
    def _embedder_name(self) -> str:
        return getattr(self.embedder, "name", type(self.embedder).__name__)

    async def save(self) -> int:
        """Write the vector index file of every namespace changed since the last save; return how many.

        (Lexical indexes are durable on every write: nothing to save.)
        """
        saved = 0
        for namespace in sorted(self._vectors.dirty):
            async with self._write_lock:  # the fingerprints must describe exactly these vectors
                saved += await self._vectors.save_one(namespace)
        return saved

    async def run(self) -> None:
        """Background upkeep until cancelled: graph store health, periodic index saves."""
        next_save = time.monotonic() + self.settings.save_interval
        while True:
            await anyio.sleep(self.settings.health_interval)
            if self.problem is not None:
                continue
            await self.check_store()
            if time.monotonic() >= next_save:
                next_save = time.monotonic() + self.settings.save_interval
                try:
                    await self.save()
                except OSError as exc:
                    log.error("retrieval.index.save_failed", error=str(exc), effect="retried at the next interval")

    async def check_store(self) -> bool:
        """Ping the graph store; mark it up or down (and log the change). True when up."""
        try:
            with anyio.fail_after(max(1.0, self.settings.health_interval * 2)):
                await self.store.ping()
        except (StoreUnavailable, TimeoutError) as exc:
            self._store_down(str(exc) or "ping timed out")
            return False
        if self.store_problem is not None:
            log.warning("retrieval.graph_store.recovered", was=self.store_problem, priority="notice")
            self.store_problem = None
            self.metrics.store_up.set(1)
        return True

    def _store_down(self, why: str) -> None:
        if self.store_problem is None:
            log.error(
                "retrieval.graph_store.down",
                problem=why,
                effect="graph source skipped (answers marked degraded), writes refused with 503",
            )
        self.store_problem = why
        self.metrics.store_up.set(0)

    async def close(self) -> None:
        """Save what changed and close the store, the lexical indexes and the cache."""
        try:
            if self.problem is None:
                await self.save()
        finally:
            self._lexical.close()
            await self.store.close()
            await self.cache.aclose()

    # --- reads ----------------------------------------------------------------------

    def count(self, namespace: str | None = None) -> int:
        return self.store.count(namespace)

    def contents(self, namespace: str) -> dict[str, int]:
        """id → fingerprint of the text of every memory indexed in `namespace`."""
        out = {}
        for key, fp in self._vectors.fingerprints.get(namespace, {}).items():
            resolved = self.store.resolve(key)
            if resolved is not None:
                out[resolved[1]] = fp
        return out

    async def retrieve(
        self,
        query: str,
        namespace: str,
        top_k: int,
        route: Route,
        *,
        legs: Sequence[str] | None = None,
        quiet: bool = False,
    ) -> Answer:
        """Answer `query` within `namespace` along `route` (see the module docstring).

        `legs`: run only these of the legs the route grants (a caller may narrow, never
        widen; `ValueError` names a leg the route does not grant).
        `quiet`: leave the traffic metrics alone -- for the daemon's own synthetic queries
        (validation, probes), which must not move the guards that watch agents' traffic.
        """
        m = self._quiet if quiet else self.metrics
        if self.problem is not None:
            raise NotReady(self.problem)
        started = self._timer()
        if route.path is None:
            raise ValueError("the route grants no retrieval path")
        granted = route.sources
        if legs is not None:
            outside = route.refused(legs)
            if outside or not legs:
                raise ValueError(f"legs {outside or list(legs)} not granted on the {route.path} path: {list(granted)}")
            granted = tuple(leg for leg in LEGS if leg in legs)
        sources, reasons = granted, []
        if "graph" in sources and self.store_problem is not None:
            if sources == ("graph",):  # never serve a path the flags did not grant
                m.queries.labels("graph").inc()
                m.errors.labels("graph", "store_unavailable").inc()
                raise RetrievalFailed(f"graph: graph store unavailable: {self.store_problem}")
            sources = tuple(leg for leg in sources if leg != "graph")
            reasons.append(f"graph store unavailable: {self.store_problem}")
        path = path_of(sources)
        if self.faults is not None:
            await self._injected(self.faults, m, path)
        key = _cache_key(path, sources, top_k, query) if route.cache else None
        outcome = "bypass"
        if key is not None:
            t = self._timer()
            cached, outcome = await self.cache.lookup(namespace, key)
            m.stage.labels("cache").observe(self._timer() - t)
            m.cache_outcome(outcome)
            if cached is not None:
                results = [Result(r["id"], r["score"], r["text"], r["ranks"]) for r in json.loads(cached)]
                return self._answered(m, results, path, "hit", reasons, started)
        found = await self._legs(m).run(self._search_settings, query, namespace, top_k, sources)
        if not found.lists:
            m.queries.labels(path).inc()
            m.errors.labels(path, "no_source").inc()
            problem = "; ".join(found.failed) or "no source ran"
            log.error("retrieval.failed", path=path, namespace=namespace, problem=problem)
            raise RetrievalFailed(problem)
        t = self._timer()
        results = [self._result(k, score, ranks) for k, score, ranks in fuse_legs(self._search_settings, found, top_k)]
        results = [r for r in results if r.id]
        m.stage.labels("fuse").observe(self._timer() - t)
        reasons += found.failed
        if key is not None and not reasons:
            await self.cache.set(namespace, key, json.dumps([r.to_dict() for r in results]).encode())
        ran = tuple(leg for leg in LEGS if leg in found.lists)
        return self._answered(m, results, path_of(ran), outcome, reasons, started)

    async def _injected(self, faults: Faults, m: RetrievalMetrics, path: str) -> None:
        """The demo's fault, before anything else: it delays or fails cache hits too."""
        try:
            await faults.before_search()
        except InjectedFault as exc:
            m.queries.labels(path).inc()
            m.errors.labels(path, "injected").inc()
            raise RetrievalFailed(str(exc)) from None

    def _answered(
        self, m: RetrievalMetrics, results: list[Result], path: str, cache: str, reasons: list[str], started: float
    ) -> Answer:
        elapsed = self._timer() - started
        m.queries.labels(path).inc()
        m.latency.labels(path, cache).observe(elapsed)
        for reason in reasons:
            m.degraded.labels(reason.split(":")[0]).inc()
        return Answer(results, path, cache, bool(reasons), tuple(reasons), elapsed * 1000)

    def _result(self, key: int, score: float, ranks: Mapping[str, int | None]) -> Result:
        """The result for a key; its id is "" if it was deleted meanwhile (the caller drops it)."""
        resolved = self.store.resolve(key)
        text = self._texts.get(key)
        if resolved is None or text is None:
            return Result("", score, "", ranks)
        return Result(resolved[1], score, text, ranks)

    async def _embed_query(self, query: str) -> np.ndarray:
        return await self.embedder.embed([query], kind="query")

    # --- writes ---------------------------------------------------------------------

    async def add(self, memories: Sequence[Memory]) -> list[str]:
        """Store `memories` (one atomic batch) and make them searchable; return their ids."""
        if self.problem is not None:
            raise NotReady(self.problem)
        memories = list(memories)
        if not memories:
            return []
        if self.store_problem is not None and not await self.check_store():
            raise StoreUnavailable("the graph store", "write", self.store_problem)
        vectors = await self._embed([m.text for m in memories])
        async with self._write_lock:
            try:
                await self.store.put_many(memories)
            except StoreUnavailable as exc:
                self._store_down(str(exc))
                raise
            by_namespace: dict[str, list[int]] = defaultdict(list)
            for row, memory in enumerate(memories):
                by_namespace[memory.namespace].append(row)
            for namespace, rows in by_namespace.items():
                batch = [memories[r] for r in rows]
                prints = [fingerprint(m.text) for m in batch]
                await self._vectors.add(namespace, [m.vid for m in batch], vectors[rows], prints)
                await self._lexical.upsert(namespace, [(m.vid, m.text, p) for m, p in zip(batch, prints, strict=True)])
                for m in batch:
                    self._entities.put(m.namespace, m.id, m.text, self._texts.get(m.vid))
                    self._graph.put(m.namespace, m.vid, m.text)
                    self._texts[m.vid] = m.text
                self.metrics.memories.labels(namespace).set(self.store.count(namespace))
                await self.cache.invalidate(namespace)
        return [m.id for m in memories]

    async def delete(self, namespace: str, id: str) -> bool:
        """Delete a memory and its links everywhere; False when there was no such memory."""
        if self.problem is not None:
            raise NotReady(self.problem)
        if self.store_problem is not None and not await self.check_store():
            raise StoreUnavailable("the graph store", "delete", self.store_problem)
        key = memory_vid(namespace, id)
        async with self._write_lock:
            try:
                deleted = await self.store.delete(namespace, id)
            except StoreUnavailable as exc:
                self._store_down(str(exc))
                raise
            await self._vectors.remove(namespace, key)
            await self._lexical.remove(namespace, [key])
            text = self._texts.pop(key, None)
            if text is not None:
                self._entities.remove(namespace, id, text)
                self._graph.remove(namespace, key)
            self.metrics.memories.labels(namespace).set(self.store.count(namespace))
            await self.cache.invalidate(namespace)
        return deleted

    async def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Memories' vectors, a batch at a time (the query's own embedding is timed in `retrieval.search`)."""
        parts = [await self.embedder.embed(texts[i : i + EMBED_BATCH]) for i in range(0, len(texts), EMBED_BATCH)]
        return np.vstack(parts) if parts else np.zeros((0, self.embedder.dim), dtype=np.float32)


def _cache_key(path: str, legs: Sequence[str], top_k: int, query: str) -> str:
    """The cache key of a query on a path and legs; the namespace and its epoch are the cache's part."""
    return hashlib.blake2b(f"{path}\0{','.join(legs)}\0{top_k}\0{query}".encode(), digest_size=16).hexdigest()
