"""OFREP end to end: the real OpenFeature Python SDK and raw HTTP against a real rolloutd process."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from flags.evaluate import FlagSet
from flags.parse import parse_flags_text
from tests.support.daemon_harness import REPO, Daemon, write_config
from tests.support.flagfiles import FIRST_COHORTS, PHASE5_FLAGS, write_seed_flags

DISABLED_FLAG = "legacy_memory_enabled"
EXTRA = {DISABLED_FLAG: {"enabled": False, "rollout_strategy": "all", "rollout_percentage": 100.0}}
KEYS = [f"task-{i}" for i in range(300)]
TIMEOUT = 5.0


def _start(directory: Path) -> tuple[Daemon, FlagSet]:
    """A daemon serving the seed flags (plus one disabled flag), and the same flags evaluated locally."""
    config = write_config(directory)
    flags_path = write_seed_flags(directory, EXTRA)
    local = FlagSet(parse_flags_text(flags_path.read_text(), flags_path))
    return Daemon(config).start(), local


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, FlagSet]]:
    """One read-only daemon for every test here that does not change flags."""
    daemon, local = _start(tmp_path_factory.mktemp("ofrep"))
    yield daemon, local
    daemon.stop()


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon of this test's own, for tests that change flags."""
    daemon, _ = _start(tmp_path)
    yield daemon
    daemon.stop()


@contextmanager
def sdk_client(daemon: Daemon) -> Iterator[OpenFeatureClient]:
    provider = OFREPProvider(daemon.base_url, timeout=TIMEOUT)
    api.set_provider_and_wait(provider)
    try:
        yield api.get_client()
    finally:
        api.clear_providers()  # the OpenFeature API is process-global
        provider.session.close()


@pytest.fixture
def client(served: tuple[Daemon, FlagSet]) -> Iterator[OpenFeatureClient]:
    """An OpenFeature client whose provider is OFREP on the shared daemon."""
    with sdk_client(served[0]) as c:
        yield c


@pytest.fixture
def http(served: tuple[Daemon, FlagSet]) -> Iterator[httpx.Client]:
    """A raw HTTP client for the shared daemon's public listener."""
    with httpx.Client(base_url=served[0].base_url, timeout=TIMEOUT) as c:
        yield c


def admin(daemon: Daemon) -> httpx.Client:
    """An HTTP client for the daemon's admin socket."""
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket)), base_url="http://rolloutd", timeout=TIMEOUT
    )


def ctx(key: str | None, agent: str | None = "Builder") -> EvaluationContext:
    return EvaluationContext(targeting_key=key, attributes={"agent": agent} if agent else {})


def now() -> datetime:
    return datetime.now(UTC)


# -- through the OpenFeature SDK -------------------------------------------------------------


@pytest.mark.parametrize("flag", ["hybrid_rag_enabled", "graph_database_enabled"])
def test_sdk_values_match_local_evaluation_and_are_sticky(served, client, flag: str) -> None:
    """For 300 targeting keys the SDK's answers equal FlagSet's for the same file, twice over, about 10% on."""
    _, local = served
    first = {k: client.get_boolean_details(flag, False, ctx(k)) for k in KEYS}
    expected = {k: local.evaluate(flag, {"targetingKey": k, "agent": "Builder"}, now()).value for k in KEYS}
    assert {k: d.value for k, d in first.items()} == expected
    assert all(d.error_code is None and d.reason == Reason.SPLIT for d in first.values())
    assert all(d.variant == ("on" if d.value else "off") for d in first.values())
    on = sum(expected.values())
    assert 10 <= on <= 55, f"{on}/300 on at 10%"
    again = {k: client.get_boolean_details(flag, True, ctx(k)).value for k in KEYS}
    assert again == expected, "the same targeting key must get the same answer"


def test_flags_bucket_independently(served, client) -> None:
    """Each flag hashes with its own group, so two flags at 10% are not on for the same keys."""
    on = {
        f: {k for k in KEYS if client.get_boolean_details(f, False, ctx(k)).value}
        for f in ("hybrid_rag_enabled", "vector_search_enabled")
    }
    assert on["hybrid_rag_enabled"] != on["vector_search_enabled"]


