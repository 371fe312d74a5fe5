"""PrometheusSource against a real Prometheus scraping a real exporter, and against bad servers.

One Prometheus serves the whole module (the first sample takes ~5 s to arrive, so one
start instead of one per test keeps the suite fast); the one test that stops it starts it
again before it returns. The "bad server" tests run a tiny HTTP server on a real socket in
the test's event loop, so httpx meets real HTML error pages, plain text and silence.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio
import anyio.to_thread
import pytest
from anyio.abc import SocketAttribute, SocketStream
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.guards import Outcome
from controller.plan import Direction, Guard, Severity
from controller.sources.prometheus import (
    QUERY_PATH,
    PrometheusError,
    PrometheusSource,
    query_value,
    unix_seconds,
)
from tests.support.realservers import HOST, PrometheusServer, free_port

P95 = "rolloutd_test_latency_p95_seconds"
P95_VALUE = 0.25
PASS_RATE = "rolloutd_test_pass_rate_percent"
PASS_RATE_VALUE = 97.0
ERROR_RATIO = "rolloutd_test_error_ratio"
ERROR_RATIOS = {"Builder": 0.01, "Deploy": 0.02, "QA": 0.04}
HISTOGRAM_P95 = "histogram_quantile(0.95, sum by (le) (rate(rolloutd_test_latency_seconds_bucket[{{window}}])))"
# Cumulative observations per second per bucket: the 95th is in (0.25, 0.5], 5/10 of the way.
BUCKET_RATES = {"0.1": 50.0, "0.25": 90.0, "0.5": 100.0, "+Inf": 100.0}
HISTOGRAM_P95_VALUE = 0.25 + 0.25 * (95 - 90) / (100 - 90)
STEP = 10.0  # seconds: a bound on any single observation against a live server


class SteadyTraffic(Collector):
    """A latency histogram whose buckets grow at fixed rates, so any rate() over it is exact."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        elapsed = time.monotonic() - self._start
        buckets = [(le, rate * elapsed) for le, rate in BUCKET_RATES.items()]
        yield HistogramMetricFamily(
            "rolloutd_test_latency_seconds",
            "Synthetic retrieval latency.",
            buckets=buckets,
            sum_value=0.2 * BUCKET_RATES["+Inf"] * elapsed,
        )


