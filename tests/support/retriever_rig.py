"""Builders for the retriever tests: memories, routes, an instrumented embedder, a clock,
and a Retriever over the embedded store (or any store) with its own metrics registry."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import numpy as np
from prometheus_client import CollectorRegistry

from retrieval.cache import RetrievalCache
from retrieval.cache_memory import LocalCache
from retrieval.corpus import generate
from retrieval.embedded_store import EmbeddedStore
from retrieval.embedder import Embedder, EmbedKind
from retrieval.embedder_hashing import HashingEmbedder
from retrieval.gating import CACHE, GRAPH, HYBRID, VECTOR, Route, choose_route
from retrieval.graph_store import GraphStore
from retrieval.memory import Memory
from retrieval.metrics import RetrievalMetrics
from retrieval.retriever import Answer, Retriever, RetrieverSettings

STEP = 10.0  # bound on one open, close, write or retrieval; each takes milliseconds here


def mem(id: str, text: str, *links: str, ns: str = "default") -> Memory:
    return Memory(id=id, namespace=ns, text=text, links=links)


def corpus(size: int, namespace: str = "default") -> list[Memory]:
    """`retrieval.corpus.generate(size)` as Memory objects."""
    return [Memory(**m) for m in generate(size, namespace=namespace).memories]


def route(path: str, *, cache: bool = False) -> Route:
    """The route the gating flags give a caller on `path`, with or without the cache."""
    on = {"hybrid": (HYBRID, VECTOR, GRAPH), "vector": (VECTOR,), "graph": (GRAPH,)}[path]
    return choose_route({**dict.fromkeys(on, True), CACHE: cache})


def ids(answer: Answer) -> list[str]:
    return [r.id for r in answer.results]


class InstrumentedEmbedder:
    """Wraps an embedder: records the texts it embeds, and sleeps `delay` seconds first when set.

    Keeps the wrapped embedder's `name` and `dim`, so index files see the same embedder.
    """

    def __init__(self, inner: Embedder | None = None, delay: float = 0.0) -> None:
        self.inner = inner or HashingEmbedder()
        self.name, self.dim = self.inner.name, self.inner.dim
        self.delay = delay
        self.seen: list[str] = []

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        if self.delay:
            await anyio.sleep(self.delay)
        self.seen += texts
        return await self.inner.embed(texts, kind=kind)

    def memories_embedded(self, memories: Iterable[Memory]) -> list[str]:
        """Which of `memories` had their text embedded, as sorted "namespace/id"s.

        `open()` also embeds one probe text of its own to check the embedder answers;
        anything beyond that one text which is no memory's fails here.
        """
        memories = list(memories)
        texts = Counter(m.text for m in memories)
        embedded = Counter(t for t in self.seen if t in texts)
        others = len(self.seen) - sum(embedded.values())
        assert others <= 1, f"{others} embedded texts are no memory's: {self.seen[:5]}"
        out = []
        for m in memories:
            if embedded[m.text]:
                embedded[m.text] -= 1
                out.append(f"{m.namespace}/{m.id}")
        return sorted(out)


def build(
    directory: Path,
    *,
    store: GraphStore | None = None,
    cache: RetrievalCache | None = None,
    embedder: Embedder | None = None,
    settings: RetrieverSettings | None = None,
    registry: CollectorRegistry | None = None,
) -> Retriever:
    """A Retriever over `directory` (the embedded store under `directory/graph` by default)."""
    return Retriever(
        store or EmbeddedStore(directory / "graph"),
        cache or LocalCache(),
        embedder or HashingEmbedder(),
        directory,
        settings or RetrieverSettings(),
        RetrievalMetrics(registry or CollectorRegistry()),
    )


@asynccontextmanager
async def opened(retriever: Retriever) -> AsyncIterator[Retriever]:
    """Open the retriever, and close it (saving its index files) when the block ends."""
    with anyio.fail_after(STEP):
        await retriever.open()
    try:
        yield retriever
    finally:
        with anyio.fail_after(STEP):
            await retriever.close()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    return registry.get_sample_value(name, labels) or 0.0


def snapshot(registry: CollectorRegistry) -> dict[tuple, float]:
    """Every sample of every series, to compare before and after."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for metric in registry.collect() for s in metric.samples}