def test_split_reason_carries_the_percentage_in_metadata(client) -> None:
    """A percentage answer comes back as SPLIT with the flag's current percentage in flag_metadata."""
    details = client.get_boolean_details("redis_cache_enabled", False, ctx("task-7", "QA"))
    assert details.reason == Reason.SPLIT
    assert details.variant in ("on", "off")
    assert details.flag_metadata["percentage"] == 10.0


@pytest.mark.parametrize("agent", ["Analyst", "Legal", None])
def test_agent_outside_constraint_is_default_off(client, agent) -> None:
    """An agent not in the cohort list (or none at all) gets off with reason DEFAULT, for every key."""
    for key in KEYS[:50]:
        details = client.get_boolean_details("hybrid_rag_enabled", True, ctx(key, agent))
        assert (details.value, details.reason, details.variant, details.error_code) == (
            False,
            Reason.DEFAULT,
            "off",
            None,
        )


def test_every_first_cohort_agent_can_be_on(client) -> None:
    """Each of the 10% stage's agents gets at least one key turned on (the constraint admits them)."""
    for agent in FIRST_COHORTS:
        assert any(client.get_boolean_details("hybrid_rag_enabled", False, ctx(k, agent)).value for k in KEYS), agent


def test_static_and_disabled_reasons(client) -> None:
    """An `all` flag is on as STATIC; a disabled flag is off as DISABLED, whatever the default."""
    static = client.get_boolean_details("memory_compression_enabled", False, ctx("task-1", "Analyst"))
    assert (static.value, static.reason, static.variant) == (True, Reason.STATIC, "on")
    disabled = client.get_boolean_details(DISABLED_FLAG, True, ctx("task-1"))
    assert (disabled.value, disabled.reason, disabled.variant) == (False, Reason.DISABLED, "off")
    assert "disabledBy" not in disabled.flag_metadata


def test_unknown_flag_returns_the_default_with_flag_not_found(client) -> None:
    """An unknown key gives the caller's default back with error FLAG_NOT_FOUND naming the flag."""
    for default in (True, False):
        details = client.get_boolean_details("no_such_flag", default, ctx("task-1"))
        assert details.value is default
        assert details.error_code == ErrorCode.FLAG_NOT_FOUND
        assert details.reason == Reason.ERROR
        assert "no_such_flag" in (details.error_message or "")


def test_percentage_flag_without_targeting_key_is_targeting_key_missing(client) -> None:
    """A percentage flag asked without a targetingKey gives the default and TARGETING_KEY_MISSING."""
    details = client.get_boolean_details("hybrid_rag_enabled", True, ctx(None, "Builder"))
    assert details.value is True
    assert details.error_code == ErrorCode.TARGETING_KEY_MISSING
    static = client.get_boolean_details("memory_compression_enabled", False, ctx(None, "Builder"))
    assert (static.value, static.error_code) == (True, None), "an `all` flag needs no targetingKey"


def test_kill_switch_turns_every_flag_off_through_the_sdk(own: Daemon) -> None:
    """`rolloutctl flags set emergency_shutdown --enabled true` makes every flag off: DISABLED, disabledBy=emergency_shutdown."""
    with sdk_client(own) as client:
        on_key = next(k for k in KEYS if client.get_boolean_details("hybrid_rag_enabled", False, ctx(k)).value)
        assert client.get_boolean_details("memory_compression_enabled", False, ctx(on_key)).value is True
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "deploy",
                "--socket",
                str(own.socket),
                "flags",
                "set",
                "emergency_shutdown",
                "--enabled",
                "true",
                "--reason",
                "x",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        names = [*PHASE5_FLAGS, "memory_compression_enabled", DISABLED_FLAG]
        for name in names:
            details = client.get_boolean_details(name, True, ctx(on_key))
            assert (details.value, details.reason, details.variant) == (False, Reason.DISABLED, "off"), name
            assert details.flag_metadata.get("disabledBy") == "emergency_shutdown", name
        kill = client.get_boolean_details("emergency_shutdown", False, ctx(on_key))
        assert kill.value is True
    metrics = httpx.get(own.base_url + "/metrics", timeout=TIMEOUT).text
    assert re.search(r"^rolloutd_emergency_shutdown 1\.0$", metrics, re.M)


# -- raw OFREP over HTTP ---------------------------------------------------------------------


