"""The requests that crashed or 500'd rolloutd (issue 11, items 1-4), sent to a real daemon:
each is a 4xx naming the problem, the daemon lives, and nothing it refused was stored."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.daemon_harness import Daemon, write_config
from tests.support.flagfiles import PHASE5_FLAGS, write_seed_flags
from tests.support.realservers import MongoServer

ALL_ON = {name: {"enabled": True, "rollout_strategy": "all", "rollout_percentage": 100.0} for name in PHASE5_FLAGS}
PERCENT = {"hybrid_gate": {"enabled": True, "rollout_strategy": "percentage", "rollout_percentage": 50.0}}
JSON_ENDPOINTS = [
    "/ofrep/v1/evaluate/flags/hybrid_gate",
    "/ofrep/v1/evaluate/flags",
    "/v1/retrieve",
    "/v1/memories",
    "/v1/memories:batch",
]
SURROGATE = '"\\ud800"'


def _start(root: Path, retrieval: str = "") -> Daemon:
    config = write_config(root)
    if retrieval:
        config.write_text(config.read_text() + "\n[retrieval]\n" + retrieval)
    write_seed_flags(root, {**ALL_ON, **PERCENT})
    return Daemon(config).start()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    running = _start(tmp_path_factory.mktemp("hostile"))
    yield running
    output = running.stop()
    assert running.proc is not None and running.proc.returncode == 0, output[-3000:]
    assert "http.unhandled" not in output and "Traceback" not in output, output[-3000:]


def _post(daemon: Daemon, path: str, raw: str | bytes) -> httpx.Response:
    return httpx.post(daemon.base_url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)


def _alive(daemon: Daemon) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.read_output()[-3000:]
    answer = _post(daemon, "/ofrep/v1/evaluate/flags/hybrid_gate", '{"context": {"targetingKey": "t-1"}}')
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    "path, body",
    [
        ("/ofrep/v1/evaluate/flags/hybrid_gate", f'{{"context": {{"targetingKey": {SURROGATE}}}}}'),
        ("/ofrep/v1/evaluate/flags", f'{{"context": {{"targetingKey": {SURROGATE}}}}}'),
        ("/ofrep/v1/evaluate/flags", f'{{"context": {{"targetingKey": "t", "agent": {SURROGATE}}}}}'),
        ("/v1/retrieve", f'{{"agent": "QA", "query": "q", "targetingKey": {SURROGATE}}}'),
        ("/v1/retrieve", f'{{"agent": {SURROGATE}, "query": "q"}}'),
        ("/v1/retrieve", '{"agent": "QA", "query": "who \\udfff"}'),
    ],
)
def test_a_lone_surrogate_is_refused_and_the_daemon_lives(daemon: Daemon, path: str, body: str) -> None:
    """Item 1: the JSON escape of a lone surrogate segfaulted mmh3 and killed rolloutd (exit 139)."""
    for _ in range(6):  # six were enough to exhaust the unit's restart limit
        response = _post(daemon, path, body)
        assert response.status_code == 400, response.text
        assert "lone surrogate" in response.text
    _alive(daemon)


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deep_json_is_a_400_not_a_500(daemon: Daemon, path: str, depth: int) -> None:
    """Item 2: ~1,000 levels raised RecursionError, a 500 and a 5 KB traceback per request."""
    response = _post(daemon, path, '{"context": ' + "[" * depth + "]" * depth + "}")
    assert response.status_code == 400, response.text
    assert "nested" in response.text
    _alive(daemon)


def _memory_cases() -> list[tuple[str, str]]:
    return [
        ('{"id": "m1", "text": "bad \\ud800 text"}', "text"),
        ('{"id": "m1", "text": "t", "metadata": {"k\\ud800": 1}}', "metadata"),
        ('{"id": "m1", "text": "t", "metadata": {"n": 18446744073709551616}}', "metadata.n"),
        ('{"id": "m1", "text": "t", "metadata": {"n": 9223372036854775808}}', "metadata.n"),
        ('{"id": "m1", "text": "t", "metadata": {"nul\\u0000key": 1}}', "metadata"),
    ]


def _refuses_unstorable_memories(daemon: Daemon) -> None:
    for memory, field in _memory_cases():
        for path, body, prefix in (
            ("/v1/memories", memory, ""),
            ("/v1/memories:batch", f'{{"memories": [{memory}]}}', "memories[0]."),
        ):
            response = _post(daemon, path, body)
            assert response.status_code == 400, (path, body, response.text)
            assert response.json()["field"] == prefix + field, response.json()
    # Nothing was stored: m1 was never written, so deleting it finds nothing.
    assert httpx.delete(daemon.base_url + "/v1/memories/m1", timeout=10).status_code == 404
    ok = _post(daemon, "/v1/memories", '{"id": "m2", "text": "t", "metadata": {"n": 9223372036854775807}}')
    assert ok.status_code == 201, ok.text


def test_a_memory_no_store_can_hold_is_a_400_naming_the_field(daemon: Daemon) -> None:
    """Item 3, embedded store: a lone surrogate in text or a metadata key was a 500."""
    _refuses_unstorable_memories(daemon)
    _alive(daemon)


@pytest.mark.slow
def test_a_memory_mongodb_cannot_hold_is_a_400_naming_the_field(tmp_path: Path, mongo_server: MongoServer) -> None:
    """Item 3, MongoDB: a metadata integer past 64 bits (OverflowError) and NUL in a key were 500s too."""
    running = _start(tmp_path, f'mongodb_uri = "mongodb://127.0.0.1:{mongo_server.port}/rolloutd_hostile"\n')
    try:
        _refuses_unstorable_memories(running)
        _alive(running)
    finally:
        output = running.stop()
    assert "http.unhandled" not in output and "Traceback" not in output, output[-3000:]


def _raw_exchange(daemon: Daemon, head: bytes, body: bytes) -> bytes:
    """Send a request by hand (so the client does not care that the server answers early)."""
    host, port = daemon.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was read: what we want
        return sock.recv(65536)


@pytest.mark.parametrize("path", ["/ofrep/v1/evaluate/flags/hybrid_gate", "/ofrep/v1/evaluate/flags"])
def test_ofrep_refuses_a_body_over_its_limit(daemon: Daemon, path: str) -> None:
    """Item 4: OFREP read and answered a 64 MiB body; now 413, declared or streamed."""
    declared = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {64 << 20}\r\n\r\n"
    ).encode()
    assert _raw_exchange(daemon, declared, b"{" + b" " * 4096).startswith(b"HTTP/1.1 413")
    chunk = b" " * (256 << 10)
    streamed = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8))  # 2 MiB, no length declared
    assert _raw_exchange(daemon, streamed, body).startswith(b"HTTP/1.1 413")
    _alive(daemon)