@dataclass(frozen=True)
class Backend:
    prometheus: PrometheusServer
    born: datetime  # just before the exporter existed: Prometheus has no sample earlier


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Prometheus scraping one exporter every second, once both histogram samples are in."""
    born = datetime.now(UTC)
    registry = CollectorRegistry()
    Gauge(P95, "p95 latency.", registry=registry).set(P95_VALUE)
    Gauge(PASS_RATE, "Regression pass rate.", registry=registry).set(PASS_RATE_VALUE)
    ratio = Gauge(ERROR_RATIO, "Error ratio per agent.", ["agent"], registry=registry)
    for agent, value in ERROR_RATIOS.items():
        ratio.labels(agent).set(value)
    registry.register(SteadyTraffic())
    port = free_port()
    server, thread = start_http_server(port, addr=HOST, registry=registry)
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    try:
        prometheus.start(targets=[f"{HOST}:{port}"], scrape_interval="1s")
        # rate() needs two scrapes; once it answers, every metric above is in.
        prometheus.wait_for_query(guard(HISTOGRAM_P95).resolved_query())
        yield Backend(prometheus, born)
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
async def source(backend: Backend) -> AsyncIterator[PrometheusSource]:
    """A PrometheusSource on a client built the way the daemon builds it."""
    async with PrometheusSource.build_client(backend.prometheus.url, timeout=5.0) as client:
        yield PrometheusSource(client)


def guard(query: str | None, direction: str = "above", **thresholds: float) -> Guard:
    """A guard over `query` with a 1m window; thresholds by severity name."""
    return Guard(
        name="g",
        query=query,
        builtin=None,
        direction=Direction(direction),
        thresholds={Severity[k.upper()]: v for k, v in (thresholds or {"critical": 1e9}).items()},
        window=timedelta(minutes=1),
        sustain=timedelta(0),
    )


def now() -> datetime:
    return datetime.now(UTC)


async def observe(source: PrometheusSource, g: Guard, at: datetime | None = None):
    with anyio.fail_after(STEP):
        return await source.observe(g, at or now())


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "direction", "thresholds", "outcome", "severity", "value"),
    [
        (P95, "above", {"warning": 0.3, "critical": 0.5}, Outcome.PASS, None, P95_VALUE),
        (
            P95,
            "above",
            {"warning": 0.1, "critical": 0.2, "emergency": 0.5},
            Outcome.BREACH,
            Severity.CRITICAL,
            P95_VALUE,
        ),
        (
            P95,
            "above",
            {"warning": 0.1, "critical": 0.15, "emergency": 0.2},
            Outcome.BREACH,
            Severity.EMERGENCY,
            P95_VALUE,
        ),
        (PASS_RATE, "below", {"warning": 95, "critical": 90}, Outcome.PASS, None, PASS_RATE_VALUE),
        (
            PASS_RATE,
            "below",
            {"warning": 99, "critical": 98, "emergency": 90},
            Outcome.BREACH,
            Severity.CRITICAL,
            PASS_RATE_VALUE,
        ),
        (
            PASS_RATE,
            "below",
            {"warning": 99.5, "critical": 99, "emergency": 98},
            Outcome.BREACH,
            Severity.EMERGENCY,
            PASS_RATE_VALUE,
        ),
        (f"scalar({PASS_RATE})", "below", {"critical": 90}, Outcome.PASS, None, PASS_RATE_VALUE),
    ],
    ids=[
        "above-pass",
        "above-critical",
        "above-emergency",
        "below-pass",
        "below-critical",
        "below-emergency",
        "scalar",
    ],
)
async def test_gauge_guard_outcomes(
    source: PrometheusSource,
    query: str,
    direction: str,
    thresholds: dict[str, float],
    outcome: Outcome,
    severity: Severity | None,
    value: float,
) -> None:
    """A gauge's scraped value is judged against the guard's thresholds in its direction."""
    g = guard(query, direction, **thresholds)
    obs = await observe(source, g)
    assert (obs.outcome, obs.severity, obs.value) == (outcome, severity, value), obs.detail
    assert obs.query == query
    if severity is not None:
        assert obs.detail.startswith(f"g {value:g} {'>' if direction == 'above' else '<'} {severity}")


@pytest.mark.anyio
async def test_histogram_quantile_over_rate_window(source: PrometheusSource) -> None:
    """A histogram_quantile over rate() with the {{window}} filled in yields the real p95."""
    g = guard(HISTOGRAM_P95, "above", warning=0.3, critical=0.5)
    obs = await observe(source, g)
    assert obs.query == HISTOGRAM_P95.replace("{{window}}", "1m")
    assert obs.value == pytest.approx(HISTOGRAM_P95_VALUE, rel=1e-6)
    assert (obs.outcome, obs.severity) == (Outcome.BREACH, Severity.WARNING)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("rolloutd_test_metric_nobody_exports", "no samples"),
        (f"{P95} * 0 / 0", "value is nan"),
        (f"{P95} / 0", "value is inf"),
    ],
    ids=["missing-metric", "nan", "inf"],
)
async def test_nothing_usable_is_no_data(source: PrometheusSource, query: str, detail: str) -> None:
    """An empty vector, NaN and +Inf are NO_DATA, never a pass or a breach."""
    obs = await observe(source, guard(query, critical=0.0))
    assert (obs.outcome, obs.value, obs.detail) == (Outcome.NO_DATA, None, detail)


@pytest.mark.anyio
async def test_query_is_evaluated_at_the_given_instant(source: PrometheusSource, backend: Backend) -> None:
    """`time=` is sent: before the exporter existed there is no data; now there is."""
    g = guard(P95, critical=0.5)
    before = await observe(source, g, backend.born - timedelta(seconds=1))
    assert (before.outcome, before.detail) == (Outcome.NO_DATA, "no samples")
    assert (await observe(source, g)).value == P95_VALUE


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("direction", "threshold", "outcome", "agent"),
    [
        ("above", 0.03, Outcome.BREACH, "QA"),
        ("below", 0.005, Outcome.PASS, "Builder"),
    ],
)
async def test_several_series_take_the_worst_for_the_direction(
    source: PrometheusSource, direction: str, threshold: float, outcome: Outcome, agent: str
) -> None:
    """With one series per agent, "above" judges the largest and "below" the smallest."""
    obs = await observe(source, guard(ERROR_RATIO, direction, critical=threshold))
    assert (obs.outcome, obs.value) == (outcome, ERROR_RATIOS[agent])
    assert f'worst of {len(ERROR_RATIOS)} series: {ERROR_RATIO}{{agent="{agent}", instance=' in obs.detail


@pytest.mark.anyio
@pytest.mark.parametrize(("query", "kind"), [(f"{P95}[1m]", "matrix"), ('"hello"', "string")])
async def test_wrong_result_type_is_an_error(source: PrometheusSource, query: str, kind: str) -> None:
    """A range vector or a string is not a guard value: ERROR naming the type."""
    obs = await observe(source, guard(query))
    assert obs.outcome is Outcome.ERROR
    assert obs.detail.startswith(f"expected a vector or scalar, got {kind}")


@pytest.mark.anyio
async def test_rejected_query_reports_prometheus_error(source: PrometheusSource, backend: Backend) -> None:
    """A query Prometheus cannot parse is ERROR with the status and Prometheus's own message."""
    obs = await observe(source, guard("rate(", critical=1.0))
    assert obs.outcome is Outcome.ERROR
    assert obs.detail.startswith(f"{backend.prometheus.url}{QUERY_PATH} answered HTTP 400: bad_data: ")
    assert "parse error" in obs.detail


