"""Benchmarks of the embedded hybrid retriever: speed at 10k/100k memories, and answer quality.

Retrieval (`python -m tests.bench retrieval`)
    Synthetic corpora from `retrieval.corpus.generate` (chains of linked memories plus
    filler; questions that name an incident) at 10,000 and 100,000 memories (about 3
    minutes), and at 1,000,000 with BENCH_RETRIEVAL_MILLION=1 (an estimated 20 minutes
    more, a third of it HNSW's build on one thread). Embedder: the default `hashing:384`.
    Query embedding is never inside a timed figure: it is timed on its own (one query a
    call), and the other figures use queries embedded beforehand -- the index figures
    call `VectorIndex.search` with the vectors, the Retriever figures run through
    `PreEmbedded`, which answers a benchmark query's embedding from a table. Per size,
    and per index kind through the Retriever (`RetrieverSettings(index_kind=...)`):
    "flat" at every size, "ivf" at sizes of at least its train threshold (20,000; below
    it the Retriever's IVF index is still exact, i.e. flat, and RetrieverSettings has no
    threshold to lower, so the 10,000 column says "skipped"):

    - Build, in a fresh process: `Retriever.add` of every memory in batches of
      BENCH_RETRIEVAL_BATCH (embedding, the SQLite commit, the faiss add; for "ivf", the
      k-means training once the index holds 20,000), then `save()`.
    - Reload, in another fresh process: `Retriever.open()` on that state dir (its saved
      index file is current, so nothing is re-embedded); VmRSS before and after it is the
      memory figure. The same process then times, through `Retriever.retrieve` over
      BENCH_RETRIEVAL_QUERIES questions (a warm-up first): vector-only, graph-only and
      hybrid uncached (entity seeds, vector search in a worker thread, 2-hop walk, RRF,
      texts), and cache hits through a real redis-server (each query once to fill, then
      timed again; the hit must equal the miss), against a bare GET of a same-sized value
      on the same Redis as the baseline. Under load: BENCH_RETRIEVAL_CLIENTS concurrent
      clients in one event loop calling hybrid uncached for BENCH_RETRIEVAL_LOAD_SECONDS,
      against one client over the same time; CPU from os.times().
    - Index, in this process: faiss through `VectorIndex` (lock, worker thread
      included), on the corpus's own vectors:
        flat   exact. Its floor is the bytes it must read a query (n x dim x 4) over the
               read bandwidth measured in this run (the best of five `max()` over a
               256 MB float32 array: one streaming pass, one core; and two threads on
               halves) -- 5 to 7 ms at 100,000 on one core of these machines, so a
               missed 5 ms target there is expected, and printed as missed.
        ivf    as the Retriever builds it: vectors added BENCH_RETRIEVAL_BATCH at a time,
               ivf_train_at = 20,000, the default (n / 2 below that: at 10,000 the default
               would leave it exact), so it trains once it holds that many, nlist = the
               square root of THAT count, and trains again at 4x that count (at
               100,000 the Retriever's index was last trained at 80,000: 283 lists).
               Also, for comparison, trained on all n in one add (nlist = sqrt(n)),
               which the Retriever never does (the HTTP API takes at most 1,000
               memories a request, open() re-adds 4,096 at a time). Both at nprobe 16,
               32, 48, 96 and the index's default (max(48, nlist / 6)), set on the
               index between runs; per nprobe the
               vectors scanned a query (the probed lists' sizes).
        hnsw   M 32, efSearch 64.
      Recall@10 of ivf and hnsw is against the exact index on the same queries; a hit
      counts when its score ties the exact 10th (the corpus has near-duplicate texts).
      ivf as the Retriever builds it, at its default nprobe, with recall < 0.9 fails the
      run (the correctness floor of the index recommended for large collections). HNSW's
      recall is reported, not checked: hashing vectors defeat its graph (they are
      sparse-ish and near-orthogonal -- most memories share no hashed token, so nearly
      every pair scores ~0 and the greedy walk has no gradient to follow); so is the
      ivf trained on all n (recall below 0.9 is flagged in the output).
    Graph: an `Adjacency` of BENCH_GRAPH_NODES nodes with five out-links each (500,000
    links), targets drawn with probability ~ rank^-0.6 so that a few memories are hubs
    (the most linked has ~2,000 in-links, the median 3), as a memory graph's owners and
    services are; `expand(ns, [seed], hops=2)` from random seeds, with the default limit
    of 100 and unlimited (the worst case).
    Targets at 100,000 (a miss is reported, never a failure): vector p95 <= 5 ms (flat,
    against its floor; ivf as the Retriever builds it), hybrid p95 <= 8 ms (through the
    Retriever, flat and ivf), cache hit p95 <= 1 ms, 2-hop expansion p95 <= 2 ms.
    A failed correctness check still leaves every figure in bench.json: the benchmark
    raises `FailedWithFigures`, which the runner records with the figures and the list
    of failures.

Quality (`python -m tests.bench quality`)
    A 10,000-memory corpus (BENCH_QUALITY_MEMORIES), all its questions (6,000; cap with
    BENCH_QUALITY_QUESTIONS), through the Retriever on the vector-only, hybrid and
    graph-only routes; P@10, R@10, top-3, MRR and nDCG@10 (`retrieval.quality`) by hops
    (0, 1, 2) and overall, with `hashing:384` and with the real model `static:wordllama`
    (skipped, saying so, when wordllama is not installed: `make bench` installs it).
    Hybrid must beat vector-only on the multi-hop questions (hops >= 1: MRR and R@10),
    with each embedder, or the run fails.

Both share the corpus plumbing and the `PreEmbedded` wrapper, hence one module.
"""

from __future__ import annotations

import gc
import importlib.util
import inspect
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import faiss
import numpy as np
import redis.asyncio

from retrieval.adjacency import Adjacency
from retrieval.cache import RetrievalCache
from retrieval.cache_memory import LocalCache
from retrieval.cache_redis import RedisCache
from retrieval.corpus import Corpus, generate
from retrieval.embedded_store import EmbeddedStore
from retrieval.embedder import Embedder, EmbedKind
from retrieval.embedder_hashing import HashingEmbedder
from retrieval.embedder_static import StaticModelEmbedder
from retrieval.gating import ALL_ON, GRAPH, HYBRID, VECTOR, Route, choose_route
from retrieval.memory import Memory
from retrieval.quality import Question, Scores, mean, score
from retrieval.retriever import Retriever, RetrieverSettings
from retrieval.vector_index import Hits, VectorIndex
from tests.bench import REPO, BenchFailure, heading, latency_summary_ms, line, table
from tests.bench.bench_controller import _failures_as_bench_failures, _logs_discarded
from tests.bench.bench_flags import disk_scratch_dir
from tests.support.realservers import RedisServer

