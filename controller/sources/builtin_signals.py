"""Built-in guard signals: the daemon's own measurements, read the way Prometheus would read them.

With no `[prometheus] url`, guards are observed here. The retriever already counts every
retrieval for /metrics; `Sampler` copies those cumulative counters (and the validation
gauges, and values pushed by an external suite) into an in-process history every
`resolution` wall seconds — a tiny scrape loop. A guard's value over its window is then
the same arithmetic its PromQL does over `increase(...[window])`:

    p95_latency_seconds     histogram_quantile(0.95) of the latency histogram's bucket increases
    error_ratio             errors / queries increase          (0/0: no data)
    cache_hit_ratio         hits / (hits + misses) increase    (0/0: no data)
    precision_at_10         the validation's hybrid gauge, as last sampled (absent: no data)
    recall_at_10, top3_accuracy_percent   likewise
    regression_pass_rate    the last value pushed (`POST /v1/signals/regression_pass_rate` on the
                            admin socket) within three guard windows (at least 5 wall seconds);
                            absent: no data

Windows are in plan time and the history in wall time (`time_scale`), so a 5-minute
window at 1440x is 0.21 wall seconds. A guard's `min_samples` makes a ratio or quantile
over fewer events no data: a window of two retrievals says nothing about a hit ratio. Verdicts, budgets and journal events are the
controller's, unchanged: this module only produces observations and report measurements.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import anyio
from prometheus_client.registry import Collector

from controller.guards import Observation, assess
from controller.plan import BUILTIN_SIGNALS, Direction, Guard, Plan, format_duration
from controller.report import UNMEASURABLE, Measurement
from controller.sources.promql_measures import measured
from retrieval.metrics import LATENCY_BUCKETS, RetrievalMetrics

Clock = Callable[[], datetime]
GAUGES = {
    "precision_at_10": "hybrid_rag_precision_at_10",
    "recall_at_10": "hybrid_rag_recall_at_10",
    "top3_accuracy_percent": "hybrid_rag_top3_accuracy_percent",
}
PUSHED = ("regression_pass_rate",)
MIN_RESOLUTION, MAX_RESOLUTION = 0.01, 15.0  # wall seconds between samples
STALE_FLOOR = 5.0  # wall seconds a pushed value lasts at least
# The seeds' report metrics (report.SEED_METRICS keys) as built-in signals: (signal, quantile or None)
SEED_SIGNALS = {
    "test_pass_rate": "regression_pass_rate",
    "error_rate": "error_ratio",
    "p95_latency_ms": "p95_latency_seconds",
    "p99_latency_ms": "p99_latency_seconds",
    "cache_hit_rate": "cache_hit_ratio",
    "retrieval_accuracy_precision_at_10": "precision_at_10",
    "retrieval_accuracy_recall_at_10": "recall_at_10",
}


@dataclass(frozen=True)
class Sample:
    """Cumulative counters and current gauges at wall time `t` (Unix seconds)."""

    t: float
    queries: float = 0.0
    errors: float = 0.0
    hits: float = 0.0
    misses: float = 0.0
    buckets: tuple[float, ...] = ()  # cumulative count per LATENCY_BUCKETS upper bound, then +Inf
    gauges: Mapping[str, float] = field(default_factory=dict)  # signal name -> value, the present ones


# --- pure arithmetic ----------------------------------------------------------------------


def histogram_quantile(
    q: float, counts: tuple[float, ...], bounds: tuple[float, ...] = LATENCY_BUCKETS
) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket counts (the last is +Inf):
    linear interpolation inside the bucket; None when the histogram is empty."""
    if not counts or counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    for i, count in enumerate(counts):
        if count >= rank:
            if i == len(bounds):  # the +Inf bucket: the highest finite bound
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            below = counts[i - 1] if i else 0.0
            inside = count - below
            return bounds[i] if inside <= 0 else lower + (bounds[i] - lower) * (rank - below) / inside
    return bounds[-1]


def window_value(signal: str, newer: Sample, older: Sample | None, min_samples: int = 0) -> float | None:
    """A signal over the window between two samples (None: no data, including a window with
    fewer than `min_samples` events behind a ratio or quantile). Counter signals need
    `older`; gauge signals read `newer`."""
    if signal in GAUGES or signal in PUSHED:
        return newer.gauges.get(signal)
    if older is None:
        return None
    if signal == "error_ratio":
        queries = newer.queries - older.queries
        return (newer.errors - older.errors) / queries if queries > 0 and queries >= min_samples else None
    if signal == "cache_hit_ratio":
        hits, misses = newer.hits - older.hits, newer.misses - older.misses
        return hits / (hits + misses) if hits + misses > 0 and hits + misses >= min_samples else None
    if signal in ("p95_latency_seconds", "p99_latency_seconds"):
        q = 0.95 if signal.startswith("p95") else 0.99
        counts = (
            newer.buckets
            if not older.buckets
            else tuple(a - b for a, b in zip(newer.buckets, older.buckets, strict=False))
        )
        return histogram_quantile(q, counts) if counts and counts[-1] >= min_samples else None
    raise KeyError(f"unknown built-in signal {signal!r}; known: {', '.join(sorted(BUILTIN_SIGNALS))}")


