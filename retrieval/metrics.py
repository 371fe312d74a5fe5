"""The retriever's Prometheus metrics, named as the seeds name them.

    hybrid_rag_retrieval_latency_seconds{path, cache}   histogram, request in to answer out
    hybrid_rag_stage_latency_seconds{stage}             histogram: embed, vector, graph, fuse, cache
    hybrid_rag_queries_total{path}                      answered or failed retrievals
    hybrid_rag_errors_total{path, reason}               retrievals that failed (the caller got a 5xx)
    hybrid_rag_degraded_total{reason}                   answered without a source (timeout, store down)
    redis_cache_hits_total, redis_cache_misses_total    cache lookups (Redis, or the in-process cache)
    redis_cache_bypassed_total                          lookups the cache could not serve (down, pending invalidate)
    vector_db_searches_total                            vector index searches
    graph_db_queries_total                              graph expansions
    hybrid_rag_memories{namespace}                      memories stored (read at scrape time)
    hybrid_rag_graph_store_up                           1 while the graph store answers

`path` is the path that actually ran ("hybrid", "vector", "graph"), so a degraded
hybrid request counts under "vector". Latency buckets go from 250 µs (a cache hit) to
10 s, dense around the seeds' 200/300/500 ms thresholds, which the p95 guard reads
through `histogram_quantile`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
STAGES = ("embed", "vector", "lexical", "graph", "fuse", "cache")


class RetrievalMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.registry = r
        self.latency = Histogram(
            "hybrid_rag_retrieval_latency_seconds",
            "Retrieval latency, request to answer.",
            ["path", "cache"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage = Histogram(
            "hybrid_rag_stage_latency_seconds",
            "Latency of one retrieval stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queries = Counter("hybrid_rag_queries", "Retrievals, answered or failed.", ["path"], registry=r)
        self.errors = Counter("hybrid_rag_errors", "Retrievals that failed.", ["path", "reason"], registry=r)
        self.degraded = Counter(
            "hybrid_rag_degraded", "Retrievals answered without one of their sources.", ["reason"], registry=r
        )
        self.cache_hits = Counter("redis_cache_hits", "Retrieval cache hits.", registry=r)
        self.cache_misses = Counter("redis_cache_misses", "Retrieval cache misses.", registry=r)
        self.cache_bypassed = Counter(
            "redis_cache_bypassed", "Cache lookups skipped: backend down or an invalidate pending.", registry=r
        )
        self.vector_searches = Counter("vector_db_searches", "Vector index searches.", registry=r)
        self.graph_queries = Counter("graph_db_queries", "Graph expansions.", registry=r)
        self.lexical_searches = Counter("lexical_index_searches", "Lexical (BM25) index searches.", registry=r)
        self.memories = Gauge("hybrid_rag_memories", "Memories stored, by namespace.", ["namespace"], registry=r)
        self.store_up = Gauge(
            "hybrid_rag_graph_store_up", "1 while the graph store (MongoDB or SQLite) answers.", registry=r
        )
        for path in ("hybrid", "vector", "graph", "lexical"):  # zero series exist before the first query
            self.queries.labels(path)
        for stage in STAGES:
            self.stage.labels(stage)

    def cache_outcome(self, outcome: str) -> None:
        {"hit": self.cache_hits, "miss": self.cache_misses, "bypass": self.cache_bypassed}[outcome].inc()
