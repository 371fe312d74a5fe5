"""Guard observations from Prometheus: one instant query per guard, every failure an observation.

    GuardSource (Protocol, protocol.py)   observe(guard, at) -> Observation; never raises
    └── PrometheusSource      GET /api/v1/query?query=...&time=<at> on an injected httpx.AsyncClient;
                              reports' criteria and seed metrics are PromQL too (PromQLMeasures)

    PrometheusError      (controller/errors.py) raised by `read`/`query_value` (reports, replay),
                         turned into an ERROR observation by `PrometheusSource.observe`

What an answer becomes (`assess` in `controller/guards.py` makes the observation):

    scalar, or a vector of one sample      the value -> PASS or BREACH(severity)
    a vector of several samples            the worst for the guard's direction (max for
                                           "above", min for "below"), series count in detail
    an empty vector                        NO_DATA "no samples"
    NaN, +Inf, -Inf                        NO_DATA "value is nan"/"value is inf"
    matrix or string result                ERROR "expected a vector or scalar, got matrix"
    timeout, refused, DNS, non-2xx         ERROR naming the URL, with Prometheus's `error`
                                           or the page's <title> when a proxy answered
    2xx that is not Prometheus's JSON      ERROR "unexpected answer ...", also for JSON
                                           nested too deeply to read, a body over
                                           MAX_BODY, or any shape nobody foresaw
    no whole answer within the deadline    ERROR "no answer from ... within 10s"

The deadline bounds the whole query, connect to last byte: httpx's own timeouts are per
operation, so a server dripping one byte a second would never trip them. It defaults to
the client's read timeout, which `build_client` sets from `[prometheus] timeout_seconds`.

`time=` is always sent, so the same code observes "now" for the daemon and any past
instant for `rolloutd replay`. The client is the caller's: built once in the daemon's
main (see `build_client`), closed by whoever opened it.
"""

from __future__ import annotations

import math
import re
import reprlib
import socket
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx

from controller.errors import PrometheusError
from controller.guards import Observation, assess
from controller.plan import Direction, Guard
from controller.sources.promql_measures import PromQLMeasures

__all__ = ["PrometheusError", "PrometheusSource", "query_value", "read"]

QUERY_PATH = "/api/v1/query"
_SNIPPET = 100  # characters of a non-Prometheus body worth showing in a log line
MAX_BODY = 16 * 1024 * 1024  # bytes; an instant query's answer is far smaller, a hostile one need not be
_BRIEF = reprlib.Repr()  # bounded in depth and length, so a deep or huge answer prints as a snippet
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother = 4, 60, 60


@dataclass(frozen=True)
class Reading:
    """One instant query's answer: the value that counts (None: no samples) and how many series."""

    value: float | None
    series: int
    worst: str = ""  # the labels of the series `value` came from, when there were several


class PrometheusSource(PromQLMeasures):
    """Observe guards with instant queries against one Prometheus."""

    def __init__(self, client: httpx.AsyncClient, deadline: float | None = None) -> None:
        """`deadline`: seconds for one whole query (None: the client's read timeout)."""
        self._client = client
        self._deadline = deadline

    @staticmethod
    def build_client(url: str, *, timeout: float = 10.0, connect_timeout: float = 3.0) -> httpx.AsyncClient:
        """An AsyncClient for `url` with explicit timeouts; the caller owns (and closes) it."""
        # trust_env=False: an operator's HTTP(S)_PROXY must not capture the metrics backend,
        # and a guard check that hangs would hold every rollout decision behind it.
        return httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            trust_env=False,
            follow_redirects=False,
        )

    async def observe(self, guard: Guard, at: datetime) -> Observation:
        """Evaluate the guard's query at `at`; every failure is an ERROR observation."""
        promql = guard.resolved_query()
        if promql is None:
            return assess(guard, None, at, error=f"guard {guard.name} has no PromQL query (built-in signal only)")
        try:
            reading = await read(self._client, promql, at, guard.direction, deadline=self._deadline)
        except PrometheusError as exc:
            return assess(guard, None, at, error=str(exc))
        observation = assess(guard, reading.value, at)
        if reading.series < 2:
            return observation
        several = f"worst of {reading.series} series: {reading.worst}"
        return replace(observation, detail=f"{observation.detail}; {several}" if observation.detail else several)

    async def value(self, promql: str, at: datetime, direction: Direction | None = None) -> float | None:
        """Any query's value at `at` (reports use it); raises PrometheusError on any failure."""
        return await query_value(self._client, promql, at, direction, deadline=self._deadline)


