"""Which backend the configuration names: the one module that knows every backend.

Each backend depends only on its contract (`retrieval.embedder`, `retrieval.cache`,
`retrieval.graph_store`); the choice among them lives here, above them, so no contract
imports its own implementations and the import graph stays free of cycles.

    [retrieval] embedder = "hashing" | "hashing:DIM" | "http:URL#MODEL" | "static:NAME"
    [retrieval] redis_url     absent: the in-process cache
    [retrieval] mongodb_uri   absent: the embedded SQLite store under the retrieval directory
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retrieval.cache import RetrievalCache
from retrieval.cache_memory import LocalCache
from retrieval.cache_redis import RedisCache
from retrieval.embedded_store import EmbeddedStore
from retrieval.embedder import Embedder, check_spec
from retrieval.embedder_e5 import E5Embedder
from retrieval.embedder_hashing import HashingEmbedder
from retrieval.embedder_http import HttpEmbedder
from retrieval.embedder_static import StaticModelEmbedder
from retrieval.graph_store import GraphStore
from retrieval.mongo_store import MongoStore


def build_embedder(spec: str) -> Embedder:
    """Build an embedder from "hashing[:DIM]", "http:URL#MODEL", "static:NAME" or "e5:NAME".

    Raises `EmbedderError` for a spec `check_spec` rejects; nothing is loaded or fetched
    yet (the model packages are imported on first use).
    """
    kind, args = check_spec(spec)
    if kind == "hashing":
        return HashingEmbedder(*args)
    if kind == "http":
        return HttpEmbedder(*args)
    if kind == "e5":
        return E5Embedder(*args)
    return StaticModelEmbedder(*args)


def build_cache(redis_url: str | None, **options: Any) -> RetrievalCache:
    """A `RedisCache` on `redis_url`, or a `LocalCache` when no Redis is configured.

    Options go to the chosen class's constructor (`ttl` and `clock` suit both).
    """
    if redis_url is None:
        return LocalCache(**options)
    return RedisCache(redis_url, **options)


def build_store(mongodb_uri: str | None, directory: Path) -> GraphStore:
    """A `MongoStore` on `mongodb_uri`, or the `EmbeddedStore` under `directory` without one."""
    if mongodb_uri:
        return MongoStore(mongodb_uri)
    return EmbeddedStore(directory)