@pytest.mark.anyio
async def test_prometheus_down_is_an_error_and_recovers(source: PrometheusSource, backend: Backend) -> None:
    """With Prometheus stopped the guard is ERROR naming the URL; once it is back, the same client passes."""
    g = guard(P95, critical=0.5)
    assert (await observe(source, g)).outcome is Outcome.PASS  # a pooled connection to the old process
    await anyio.to_thread.run_sync(backend.prometheus.stop)
    try:
        down = await observe(source, g)
    finally:
        await anyio.to_thread.run_sync(backend.prometheus.start)  # same port, same config, same data
    assert down.outcome is Outcome.ERROR
    assert down.detail == (
        f"cannot connect to {backend.prometheus.url}{QUERY_PATH}: connection refused (is Prometheus running?)"
    )
    back = await observe(source, g)
    assert (back.outcome, back.value) == (Outcome.PASS, P95_VALUE), back.detail


@pytest.mark.anyio
async def test_query_value_returns_the_number_or_raises(backend: Backend) -> None:
    """query_value gives reports the bare number, and one exception type when it cannot."""
    async with PrometheusSource.build_client(backend.prometheus.url) as client:
        with anyio.fail_after(STEP):
            assert await query_value(client, PASS_RATE, now()) == PASS_RATE_VALUE
            assert await query_value(client, "rolloutd_test_metric_nobody_exports", now()) is None
            with pytest.raises(PrometheusError, match="3 series .* expected one"):
                await query_value(client, ERROR_RATIO, now())
            assert await query_value(client, ERROR_RATIO, now(), Direction.BELOW) == ERROR_RATIOS["Builder"]


# --- servers that are not (a healthy) Prometheus -------------------------------------------


def http_response(status: str, content_type: str, body: str | dict) -> bytes:
    payload = (json.dumps(body) if isinstance(body, dict) else body).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