async def query_value(
    client: httpx.AsyncClient,
    promql: str,
    at: datetime,
    direction: Direction | None = None,
    *,
    deadline: float | None = None,
) -> float | None:
    """The query's value at `at` (None: no samples); raises PrometheusError on any failure."""
    return (await read(client, promql, at, direction, deadline=deadline)).value


async def read(
    client: httpx.AsyncClient,
    promql: str,
    at: datetime,
    direction: Direction | None = None,
    *,
    deadline: float | None = None,
) -> Reading:
    """Run one instant query within `deadline` seconds (None: the client's read timeout);
    several series need a `direction` to pick the worst. Any failure is a PrometheusError."""
    endpoint = str(client.base_url).rstrip("/") + QUERY_PATH
    limit = deadline if deadline is not None else client.timeout.read
    with anyio.move_on_after(limit) as scope:
        try:
            request = client.build_request("GET", QUERY_PATH, params={"query": promql, "time": unix_seconds(at)})
            endpoint = str(request.url.copy_with(query=None))
            response = await _fetch(client, request, endpoint)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise PrometheusError(_transport_message(endpoint, exc)) from None
    if scope.cancelled_caught:
        raise PrometheusError(f"no answer from {endpoint} within {limit:g}s ([prometheus] timeout_seconds)")
    try:
        return _reading(endpoint, _body(endpoint, response), direction)
    except PrometheusError:
        raise
    except Exception as exc:  # noqa: BLE001  (a shape nobody foresaw is one more bad answer, never a dropped round)
        raise PrometheusError(
            f"unexpected answer from {endpoint}: {type(exc).__name__}: {_snippet(str(exc)) or 'no details'}"
        ) from None


async def _fetch(client: httpx.AsyncClient, request: httpx.Request, endpoint: str) -> httpx.Response:
    """Send `request` and read at most MAX_BODY bytes of the answer."""
    response = await client.send(request, stream=True)
    try:
        content = bytearray()
        async for chunk in response.aiter_bytes():
            content += chunk
            if len(content) > MAX_BODY:
                raise PrometheusError(f"unexpected answer from {endpoint}: larger than {MAX_BODY:,} bytes")
    finally:
        await response.aclose()
    # the content is decoded already: a Content-Encoding kept beside it would be undone twice
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("content-encoding", "content-length")]
    return httpx.Response(response.status_code, headers=headers, content=bytes(content), request=request)


