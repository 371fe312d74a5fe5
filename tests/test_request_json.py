"""Untrusted JSON (flags/request_json.py), mmh3's lone-surrogate crash (flags/bucket.py) and the
one-line 500 (controller/host/http_errors.py), in process."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import httpx
import mmh3
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from controller.host.http_errors import contain_errors
from controller.host.logs import configure_logging
from flags.bucket import in_rollout, normalized_hash, rollout_position
from flags.request_json import MAX_DEPTH, RequestRejected, check, loads
from retrieval.memory import InvalidMemory, Memory


def _rejected(raw: str | bytes) -> RequestRejected:
    with pytest.raises(RequestRejected) as caught:
        loads(raw)
    return caught.value


def test_a_lone_surrogate_escape_is_refused_naming_its_field() -> None:
    """The JSON escape "\\ud800" alone is not Unicode: 400 naming the path, key or value."""
    value = _rejected('{"context": {"targetingKey": "\\ud800"}}')
    assert value.status == 400 and value.field == "context.targetingKey" and "lone surrogate" in value.problem
    key = _rejected('{"memories": [{"metadata": {"a\\udfffb": 1}}]}')
    assert key.field == "memories[0].metadata" and "a key of" in key.problem


def test_a_surrogate_pair_is_one_valid_character() -> None:
    """A correctly paired escape (an emoji) is accepted as the one character it encodes."""
    assert loads('{"q": "\\ud83d\\ude00"}') == {"q": "\U0001f600"}


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 100_000])
def test_deep_nesting_is_a_400_not_a_recursion_error(depth: int) -> None:
    """Past MAX_DEPTH levels -- including far past Python's recursion limit -- a 400 says so."""
    rejected = _rejected("[" * depth + "]" * depth)
    assert rejected.status == 400 and "nested" in rejected.problem


def test_nesting_up_to_the_limit_is_accepted() -> None:
    """MAX_DEPTH levels of nesting are fine."""
    raw = '{"a":' * (MAX_DEPTH - 1) + "1" + "}" * (MAX_DEPTH - 1)
    assert loads(raw)["a"]


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"n": 18446744073709551616}', "n"),
        ('{"n": -9223372036854775809}', "n"),
        ("[1e400]", "[0]"),
    ],
)
def test_numbers_no_store_can_hold_are_refused(raw: str, field: str) -> None:
    """Integers outside 64 bits and literals that overflow a double are 400s naming the field."""
    assert _rejected(raw).field == field


@pytest.mark.parametrize("raw", ['{"x": NaN}', "[Infinity]", "[-Infinity]", "{", "\xff", b"\xff\xfe\x00"])
def test_what_is_not_json_is_a_parse_error(raw: str | bytes) -> None:
    """NaN, Infinity, truncated text and bytes that are not UTF-8: 400 "not JSON", no field."""
    rejected = _rejected(raw)
    assert rejected.status == 400 and rejected.field is None and "not JSON" in rejected.problem


def test_the_64_bit_range_itself_is_accepted() -> None:
    """The extremes of a signed 64-bit integer are ordinary values."""
    check({"lo": -(1 << 63), "hi": (1 << 63) - 1})


def test_bucketing_hashes_bytes_exactly_as_mmh3_hashes_the_string() -> None:
    """Hashing UTF-8 bytes keeps Unleash's buckets: the same as mmh3 given the valid str."""
    for value in ("task-123", "agent/Ωmega", "\U0001f600", ""):
        expected = mmh3.hash(f"flag:{value}", signed=False)
        assert normalized_hash("flag", value) == expected % 100 + 1
        assert rollout_position("flag", value) == expected % 100 + (expected // 100 % 10_000) / 10_000


def test_a_lone_surrogate_no_longer_kills_the_process() -> None:
    """mmh3 5.3.1 segfaults on a str with a lone surrogate; ours hashes bytes and answers."""
    probe = "from flags.bucket import in_rollout; print(in_rollout('f', '\\ud800', 50.0) in (True, False))"
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "True", (run.returncode, run.stderr)
    assert in_rollout("f", "x", 100.0)


@pytest.mark.parametrize(
    "memory, field",
    [
        ({"text": "a\ud800b"}, "text"),
        ({"text": "t", "metadata": {"k\ud800": 1}}, "metadata"),
        ({"text": "t", "metadata": {"big": 1 << 64}}, "metadata.big"),
        ({"text": "t", "metadata": {"nul\x00key": 1}}, "metadata"),
    ],
)
def test_a_memory_no_store_can_hold_is_invalid(memory: dict[str, object], field: str) -> None:
    """Lone surrogates, integers past 64 bits and NUL in a key are refused before any store."""
    with pytest.raises(InvalidMemory) as caught:
        Memory(id="m", namespace="default", **memory)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.anyio
async def test_an_unexpected_exception_is_one_json_500_and_one_log_line() -> None:
    """A bug in a route answers a JSON 500 and logs one http.unhandled line, no traceback."""

    async def broken(request: Request) -> Response:
        raise RecursionError("maximum recursion depth exceeded")

    out = io.StringIO()
    configure_logging(out, log_crashes=False)
    app = contain_errors(Starlette(routes=[Route("/x", broken, methods=["POST"])]), "public")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.post("/x")
    assert response.status_code == 500 and response.json()["errorCode"] == "GENERAL"
    assert "RecursionError" in response.json()["error"]
    lines = [json.loads(line[3:]) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["http.unhandled"]
    assert lines[0]["at"].startswith("test_request_json.py:") and "Traceback" not in out.getvalue()
