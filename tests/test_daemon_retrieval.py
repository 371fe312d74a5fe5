"""The retriever inside a real `rolloutd` process, against real MongoDB-wire and Redis
servers: serve, survive a restart without re-embedding, refuse in an emergency, wait
for MongoDB at start-up and become ready when it comes."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.daemon_harness import Daemon, write_config
from tests.support.flagfiles import FIRST_COHORTS, PHASE5_FLAGS, write_seed_flags
from tests.support.realservers import MongoServer, RedisServer

ALL_ON = {
    name: {
        "enabled": True,
        "rollout_strategy": "all",
        "rollout_percentage": 100.0,
        "constraints": [{"context_name": "agent", "operator": "IN", "values": FIRST_COHORTS}],
    }
    for name in PHASE5_FLAGS
}
MEMORIES = [
    {"id": "owner", "text": "Dana Okafor owns ledger-sync and signs off every change to it."},
    {"id": "release", "text": "Release R-4821 of ledger-sync shipped with batch retries.", "links": ["owner"]},
    {"id": "incident", "text": "Incident INC-1307 was traced to release R-4821.", "links": ["release"]},
]
QUERY = {"agent": "QA", "query": "Who signs off the system behind incident INC-1307?", "top_k": 3}


def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not true within {timeout}s")


def _daemon(tmp_path: Path, mongo: MongoServer, redis: RedisServer) -> Daemon:
    config = write_config(tmp_path)
    config.write_text(
        config.read_text() + "\n[retrieval]\n"
        f'mongodb_uri = "mongodb://127.0.0.1:{mongo.port}/rolloutd_daemon"\n'
        f'redis_url = "redis://127.0.0.1:{redis.port}/0"\n'
    )
    write_seed_flags(tmp_path, ALL_ON)
    return Daemon(config)


@pytest.mark.slow
def test_serves_restarts_without_reembedding_and_refuses_in_an_emergency(
    tmp_path: Path, mongo_server: MongoServer, redis_server: RedisServer
) -> None:
    daemon = _daemon(tmp_path, mongo_server, redis_server).start()
    try:
        url = daemon.base_url
        response = httpx.post(url + "/v1/memories:batch", json={"memories": MEMORIES}, timeout=10)
        assert response.status_code == 201, response.text
        first = httpx.post(url + "/v1/retrieve", json=QUERY, timeout=10).json()
        assert first["path"] == "hybrid" and first["cache"] == "miss"
        assert sorted(r["id"] for r in first["results"]) == ["incident", "owner", "release"]
        assert httpx.post(url + "/v1/retrieve", json=QUERY, timeout=10).json()["cache"] == "hit"
        metrics = httpx.get(url + "/metrics").text
        for name in (
            "hybrid_rag_retrieval_latency_seconds_bucket",
            "hybrid_rag_queries_total",
            "redis_cache_hits_total",
            "redis_cache_misses_total",
            "vector_db_searches_total",
            "graph_db_queries_total",
            "hybrid_rag_stage_latency_seconds_bucket",
        ):
            assert name in metrics, name
        assert 'hybrid_rag_queries_total{path="hybrid"} 2.0' in metrics
        assert 'hybrid_rag_retrieval_latency_seconds_count{cache="hit",path="hybrid"} 1.0' in metrics
    finally:
        daemon.stop()
    assert (tmp_path / "state" / "retrieval" / "vectors").glob("*.rvix")

    again = Daemon(daemon.config).start()
    try:
        opened = [e for e in again.events() if e["event"] == "retrieval.opened"]
        # 3 memories + the validation corpus (ground_truth_validation_enabled is on), none embedded again
        assert opened and opened[0]["memories"] == 303 and opened[0]["embedded"] == 0
        second = httpx.post(again.base_url + "/v1/retrieve", json=QUERY, timeout=10).json()
        assert [r["id"] for r in second["results"]] == [r["id"] for r in first["results"]]
        again.signal(signal.SIGUSR1)
        _until(lambda: httpx.post(again.base_url + "/v1/retrieve", json=QUERY, timeout=10).status_code == 503)
        refused = httpx.post(again.base_url + "/v1/memories", json={"text": "t"}, timeout=10)
        assert refused.status_code == 503 and "emergency shutdown" in refused.json()["error"]
    finally:
        again.stop()


@pytest.mark.slow
def test_waits_for_mongodb_at_start_up_then_becomes_ready(
    tmp_path: Path, mongo_server: MongoServer, redis_server: RedisServer
) -> None:
    mongo_server.stop()
    daemon = _daemon(tmp_path, mongo_server, redis_server).start(wait=False)
    try:

        def not_ready_for_retrieval() -> bool:
            try:
                response = httpx.get(daemon.base_url + "/readyz", timeout=1)
            except httpx.HTTPError:
                return False
            return response.status_code == 503 and "retrieval" in response.json()["problems"]

        _until(not_ready_for_retrieval)
        # Flags are served meanwhile: OFREP does not wait for MongoDB.
        ofrep = httpx.post(
            daemon.base_url + "/ofrep/v1/evaluate/flags/hybrid_rag_enabled",
            json={"context": {"targetingKey": "t", "agent": "QA"}},
            timeout=5,
        )
        assert ofrep.status_code == 200 and ofrep.json()["value"] is True
        waiting = httpx.post(daemon.base_url + "/v1/retrieve", json=QUERY, timeout=5)
        assert waiting.status_code == 503 and "retry-after" in waiting.headers
        _until(lambda: any(e["event"] == "retrieval.open_failed" and e["_priority"] == 3 for e in daemon.events()))
        mongo_server.start()
        daemon.wait_ready(timeout=40)
        answer = httpx.post(daemon.base_url + "/v1/retrieve", json=QUERY, timeout=10)
        assert answer.status_code == 200 and answer.json()["results"] == []
    finally:
        daemon.stop()
        if not mongo_server.running:
            mongo_server.start()


def _gauge(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.mark.slow
def test_validation_and_probe_gauges_follow_their_flags(tmp_path: Path) -> None:
    """Embedded store, no services: the synthetic corpus is seeded once, measured, exported;
    the kill switch hides the gauges (absent, never stale)."""
    config = write_config(tmp_path)
    config.write_text(config.read_text() + "\n[retrieval]\nvalidation_interval_seconds = 1\n")
    write_seed_flags(tmp_path, ALL_ON)
    daemon = Daemon(config).start()
    try:
        url = daemon.base_url + "/metrics"
        _until(
            lambda: (
                None
                not in [
                    _gauge(httpx.get(url).text, name)
                    for name in ("hybrid_rag_precision_at_10", "hybrid_rag_benchmark_p95_latency_seconds")
                ]
            ),
            timeout=30,
        )
        text = httpx.get(url).text
        assert _gauge(text, "hybrid_rag_precision_at_10") >= 0.7  # the plan's guard threshold
        assert _gauge(text, "hybrid_rag_top3_accuracy_percent") >= 90  # the seeds' target
        assert 'hybrid_rag_validation_score{metric="mrr",path="vector"}' in text
        assert (_gauge(text, "hybrid_rag_benchmark_p95_latency_seconds") or 0) > 0
        assert 'hybrid_rag_queries_total{path="hybrid"} 0.0' in text  # synthetic queries are not traffic
        seeded = [e for e in daemon.events() if e["event"] == "validation.measured"]
        assert seeded
        daemon.signal(signal.SIGUSR1)
        _until(lambda: _gauge(httpx.get(url).text, "hybrid_rag_precision_at_10") is None)
        assert _gauge(httpx.get(url).text, "hybrid_rag_benchmark_p95_latency_seconds") is None
    finally:
        daemon.stop()