@asynccontextmanager
async def canned_server(response: bytes | None, drip: float = 0.0) -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server answering every request with `response` (None: never answering);
    `drip` > 0 sends it one byte every `drip` seconds.

    Yields its base URL and the request lines it received.
    """
    request_lines: list[str] = []

    async def handle(stream: SocketStream) -> None:
        async with stream:
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    head += await stream.receive()
                request_lines.append(head.split(b"\r\n", 1)[0].decode())
                if response is None:
                    await anyio.sleep_forever()
                if not drip:
                    await stream.send(response)
                for byte in response if drip else b"":
                    await stream.send(bytes([byte]))
                    await anyio.sleep(drip)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass  # the client gave up first: that is what the timeout test wants

    async with anyio.create_task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host=HOST)
        tg.start_soon(listener.serve, handle)
        try:
            yield f"http://{HOST}:{listener.extra(SocketAttribute.local_port)}", request_lines
        finally:
            tg.cancel_scope.cancel()


NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n"
    "</body>\r\n</html>\r\n"
)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (http_response("502 Bad Gateway", "text/html", NGINX_502), "answered HTTP 502: 502 Bad Gateway"),
        (
            http_response("200 OK", "text/plain; charset=utf-8", "hello"),
            "unexpected answer from {url}: HTTP 200 text/plain; charset=utf-8, not Prometheus JSON: 'hello'",
        ),
        (
            http_response("200 OK", "application/json", {"status": "success", "data": {"resultType": "vector"}}),
            "unexpected answer from {url}: no data.result vector in",
        ),
        (
            http_response(
                "200 OK",
                "application/json",
                {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1]}]}},
            ),
            'unexpected answer from {url}: sample [1] is not [timestamp, "value"]',
        ),
        (
            http_response(
                "503 Service Unavailable",
                "application/json",
                {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"},
            ),
            "{url} answered HTTP 503: timeout: query timed out in expression evaluation",
        ),
        (
            http_response("500 Internal Server Error", "text/plain", "x" * 5000),
            "answered HTTP 500: " + "x" * 100 + "...",
        ),
    ],
    ids=["html-502", "text-hello", "json-no-result", "json-bad-sample", "json-503", "long-500"],
)
async def test_garbage_answers_are_clear_errors(response: bytes, expected: str) -> None:
    """Whatever a proxy or impostor answers becomes one short ERROR line naming the URL."""
    at = now()
    async with canned_server(response) as (url, request_lines):
        async with PrometheusSource.build_client(url, timeout=2.0) as client:
            obs = await observe(PrometheusSource(client), guard("up"), at)
    endpoint = f"{url}{QUERY_PATH}"
    assert obs.outcome is Outcome.ERROR
    assert expected.format(url=endpoint) in obs.detail
    assert endpoint in obs.detail and "<" not in obs.detail and len(obs.detail) < 200
    assert request_lines == [f"GET {QUERY_PATH}?query=up&time={unix_seconds(at)} HTTP/1.1"]


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.anyio
async def test_silent_server_times_out() -> None:
    """A server that accepts and never answers is ERROR once the query's deadline has passed."""
    async with canned_server(None) as (url, _):
        async with PrometheusSource.build_client(url, timeout=0.3) as client:
            obs = await observe(PrometheusSource(client), guard("up"))
    assert obs.outcome is Outcome.ERROR
    assert obs.detail.startswith(f"no answer from {url}{QUERY_PATH} within 0.3s"), obs.detail


@pytest.mark.anyio
async def test_a_dripping_answer_is_cut_at_the_deadline() -> None:
    """A server dripping bytes faster than the read timeout is ERROR at the whole query's deadline."""
    body = {"status": "success", "data": {"resultType": "vector", "result": []}, "pad": "x" * 2000}
    async with canned_server(http_response("200 OK", "application/json", body), drip=0.05) as (url, _):
        # at 20 bytes a second the answer takes ~100 s: only a deadline over the whole query ends it
        async with PrometheusSource.build_client(url, timeout=1.0) as client:
            obs = await observe(PrometheusSource(client), guard("up"))
    assert obs.outcome is Outcome.ERROR
    assert obs.detail.startswith(f"no answer from {url}{QUERY_PATH} within 1s"), obs.detail


@pytest.mark.anyio
async def test_an_explicit_deadline_overrides_the_clients_timeout() -> None:
    """PrometheusSource's `deadline` bounds the query even when the client's timeouts are long."""
    async with canned_server(None) as (url, _):
        async with PrometheusSource.build_client(url, timeout=60.0) as client:
            obs = await observe(PrometheusSource(client, deadline=0.5), guard("up"))
    assert obs.outcome is Outcome.ERROR
    assert obs.detail == f"no answer from {url}{QUERY_PATH} within 0.5s ([prometheus] timeout_seconds)"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        ("200 OK", deep_json(100_000), "HTTP 200 application/json, JSON nested too deeply to read: '[[[["),
        ("500 Internal Server Error", deep_json(100_000), "answered HTTP 500: [[[["),
        (
            "200 OK",
            json.dumps(
                {
                    "status": "success",
                    "data": {
                        "resultType": "vector",
                        "result": [{"metric": {"job": json.loads(deep_json(900))}, "value": [1, "1"]}],
                    },
                }
            ),
            "unexpected answer from {url}: labels {{'job': [[[[...]]]]}} are not all strings",
        ),
        (
            "200 OK",
            json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, True]}]}}
            ),
            'sample [1, True] is not [timestamp, "value"]',
        ),
        (
            "200 OK",
            json.dumps(
                {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": "12"}]}}
            ),
            "sample '12' is not [timestamp, \"value\"]",
        ),
    ],
    ids=["deep-200", "deep-500", "deep-labels", "bool-value", "string-sample"],
)
async def test_unreadable_answers_are_errors_not_exceptions(status: str, body: str, expected: str) -> None:
    """JSON too deep to parse, or a shape nobody foresaw, is a short ERROR observation, never an exception."""
    async with canned_server(http_response(status, "application/json", body)) as (url, _):
        async with PrometheusSource.build_client(url, timeout=5.0) as client:
            obs = await observe(PrometheusSource(client), guard("up"))
            measured = await PrometheusSource(client).seed_metric("p95_latency_ms", 3600, now())
    assert obs.outcome is Outcome.ERROR
    assert expected.format(url=f"{url}{QUERY_PATH}") in obs.detail, obs.detail
    assert len(obs.detail) < 300 and "Traceback" not in obs.detail
    assert measured.value is None and measured.reason == obs.detail