def test_single_evaluation_body_shape(http: httpx.Client) -> None:
    """A single evaluation is 200 with exactly key, value, reason, variant and metadata."""
    r = http.post(
        "/ofrep/v1/evaluate/flags/hybrid_rag_enabled", json={"context": {"targetingKey": "task-1", "agent": "Deploy"}}
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"key", "value", "reason", "variant", "metadata"}
    assert body["key"] == "hybrid_rag_enabled"
    assert isinstance(body["value"], bool)
    assert body["reason"] == "SPLIT"
    assert body["variant"] == ("on" if body["value"] else "off")
    assert body["metadata"] == {"percentage": 10.0}


def test_unknown_flag_is_404_flag_not_found(http: httpx.Client) -> None:
    """An unknown flag is 404 with key, errorCode FLAG_NOT_FOUND and errorDetails."""
    r = http.post("/ofrep/v1/evaluate/flags/nope", json={"context": {"targetingKey": "t"}})
    assert r.status_code == 404
    body = r.json()
    assert body["key"] == "nope"
    assert body["errorCode"] == "FLAG_NOT_FOUND"
    assert "nope" in body["errorDetails"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "PARSE_ERROR"),
        (b'{"context": []}', "INVALID_CONTEXT"),
        (b'{"context": "Builder"}', "INVALID_CONTEXT"),
        (b'{"context": {"targetingKey": 5}}', "INVALID_CONTEXT"),
        (b"[]", "INVALID_CONTEXT"),
    ],
)
@pytest.mark.parametrize("path", ["/ofrep/v1/evaluate/flags/hybrid_rag_enabled", "/ofrep/v1/evaluate/flags"])
def test_bad_requests_are_400_with_the_protocol_code(http: httpx.Client, path: str, content: bytes, code: str) -> None:
    """Bodies that are not JSON, contexts that are not objects and non-string targetingKeys are 400 with the right errorCode."""
    r = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body = r.json()
    assert body["errorCode"] == code
    assert body["errorDetails"]
    if path.endswith("hybrid_rag_enabled"):
        assert body["key"] == "hybrid_rag_enabled"


def test_targeting_key_missing_is_400(http: httpx.Client) -> None:
    """A percentage flag without a targetingKey is 400 TARGETING_KEY_MISSING."""
    r = http.post("/ofrep/v1/evaluate/flags/hybrid_rag_enabled", json={"context": {"agent": "Builder"}})
    assert r.status_code == 400
    assert r.json()["errorCode"] == "TARGETING_KEY_MISSING"


def test_bulk_evaluates_every_flag_with_an_etag(served, http: httpx.Client) -> None:
    """Bulk evaluation is 200 with one entry per flag (the same answers as FlagSet) and a quoted ETag."""
    _, local = served
    context = {"targetingKey": "task-42", "agent": "Support"}
    r = http.post("/ofrep/v1/evaluate/flags", json={"context": context})
    assert r.status_code == 200
    assert re.fullmatch(r'"[0-9a-f]+"', r.headers["etag"])
    items = {item["key"]: item for item in r.json()["flags"]}
    assert set(items) == set(local.flags)
    for name in local.flags:
        assert items[name]["value"] == local.evaluate(name, context, now()).value, name
        assert items[name]["reason"] == str(local.evaluate(name, context, now()).reason), name


def test_bulk_without_targeting_key_reports_per_flag_errors(http: httpx.Client) -> None:
    """In bulk, percentage flags without a targetingKey are error entries while the others still answer."""
    r = http.post("/ofrep/v1/evaluate/flags", json={"context": {"agent": "Builder"}})
    assert r.status_code == 200
    items = {item["key"]: item for item in r.json()["flags"]}
    for name in PHASE5_FLAGS:
        assert items[name]["errorCode"] == "TARGETING_KEY_MISSING", items[name]
    assert items["memory_compression_enabled"]["value"] is True


def test_if_none_match_gives_304_with_empty_body(http: httpx.Client) -> None:
    """Repeating a bulk request with its ETag in If-None-Match is 304 with no body (also as W/ or in a list)."""
    body = {"context": {"targetingKey": "task-9", "agent": "QA"}}
    first = http.post("/ofrep/v1/evaluate/flags", json=body)
    etag = first.headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}'):
        again = http.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
    stale = http.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.json()["flags"]