def unix_seconds(at: datetime) -> str:
    """`at` as Prometheus's `time=`; a naive datetime is taken as UTC (the controller's clock)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return f"{at.timestamp():.3f}"


def _transport_message(endpoint: str, exc: Exception) -> str:
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connect",
            httpx.ReadTimeout: "read",
            httpx.WriteTimeout: "write",
            httpx.PoolTimeout: "pool",
        }.get(type(exc), "read")
        limit = exc.request.extensions.get("timeout", {}).get(phase)
        within = f" within {limit:g}s" if limit is not None else ""
        return f"no answer from {endpoint}{within} ({phase} timeout)"
    causes = _causes(exc)
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return f"cannot connect to {endpoint}: connection refused (is Prometheus running?)"
    if dns := next((c for c in causes if isinstance(c, socket.gaierror)), None):
        return f"cannot resolve the host of {endpoint}: {dns.strerror or dns}"
    return f"cannot query {endpoint}: {type(exc).__name__}: {str(exc) or 'no details'}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exceptions under httpx's, httpcore's and anyio's wrappers, outermost first."""
    # anyio wraps the per-address errors in a generic OSError("All connection attempts failed").
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _body(endpoint: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a successful answer; anything else becomes a PrometheusError."""
    not_json = "not Prometheus JSON"
    try:
        body = response.json()
    except ValueError:
        body = None
    except RecursionError:  # the C decoder's depth limit: e.g. [[[[... 100,000 deep
        body, not_json = None, "JSON nested too deeply to read"
    if not response.is_success:
        raise PrometheusError(f"{endpoint} answered HTTP {response.status_code}: {_explain(body, response)}")
    if not isinstance(body, dict):
        kind = response.headers.get("content-type", "no content type")
        raise PrometheusError(
            f"unexpected answer from {endpoint}: HTTP {response.status_code} {kind}, "
            f"{not_json}: {_snippet(response.text)!r}"
        )
    if body.get("status") != "success":
        raise PrometheusError(f"{endpoint} answered status {body.get('status')!r}: {_explain(body, response)}")
    return body


def _explain(body: Any, response: httpx.Response) -> str:
    """Prometheus's own error when it sent one, else the page's title or first words."""
    if isinstance(body, dict) and body.get("error"):
        kind = f"{body['errorType']}: " if body.get("errorType") else ""
        return f"{kind}{body['error']}"
    title = re.search(r"<title[^>]*>(.*?)</title>", response.text, re.IGNORECASE | re.DOTALL)
    return _snippet(title.group(1)) if title else _snippet(response.text) or "(empty body)"


def _snippet(text: str) -> str:
    text = " ".join(text[: 4 * _SNIPPET].split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _reading(endpoint: str, body: dict[str, Any], direction: Direction | None) -> Reading:
    data = body.get("data")
    kind = data.get("resultType") if isinstance(data, dict) else None
    result = data.get("result") if isinstance(data, dict) else None
    if kind in ("matrix", "string"):
        raise PrometheusError(
            f"expected a vector or scalar, got {kind} (from {endpoint}); "
            "a guard query must be an instant expression, e.g. rate(x[5m]) not x[5m]"
        )
    if kind == "scalar":
        return Reading(_sample_value(endpoint, result), series=1)
    if kind != "vector" or not isinstance(result, list):
        raise PrometheusError(f"unexpected answer from {endpoint}: no data.result vector in {_brief(body)}")
    samples = [
        (_labels(endpoint, s), _sample_value(endpoint, s.get("value") if isinstance(s, dict) else None)) for s in result
    ]
    if len(samples) <= 1:
        return Reading(samples[0][1] if samples else None, series=len(samples))
    return _worst(endpoint, samples, direction)


def _worst(endpoint: str, samples: list[tuple[str, float]], direction: Direction | None) -> Reading:
    if direction is None:
        raise PrometheusError(f"{len(samples)} series from {endpoint}, expected one (aggregate with sum/max/min)")
    # NaN (0/0: no traffic on that series) says nothing about the others; all NaN is NO_DATA.
    known = [s for s in samples if not math.isnan(s[1])] or samples
    pick = max if direction is Direction.ABOVE else min
    labels, value = pick(known, key=lambda s: s[1])
    return Reading(value, series=len(samples), worst=labels)


def _sample_value(endpoint: str, pair: Any) -> float:
    """Prometheus's `[timestamp, "value"]`; the value may be "NaN" or "+Inf"."""
    try:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[1], (str, int, float))
            or isinstance(pair[1], bool)
        ):
            raise TypeError(pair)
        return float(pair[1])
    except (TypeError, ValueError):
        raise PrometheusError(
            f'unexpected answer from {endpoint}: sample {_brief(pair)} is not [timestamp, "value"]'
        ) from None


def _labels(endpoint: str, sample: Any) -> str:
    metric = sample.get("metric") if isinstance(sample, dict) else None
    if not isinstance(metric, dict):
        raise PrometheusError(f"unexpected answer from {endpoint}: sample {_brief(sample)} has no labels")
    if not all(isinstance(v, str) for v in metric.values()):
        raise PrometheusError(f"unexpected answer from {endpoint}: labels {_brief(metric)} are not all strings")
    name = metric.get("__name__", "")
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items()) if k != "__name__") + "}"


def _brief(value: Any) -> str:
    """A parsed answer (or part of one) as a short snippet, however deep or long it is."""
    return _snippet(_BRIEF.repr(value))