def worst(values: Iterable[float | None], direction: Direction | None) -> float | None:
    known = [v for v in values if v is not None and not math.isnan(v)]
    if not known:
        return None
    return min(known) if direction is Direction.BELOW else max(known)


def missing_builtins(plan: Plan) -> list[str]:
    """Guards that cannot be observed without Prometheus (no `builtin`)."""
    return [g.name for g in plan.guards if g.builtin is None]


# --- the history ---------------------------------------------------------------------------


class History:
    """Samples in time order, kept for `retention` wall seconds."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self._times: list[float] = []
        self._samples: list[Sample] = []

    def add(self, sample: Sample) -> None:
        if self._times and sample.t < self._times[-1]:
            return  # a wall clock stepped back: keep the history monotonic, skip this one
        self._times.append(sample.t)
        self._samples.append(sample)
        cutoff = bisect.bisect_left(self._times, sample.t - self.retention)
        if cutoff > max(64, len(self._times) // 8):  # trim in batches, not on every sample
            del self._times[:cutoff], self._samples[:cutoff]

    def at(self, t: float) -> Sample | None:
        """The latest sample at or before `t` (None: nothing that old)."""
        i = bisect.bisect_right(self._times, t)
        return self._samples[i - 1] if i else None

    def first_from(self, t: float) -> Sample | None:
        """The earliest sample at or after `t` (None: none)."""
        i = bisect.bisect_left(self._times, t)
        return self._samples[i] if i < len(self._samples) else None

    def between(self, start: float, end: float) -> list[Sample]:
        return self._samples[bisect.bisect_left(self._times, start) : bisect.bisect_right(self._times, end)]

    def __len__(self) -> int:
        return len(self._samples)


# --- reading the daemon's own metrics ----------------------------------------------------


class Sampler:
    """Reads the retriever's counters and the validation gauges, plus pushed values."""

    def __init__(self, metrics: RetrievalMetrics, gauges: Collector | None, clock: Clock) -> None:
        self._metrics, self._gauges, self._clock = metrics, gauges, clock
        self._pushed: dict[str, tuple[float, float]] = {}  # signal -> (value, wall time pushed)

    def push(self, signal: str, value: float) -> None:
        if signal not in PUSHED:
            raise KeyError(f"{signal!r} cannot be pushed; pushable signals: {', '.join(PUSHED)}")
        if not math.isfinite(value):
            raise ValueError(f"{signal} must be a finite number, got {value!r}")
        self._pushed[signal] = (value, self._clock().timestamp())

    def sample(self, max_age: float) -> Sample:
        """Now's sample; pushed values older than `max_age` wall seconds are left out (stale)."""
        now = self._clock().timestamp()
        m = self._metrics
        gauges = {signal: value for signal, (value, at) in self._pushed.items() if now - at <= max_age}
        if self._gauges is not None:
            wanted = {family: signal for signal, family in GAUGES.items()}
            for family in self._gauges.collect():
                if family.name in wanted and family.samples:
                    gauges[wanted[family.name]] = family.samples[0].value
        return Sample(
            t=now,
            queries=_total(m.queries),
            errors=_total(m.errors),
            hits=_total(m.cache_hits),
            misses=_total(m.cache_misses),
            buckets=_buckets(m.latency),
            gauges=gauges,
        )


def _total(counter: Collector) -> float:
    return sum(s.value for family in counter.collect() for s in family.samples if s.name.endswith("_total"))


def _buckets(histogram: Collector) -> tuple[float, ...]:
    by_le: dict[float, float] = {}
    for family in histogram.collect():
        for s in family.samples:
            if s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                by_le[le] = by_le.get(le, 0.0) + s.value
    return tuple(by_le[le] for le in sorted(by_le))


# --- the guard source ------------------------------------------------------------------------