NAMESPACE, SEED, TOP_K = "default", 7, 10
SIZES = [int(n) for n in os.environ.get("BENCH_RETRIEVAL_SIZES", "10000,100000").split(",")] + (
    [1_000_000] if os.environ.get("BENCH_RETRIEVAL_MILLION") == "1" else []
)
TARGET_SIZE = 100_000
QUERIES = int(os.environ.get("BENCH_RETRIEVAL_QUERIES", "500"))
WARMUP = 30
BATCH = int(os.environ.get("BENCH_RETRIEVAL_BATCH", "1000"))
CLIENTS = int(os.environ.get("BENCH_RETRIEVAL_CLIENTS", "8"))
LOAD_SECONDS = float(os.environ.get("BENCH_RETRIEVAL_LOAD_SECONDS", "8"))
GRAPH_NODES = int(os.environ.get("BENCH_GRAPH_NODES", "100000"))
GRAPH_OUT_LINKS, GRAPH_SKEW, GRAPH_SEEDS = 5, 0.6, 2000
QUALITY_MEMORIES = int(os.environ.get("BENCH_QUALITY_MEMORIES", "10000"))
QUALITY_QUESTIONS = int(os.environ.get("BENCH_QUALITY_QUESTIONS", "0"))  # 0: all
MIN_RECALL = 0.9
BANDWIDTH_FLOATS = 64_000_000  # 256 MB: eight times the L3 of the machines this runs on
CHILD_TIMEOUT = 7200.0

VECTOR_ONLY = choose_route({VECTOR: True})
HYBRID_UNCACHED = choose_route({VECTOR: True, GRAPH: True, HYBRID: True})
GRAPH_ONLY = choose_route({GRAPH: True})
ROUTES = {"vector": VECTOR_ONLY, "hybrid": HYBRID_UNCACHED, "graph": GRAPH_ONLY}
_IVF_DEFAULTS = inspect.signature(VectorIndex.__init__).parameters
IVF_TRAIN_AT = _IVF_DEFAULTS["ivf_train_at"].default  # 20,000: the Retriever's IVF trains here
IVF_NPROBES = (16, 32, 48, 96)  # swept, plus the index's own default (`VectorIndex.probes`)
KINDS_THROUGH_RETRIEVER = ("flat", "ivf")
# figure key -> (target, as printed, "max" for an upper bound, "min" for a lower one)
TARGETS = {
    "flat_p95_ms": (5.0, "<= 5 ms", "max"),
    "ivf_p95_ms": (5.0, "<= 5 ms", "max"),
    "ivf_recall": (MIN_RECALL, ">= 0.9", "min"),
    "hybrid_p95_ms": (8.0, "<= 8 ms", "max"),
    "hybrid_ivf_p95_ms": (8.0, "<= 8 ms", "max"),
    "cache_hit_p95_ms": (1.0, "<= 1 ms", "max"),
    "expand_p95_ms": (2.0, "<= 2 ms", "max"),
}
CORRECTNESS = {"ivf_recall"}  # a miss of these fails the run; of the others it is reported


class FailedWithFigures(BenchFailure):
    """A correctness check failed after the figures were measured: the runner records both."""

    def __init__(self, failures: Sequence[str], figures: dict[str, Any]) -> None:
        super().__init__("; ".join(failures))
        self.figures = {**figures, "failures": list(failures)}


class PreEmbedded:
    """An embedder whose benchmark queries were embedded beforehand: a query's
    embedding is a table lookup, so the figures around it exclude it. Anything else
    (memories on add, the open() probe) goes to the real embedder."""

    def __init__(self, inner: Embedder) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self._vectors: dict[str, np.ndarray] = {}

    async def prepare(self, queries: Sequence[str]) -> None:
        queries = list(dict.fromkeys(queries))
        for start in range(0, len(queries), 512):
            chunk = queries[start : start + 512]
            self._vectors.update(zip(chunk, await self.inner.embed(chunk, kind="query"), strict=False))

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        if kind == "query" and len(texts) == 1 and texts[0] in self._vectors:
            return self._vectors[texts[0]].reshape(1, -1)
        return await self.inner.embed(texts, kind=kind)


# -- shared plumbing ------------------------------------------------------------------------


def vm_kib(field: str = "VmRSS") -> int:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise BenchFailure(f"no {field} in /proc/self/status")


