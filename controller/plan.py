"""The rollout plan: what to roll out, when, and what stops it. Frozen values only.

A plan is a TOML file (`deploy/plans/phase5.toml` reproduces the seeds):

    [plan]         name, the flags it rolls out, the guard interval, the failure limit,
                   optionally a fixed start time (else the rollout starts when first run)
    [[stages]]     `at` an offset from the start, the percentage, the cumulative agent cohort
    [[checkpoints]] `at`, the go/no-go criteria, whether an operator must approve
    [[guards]]     PromQL with a `{{window}}` placeholder (and/or a built-in signal),
                   thresholds per severity, a sustain duration, what no data means

`controller/plan_load.py` reads and checks the file; everything here is data.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class Severity(enum.IntEnum):
    WARNING = 1
    CRITICAL = 2
    EMERGENCY = 3

    def __str__(self) -> str:
        return self.name.lower()


class Direction(enum.StrEnum):
    ABOVE = "above"  # breached when the value is greater than the threshold (latency, errors)
    BELOW = "below"  # breached when the value is less than the threshold (pass rate, hit rate)


class NoData(enum.StrEnum):
    HOLD = "hold"  # blind: do not advance; counts toward the guard's no-data budget
    PASS = "pass"  # silence is fine (e.g. an error counter that has never been incremented)


class Response(enum.StrEnum):
    NOTIFY = "notify"  # tell people; change nothing
    ROLLBACK_STAGE = "rollback_stage"  # back to the previous stage's percentage and cohort
    ROLLBACK_ZERO = "rollback_zero"  # every rollout flag to 0%


# Signals a guard can name as `builtin`, served from the daemon's own measurements when no
# Prometheus is configured (controller/sources/builtin_signals.py says how each is computed).
BUILTIN_SIGNALS = {
    "p95_latency_seconds": "95th percentile retrieval latency over the guard's window (seconds)",
    "p99_latency_seconds": "99th percentile retrieval latency over the guard's window (seconds)",
    "error_ratio": "failed retrievals / retrievals over the window (0-1)",
    "cache_hit_ratio": "cache hits / (hits + misses) over the window (0-1)",
    "precision_at_10": "ground-truth validation's hybrid Precision@10 (0-1)",
    "recall_at_10": "ground-truth validation's hybrid Recall@10 (0-1)",
    "top3_accuracy_percent": "ground-truth questions answered in the hybrid top 3 (0-100)",
    "regression_pass_rate": "the regression suite's pass rate as last pushed to the admin API (0-100)",
}

DEFAULT_RESPONSE = {
    Severity.WARNING: Response.NOTIFY,
    Severity.CRITICAL: Response.ROLLBACK_STAGE,
    Severity.EMERGENCY: Response.ROLLBACK_ZERO,
}


@dataclass(frozen=True)
class Guard:
    name: str
    query: str | None  # PromQL with {{window}}; None when only a built-in signal serves
    builtin: str | None  # the built-in signal's name (used when no Prometheus is configured)
    direction: Direction
    thresholds: dict[Severity, float]
    window: timedelta
    sustain: timedelta
    no_data: NoData = NoData.HOLD
    responses: dict[Severity, Response] = field(default_factory=lambda: dict(DEFAULT_RESPONSE))
    unit: str = ""
    description: str = ""
    min_samples: int = 0  # built-in signals: fewer events in the window is no data

    def resolved_query(self) -> str | None:
        """The PromQL with `{{window}}` replaced by the guard's window, e.g. `5m`."""
        return self.query.replace("{{window}}", format_duration(self.window)) if self.query else None

    def severity_of(self, value: float) -> Severity | None:
        """The worst severity `value` breaches, or None when it passes."""
        worst = None
        for severity, threshold in self.thresholds.items():
            breached = value > threshold if self.direction is Direction.ABOVE else value < threshold
            if breached and (worst is None or severity > worst):
                worst = severity
        return worst

    def threshold_for(self, severity: Severity | None) -> float:
        """What a value is shown against: `severity`'s threshold, else the warning one, else the
        lowest the guard has (a guard may have no warning level)."""
        return self.thresholds.get(severity or Severity.WARNING, min(self.thresholds.values()))

    def checks_to_sustain(self, interval: timedelta) -> int:
        """Consecutive breaching evaluations that make a breach "sustained".

        A breach seen at t and still seen at t + sustain has lasted `sustain`: with a 5m
        interval, "for 5 minutes" is 2 consecutive evaluations (and the PromQL window
        makes each of them a 5-minute average). No sustain: the first breach counts.
        """
        return math.ceil(self.sustain / interval) + 1 if self.sustain else 1


@dataclass(frozen=True)
class Stage:
    index: int
    at: timedelta
    percentage: float
    agents: tuple[str, ...]
    name: str = ""

    def label(self) -> str:
        return self.name or f"stage {self.index} ({format_duration(self.at)}: {self.percentage:g}%)"


@dataclass(frozen=True)
class Checkpoint:
    at: timedelta
    name: str
    requires_approval: bool
    criteria: tuple[str, ...]  # guard names judged at their warning threshold
    max_rollbacks: int = 0
    max_manual_interventions: int | None = None  # None: not a criterion
    next_milestone: str = ""


@dataclass(frozen=True)
class Plan:
    name: str
    flags: tuple[str, ...]
    stages: tuple[Stage, ...]
    checkpoints: tuple[Checkpoint, ...]
    guards: tuple[Guard, ...]
    guard_interval: timedelta
    failure_limit: int  # consecutive failed guard checks (errors) before rolling back
    failure_response: Response = Response.ROLLBACK_ZERO
    start: datetime | None = None
    description: str = ""
    digest: str = ""  # sha256 of the file: the plan's identity in durable state

    def guard(self, name: str) -> Guard:
        return next(g for g in self.guards if g.name == name)

    @property
    def end(self) -> timedelta:
        """The offset of the plan's last event."""
        times = [s.at for s in self.stages] + [c.at for c in self.checkpoints]
        return max(times) if times else timedelta(0)


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """`"5m"`, `"4h"`, `"1h30m"`, `"90s"`; a bare number is hours (plans count in hours)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "5m" or "4h", got {value!r}')
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number of hours, got {value!r}")
        return timedelta(hours=value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'expected a duration like "5m" or "4h", got {value!r}')
    total, number = 0.0, ""
    for ch in value.strip():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in _UNITS and number:
            total += float(number) * _UNITS[ch]
            number = ""
        else:
            raise ValueError(f'cannot read duration {value!r}; write it like "5m", "4h" or "1h30m"')
    if number:
        raise ValueError(f"duration {value!r} needs a unit (s, m, h or d)")
    return timedelta(seconds=total)


def format_duration(delta: timedelta) -> str:
    """The shortest Prometheus-style form: 300 s → `5m`, 90 s → `90s`, 4 h → `4h`."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
