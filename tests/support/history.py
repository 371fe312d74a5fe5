"""Synthetic metric history, backfilled into a real Prometheus, for replay tests.

`rolloutd replay --from T0` evaluates a plan's guards as instant queries at past instants
every 5 minutes, so its tests need days of history in a real Prometheus. A `Scenario` says
what the history looks like, signal by signal, as step functions of plan hour:

    healthy()                                    every guard comfortably passing
        .with_p95(seconds=0.45, from_hour=30)    a latency histogram whose p95 is 0.45 s
        .with_gap(10, 14)                        no samples at all for any series

`write_openmetrics` renders it, `backfill` turns that into TSDB blocks with promtool, and
the `history_prometheus` fixture serves each scenario from one Prometheus per session.

What Prometheus then answers (hour h is `scenario.at(h)`):

- Counters grow linearly between profile changes, so `rate(...[5m])` is exact: ratios
  come back as configured, and the p95 is the configured value (the bucket fractions are
  solved so that histogram_quantile's own interpolation lands on it). Within 5 minutes
  after a change the window mixes old and new.
- Samples start WARMUP before hour 0, so the first replay tick already has full windows.
- A gap drops every sample in [from_hour, to_hour); counters keep counting through it, as
  a process nobody scraped would. Backfilled series have no staleness markers, so gauges
  (and rates) still answer for up to 5 minutes into the gap, then the vector is empty
  (NO_DATA); at to_hour exactly a rate has one sample and is still empty.
- The ready-made scenarios run from `T0` = this session's start, floored to the hour,
  minus 80 h, to T0 + 76 h: all of it is past, as a replay's instants must be, and the
  latest 4 hours hold no history at all.
- Prometheus 2.42 counts time retention back from its newest block, not from now, and
  nothing newer arrives (no scrape targets); the server still keeps 10 years, so no
  scenario, however long or old, loses a block. `_check_loaded` proves every series is
  served before a test sees the server.
"""

from __future__ import annotations

import functools
import math
import shlex
import subprocess
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.support.realservers import PrometheusServer, require_binary

LABELS = 'job="rolloutd",instance="history"'
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5)  # then +Inf
LATENCY_SIGMA = 0.6  # log-normal shape: p99 is ~1.4x p95, as retrieval latency tends to be
WARMUP = timedelta(minutes=15)
RETENTION = "3650d"
# promtool cuts blocks at multiples of this (rounded down to 2h * 3^k): 162 h means a
# 76 h scenario is one or two blocks, and promtool reads its input once per block.
BLOCK_DURATION = "162h"
PROMTOOL_TIMEOUT = 120.0
END = math.inf  # a span's default end: the rest of the scenario


def history_start(now: datetime | None = None) -> datetime:
    """Hour 0 of the ready-made scenarios: `now` floored to the hour, minus 80 hours."""
    now = now or datetime.now(UTC)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=80)


T0 = history_start()


@dataclass(frozen=True)
class Profile:
    """A signal's value by plan hour: `base`, except where a later-added span overrides it."""

    base: float
    spans: tuple[tuple[float, float, float], ...] = ()  # (from_hour, to_hour, value)

    def __call__(self, hour: float) -> float:
        for start, end, value in reversed(self.spans):
            if start <= hour < end:
                return value
        return self.base

    def during(self, from_hour: float, to_hour: float, value: float) -> Profile:
        return replace(self, spans=(*self.spans, (from_hour, to_hour, value)))