def sample(questions: Sequence[Question], count: int, seed: int = SEED) -> list[Question]:
    """`count` questions, a third of each hop count, drawn with a fixed seed."""
    rng = random.Random(seed)
    by_hops = [[q for q in questions if q.hops == h] for h in (0, 1, 2)]
    picked = [q for group in by_hops for q in rng.sample(group, min(len(group), count // 3))]
    rng.shuffle(picked)
    return picked


async def timed(call: Callable[[Question], Awaitable[Any]], questions: Sequence[Question]) -> list[float]:
    """Seconds of `call(q)` for each question, after WARMUP untimed calls."""
    for q in questions[:WARMUP]:
        await call(q)
    out = []
    for q in questions:
        start = time.perf_counter()
        await call(q)
        out.append(time.perf_counter() - start)
    return out


async def open_retriever(
    directory: Path, embedder: PreEmbedded, cache: RetrievalCache, index_kind: str = "flat"
) -> Retriever:
    retriever = Retriever(
        EmbeddedStore(directory / "graph"),
        cache,
        embedder,
        directory / "retrieval",
        RetrieverSettings(index_kind=index_kind),
    )
    await retriever.open()
    return retriever


def index_facts(retriever: Retriever, index_kind: str) -> dict[str, Any]:
    """The kind of the namespace's index and, for IVF, whether it trained and its lists; an IVF
    index still exact would make its figures the flat index's, so that fails the run."""
    index = retriever._vectors.get(NAMESPACE)
    assert index is not None
    facts: dict[str, Any] = {"kind": index.kind}
    if index_kind == "ivf":
        if not index.trained:
            raise BenchFailure(
                f"the Retriever's ivf index at {len(index):,} vectors is not trained "
                f"(ivf_train_at {index.ivf_train_at:,}): its figures would be the flat index's"
            )
        facts.update(nlist=index._index.nlist, nprobe=index.probes, ivf_train_at=index.ivf_train_at)
    return facts


async def add_corpus(retriever: Retriever, corpus: Corpus) -> float:
    """Add every memory, BATCH at a time; the seconds spent inside `add`."""
    spent = 0.0
    for start in range(0, len(corpus.memories), BATCH):
        batch = [Memory(**d) for d in corpus.memories[start : start + BATCH]]
        t = time.perf_counter()
        await retriever.add(batch)
        spent += time.perf_counter() - t
    return spent


def checked(answer: Any, route: Route, query: str) -> Any:
    """The answer, if it came along the route asked for and whole; a degraded or rerouted
    answer would make the figure one of another path."""
    if answer.degraded or answer.path != route.path:
        raise BenchFailure(
            f"{route.path} query {query!r} answered along {answer.path}, degraded={answer.degraded}: {answer.reasons}"
        )
    return answer


# -- children: build, then reload and serve, each in a fresh process ------------------------


async def child_build(index_kind: str, n: int, directory: Path) -> dict[str, Any]:
    corpus = generate(n, seed=SEED)
    retriever = await open_retriever(directory, PreEmbedded(HashingEmbedder()), LocalCache(), index_kind)
    add_seconds = await add_corpus(retriever, corpus)
    facts = index_facts(retriever, index_kind)
    t = time.perf_counter()
    await retriever.save()
    save_seconds = time.perf_counter() - t
    await retriever.close()
    files = {p.name: p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    return {
        "index": facts,
        "memories": len(corpus.memories),
        "add_seconds": round(add_seconds, 2),
        "save_seconds": round(save_seconds, 2),
        "memories_per_second": round(len(corpus.memories) / add_seconds),
        "index_file_bytes": sum(v for k, v in files.items() if k.endswith(".rvix")),
        "sqlite_bytes": sum(v for k, v in files.items() if ".sqlite3" in k),
    }


async def child_serve(index_kind: str, n: int, directory: Path, redis_url: str) -> dict[str, Any]:
    embedder = PreEmbedded(HashingEmbedder())
    retriever = Retriever(
        EmbeddedStore(directory / "graph"),
        RedisCache(redis_url),
        embedder,
        directory / "retrieval",
        RetrieverSettings(index_kind=index_kind),
    )
    gc.collect()
    rss_before = vm_kib()
    t = time.perf_counter()
    await retriever.open()
    reload_seconds = time.perf_counter() - t
    gc.collect()
    rss_after = vm_kib()
    questions = sample(generate(n, seed=SEED).questions, QUERIES)
    await embedder.prepare([q.query for q in questions])
    try:
        out = {
            "index": index_facts(retriever, index_kind),
            "reload_seconds": round(reload_seconds, 2),
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "memories": retriever.count(),
        }
        for name, route in ROUTES.items():
            out[name] = latency_summary_ms(await timed(_retrieve(retriever, route), questions))
        out.update(await _cache_hits(retriever, questions, redis_url))
        out["load"] = await _under_load(retriever, questions)
    finally:
        await retriever.close()
    return out


def _retrieve(retriever: Retriever, route: Route) -> Callable[[Question], Awaitable[Any]]:
    async def call(q: Question) -> Any:
        return checked(await retriever.retrieve(q.query, NAMESPACE, TOP_K, route), route, q.query)

    return call


async def _cache_hits(retriever: Retriever, questions: Sequence[Question], redis_url: str) -> dict[str, Any]:
    """Each query once through the cached route (a miss, which fills), then again, timed: a hit
    with the same results. Baseline: a bare GET of a value the size of an answer."""
    hits, size = [], 0
    for q in questions:
        miss = await retriever.retrieve(q.query, NAMESPACE, TOP_K, ALL_ON)
        start = time.perf_counter()
        hit = await retriever.retrieve(q.query, NAMESPACE, TOP_K, ALL_ON)
        hits.append(time.perf_counter() - start)
        if miss.cache != "miss" or hit.cache != "hit" or [r.id for r in hit.results] != [r.id for r in miss.results]:
            raise BenchFailure(
                f"query {q.query!r}: first {miss.cache}, then {hit.cache} with "
                f"{[r.id for r in hit.results][:3]}… vs {[r.id for r in miss.results][:3]}…"
            )
        size = max(size, len(json.dumps([r.to_dict() for r in miss.results])))
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set("bench:answer", b"x" * size)
        gets = await timed(lambda _q: client.get("bench:answer"), questions)
    finally:
        await client.aclose()
    return {"cache_hit": latency_summary_ms(hits[WARMUP:]), "redis_get": latency_summary_ms(gets), "answer_bytes": size}


async def _under_load(retriever: Retriever, questions: Sequence[Question]) -> dict[str, Any]:
    """Hybrid uncached from one client, then from CLIENTS at once, LOAD_SECONDS each."""
    return {
        "clients_1": await _load(retriever, questions, 1),
        f"clients_{CLIENTS}": await _load(retriever, questions, CLIENTS),
        "clients": CLIENTS,
        "seconds": LOAD_SECONDS,
    }


async def _load(retriever: Retriever, questions: Sequence[Question], clients: int) -> dict[str, Any]:
    pending = itertools.cycle(questions)
    latencies: list[float] = []
    degraded = 0
    deadline = time.monotonic() + LOAD_SECONDS

    async def client() -> None:
        nonlocal degraded
        while time.monotonic() < deadline:
            q = next(pending)
            start = time.perf_counter()
            answer = await retriever.retrieve(q.query, NAMESPACE, TOP_K, HYBRID_UNCACHED)
            latencies.append(time.perf_counter() - start)
            degraded += answer.degraded

    cpu, wall = os.times(), time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)
    wall, cpu_used = time.monotonic() - wall, sum(os.times()[:2]) - sum(cpu[:2])
    return {
        "queries": len(latencies),
        "qps": round(len(latencies) / wall, 1),
        "degraded": degraded,
        "cpu_percent_of_two_cores": round(cpu_used / wall / 2 * 100, 1),
        **latency_summary_ms(latencies),
    }


def child_main(argv: list[str]) -> int:
    """`python -m tests.bench.bench_retrieval build|serve KIND N DIR OUT [REDIS_URL]`: figures to OUT as
    JSON; KIND is the Retriever's index_kind."""
    what, index_kind, n, directory, out = argv[0], argv[1], int(argv[2]), Path(argv[3]), Path(argv[4])
    with _logs_discarded():
        if what == "build":
            figures = anyio.run(child_build, index_kind, n, directory, backend="asyncio")
        else:
            figures = anyio.run(child_serve, index_kind, n, directory, argv[5], backend="asyncio")
    figures["vmhwm_kib"] = vm_kib("VmHWM")
    out.write_text(json.dumps(figures))
    return 0


def in_child(what: str, index_kind: str, n: int, directory: Path, *rest: object) -> dict[str, Any]:
    fd, name = tempfile.mkstemp(prefix="rolloutd-bench-retrieval-", suffix=".json")
    os.close(fd)
    out = Path(name)
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.bench.bench_retrieval",
                what,
                index_kind,
                str(n),
                str(directory),
                str(out),
                *map(str, rest),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
        )
        if done.returncode:
            raise BenchFailure(
                f"`{what}` ({index_kind}) at {n:,} memories exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


# -- this process: bandwidth, index, graph, query embedding ---------------------------------


def read_bandwidth() -> dict[str, float]:
    """GB/s of one streaming read of 256 MB of float32 (`max()`), by one core and by two threads."""
    data = np.ones(BANDWIDTH_FLOATS, dtype=np.float32)
    halves = np.array_split(data, 2)

    def one() -> None:
        data.max()

    def two() -> None:
        threads = [threading.Thread(target=h.max) for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return {name: round(data.nbytes / _best_of(5, f) / 1e9, 1) for name, f in (("one_core", one), ("two_cores", two))}


def _best_of(times: int, f: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    return best


async def index_figures(n: int, bandwidth: dict[str, float]) -> dict[str, Any]:
    corpus = generate(n, seed=SEED)
    embedder = HashingEmbedder()
    t = time.perf_counter()
    vectors = embedder.embed_sync([d["text"] for d in corpus.memories])
    embed_seconds = time.perf_counter() - t
    ids = np.arange(1, len(vectors) + 1, dtype=np.int64)
    queries = embedder.embed_sync([q.query for q in sample(corpus.questions, QUERIES)])
    out: dict[str, Any] = {"embed_all_seconds": round(embed_seconds, 2)}
    train_at = IVF_TRAIN_AT if n >= IVF_TRAIN_AT else n // 2  # the Retriever's, whenever it has an IVF at n
    # name -> (kind, vectors a VectorIndex.add call); one index at a time, flat first: it is the truth
    variants = {"flat": ("flat", n), "ivf": ("ivf", BATCH), "ivf_all": ("ivf", n), "hnsw": ("hnsw", n)}
    exact: Hits = []
    for name, (kind, batch) in variants.items():
        index = VectorIndex(embedder.dim, kind, ivf_train_at=train_at)
        t = time.perf_counter()
        for start in range(0, n, batch):
            await index.add(ids[start : start + batch], vectors[start : start + batch])
        build = time.perf_counter() - t
        trained_on = index._ivf_trained_on or None  # the last training (it trains again at 4x growth)
        if kind != "ivf":
            seconds, hits = await searched(index, queries)
            out[name] = {"build_seconds": round(build, 2), **latency_summary_ms(seconds)}
            if kind == "flat":
                exact = hits
            else:
                out[name].update(recall(exact, hits))
        else:
            if not index.trained:
                raise BenchFailure(f"ivf index at {n:,} vectors (ivf_train_at {train_at:,}) did not train")
            sizes = np.array([index._index.invlists.list_size(i) for i in range(index._index.nlist)])
            out[name] = {
                "build_seconds": round(build, 2),
                "nlist": int(index._index.nlist),
                "ivf_train_at": train_at,
                "trained_on": trained_on,
                "add_batch": batch,
                "list_size_mean": round(float(sizes.mean()), 1),
                "list_size_max": int(sizes.max()),
                "nprobe": index.probes,
                "sweep": {},
            }
            for nprobe in sorted({*IVF_NPROBES, index.probes}):
                index.nprobe = nprobe
                seconds, hits = await searched(index, queries)
                out[name]["sweep"][str(nprobe)] = {
                    **latency_summary_ms(seconds),
                    **recall(exact, hits),
                    "scanned_fraction": scanned(index, queries, sizes),
                }
            out[name].update(out[name]["sweep"][str(out[name]["nprobe"])])  # the headline: the default
        del index
    out["flat"]["bare_faiss"] = bare_faiss(vectors, queries)
    scanned_bytes = vectors.nbytes
    out["flat"]["bytes_scanned"] = scanned_bytes
    out["flat"]["floor_ms"] = round(scanned_bytes / (bandwidth["one_core"] * 1e9) * 1000, 3)
    return out


async def searched(index: VectorIndex, queries: np.ndarray) -> tuple[list[float], Hits]:
    """Seconds of each `search` (after WARMUP untimed ones) and the hits."""
    for q in queries[:WARMUP]:
        await index.search(q, TOP_K)
    seconds, hits = [], []
    for q in queries:
        start = time.perf_counter()
        hits.append((await index.search(q, TOP_K))[0])
        seconds.append(time.perf_counter() - start)
    return seconds, hits


def scanned(index: VectorIndex, queries: np.ndarray, list_sizes: np.ndarray) -> float:
    """Mean share of the vectors in the `nprobe` lists a query probes (what IVF's search reads)."""
    _, lists = index._index.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), index.nprobe)
    probed = np.where(lists >= 0, list_sizes[lists], 0)  # -1: nprobe > nlist, every list probed already
    return round(float(probed.sum(axis=1).mean() / index._index.ntotal), 4)


def bare_faiss(vectors: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """The exact search without VectorIndex around it: faiss called in this (the importing) thread."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    seconds = []
    for q in queries:
        start = time.perf_counter()
        index.search(q.reshape(1, -1), TOP_K)
        seconds.append(time.perf_counter() - start)
    return latency_summary_ms(seconds)


def recall(exact: Hits, approx: Hits) -> dict[str, float]:
    """Mean recall@10 of `approx` against `exact`: strict (same ids), and tie-aware (an id whose
    score reaches the exact 10th score counts: equal-scoring near-duplicates are interchangeable)."""
    strict = tied = 0.0
    for truth, got in zip(exact, approx, strict=False):
        ids, tenth = {i for i, _ in truth}, truth[-1][1]
        strict += len(ids & {i for i, _ in got}) / len(truth)
        tied += min(len(truth), sum(1 for i, s in got if i in ids or s >= tenth - 1e-6)) / len(truth)
    return {"recall_at_10": round(strict / len(exact), 4), "recall_at_10_ties": round(tied / len(exact), 4)}


def build_graph(nodes: int, seed: int = SEED) -> tuple[Adjacency, int, int]:
    """`nodes` memories with GRAPH_OUT_LINKS distinct out-links each, targets ~ rank^-GRAPH_SKEW."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, nodes + 1, dtype=np.float64) ** -GRAPH_SKEW
    draws = rng.choice(nodes, size=(nodes, GRAPH_OUT_LINKS * 3), p=weights / weights.sum())
    adjacency, links = Adjacency(), 0
    for node, row in enumerate(draws.tolist()):
        targets = list(dict.fromkeys(t for t in row if t != node))[:GRAPH_OUT_LINKS]
        adjacency.put(NAMESPACE, f"m-{node}", [f"m-{t}" for t in targets])
        links += len(targets)
    hub = int(np.bincount(draws[:, :GRAPH_OUT_LINKS].ravel()).max())
    return adjacency, links, hub


def graph_figures() -> dict[str, Any]:
    t = time.perf_counter()
    adjacency, links, hub = build_graph(GRAPH_NODES)
    out: dict[str, Any] = {
        "nodes": GRAPH_NODES,
        "links": links,
        "build_seconds": round(time.perf_counter() - t, 2),
        "most_linked_in_links_approx": hub,
    }
    seeds = [f"m-{i}" for i in random.Random(SEED).sample(range(GRAPH_NODES), GRAPH_SEEDS)]
    for name, limit in (("limit_100", 100), ("unlimited", 10**9)):
        seconds, found = [], []
        for seed in seeds:
            start = time.perf_counter()
            found.append(len(adjacency.expand(NAMESPACE, [seed], hops=2, limit=limit)))
            seconds.append(time.perf_counter() - start)
        out[name] = {
            **latency_summary_ms(seconds),
            "mean_found": round(sum(found) / len(found), 1),
            "max_found": max(found),
        }
    return out


async def embed_figures(questions: Sequence[Question]) -> dict[str, Any]:
    """One query a call, timed, with each embedder available (wordllama loaded first)."""
    out = {}
    for embedder in available_embedders():
        await embedder.embed(["warm-up"])
        seconds = await timed(lambda q, embedder=embedder: embedder.embed([q.query], kind="query"), questions)
        out[embedder.name] = latency_summary_ms(seconds)
    return out


def available_embedders() -> list[Embedder]:
    found: list[Embedder] = [HashingEmbedder()]
    if importlib.util.find_spec("wordllama") is not None:
        found.append(StaticModelEmbedder("wordllama"))
    return found


# -- retrieval: the run ---------------------------------------------------------------------


def run_speed() -> dict[str, Any]:
    heading(f"retrieval: vector, graph, hybrid and cache at {', '.join(f'{n:,}' for n in SIZES)} memories")
    bandwidth = read_bandwidth()
    line(
        "read bandwidth (256 MB max())",
        f"{bandwidth['one_core']} GB/s one core, {bandwidth['two_cores']} GB/s two threads",
    )
    embeds = anyio.run(embed_figures, sample(generate(10_000, seed=SEED).questions, QUERIES), backend="asyncio")
    for name, s in embeds.items():
        line(
            f"query embedding, {name}",
            f"p50 {s['p50_ms']:.3f} ms, p95 {s['p95_ms']:.3f} ms (one query a call; excluded from every figure below)",
        )
    graph = graph_figures()
    _print_graph(graph)
    sizes = {}
    workdir = disk_scratch_dir()
    server = None
    try:
        with _failures_as_bench_failures(), _logs_discarded():
            (workdir / "redis").mkdir()
            server = RedisServer(workdir / "redis").start()
            for n in SIZES:
                sizes[n] = measure_size(n, workdir, server, bandwidth)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _print_sizes(sizes, graph, bandwidth)
    figures = {
        "bandwidth_gb_s": bandwidth,
        "query_embedding": embeds,
        "graph": graph,
        "sizes": {str(n): s for n, s in sizes.items()},
    }
    failures = speed_failures(sizes)
    if failures:
        raise FailedWithFigures(failures, figures)
    return figures


def measure_size(n: int, workdir: Path, server: RedisServer, bandwidth: dict[str, float]) -> dict[str, Any]:
    kinds = [kind for kind in KINDS_THROUGH_RETRIEVER if kind != "ivf" or n >= IVF_TRAIN_AT]
    print(
        f"  … {n:,} memories: build, reload and serve through the Retriever ({', '.join(kinds)}; fresh "
        "processes), then the raw indexes",
        flush=True,
    )
    through: dict[str, Any] = {}
    for kind in KINDS_THROUGH_RETRIEVER:
        if kind not in kinds:
            through[kind] = {
                "skipped": f"below ivf_train_at {IVF_TRAIN_AT:,} the Retriever's ivf index is exact "
                "(RetrieverSettings has no train threshold to lower)"
            }
            continue
        server.reset()  # each run reuses the namespace and the questions of the last
        directory = workdir / f"state-{n}-{kind}"
        through[kind] = {
            "build": in_child("build", kind, n, directory),
            "serve": in_child("serve", kind, n, directory, server.url),
        }
        shutil.rmtree(directory, ignore_errors=True)
    figures = {"retriever": through, "index": anyio.run(index_figures, n, bandwidth, backend="asyncio")}
    figures["status"] = target_status(figures)
    return figures


def headline(f: dict[str, Any]) -> dict[str, float]:
    """The figures that have targets, by TARGETS key (those measured at this size)."""
    index, flat = f["index"], f["retriever"]["flat"]["serve"]
    out = {
        "flat_p95_ms": index["flat"]["p95_ms"],
        "ivf_p95_ms": index["ivf"]["p95_ms"],
        "ivf_recall": index["ivf"]["recall_at_10_ties"],
        "hybrid_p95_ms": flat["hybrid"]["p95_ms"],
        "cache_hit_p95_ms": flat["cache_hit"]["p95_ms"],
    }
    if "serve" in f["retriever"]["ivf"]:
        out["hybrid_ivf_p95_ms"] = f["retriever"]["ivf"]["serve"]["hybrid"]["p95_ms"]
    return out


def met(key: str, value: float) -> bool:
    target, _, sense = TARGETS[key]
    return value <= target if sense == "max" else value >= target


def target_status(f: dict[str, Any]) -> dict[str, bool]:
    return {key: met(key, value) for key, value in headline(f).items()}


def speed_failures(sizes: dict[int, dict[str, Any]]) -> list[str]:
    """The correctness checks that failed: IVF (as the Retriever builds it) recall at its default nprobe."""
    failures = []
    for n, f in sizes.items():
        ivf = f["index"]["ivf"]
        if not f["status"]["ivf_recall"]:
            better = [p for p, s in ivf["sweep"].items() if s["recall_at_10_ties"] >= MIN_RECALL]
            failures.append(
                f"IVF recall@10 against the exact index {ivf['recall_at_10_ties']:.3f} < {MIN_RECALL} at "
                f"{n:,} memories (nlist {ivf['nlist']}, trained on {ivf['trained_on']:,}, nprobe "
                f"{ivf['nprobe']}, hashing:384 vectors): "
                + (f"nprobe {better[0]} reaches it" if better else "no nprobe swept reaches it")
            )
    return failures


def _print_graph(g: dict[str, Any]) -> None:
    line(
        "graph for 2-hop expansion",
        f"{g['nodes']:,} nodes, {g['links']:,} links (5 out-links each, targets "
        f"~ rank^-{GRAPH_SKEW}; most linked ~{g['most_linked_in_links_approx']:,} in-links), built in "
        f"{g['build_seconds']:.1f} s",
    )
    for name, label in (("limit_100", "limit 100 (default)"), ("unlimited", "unlimited (worst case)")):
        s = g[name]
        line(
            f"expand(seed, hops=2), {label}",
            f"p50 {s['p50_ms']:.3f} ms, p95 {s['p95_ms']:.3f} ms, p99 "
            f"{s['p99_ms']:.3f} ms, max {s['max_ms']:.2f} ms; found mean {s['mean_found']:,}, max {s['max_found']:,}",
        )
    ok = met("expand_p95_ms", g["limit_100"]["p95_ms"])
    line(
        "target (default limit)",
        f"p95 {g['limit_100']['p95_ms']:.3f} ms {TARGETS['expand_p95_ms'][1]}: {'ok' if ok else 'MISSED'}",
    )


def _print_sizes(sizes: dict[int, dict[str, Any]], graph: dict[str, Any], bandwidth: dict[str, float]) -> None:
    ns = list(sizes)
    status = sizes.get(TARGET_SIZE, {}).get("status", {})
    rows = []
    for key, label, get, fmt in _ROWS:
        values = [_cell(get, sizes[n], fmt) for n in ns]
        target = TARGETS[key][1] if key in TARGETS else ""
        if key in CORRECTNESS:  # checked at every size, and a miss fails the run
            bad = [f"{n:,}" for n in ns if not sizes[n]["status"][key]]
            verdict = f"FAILED at {', '.join(bad)}" if bad else "ok"
        else:
            verdict = ("ok" if status[key] else "MISSED") if key in status else ""
        rows.append((*values, target, verdict, label))
    print(f"  p95 in ms unless stated; targets apply at {TARGET_SIZE:,}; query embedding excluded throughout")
    table((*(f"{n:,}" for n in ns), "target", "", "figure"), rows)
    _print_notes(sizes)
    _print_sweep(sizes)
    for n in ns:
        for kind, through in sizes[n]["retriever"].items():
            if "serve" not in through:
                continue
            load = through["serve"]["load"]
            many, one = load[f"clients_{CLIENTS}"], load["clients_1"]
            line(
                f"under load at {n:,} ({kind})",
                f"{many['qps']:,.0f} q/s with {CLIENTS} clients (p95 "
                f"{many['p95_ms']:.1f} ms, CPU {many['cpu_percent_of_two_cores']:.0f}% of 2 cores, {many['degraded']} "
                f"degraded) vs {one['qps']:,.0f} q/s from 1 (x{many['qps'] / one['qps']:.2f}); "
                + _scan_ceiling(sizes[n], kind, bandwidth),
            )


def _scan_ceiling(f: dict[str, Any], kind: str, bandwidth: dict[str, float]) -> str:
    """What the vector scan alone allows a second, on two threads, as words."""
    index = f["index"]
    if kind == "flat":
        return (
            f"the exact scan alone caps it at {bandwidth['two_cores'] * 1e9 / index['flat']['bytes_scanned']:,.0f} "
            "q/s (2-thread bandwidth / bytes a query)"
        )
    served = f["retriever"][kind]["serve"]["index"]
    if served.get("nlist") != index["ivf"]["nlist"]:
        return f"(its nlist {served.get('nlist')} differs from the raw IVF figure's: no scan ceiling computed)"
    scanned_bytes = index["ivf"]["scanned_fraction"] * index["flat"]["bytes_scanned"]
    return (
        f"the IVF lists' scan alone caps it at {bandwidth['two_cores'] * 1e9 / scanned_bytes:,.0f} q/s "
        f"({100 * index['ivf']['scanned_fraction']:.0f}% of the vectors a query at nprobe {index['ivf']['nprobe']})"
    )


def _print_notes(sizes: dict[int, dict[str, Any]]) -> None:
    """What the table's verdicts need said beside them."""
    at = sizes.get(TARGET_SIZE)
    if at is not None and not at["status"]["flat_p95_ms"]:
        flat = at["index"]["flat"]
        line(
            f"flat at {TARGET_SIZE:,}",
            f"p95 {flat['p95_ms']:.2f} ms misses 5 ms against a floor of "
            f"{flat['floor_ms']:.2f} ms (n x dim x 4 bytes at one core's bandwidth), at "
            f"{flat['p50_ms'] / flat['bare_faiss']['p50_ms']:.1f}x bare faiss (p50): a bandwidth limit, expected "
            'at this size; index_kind = "ivf" is the index for it',
        )
    hnsw = ", ".join(f"{f['index']['hnsw']['recall_at_10_ties']:.3f} at {n:,}" for n, f in sizes.items())
    line(
        "HNSW recall@10 (reported only)",
        f"{hnsw}: hashing vectors defeat HNSW's graph (sparse-ish, "
        "near-orthogonal: nearly every pair of memories scores ~0, so the greedy walk has no gradient to follow); "
        "not for use with hashing:384",
    )
    low = [
        f"{f['index']['ivf_all']['recall_at_10_ties']:.3f} at {n:,} (nlist {f['index']['ivf_all']['nlist']}, "
        f"nprobe {f['index']['ivf_all']['nprobe']})"
        for n, f in sizes.items()
        if f["index"]["ivf_all"]["recall_at_10_ties"] < MIN_RECALL
    ]
    if low:
        line(
            "IVF trained on all n",
            f"recall@10 {', '.join(low)} < {MIN_RECALL} at its default nprobe (reported "
            "only: the Retriever never trains on all n, see the IVF rows)",
        )
    for n, f in sizes.items():
        ivf = f["index"]["ivf"]
        if n > ivf["trained_on"]:
            line(
                f"IVF grown, at {n:,}",
                f"last trained on the first {ivf['trained_on']:,} vectors (the corpus adds its "
                f"chains first, its filler last); the rest land in those lists: largest {ivf['list_size_max']:,} "
                f"vs mean {ivf['list_size_mean']:,.0f}, so a query scans {100 * ivf['scanned_fraction']:.0f}% of "
                f"the vectors at nprobe {ivf['nprobe']}, not {100 * min(1, ivf['nprobe'] / ivf['nlist']):.0f}%",
            )
    for n, f in sizes.items():
        if "skipped" in f["retriever"]["ivf"]:
            line(f"ivf via the Retriever at {n:,}", f"skipped: {f['retriever']['ivf']['skipped']}")


def _print_sweep(sizes: dict[int, dict[str, Any]]) -> None:
    print(
        "  IVF: recall@10 vs exact (ties count) and latency by nprobe (* = the index's default, max(48, nlist/6)); "
        "VectorIndex.search, p50/p95 in ms"
    )
    rows = []
    for n, f in sizes.items():
        for name, label in (("ivf", f"grown {BATCH:,} at a time"), ("ivf_all", "trained on all n")):
            ivf = f["index"][name]
            for nprobe, s in ivf["sweep"].items():
                rows.append(
                    (
                        f"{n:,}",
                        f"{nprobe}{'*' if int(nprobe) == ivf['nprobe'] else ''}",
                        f"{s['p50_ms']:.2f}",
                        f"{s['p95_ms']:.2f}",
                        f"{s['recall_at_10_ties']:.3f}",
                        f"{100 * s['scanned_fraction']:.1f}%",
                        f"{label}: nlist {ivf['nlist']}, trained on {ivf['trained_on']:,}, lists mean "
                        f"{ivf['list_size_mean']:,.0f} / largest {ivf['list_size_max']:,}",
                    )
                )
    table(("memories", "nprobe", "p50", "p95", "recall@10", "scanned", "IVF index"), rows)


def _cell(get: Callable[[dict[str, Any]], Any], f: dict[str, Any], fmt: str) -> str:
    try:
        return fmt.format(get(f))
    except KeyError:  # not measured at this size (ivf through the Retriever below its train threshold)
        return "skipped"


def _ms(path: str, stat: str = "p95_ms") -> Callable[[dict[str, Any]], float]:
    def get(f: dict[str, Any]) -> float:
        value: Any = f
        for part in path.split("."):
            value = value[part]
        return value[stat] if stat else value

    return get


def _rss(kind: str, per_100k: bool = False) -> Callable[[dict[str, Any]], float]:
    def get(f: dict[str, Any]) -> float:
        s = f["retriever"][kind]["serve"]
        mib = (s["rss_after_kib"] - s["rss_before_kib"]) / 1024
        return mib * 100_000 / s["memories"] if per_100k else mib

    return get


def _per_kind_rows(kind: str) -> list[tuple[str, str, Callable[[dict[str, Any]], Any], str]]:
    serve, build = f"retriever.{kind}.serve", f"retriever.{kind}.build"
    return [
        ("", f"hybrid under load ({kind}), {CLIENTS} clients: p95", _ms(f"{serve}.load.clients_{CLIENTS}"), "{:.1f}"),
        (
            "",
            f"hybrid under load ({kind}), {CLIENTS} clients: q/s",
            _ms(f"{serve}.load.clients_{CLIENTS}", "qps"),
            "{:,.0f}",
        ),
        ("", f"hybrid ({kind}), 1 client: queries/s", _ms(f"{serve}.load.clients_1", "qps"), "{:,.0f}"),
        ("", f"build ({kind}): Retriever.add, all memories (s)", _ms(build, "add_seconds"), "{:.1f}"),
        ("", f"build ({kind}): memories/s", _ms(build, "memories_per_second"), "{:,}"),
        ("", f"build ({kind}): save() the index file (s)", _ms(build, "save_seconds"), "{:.2f}"),
        ("", f"reload ({kind}): Retriever.open() on the saved state (s)", _ms(serve, "reload_seconds"), "{:.2f}"),
        ("", f"RSS ({kind}) after open() - before (MiB)", _rss(kind), "{:,.0f}"),
        ("", "  per 100,000 memories (MiB)", _rss(kind, per_100k=True), "{:,.0f}"),
        (
            "",
            f"index file ({kind}) on disk (MiB)",
            lambda f: f["retriever"][kind]["build"]["index_file_bytes"] / 2**20,
            "{:,.0f}",
        ),
    ]


_ROWS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str]] = [
    ("flat_p95_ms", "vector, exact (flat) index: VectorIndex.search", _ms("index.flat"), "{:.2f}"),
    ("", "  its floor: n x dim x 4 bytes / one-core bandwidth", _ms("index.flat", "floor_ms"), "{:.2f}"),
    ("", "  baseline: bare faiss IndexFlatIP.search, p95", _ms("index.flat.bare_faiss"), "{:.2f}"),
    (
        "",
        "  VectorIndex.search p50 / bare faiss p50",
        lambda f: f["index"]["flat"]["p50_ms"] / f["index"]["flat"]["bare_faiss"]["p50_ms"],
        "{:.1f}x",
    ),
    ("ivf_p95_ms", "vector, IVF grown as the Retriever grows it, default nprobe", _ms("index.ivf"), "{:.2f}"),
    ("ivf_recall", "  IVF recall@10 vs exact (ties count)", _ms("index.ivf", "recall_at_10_ties"), "{:.3f}"),
    (
        "",
        "  IVF lists (nlist) / trained on (vectors)",
        lambda f: f"{f['index']['ivf']['nlist']} / {f['index']['ivf']['trained_on']:,}",
        "{}",
    ),
    (
        "",
        "  IVF vectors scanned a query (share of n)",
        lambda f: 100 * f["index"]["ivf"]["scanned_fraction"],
        "{:.1f}%",
    ),
    ("", "vector, IVF trained on all n (nlist sqrt n), default nprobe", _ms("index.ivf_all"), "{:.2f}"),
    ("", "  its recall@10 vs exact (ties count)", _ms("index.ivf_all", "recall_at_10_ties"), "{:.3f}"),
    ("", "  its lists (nlist)", _ms("index.ivf_all", "nlist"), "{}"),
    ("", "vector, HNSW index (reported only)", _ms("index.hnsw"), "{:.3f}"),
    ("", "  HNSW recall@10 vs exact (ties count)", _ms("index.hnsw", "recall_at_10_ties"), "{:.3f}"),
    ("", "  HNSW recall@10 vs exact (same ids)", _ms("index.hnsw", "recall_at_10"), "{:.3f}"),
    ("", "vector-only via Retriever.retrieve (flat), uncached", _ms("retriever.flat.serve.vector"), "{:.2f}"),
    ("", "vector-only via Retriever.retrieve (ivf), uncached", _ms("retriever.ivf.serve.vector"), "{:.2f}"),
    ("hybrid_p95_ms", "hybrid via Retriever.retrieve (flat), uncached", _ms("retriever.flat.serve.hybrid"), "{:.2f}"),
    ("", "  hybrid (flat) p50", _ms("retriever.flat.serve.hybrid", "p50_ms"), "{:.2f}"),
    ("hybrid_ivf_p95_ms", "hybrid via Retriever.retrieve (ivf), uncached", _ms("retriever.ivf.serve.hybrid"), "{:.2f}"),
    ("", "  hybrid (ivf) p50", _ms("retriever.ivf.serve.hybrid", "p50_ms"), "{:.2f}"),
    ("", "graph-only via Retriever.retrieve, uncached", _ms("retriever.flat.serve.graph"), "{:.3f}"),
    (
        "cache_hit_p95_ms",
        "cache hit via Retriever.retrieve (real Redis)",
        _ms("retriever.flat.serve.cache_hit"),
        "{:.3f}",
    ),
    ("", "  baseline: bare Redis GET of an answer's size", _ms("retriever.flat.serve.redis_get"), "{:.3f}"),
    *_per_kind_rows("flat"),
    *_per_kind_rows("ivf"),
    ("", "raw: embed every memory, hashing (s)", _ms("index", "embed_all_seconds"), "{:.1f}"),
    ("", "raw: VectorIndex flat add (s)", _ms("index.flat", "build_seconds"), "{:.2f}"),
    ("", "raw: VectorIndex IVF add as built, training included (s)", _ms("index.ivf", "build_seconds"), "{:.2f}"),
    ("", "raw: VectorIndex IVF add trained on all n (s)", _ms("index.ivf_all", "build_seconds"), "{:.2f}"),
    ("", "raw: VectorIndex HNSW add = graph build (s)", _ms("index.hnsw", "build_seconds"), "{:.1f}"),
    ("", "vectors, n x dim x 4 (MiB)", lambda f: f["index"]["flat"]["bytes_scanned"] / 2**20, "{:,.0f}"),
]


# -- quality --------------------------------------------------------------------------------


def run_quality() -> dict[str, Any]:
    corpus = generate(QUALITY_MEMORIES, seed=SEED)
    questions = corpus.questions if not QUALITY_QUESTIONS else sample(corpus.questions, QUALITY_QUESTIONS)
    heading(f"quality: {len(corpus.memories):,} memories, {len(questions):,} questions, vector vs hybrid vs graph")
    embedders = available_embedders()
    if len(embedders) == 1:
        line(
            "static:wordllama",
            "NOT MEASURED: the wordllama package is not installed (`make bench` installs it "
            "with `pip install -e '.[static]'`); its rows are left out",
        )
    results: dict[str, Any] = {}
    for embedder in embedders:
        workdir = Path(tempfile.mkdtemp(prefix="rolloutd-bench-quality-"))
        try:
            with _logs_discarded():
                results[embedder.name] = anyio.run(quality_of, embedder, corpus, questions, workdir, backend="asyncio")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    _print_quality(results, questions)
    figures = {"memories": len(corpus.memories), "questions": len(questions), "by_embedder": results}
    failures = quality_failures(results)
    if failures:
        raise FailedWithFigures(
            ["hybrid does not beat vector-only on multi-hop questions: " + "; ".join(failures)], figures
        )
    return figures


async def quality_of(
    embedder: Embedder, corpus: Corpus, questions: Sequence[Question], workdir: Path
) -> dict[str, Any]:
    wrapped = PreEmbedded(embedder)
    retriever = await open_retriever(workdir, wrapped, LocalCache())
    try:
        await add_corpus(retriever, corpus)
        await wrapped.prepare([q.query for q in questions])
        out: dict[str, Any] = {}
        for name, route in ROUTES.items():
            scores = []
            for q in questions:
                answer = checked(await retriever.retrieve(q.query, q.namespace, TOP_K, route), route, q.query)
                scores.append(score(q, [r.id for r in answer.results]))
            out[name] = by_hops(questions, scores)
    finally:
        await retriever.close()
    return out


def by_hops(questions: Sequence[Question], scores: Sequence[Scores]) -> dict[str, dict[str, float]]:
    """Mean scores for hops 0, 1, 2, multi-hop (>= 1) and all."""
    groups = {
        "0": lambda h: h == 0,
        "1": lambda h: h == 1,
        "2": lambda h: h == 2,
        ">=1": lambda h: h >= 1,
        "all": lambda h: True,
    }
    out = {}
    for name, keep in groups.items():
        picked = [s for q, s in zip(questions, scores, strict=False) if keep(q.hops)]
        if picked:
            out[name] = {k: round(v, 4) for k, v in mean(picked).to_dict().items()} | {"questions": len(picked)}
    return out


def quality_failures(results: dict[str, Any]) -> list[str]:
    """Where hybrid does not beat vector-only on the multi-hop questions (MRR, R@10), per embedder."""
    failures = []
    for name, routes in results.items():
        hybrid, vector = routes["hybrid"].get(">=1"), routes["vector"].get(">=1")
        if hybrid is None:
            raise BenchFailure("the corpus has no multi-hop question: the hybrid check cannot run")
        for metric in ("mrr", "recall_at_10"):
            if hybrid[metric] <= vector[metric]:
                failures.append(
                    f"{name}: hybrid {metric} {hybrid[metric]:.3f} <= vector-only {vector[metric]:.3f} "
                    f"on {hybrid['questions']:,} multi-hop questions"
                )
    return failures


def _print_quality(results: dict[str, Any], questions: Sequence[Question]) -> None:
    rows = []
    for name, routes in results.items():
        for route, groups in routes.items():
            for hops, s in groups.items():
                rows.append(
                    (
                        f"{s['precision_at_10']:.3f}",
                        f"{s['recall_at_10']:.3f}",
                        f"{s['top3']:.3f}",
                        f"{s['mrr']:.3f}",
                        f"{s['ndcg_at_10']:.3f}",
                        f"{s['questions']:,}",
                        f"{name} {route} hops {hops}",
                    )
                )
    table(("P@10", "R@10", "top-3", "MRR", "nDCG@10", "questions", "embedder, path, hops"), rows)
    for name, routes in results.items():
        h, v = routes["hybrid"][">=1"], routes["vector"][">=1"]
        line(
            f"multi-hop, {name}",
            f"hybrid MRR {h['mrr']:.3f} vs vector-only {v['mrr']:.3f}, R@10 "
            f"{h['recall_at_10']:.3f} vs {v['recall_at_10']:.3f} (hybrid must beat vector-only on both)",
        )


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