class BuiltinSource:
    """A GuardSource over the daemon's own measurements (see the module docstring)."""

    def __init__(self, sampler: Sampler, plan: Plan, time_scale: float) -> None:
        self._sampler, self._scale = sampler, time_scale
        self.resolution = _resolution(plan, time_scale)
        # A pushed value counts for three guard windows (or intervals) after it arrives, and at
        # least STALE_FLOOR wall seconds (runners push on wall-clock schedules): a runner pushing
        # every interval never flickers to "no data", one that stopped soon does.
        longest = max([g.window for g in plan.guards] + [plan.guard_interval]).total_seconds()
        self._stale_after = max(STALE_FLOOR, 3 * longest / time_scale)
        self.history = History(_retention(plan, time_scale))
        self._seen: dict[str, list[tuple[float, float | None]]] = {}  # guard -> (wall t, value) it observed
        self.take_sample()

    def push(self, signal: str, value: float) -> None:
        self._sampler.push(signal, value)
        self.take_sample()

    def take_sample(self) -> Sample:
        sample = self._sampler.sample(self._stale_after)
        self.history.add(sample)
        return sample

    async def run(self) -> None:
        """Sample every `resolution` wall seconds until cancelled."""
        while True:
            self.take_sample()
            await anyio.sleep(self.resolution)

    def value(self, signal: str, window: float, at: datetime, min_samples: int = 0) -> float | None:
        """`signal` over the `window` wall seconds before wall time `at`: between the first and
        the last sample inside the window, as Prometheus's increase() takes them."""
        t = at.timestamp()
        newer = self.history.at(t)
        if newer is None:
            return None
        older = self.history.first_from(t - window)
        return window_value(signal, newer, older if older is not None and older.t < newer.t else None, min_samples)

    async def observe(self, guard: Guard, at: datetime) -> Observation:
        if guard.builtin is None:
            return assess(
                guard,
                None,
                at,
                error=f"guard {guard.name} has no built-in signal and no Prometheus "
                "is configured: set [prometheus] url, or give the guard `builtin = ...`",
            )
        self.take_sample()
        window = guard.window.total_seconds() / self._scale
        value = self.value(guard.builtin, window, at, guard.min_samples)
        self._remember(guard.name, at.timestamp(), value)
        observation = assess(guard, value, at)
        if value is None and guard.min_samples:
            observation = replace(observation, detail=f"no samples, or fewer than min_samples {guard.min_samples}")
        return replace(observation, query=f"builtin:{guard.builtin}[{format_duration(guard.window)}]")

    def _remember(self, guard: str, t: float, value: float | None) -> None:
        seen = self._seen.setdefault(guard, [])
        seen.append((t, value))
        cutoff = t - self.history.retention
        if seen[0][0] < cutoff and len(seen) > 64:
            del seen[: bisect.bisect_left(seen, (cutoff,))]

    async def criterion(self, plan: Plan, guard: Guard, window: float, step: float, at: datetime) -> Measurement:
        """The worst value the guard observed in the window (what its evaluations saw and the
        journal's warnings say); without observations there (a restart), the worst of its
        windowed values at every `step` through the history, as the PromQL subquery does."""
        if guard.builtin is None:
            return Measurement(None, "the guard has no built-in signal and no Prometheus is configured")
        t = at.timestamp()
        seen = self._seen.get(guard.name, [])
        inside = [v for when, v in seen[bisect.bisect_left(seen, (t - window,)) :] if when <= t]
        if inside:
            what = f"builtin:{guard.builtin}[{format_duration(guard.window)}] worst of {len(inside)} evaluations"
            return measured(worst(inside, guard.direction), what)
        what = f"builtin:{guard.builtin}[{format_duration(guard.window)}] worst over {window:g}s"
        guard_window = guard.window.total_seconds() / self._scale
        steps = max(1, int(window // max(step, 1e-6)))
        values = [
            self.value(guard.builtin, guard_window, at - timedelta(seconds=i * step), guard.min_samples)
            for i in range(steps + 1)
        ]
        return measured(worst(values, guard.direction), what)

    async def seed_metric(self, key: str, window: float, at: datetime) -> Measurement:
        signal = SEED_SIGNALS.get(key)
        if signal is None:
            return Measurement(None, UNMEASURABLE.get(key, "no built-in signal measures it"))
        what = f"builtin:{signal} over {window:g}s"
        if signal in GAUGES or signal in PUSHED:  # like min_over_time: the worst value seen in the period
            t = at.timestamp()
            value = worst((s.gauges.get(signal) for s in self.history.between(t - window, t)), Direction.BELOW)
        else:
            value = self.value(signal, window, at)
            if value is not None and key.endswith("_ms"):
                value *= 1000
        return measured(value, what)


def _resolution(plan: Plan, scale: float) -> float:
    shortest = min([g.window for g in plan.guards] + [plan.guard_interval]).total_seconds() / scale
    return min(MAX_RESOLUTION, max(MIN_RESOLUTION, shortest / 10))


def _retention(plan: Plan, scale: float) -> float:
    """Long enough for every guard window and every checkpoint's period (at most the whole plan)."""
    longest = max([g.window for g in plan.guards] + [plan.end, plan.guard_interval])
    return longest.total_seconds() / scale * 1.1 + 2 * MAX_RESOLUTION
