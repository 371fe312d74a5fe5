"""The hybrid retriever: vector search and graph expansion, fused, cached, per namespace.

    retrieve(query, namespace, top_k, route)
      ├─ cache lookup (route.cache)                      key: path, top_k, query; epoch per namespace
      ├─ in one task group, each source under its own timeout:
      │    vector: embed the query → search the namespace's faiss index
      │    graph:  seeds = memories naming the query's rare terms (`EntityIndex`), or, when the
      │            query names none, the best vector hits → k-hop walk of the in-process adjacency
      ├─ weighted RRF by memory id (hybrid), ranks per source kept
      └─ texts from the in-process mirror; the answer cached unless degraded

What the process holds, rebuilt from the system of record on `open()` and changed only
after a write to it succeeded: the store's adjacency (the store owns it and the
`GraphStore` protocol names the reads of it, `resolve`, `expand` and `count`, which do
no I/O), a text mirror (vid → text, so an answer needs no database round trip and
survives a MongoDB outage), the entity index, and one vector index per namespace (so a
namespace's search never sees another's vectors, and its k results are all its own).

Degraded answers (`degraded: true`, with `reasons`): a source that timed out or failed
is left out and the rest is served; while the graph store does not answer (`ping` every
`health_interval`, or a write that found it down) the graph source is skipped -- its
system of record cannot vouch for the links -- and writes raise `StoreUnavailable`.
Degraded answers are never cached. A retrieval fails (`RetrievalFailed`) only when no
source answered.

Writes are serialised: embed first (an embedder failure writes nothing), then the store
(links checked there; an error leaves everything as it was), then the index, the
mirror, the entity index, and the cache invalidate of the namespace.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import structlog

from retrieval.cache import RetrievalCache
from retrieval.embedder import Embedder
from retrieval.entities import EntityIndex
from retrieval.faults import Faults, InjectedFault
from retrieval.fusion import DEFAULT_K, fuse
from retrieval.gating import Route
from retrieval.graph_store import GraphStore, StoreUnavailable
from retrieval.index_files import fingerprint, index_path, pack, reconcile, unpack
from retrieval.memory import Memory, memory_vid
from retrieval.metrics import RetrievalMetrics
from retrieval.vector_index import IndexFileError, Kind, VectorIndex

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
    rrf_k: int = DEFAULT_K
    weights: Mapping[str, float] = field(default_factory=lambda: {"vector": 1.0, "graph": 1.5})
    hops: int = 2
    graph_seeds: int = 3  # entry points of the walk
    expand_limit: int = 100  # neighbours gathered per retrieval at most
    vector_timeout: float = 0.5  # seconds, per source
    graph_timeout: float = 0.5
    save_interval: float = 30.0  # write changed index files this often
    health_interval: float = 2.0  # ping the graph store this often


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
        self.metrics = metrics or RetrievalMetrics()
        self._quiet = RetrievalMetrics()  # a private registry nobody scrapes: `retrieve(quiet=True)`
        self._timer = timer
        self._indexes: dict[str, VectorIndex] = {}
        self._fingerprints: dict[str, dict[int, int]] = defaultdict(dict)  # what each index was built from
        self._texts: dict[int, str] = {}
        self._entities = EntityIndex()
        self._dirty: set[str] = set()
        self._write_lock = anyio.Lock()
        self.problem: str | None = "the retriever is loading"  # None once open and serving
        self.store_problem: str | None = None  # why the graph store is considered down

    # --- lifecycle ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.problem is None

    async def open(self) -> None:
        """Open the store, rebuild the in-process mirror and bring every index up to date."""
        started = time.monotonic()
        self._indexes, self._texts, self._entities, self._dirty = {}, {}, EntityIndex(), set()
        self._fingerprints.clear()  # open() may be a retry after a failed one
        self.problem = "the retriever is loading: checking the embedder"
        await self.embedder.embed(["rolloutd"])  # loads a model, learns an HTTP endpoint's dimension
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
            current[memory.namespace][key] = fingerprint(memory.text)
        self.problem = "the retriever is loading: vector indexes"
        vector_dir = self.directory / "vectors"
        vector_dir.mkdir(parents=True, exist_ok=True)
        embedded = 0
        for namespace, prints in current.items():
            embedded += await self._load_index(namespace, prints)
        expected = {index_path(vector_dir, ns) for ns in current}
        for stale in vector_dir.glob("*.rvix"):
            if stale not in expected:
                stale.unlink()
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
            index=self.settings.index_kind,
            embedder=getattr(self.embedder, "name", "?"),
            seconds=round(time.monotonic() - started, 3),
        )

    async def _load_index(self, namespace: str, prints: dict[int, int]) -> int:
        """Load `namespace`'s file if usable, re-embed what differs; return how many were embedded."""
        path = index_path(self.directory / "vectors", namespace)
        index, saved, why = None, {}, "no index file"
        if path.exists():
            try:
                index = await VectorIndex.load(path)
                meta = index.saved_meta
                expected = {"namespace": namespace, "embedder": self._embedder_name, "kind": self.settings.index_kind}
                wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
                if wrong or index.dim != self.embedder.dim:
                    why, index = f"built with {wrong or {'dim': index.dim}}, now {expected}", None
                else:
                    saved = unpack(index.saved_extra)
            except (IndexFileError, ValueError) as exc:
                why, index = f"unusable index file: {exc}", None
        if index is None:
            log.info("retrieval.index.rebuild", namespace=namespace, memories=len(prints), reason=why)
            index, saved = self._new_index(), {}
        self._indexes[namespace] = index
        self._fingerprints[namespace] = dict(saved)
        todo = reconcile(saved, prints)
        if todo.remove:
            await index.remove(todo.remove)
            for key in todo.remove:
                self._fingerprints[namespace].pop(key, None)
        for start in range(0, len(todo.embed), EMBED_BATCH * 8):
            keys = todo.embed[start : start + EMBED_BATCH * 8]
            vectors = await self._embed([self._texts[k] for k in keys])
            await index.add(keys, vectors)
            for key in keys:
                self._fingerprints[namespace][key] = prints[key]
        if todo:
            self._dirty.add(namespace)
            log.info(
                "retrieval.index.reconciled", namespace=namespace, embedded=len(todo.embed), removed=len(todo.remove)
            )
        return len(todo.embed)

    @property
    def _embedder_name(self) -> str:
        return getattr(self.embedder, "name", type(self.embedder).__name__)

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.embedder.dim, self.settings.index_kind)

    async def save(self) -> int:
        """Write the index file of every namespace changed since the last save; return how many."""
        saved = 0
        for namespace in sorted(self._dirty):
            async with self._write_lock:  # the fingerprints must describe exactly these vectors
                self._dirty.discard(namespace)
                index = self._indexes.get(namespace)
                if index is None:
                    continue
                meta = {"namespace": namespace, "embedder": self._embedder_name, "kind": self.settings.index_kind}
                try:
                    await index.save(
                        index_path(self.directory / "vectors", namespace),
                        meta=meta,
                        extra=pack(self._fingerprints[namespace]),
                    )
                except BaseException:
                    self._dirty.add(namespace)
                    raise
                saved += 1
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
        """Save what changed and close the store and the cache."""
        try:
            if self.problem is None:
                await self.save()
        finally:
            await self.store.close()
            await self.cache.aclose()

    # --- reads ----------------------------------------------------------------------

    def count(self, namespace: str | None = None) -> int:
        return self.store.count(namespace)

    def contents(self, namespace: str) -> dict[str, int]:
        """id → fingerprint of the text of every memory indexed in `namespace`."""
        out = {}
        for key, fp in self._fingerprints.get(namespace, {}).items():
            resolved = self.store.resolve(key)
            if resolved is not None:
                out[resolved[1]] = fp
        return out

    async def retrieve(self, query: str, namespace: str, top_k: int, route: Route, *, quiet: bool = False) -> Answer:
        """Answer `query` within `namespace` along `route` (see the module docstring).

        `quiet`: leave the traffic metrics alone -- for the daemon's own synthetic queries
        (validation, probes), which must not move the guards that watch agents' traffic.
        """
        m = self._quiet if quiet else self.metrics
        if self.problem is not None:
            raise NotReady(self.problem)
        if route.path is None:
            raise ValueError("the route grants no retrieval path")
        started = self._timer()
        sources, reasons = route.sources, []
        if "graph" in sources and self.store_problem is not None:
            if sources == ("graph",):  # never serve a path the flags did not grant
                m.queries.labels("graph").inc()
                m.errors.labels("graph", "store_unavailable").inc()
                raise RetrievalFailed(f"graph: graph store unavailable: {self.store_problem}")
            sources = ("vector",)
            reasons.append(f"graph store unavailable: {self.store_problem}")
        path = _path_of(sources)
        if self.faults is not None:
            await self._injected(self.faults, m, path)
        key = _cache_key(path, top_k, query) if route.cache else None
        outcome = "bypass"
        if key is not None:
            t = self._timer()
            cached, outcome = await self.cache.lookup(namespace, key)
            m.stage.labels("cache").observe(self._timer() - t)
            m.cache_outcome(outcome)
            if cached is not None:
                results = [Result(r["id"], r["score"], r["text"], r["ranks"]) for r in json.loads(cached)]
                return self._answered(m, results, path, "hit", reasons, started)
        try:
            results, ran, failed = await self._search(m, query, namespace, top_k, sources)
        except RetrievalFailed as exc:
            m.queries.labels(path).inc()
            m.errors.labels(path, "no_source").inc()
            log.error("retrieval.failed", path=path, namespace=namespace, problem=str(exc))
            raise
        reasons += failed
        if key is not None and not reasons:
            await self.cache.set(namespace, key, json.dumps([r.to_dict() for r in results]).encode())
        return self._answered(m, results, _path_of(ran), outcome, reasons, started)

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

    async def _search(
        self, m: RetrievalMetrics, query: str, namespace: str, top_k: int, sources: Sequence[str]
    ) -> tuple[list[Result], tuple[str, ...], list[str]]:
        """Run the sources concurrently; return the results, the sources that answered, and
        why any source was left out."""
        lists: dict[str, list[int]] = {}
        cosine: dict[int, float] = {}
        failed: list[str] = []
        vector_done = anyio.Event()
        s = self.settings

        async def vector() -> None:
            try:
                with anyio.move_on_after(s.vector_timeout) as scope:
                    hits = await self._vector_hits(m, query, namespace, top_k)
                    lists["vector"] = [k for k, _ in hits]
                    cosine.update(hits)
                if scope.cancelled_caught:
                    failed.append(f"vector: timed out after {s.vector_timeout * 1000:g} ms")
            except Exception as exc:  # noqa: BLE001  (one source failing must not fail the other)
                failed.append(f"vector: {type(exc).__name__}: {exc}")
                log.error("retrieval.source_failed", source="vector", error=repr(exc))
            finally:
                vector_done.set()

        async def graph() -> None:
            try:
                with anyio.move_on_after(s.graph_timeout) as scope:
                    seeds = self._entities.seeds(namespace, query, s.graph_seeds)
                    if not seeds and "vector" in sources:
                        await vector_done.wait()
                        if "vector" not in lists:
                            failed.append("graph: no entity seeds in the query, and the vector source did not answer")
                            return
                        seeds = lists["vector"][: s.graph_seeds]
                    elif not seeds:
                        hits = await self._vector_hits(m, query, namespace, s.graph_seeds)
                        seeds = [k for k, _ in hits]
                    lists["graph"] = self._walk(m, namespace, seeds)
                if scope.cancelled_caught:
                    failed.append(f"graph: timed out after {s.graph_timeout * 1000:g} ms")
            except Exception as exc:  # noqa: BLE001  (a failed source is left out and named; the other answers)
                failed.append(f"graph: {type(exc).__name__}: {exc}")
                log.error("retrieval.source_failed", source="graph", error=repr(exc))

        async with anyio.create_task_group() as tg:
            if "vector" in sources:
                tg.start_soon(vector)
            if "graph" in sources:
                tg.start_soon(graph)
        if not lists:
            raise RetrievalFailed("; ".join(failed) or "no source ran")
        t = self._timer()
        if len(lists) == 1 and "vector" in lists:
            results = [
                self._result(k, cosine[k], {"vector": rank, "graph": None})
                for rank, k in enumerate(lists["vector"][:top_k], start=1)
            ]
        else:
            fused = fuse(
                {name: [str(k) for k in keys] for name, keys in lists.items()},
                weights=s.weights,
                k=s.rrf_k,
                limit=top_k,
            )
            results = [
                self._result(int(f.id), f.score, {"vector": f.ranks.get("vector"), "graph": f.ranks.get("graph")})
                for f in fused
            ]
        m.stage.labels("fuse").observe(self._timer() - t)
        ran = tuple(name for name in ("vector", "graph") if name in lists)
        return [r for r in results if r.id], ran, failed

    def _result(self, key: int, score: float, ranks: Mapping[str, int | None]) -> Result:
        """The result for a key; its id is "" if it was deleted meanwhile (the caller drops it)."""
        resolved = self.store.resolve(key)
        text = self._texts.get(key)
        if resolved is None or text is None:
            return Result("", score, "", ranks)
        return Result(resolved[1], score, text, ranks)

    async def _vector_hits(self, m: RetrievalMetrics, query: str, namespace: str, k: int) -> list[tuple[int, float]]:
        index = self._indexes.get(namespace)
        if index is None or not len(index):
            return []
        t = self._timer()
        vector = await self.embedder.embed([query])
        t2 = self._timer()
        m.stage.labels("embed").observe(t2 - t)
        hits = (await index.search(vector, k))[0]
        m.stage.labels("vector").observe(self._timer() - t2)
        m.vector_searches.inc()
        return hits

    def _walk(self, m: RetrievalMetrics, namespace: str, seeds: Sequence[int]) -> list[int]:
        """Each seed followed by its neighbourhood (nearest first), best seed first."""
        t = self._timer()
        s = self.settings
        out: dict[int, None] = {}
        for seed in seeds:
            resolved = self.store.resolve(seed)
            if resolved is None:
                continue
            out.setdefault(seed, None)
            for neighbour, _hop in self.store.expand(namespace, [resolved[1]], s.hops, s.expand_limit):
                out.setdefault(memory_vid(namespace, neighbour), None)
            if len(out) >= s.expand_limit:
                break
        m.graph_queries.inc()
        m.stage.labels("graph").observe(self._timer() - t)
        return list(out)[: s.expand_limit]

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
                index = self._indexes.get(namespace)
                if index is None:
                    index = self._indexes[namespace] = self._new_index()
                keys = [memories[r].vid for r in rows]
                await index.add(keys, vectors[rows])
                for r in rows:
                    m = memories[r]
                    self._entities.put(m.namespace, m.id, m.text, self._texts.get(m.vid))
                    self._texts[m.vid] = m.text
                    self._fingerprints[namespace][m.vid] = fingerprint(m.text)
                self._dirty.add(namespace)
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
            index = self._indexes.get(namespace)
            if index is not None and index.contains(key):
                await index.remove([key])
            text = self._texts.pop(key, None)
            if text is not None:
                self._entities.remove(namespace, id, text)
            self._fingerprints[namespace].pop(key, None)
            self._dirty.add(namespace)
            self.metrics.memories.labels(namespace).set(self.store.count(namespace))
            await self.cache.invalidate(namespace)
        return deleted

    async def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Memories' vectors, a batch at a time (the query's own embedding is timed in `_vector_hits`)."""
        parts = [await self.embedder.embed(texts[i : i + EMBED_BATCH]) for i in range(0, len(texts), EMBED_BATCH)]
        return np.vstack(parts) if parts else np.zeros((0, self.embedder.dim), dtype=np.float32)


def _path_of(sources: Iterable[str]) -> str:
    sources = tuple(sources)
    return "hybrid" if len(sources) == 2 else sources[0] if sources else "vector"


def _cache_key(path: str, top_k: int, query: str) -> str:
    """The cache key of a query on a path; the namespace and its epoch are the cache's part."""
    return hashlib.blake2b(f"{path}\0{top_k}\0{query}".encode(), digest_size=16).hexdigest()
