"""The retriever as the daemon runs it: built from the config, opened in the background
(retried while its services are away), kept up, validated while its flags say so, and
closed on stop."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import cast

import anyio
import structlog
from prometheus_client import CollectorRegistry

from controller.host.config import Config
from flags.store import FlagStore
from retrieval.backends import build_cache, build_embedder, build_store
from retrieval.embed_batcher import BatchingEmbedder
from retrieval.embedder import EmbedderError
from retrieval.faults import Faults
from retrieval.graph_store import GraphStoreError
from retrieval.metrics import RetrievalMetrics
from retrieval.retriever import Retriever, RetrieverSettings
from retrieval.validation import ValidationGauges, ValidationJob, ValidationSet
from retrieval.vector_index import Kind

VALIDATION_FLAG = "ground_truth_validation_enabled"
PROBE_FLAG = "performance_benchmarks_enabled"

log = structlog.get_logger("rolloutd.retrieval")

RETRY_FIRST, RETRY_MAX = 1.0, 30.0


def retrieval_dir(config: Config) -> Path:
    return config.daemon.state_dir / "retrieval"


def build_retriever(config: Config, registry: CollectorRegistry, faults: Faults | None = None) -> Retriever:
    """The retriever the config describes; nothing is opened or connected yet."""
    r = config.retrieval
    directory = retrieval_dir(config)
    store = build_store(config.mongodb_uri, directory)
    settings = RetrieverSettings(
        index_kind=cast(Kind, r.index),  # the config checked it is one of the kinds
        rrf_k=r.rrf_k,
        weights={"vector": r.vector_weight, "lexical": r.lexical_weight, "graph": r.graph_weight},
        vector_timeout=r.vector_timeout,
        lexical_timeout=r.lexical_timeout,
        graph_timeout=r.graph_timeout,
    )
    return Retriever(
        store,
        build_cache(config.redis_url, ttl=r.cache_ttl),
        BatchingEmbedder(build_embedder(r.embedder)),  # concurrent writes' texts embedded in one call
        directory,
        settings,
        RetrievalMetrics(registry),
        faults=faults,
    )


async def open_and_keep(retriever: Retriever, report: Callable[[str | None], None]) -> None:
    """Open the retriever, retrying with backoff while MongoDB or the embedder is away, then
    keep it up (`Retriever.run`) until cancelled. `report(problem)` tells readiness."""
    delay = RETRY_FIRST
    while True:
        report(retriever.problem)
        try:
            await retriever.open()
        except Exception as exc:  # noqa: BLE001  (whatever it is, flags and the controller keep serving)
            expected = isinstance(exc, (GraphStoreError, EmbedderError, OSError))
            retriever.problem = f"the retriever cannot open: {exc if expected else repr(exc)}"
            report(retriever.problem)
            log.error(
                "retrieval.open_failed",
                problem=retriever.problem,
                retry_in_seconds=delay,
                **({} if expected else {"exc_info": True}),
            )
            await anyio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
            continue
        break
    report(None)
    await retriever.run()


def load_validation_set(config: Config) -> ValidationSet:
    """The configured labelled set (LabelledSetError names its file, line and field), or
    the synthetic corpus."""
    if config.retrieval.labelled_set is not None:
        return ValidationSet.labelled(config.retrieval.labelled_set)
    return ValidationSet.synthetic()


def flag_live(store: FlagStore, clock: Callable[[], datetime], name: str) -> Callable[[], bool]:
    """A predicate: `name` is enabled, above 0% now, and the kill switch is off. Cheap: it
    runs on every scrape of /metrics."""

    def live() -> bool:
        snapshot = store.snapshot
        flag = snapshot.flags.get(name)
        return bool(flag and flag.enabled and not snapshot.kill_switch and flag.percentage_at(clock()) > 0)

    return live


def build_validation(
    config: Config,
    retriever: Retriever,
    validation_set: ValidationSet,
    registry: CollectorRegistry,
    store: FlagStore,
    clock: Callable[[], datetime],
) -> ValidationJob:
    validation_on = flag_live(store, clock, VALIDATION_FLAG)
    probe_on = flag_live(store, clock, PROBE_FLAG)
    gauges = ValidationGauges(registry, validation_on=validation_on, probe_on=probe_on)
    # Plan time: a rehearsal at time_scale 60 validates every 5 plan minutes = 5 wall seconds.
    interval = max(1.0, config.retrieval.validation_interval / config.daemon.time_scale)
    return ValidationJob(
        retriever, validation_set, gauges, validation_on=validation_on, probe_on=probe_on, interval=interval
    )