@pytest.mark.anyio
async def test_any_exception_while_reading_an_answer_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should reading a well-formed answer still raise (a shape nobody foresaw), it is ERROR, not an exception."""

    def unforeseen(endpoint: str, body: dict, direction: Direction | None) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("controller.sources.prometheus._reading", unforeseen)
    body = {"status": "success", "data": {"resultType": "vector", "result": []}}
    async with canned_server(http_response("200 OK", "application/json", body)) as (url, _):
        async with PrometheusSource.build_client(url, timeout=5.0) as client:
            obs = await observe(PrometheusSource(client), guard("up"))
    assert (obs.outcome, obs.detail) == (
        Outcome.ERROR,
        f"unexpected answer from {url}{QUERY_PATH}: RecursionError: maximum recursion depth exceeded",
    )


@pytest.mark.anyio
async def test_an_answer_over_the_size_limit_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer larger than MAX_BODY is not read into memory: ERROR saying so."""
    monkeypatch.setattr("controller.sources.prometheus.MAX_BODY", 1024)
    body = {"status": "success", "data": {"resultType": "vector", "result": []}, "pad": "x" * 5000}
    async with canned_server(http_response("200 OK", "application/json", body)) as (url, _):
        async with PrometheusSource.build_client(url, timeout=5.0) as client:
            obs = await observe(PrometheusSource(client), guard("up"))
    assert (obs.outcome, obs.detail) == (
        Outcome.ERROR,
        f"unexpected answer from {url}{QUERY_PATH}: larger than 1,024 bytes",
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://{HOST}:{free_port()}", "cannot connect to {endpoint}: connection refused"),
        ("http://rolloutd-no-such-host.invalid:9090", "cannot resolve the host of {endpoint}: "),
    ],
    ids=["refused", "dns"],
)
async def test_unreachable_prometheus_is_an_error_naming_the_url(url: str, expected: str) -> None:
    """Nothing listening, or a host that does not resolve, is ERROR naming the URL it tried."""
    async with PrometheusSource.build_client(url, connect_timeout=2.0) as client:
        obs = await observe(PrometheusSource(client), guard("up"))
    assert obs.outcome is Outcome.ERROR
    assert obs.detail.startswith(expected.format(endpoint=f"{url}{QUERY_PATH}"))
    assert obs.query == "up"


@pytest.mark.anyio
async def test_guard_without_query_is_an_error() -> None:
    """A built-in-only guard handed to Prometheus is ERROR, not an exception."""
    async with PrometheusSource.build_client(f"http://{HOST}:{free_port()}") as client:
        obs = await observe(PrometheusSource(client), guard(None))
    assert (obs.outcome, obs.query) == (Outcome.ERROR, None)
    assert "has no PromQL query" in obs.detail


def test_naive_datetime_is_utc() -> None:
    """A naive `at` means UTC, so replay times do not shift with the host's time zone."""
    assert unix_seconds(datetime(2026, 1, 1, 0, 0, 0)) == unix_seconds(datetime(2026, 1, 1, tzinfo=UTC))
    assert unix_seconds(datetime(1970, 1, 1, 0, 1, 30, 250000, tzinfo=UTC)) == "90.250"
