"""The embedded async hybrid retriever: FAISS vectors, a relationship graph, a cache, fused.

Composed by `controller.host.retrieval_runtime`; may read `flags`, nothing else of ours.

    retriever.py         the Retriever: vector search + graph walk, fused, cached, per namespace
    http_api.py          POST /v1/retrieve, POST /v1/memories(:batch), DELETE /v1/memories/{id}
    gating.py            which retrieval path an agent gets, from the flags being rolled out
    fusion.py            weighted Reciprocal Rank Fusion
    memory.py            the Memory model, its rules, and its 63-bit key (`memory_vid`)
    entities.py          graph entry points: memories by the rare terms they mention
    vector_index.py      faiss behind an async API (flat by default, IVF or HNSW)
    index_files.py       one vector index file per namespace, reconciled with the store on open
    embedder.py          the Embedder protocol, EmbedderError, l2_normalise, the spec grammar
    embedder_hashing.py  the default embedder: feature hashing, offline, deterministic
    embedder_http.py     an OpenAI-compatible /v1/embeddings endpoint
    embedder_static.py   wordllama's static model, weights inside its wheel (optional extra)
    graph_store.py       the GraphStore protocol, its errors, BaseGraphStore (what both share)
    adjacency.py         the in-process link mirror that k-hop walks read
    embedded_store.py    the graph store on SQLite (no MongoDB configured)
    mongo_store.py       the graph store on MongoDB
    cache.py             the cache protocol and its epoch-per-namespace invalidation
    cache_memory.py      the in-process cache (no Redis configured)
    cache_redis.py       the cache on Redis, shared by replicas
    backends.py          config → embedder, cache and graph store
    metrics.py           the retriever's Prometheus metrics, named as the seeds name them
    quality.py           labelled sets and the quality metrics over them
    validation.py        the periodic ground-truth validation and latency probe jobs
    corpus.py            a synthetic linked corpus (demo, tests, validation without a set)
    faults.py            faults injected on purpose (`rolloutd demo --inject`)
"""