@dataclass(frozen=True)
class Scenario:
    """What the history holds from `start` (plan hour 0) for `hours`; the defaults are healthy.

    Frozen and hashable: the fixture serves equal scenarios from the same Prometheus.
    """

    start: datetime
    hours: float = 76.0
    step_seconds: int = 15
    qps: Profile = Profile(20.0)
    error_ratio: Profile = Profile(0.0002)  # warning > 0.001
    p95_seconds: Profile = Profile(0.12)  # warning > 0.2
    pass_rate_percent: Profile = Profile(99.5)  # warning < 98
    hit_ratio: Profile = Profile(0.8)  # warning < 0.5
    precision_at_10: Profile = Profile(0.82)  # warning < 0.7
    recall_at_10: Profile = Profile(0.78)
    top3_accuracy_percent: Profile = Profile(91.0)
    gaps: tuple[tuple[float, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.start.utcoffset() != timedelta(0):
            raise ValueError(f"scenario start {self.start} must be an aware UTC datetime")
        if self.start.microsecond or self.hours <= 0:
            raise ValueError(
                f"scenario needs a whole-second start and hours > 0, not {self.start.isoformat()} and {self.hours}"
            )
        if self.step_seconds * 2 > 300:
            raise ValueError(f"step {self.step_seconds}s leaves rate()[5m] under 2 samples")

    @property
    def end(self) -> datetime:
        return self.at(self.hours)

    def at(self, hour: float) -> datetime:
        """The instant of plan hour `hour`."""
        return self.start + timedelta(hours=hour)

    def in_gap(self, hour: float) -> bool:
        return any(start <= hour < end for start, end in self.gaps)

    def with_value(self, signal: str, value: float, *, from_hour: float = 0.0, to_hour: float = END) -> Scenario:
        """`signal` (a Profile field, e.g. "qps") is `value` in [from_hour, to_hour)."""
        profile = getattr(self, signal, None)
        if not isinstance(profile, Profile):
            raise ValueError(f"{signal!r} is not a signal of Scenario")
        if not from_hour < to_hour:
            raise ValueError(f"empty span: from hour {from_hour} to hour {to_hour}")
        return replace(self, **{signal: profile.during(from_hour, to_hour, value)})

    def with_p95(self, seconds: float, *, from_hour: float = 0.0, to_hour: float = END) -> Scenario:
        latency_cdf(seconds)  # an unmeasurable p95 fails here, not in the middle of generation
        return self.with_value("p95_seconds", seconds, from_hour=from_hour, to_hour=to_hour)

    def with_error_ratio(self, ratio: float, *, from_hour: float = 0.0, to_hour: float = END) -> Scenario:
        return self.with_value("error_ratio", _within(ratio, 1.0), from_hour=from_hour, to_hour=to_hour)

    def with_hit_ratio(self, ratio: float, *, from_hour: float = 0.0, to_hour: float = END) -> Scenario:
        return self.with_value("hit_ratio", _within(ratio, 1.0), from_hour=from_hour, to_hour=to_hour)

    def with_pass_rate(self, percent: float, *, from_hour: float = 0.0, to_hour: float = END) -> Scenario:
        return self.with_value("pass_rate_percent", _within(percent, 100.0), from_hour=from_hour, to_hour=to_hour)

    def with_precision(self, precision: float, *, from_hour: float = 0.0, to_hour: float = END) -> Scenario:
        return self.with_value("precision_at_10", _within(precision, 1.0), from_hour=from_hour, to_hour=to_hour)

    def with_gap(self, from_hour: float, to_hour: float) -> Scenario:
        """No samples at all, for any series, in [from_hour, to_hour)."""
        if not from_hour < to_hour:
            raise ValueError(f"empty gap: from hour {from_hour} to hour {to_hour}")
        return replace(self, gaps=(*self.gaps, (from_hour, to_hour)))


def healthy(start: datetime | None = None, hours: float = 76.0) -> Scenario:
    """Every guard passing with room to spare, from `start` (default `T0`) for `hours`."""
    return Scenario(start=start or T0, hours=hours)


def _within(value: float, top: float) -> float:
    if not 0.0 <= value <= top:
        raise ValueError(f"{value} is out of range [0, {top:g}]")
    return value


# -- the latency histogram ----------------------------------------------------------------


def bucket_quantile(q: float, cumulative: tuple[float, ...]) -> float:
    """histogram_quantile's interpolation over BUCKETS (cumulative counts, +Inf last)."""
    rank = q * cumulative[-1]
    i = next(i for i, count in enumerate(cumulative) if count >= rank)
    if i == len(BUCKETS):  # in the +Inf bucket: Prometheus answers the last finite bound
        return BUCKETS[-1]
    lower, below = (0.0, 0.0) if i == 0 else (BUCKETS[i - 1], cumulative[i - 1])
    return lower + (BUCKETS[i] - lower) * (rank - below) / (cumulative[i] - below)


def _lognormal_cdf(median: float) -> tuple[float, ...]:
    scale = LATENCY_SIGMA * math.sqrt(2)
    return (*(0.5 * (1 + math.erf(math.log(le / median) / scale)) for le in BUCKETS), 1.0)


@functools.cache
def _latency_median(p95: float) -> float:
    """The log-normal median whose bucket-interpolated p95 is `p95`, by bisection.

    The interpolated quantile grows continuously with the median, so 60 halvings pin it
    far below the float noise of rate().
    """
    if not BUCKETS[0] <= p95 < BUCKETS[-1]:
        raise ValueError(f"p95 {p95}s must lie in [{BUCKETS[0]}, {BUCKETS[-1]}) to be measurable")
    low, high = math.log(1e-5), math.log(100.0)
    for _ in range(60):
        middle = (low + high) / 2
        if bucket_quantile(0.95, _lognormal_cdf(math.exp(middle))) < p95:
            low = middle
        else:
            high = middle
    return math.exp((low + high) / 2)


def latency_cdf(p95: float) -> tuple[float, ...]:
    """Cumulative fraction of observations per bucket (+Inf last) for a p95 of `p95` seconds."""
    return _lognormal_cdf(_latency_median(p95))


def mean_latency(p95: float) -> float:
    """The mean observation (for `_sum`) of the distribution `latency_cdf(p95)` describes."""
    return _latency_median(p95) * math.exp(LATENCY_SIGMA**2 / 2)


# -- samples ------------------------------------------------------------------------------

_LE = (*(repr(bound) for bound in BUCKETS), "+Inf")
_LATENCY = "hybrid_rag_retrieval_latency_seconds"
# (family, type, its series as (sample name, le)) in the column order `_step` produces;
# counters first (cumulative), gauges last.
LAYOUT: tuple[tuple[str, str, tuple[tuple[str, str | None], ...]], ...] = (
    ("hybrid_rag_queries", "counter", (("hybrid_rag_queries_total", None),)),
    ("hybrid_rag_errors", "counter", (("hybrid_rag_errors_total", None),)),
    (
        _LATENCY,
        "histogram",
        (
            *((f"{_LATENCY}_bucket", le) for le in _LE),
            (f"{_LATENCY}_count", None),
            (f"{_LATENCY}_sum", None),
        ),
    ),
    ("redis_cache_hits", "counter", (("redis_cache_hits_total", None),)),
    ("redis_cache_misses", "counter", (("redis_cache_misses_total", None),)),
    ("genesis_regression_pass_rate", "gauge", (("genesis_regression_pass_rate", None),)),
    ("hybrid_rag_precision_at_10", "gauge", (("hybrid_rag_precision_at_10", None),)),
    ("hybrid_rag_recall_at_10", "gauge", (("hybrid_rag_recall_at_10", None),)),
    ("hybrid_rag_top3_accuracy_percent", "gauge", (("hybrid_rag_top3_accuracy_percent", None),)),
)


@dataclass(frozen=True)
class Series:
    """One series: its sample name, `le` for a histogram bucket, and a value per `times`."""

    name: str
    le: str | None
    values: tuple[float, ...]


@dataclass(frozen=True)
class History:
    """A scenario's samples: shared timestamps (unix seconds, gaps left out) and families."""

    times: tuple[int, ...]
    families: tuple[tuple[str, str, tuple[Series, ...]], ...]  # (family, type, series)

    def series_of(self, name: str) -> list[Series]:
        """Every series named `name` (a histogram's buckets, in `le` order)."""
        return [one for _, _, series in self.families for one in series if one.name == name]

    def series(self, name: str, le: str | None = None) -> Series:
        return next(one for one in self.series_of(name) if one.le == le)


def _step(scenario: Scenario, hour: float) -> tuple[list[float], list[float]]:
    """Counter increments over one step ending at `hour`, and the gauges at `hour`."""
    s = scenario
    queries = s.qps(hour) * s.step_seconds
    p95, hits = s.p95_seconds(hour), queries * s.hit_ratio(hour)
    increments = [
        queries,
        queries * s.error_ratio(hour),
        *(queries * fraction for fraction in latency_cdf(p95)),  # +Inf is 1.0: equals _count
        queries,
        queries * mean_latency(p95),
        hits,
        queries - hits,
    ]
    gauges = [s.pass_rate_percent(hour), s.precision_at_10(hour), s.recall_at_10(hour), s.top3_accuracy_percent(hour)]
    return increments, gauges


def generate(scenario: Scenario) -> History:
    """Every sample of `scenario`, from WARMUP before hour 0 to its last hour inclusive."""
    step, origin = scenario.step_seconds, int(scenario.start.timestamp())
    times: list[int] = []
    rows: list[tuple[float, ...]] = []
    totals: list[float] = []
    first = -int(WARMUP.total_seconds()) // step
    for i in range(first, int(scenario.hours * 3600) // step + 1):
        hour = i * step / 3600
        increments, gauges = _step(scenario, hour)
        # Counting goes on through a gap: only the scrapes are missing.
        totals = [a + b for a, b in zip(totals, increments, strict=False)] if totals else increments
        if not scenario.in_gap(hour):
            times.append(origin + i * step)
            rows.append((*totals, *gauges))
    columns = iter(zip(*rows, strict=False)) if rows else iter(())
    families = tuple(
        (family, kind, tuple(Series(name, le, next(columns, ())) for name, le in series))
        for family, kind, series in LAYOUT
    )
    return History(tuple(times), families)


def write_openmetrics(scenario: Scenario, path: Path) -> None:
    """Write `scenario` as OpenMetrics text: each family contiguous, each series in time order."""
    history = generate(scenario)
    stamps = [f" {t}\n" for t in history.times]
    with path.open("w") as out:
        for family, kind, series in history.families:
            out.write(f"# TYPE {family} {kind}\n")
            for one in series:
                labels = LABELS if one.le is None else f'{LABELS},le="{one.le}"'
                prefix = f"{one.name}{{{labels}}} "
                lines = [f"{prefix}{value!r}{stamp}" for value, stamp in zip(one.values, stamps, strict=False)]
                out.write("".join(lines))
        out.write("# EOF\n")


def backfill(scenario: Scenario, workdir: Path) -> Path:
    """Write `scenario` and turn it into TSDB blocks with promtool; return the TSDB directory."""
    source, tsdb = workdir / "history.om.txt", workdir / "tsdb"
    write_openmetrics(scenario, source)
    argv = [
        require_binary("promtool"),
        "tsdb",
        "create-blocks-from",
        "openmetrics",
        "--quiet",
        f"--max-block-duration={BLOCK_DURATION}",
        str(source),
        str(tsdb),
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROMTOOL_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"promtool did not finish within {PROMTOOL_TIMEOUT:.0f}s\ncommand: {shlex.join(argv)}", pytrace=False
        )
    if done.returncode != 0:
        stderr = "\n".join(done.stderr.splitlines()[-20:]) or "(nothing on stderr)"
        pytest.fail(
            f"promtool rejected the generated history (status {done.returncode}); "
            f"the input is kept at {source}\ncommand: {shlex.join(argv)}\n"
            f"stderr:\n{stderr}",
            pytrace=False,
        )
    source.unlink()  # ~30 MB for 76 h, and the blocks now hold it all
    return tsdb


# -- the fixture --------------------------------------------------------------------------


class HistoryServers:
    """This session's Prometheus servers over backfilled history, one per distinct scenario.

    `history_prometheus(scenario)` returns a running server; the first call for a scenario
    backfills and starts it (~1-2 s for 76 h). Servers are shared by every test that asks
    for an equal scenario, so treat them as read-only; one a test stopped is restarted.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp_path_factory = tmp_path_factory
        self._servers: dict[Scenario, PrometheusServer] = {}

    def __call__(self, scenario: Scenario) -> PrometheusServer:
        server = self._servers.get(scenario)
        if server is None:
            server = self._servers[scenario] = self._launch(scenario)
        elif not server.running:
            server.start()
        return server

    def _launch(self, scenario: Scenario) -> PrometheusServer:
        workdir = self._tmp_path_factory.mktemp("history")
        tsdb = backfill(scenario, workdir)
        server = PrometheusServer(workdir, storage=tsdb, retention=RETENTION)
        server.start(targets=[])  # nothing to scrape: the history is all there is
        try:
            _check_loaded(server, scenario)
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        for server in self._servers.values():
            server.stop()


def _check_loaded(server: PrometheusServer, scenario: Scenario) -> None:
    """Fail unless Prometheus serves every generated series (retention can silently eat them)."""
    expected = sum(len(series) for _, _, series in LAYOUT)
    params = {
        "match[]": f"{{{LABELS}}}",
        "start": f"{(scenario.start - WARMUP).timestamp():.0f}",
        "end": f"{scenario.end.timestamp():.0f}",
    }
    # trust_env=False: a developer's HTTP_PROXY must not intercept loopback requests.
    response = httpx.get(f"{server.url}/api/v1/series", params=params, timeout=5, trust_env=False)
    found = len(response.json().get("data") or ())
    if found != expected:
        server.fail(
            f"serves {found} of the {expected} backfilled series between "
            f"{params['start']} and {params['end']} ({response.text[:200]}); "
            f"were blocks deleted by retention?"
        )


_SERVERS = pytest.StashKey[HistoryServers]()


@pytest.fixture(scope="session")
def history_prometheus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HistoryServers:
    """Call it with a Scenario for a running Prometheus serving that history (`.url`, `.query`)."""
    # The stash, not the fixture cache, holds the servers, so a module that imports this
    # fixture beside conftest's copy still shares them.
    stash = request.config.stash
    if _SERVERS not in stash:
        stash[_SERVERS] = HistoryServers(tmp_path_factory)
        request.config.add_cleanup(stash[_SERVERS].stop)
    return stash[_SERVERS]


# -- ready-made scenarios (hour 0 = T0, computed once per session) -----------------------

HEALTHY = healthy()
P95_BREACH_AT_30H = HEALTHY.with_p95(seconds=0.45, from_hour=30)  # critical, not emergency
GAP = HEALTHY.with_gap(10, 14)
