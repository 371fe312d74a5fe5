"""The real-server fixtures start servers that work, and stop()/start() keeps port and data."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from pymongo import AsyncMongoClient

from tests.support.realservers import HOST, MongoServer, PrometheusServer, RedisServer, free_port

GAUGE_VALUE = 42.5


def assert_refused(port: int) -> None:
    """Nothing accepts connections on `port`."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=2).close()


@pytest.fixture
def exporter() -> Iterator[str]:
    """A /metrics endpoint with one gauge set to GAUGE_VALUE; yields its host:port."""
    registry = CollectorRegistry()  # its own registry: nothing else leaks into the scrape
    Gauge("realservers_test_value", "A value the test set.", registry=registry).set(GAUGE_VALUE)
    port = free_port()
    server, thread = start_http_server(port, addr=HOST, registry=registry)
    try:
        yield f"{HOST}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.anyio
async def test_redis_serves_and_restarts_on_same_port(redis_server: RedisServer) -> None:
    """redis-server answers SET/GET, and after stop()/start() serves again, empty, on its port."""
    port = redis_server.port
    async with redis.asyncio.from_url(redis_server.url) as client:
        await client.set("flag:hybrid", "on")
        assert await client.get("flag:hybrid") == b"on"
    redis_server.stop()
    assert_refused(port)
    redis_server.start()
    assert redis_server.port == port
    async with redis.asyncio.from_url(redis_server.url) as client:
        assert await client.get("flag:hybrid") is None  # no persistence: a real restart
        await client.set("flag:hybrid", "off")
        assert await client.get("flag:hybrid") == b"off"


def test_redis_reset_empties_every_database(redis_server: RedisServer) -> None:
    """reset(), which the fixture runs before each test, deletes keys in every database."""
    clients = [redis.Redis(host=HOST, port=redis_server.port, db=db) for db in (0, 3)]
    for client in clients:
        client.set("left", "over")
    redis_server.reset()
    for client in clients:
        assert client.dbsize() == 0
        client.close()


@pytest.mark.anyio
async def test_prometheus_scrapes_gauge_and_evaluates_rules(
    prometheus_server: PrometheusServer, exporter: str, tmp_path: Path
) -> None:
    """Prometheus scrapes the exporter every second and returns its gauge, and a rule over it."""
    # One test, one Prometheus: its first scrape comes ~5 s after start (module docstring).
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: test\n  rules:\n"
        "  - record: realservers_test_value:doubled\n    expr: realservers_test_value * 2\n"
    )
    prom = prometheus_server.start(targets=[exporter], scrape_interval="1s", rule_files=[rules])
    [sample] = await prom.wait_for_query_async("realservers_test_value")
    assert sample["metric"]["instance"] == exporter
    assert sample["metric"]["job"] == "rolloutd"
    assert float(sample["value"][1]) == GAUGE_VALUE
    [doubled] = prom.wait_for_query("realservers_test_value:doubled")
    assert float(doubled["value"][1]) == 2 * GAUGE_VALUE


def test_prometheus_start_failure_shows_command_and_log(prometheus_server: PrometheusServer, tmp_path: Path) -> None:
    """A Prometheus that cannot start fails the test with its command line and log tail."""
    broken = tmp_path / "broken.yml"
    broken.write_text("groups: [{name: x, rules: [{record: bad, expr: 'sum('}]}]\n")
    with pytest.raises(pytest.fail.Exception) as failure:
        prometheus_server.start(targets=[], rule_files=[broken])
    message = str(failure.value)
    assert "exited with status" in message
    assert f"--config.file={prometheus_server.config_path}" in message
    assert "broken.yml" in message  # Prometheus's own error, from the log tail


@pytest.mark.anyio
async def test_mongo_round_trip_survives_restart(mongo_server: MongoServer) -> None:
    """The MongoDB-wire server stores and finds a document, and still has it after stop()/start()."""
    doc = {"_id": "agent-7", "flag": "hybrid-retriever", "stage": 2}
    async with AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000) as client:
        await client.rolloutd_test.flags.insert_one(doc)
        assert await client.rolloutd_test.flags.find_one({"_id": "agent-7"}) == doc
    port = mongo_server.port
    mongo_server.stop()
    assert_refused(port)
    mongo_server.start()
    async with AsyncMongoClient(mongo_server.uri, serverSelectionTimeoutMS=5000) as client:
        assert await client.rolloutd_test.flags.find_one({"_id": "agent-7"}) == doc


def test_mongo_reset_drops_test_databases(mongo_server: MongoServer) -> None:
    """reset(), which the fixture runs before each test, drops every non-system database."""
    with pymongo.MongoClient(mongo_server.uri) as client:
        client.leftover.things.insert_one({"x": 1})
        mongo_server.reset()
        assert "leftover" not in client.list_database_names()
