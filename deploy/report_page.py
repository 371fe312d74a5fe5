"""`rolloutctl report --html FILE`: gather what the page shows, render it, write it atomically.

Everything comes from the daemon's admin API (status, the whole journal paged back to
its first decision, the guard observations paged forward, every checkpoint report);
with `--prometheus URL` also the seeds' metrics over the rollout's period, read with
`query_range`. Prometheus is optional: any failure there becomes a line in the page
("Prometheus unreachable: ..."), never a failed command.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from controller.views.report_html import render_html
from deploy.client import AdminClient, Unreachable
from flags.atomic import atomic_write

JOURNAL_PAGE = 500
OBSERVATION_PAGE = 5000
RANGE_POINTS = 500  # samples per Prometheus series over the whole period
# The seeds' dashboard metrics, by rate over a window `{w}` sized to the query's step.
SEED_SERIES = (
    (
        "p95_latency_ms",
        "p95 retrieval latency",
        "ms",
        "1000 * histogram_quantile(0.95, sum by (le) (rate(hybrid_rag_retrieval_latency_seconds_bucket[{w}])))",
    ),
    (
        "error_rate",
        "error rate",
        "0-1",
        "(sum(rate(hybrid_rag_errors_total[{w}])) or vector(0)) / sum(rate(hybrid_rag_queries_total[{w}]))",
    ),
    (
        "cache_hit_rate",
        "cache hit rate",
        "0-1",
        "sum(rate(redis_cache_hits_total[{w}])) / (sum(rate(redis_cache_hits_total[{w}])) "
        "+ sum(rate(redis_cache_misses_total[{w}])))",
    ),
    ("precision_at_10", "precision@10", "0-1", "min(hybrid_rag_precision_at_10)"),
)


def write_page(client: AdminClient, path: Path, prometheus_url: str | None = None) -> Path:
    """Render the report page from the daemon (and Prometheus) into `path`; return it, absolute."""
    status = client.get("/v1/rollout")
    decisions, observations = journal(client), all_observations(client)
    reports = [client.get(f"/v1/reports/{name}") for name in client.get("/v1/reports")["reports"]]
    series = prometheus_series(prometheus_url, status) if prometheus_url else None
    page = render_html(status, decisions, observations, reports, series)
    path = path.resolve()
    atomic_write(path, page.encode(), mode=0o644)
    return path


def journal(client: AdminClient, page: int = JOURNAL_PAGE) -> list[dict[str, Any]]:
    """Every decision, oldest first: the newest page, then pages before it (`?before=`)."""
    batch = client.get(f"/v1/rollout/journal?{urlencode({'limit': page})}")["decisions"]
    decisions = batch
    while len(batch) == page:
        batch = client.get(f"/v1/rollout/journal?{urlencode({'limit': page, 'before': decisions[0]['seq']})}")[
            "decisions"
        ]
        decisions = batch + decisions
    return decisions


def all_observations(client: AdminClient, page: int = OBSERVATION_PAGE) -> list[dict[str, Any]]:
    """Every observation the daemon keeps, oldest first, paging on with the last seq seen."""
    out: list[dict[str, Any]] = []
    while True:
        since = out[-1]["seq"] if out else 0
        batch = client.get(f"/v1/rollout/observations?{urlencode({'since': since, 'limit': page})}")["observations"]
        out += batch
        if len(batch) < page:
            return out


def prometheus_series(
    url: str, status: dict[str, Any], *, now: float | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """The seeds' metrics from the rollout's start to now, x in plan hours; failures are described."""
    start = datetime.fromisoformat(status["started_at"].replace("Z", "+00:00")).timestamp()
    end = max(time.time() if now is None else now, start + 1)
    step = max(1, math.ceil((end - start) / RANGE_POINTS))
    window = f"{max(60, 4 * step)}s"
    scale = float(status.get("time_scale") or 1)
    result: dict[str, Any] = {"url": url, "error": None, "metrics": []}
    # trust_env=False as for the daemon's guards: an operator's HTTP(S)_PROXY must not capture it.
    with httpx.Client(base_url=url, timeout=httpx.Timeout(timeout, connect=3.0), trust_env=False) as http:
        for key, title, unit, template in SEED_SERIES:
            query = template.replace("{w}", window)
            try:
                samples = query_range(http, query, start, end, step)
            except Unreachable as exc:
                return {**result, "error": str(exc), "metrics": []}
            except QueryFailed as exc:
                result["metrics"].append(
                    {"key": key, "title": title, "unit": unit, "query": query, "points": [], "note": str(exc)}
                )
                continue
            points = [[round((t - start) * scale / 3600, 6), v] for t, v in samples]
            note = "" if any(v is not None for _, v in points) else "no samples in Prometheus for this period"
            result["metrics"].append(
                {"key": key, "title": title, "unit": unit, "query": query, "points": points, "note": note}
            )
    return result


class QueryFailed(Exception):
    """Prometheus answered, but refused this query (when it did not answer: `Unreachable`)."""


def query_range(
    http: httpx.Client, query: str, start: float, end: float, step: int
) -> list[tuple[float, float | None]]:
    """One `/api/v1/query_range`; the first series' samples (NaN and ±Inf as None)."""
    try:
        response = http.get(
            "/api/v1/query_range",
            params={"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": str(step)},
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise Unreachable(f"{http.base_url}: {type(exc).__name__}: {exc}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "status" not in body:
        raise Unreachable(
            f"{http.base_url} answered HTTP {response.status_code} with something that is not Prometheus's JSON"
        )
    if body["status"] != "success":
        raise QueryFailed(f"Prometheus refused the query (HTTP {response.status_code}): {body.get('error')}")
    series = (body.get("data") or {}).get("result") or []
    if not series:
        return []
    return [(float(t), _finite(v)) for t, v in series[0].get("values", [])]


def _finite(raw: str) -> float | None:
    value = float(raw)
    return value if math.isfinite(value) else None