def test_etag_follows_the_answers_not_the_context(http: httpx.Client) -> None:
    """Contexts with different answers get different ETags; contexts with the same answers share one."""

    def etag(context: dict) -> str:
        return http.post("/ofrep/v1/evaluate/flags", json={"context": context}).headers["etag"]

    inside = etag({"targetingKey": "task-1", "agent": "Builder"})
    outside_a = etag({"targetingKey": "task-1", "agent": "Analyst"})
    outside_b = etag({"targetingKey": "task-2", "agent": "Legal"})
    assert inside != outside_a
    assert outside_a == outside_b, "both are off everywhere for the same reasons"


def test_etag_changes_after_a_flag_change(own: Daemon) -> None:
    """After a percentage change through the admin API, the old ETag no longer gives 304 and a new ETag comes."""
    body = {"context": {"targetingKey": "task-3", "agent": "Builder"}}
    with httpx.Client(base_url=own.base_url, timeout=TIMEOUT) as http, admin(own) as adm:
        first = http.post("/ofrep/v1/evaluate/flags", json=body)
        etag = first.headers["etag"]
        assert http.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": etag}).status_code == 304
        changed = adm.post(
            "/v1/flags/hybrid_rag_enabled", json={"percentage": 100, "reason": "test", "actor": "pytest"}
        )
        assert changed.status_code == 200, changed.text
        after = http.post("/ofrep/v1/evaluate/flags", json=body, headers={"If-None-Match": etag})
        assert after.status_code == 200
        assert after.headers["etag"] != etag
        item = next(i for i in after.json()["flags"] if i["key"] == "hybrid_rag_enabled")
        assert (item["value"], item["metadata"]["percentage"]) == (True, 100.0)


def test_configuration_shape(http: httpx.Client) -> None:
    """/ofrep/v1/configuration names the server and advertises polling and boolean flags."""
    r = http.get("/ofrep/v1/configuration")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "rolloutd"
    polling = body["capabilities"]["cacheInvalidation"]["polling"]
    assert polling["enabled"] is True
    assert isinstance(polling["minPollingIntervalMs"], int) and polling["minPollingIntervalMs"] > 0
    assert body["capabilities"]["flagEvaluation"]["supportedTypes"] == ["boolean"]


def test_metrics_expose_percentages_and_the_kill_switch(served, http: httpx.Client) -> None:
    """/metrics has each flag's rollout percentage and the kill switch state."""
    _, local = served
    r = http.get("/metrics")
    assert r.status_code == 200
    text = r.text
    assert 'rolloutd_flag_rollout_percent{flag="hybrid_rag_enabled"} 10.0' in text.splitlines()
    assert 'rolloutd_flag_rollout_percent{flag="memory_compression_enabled"} 100.0' in text.splitlines()
    assert f'rolloutd_flag_enabled{{flag="{DISABLED_FLAG}"}} 0.0' in text.splitlines()
    assert "rolloutd_emergency_shutdown 0.0" in text.splitlines()
    exposed = set(re.findall(r'^rolloutd_flag_rollout_percent\{flag="([^"]+)"\}', text, re.M))
    assert exposed == set(local.flags)


def test_health_and_readiness(served, http: httpx.Client) -> None:
    """/healthz and /readyz are 200 once the daemon serves; /readyz counts the flags."""
    _, local = served
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "flags": len(local.flags)}


def test_wrong_method_is_rejected(http: httpx.Client) -> None:
    """OFREP evaluation is POST only: a GET is 405, not an evaluation."""
    assert http.get("/ofrep/v1/evaluate/flags/hybrid_rag_enabled").status_code == 405


def test_keep_alive_requests_do_not_stall_on_delayed_ack(http: httpx.Client) -> None:
    """Requests on one kept-alive connection answer in a few ms, not the ~40 ms of Nagle meeting delayed ACKs."""
    body = {"context": {"targetingKey": "task-1", "agent": "Builder"}}
    timings = []
    for _ in range(21):
        start = time.perf_counter()
        assert http.post("/ofrep/v1/evaluate/flags/hybrid_rag_enabled", json=body).status_code == 200
        timings.append(time.perf_counter() - start)
    median = statistics.median(timings)
    assert median < 0.02, f"median {median * 1000:.1f} ms per request on a kept-alive connection (TCP_NODELAY off?)"
