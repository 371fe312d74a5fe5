"""Guard observations and their counters: what one evaluation saw, and what it adds up to.

An observation is exactly one of

    PASS               the value is inside every threshold
    BREACH(severity)   the value is past the worst threshold it crosses
    NO_DATA            the query returned nothing usable (empty vector, NaN, +/-Inf)
    ERROR              the provider failed (timeout, non-2xx, unreachable, garbage)

Each outcome has its own budget, kept in `GuardCounters`: a breach must last
`checks_to_sustain` consecutive evaluations at a severity before it acts; NO_DATA (when
the guard says silence is blindness) and ERROR hold the rollout, and only roll it back
after `failure_limit` consecutive evaluations. All functions here are pure.

"Consecutive evaluations" means regular rounds, one per guard interval. The extra
rounds run when a stage or checkpoint falls due between two of them are observations
too (the status shows them, blindness holds on them), but they never lengthen a run:
otherwise every stage that fell due during an outage would shorten the failure budget
by one interval. They may end one: a clean extra round is evidence the outage is over.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from controller.plan import Guard, NoData, Severity


class Outcome(enum.StrEnum):
    PASS = "pass"
    BREACH = "breach"
    NO_DATA = "no_data"
    ERROR = "error"


@dataclass(frozen=True)
class Observation:
    guard: str
    outcome: Outcome
    at: datetime
    value: float | None = None
    severity: Severity | None = None
    query: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "guard": self.guard,
            "outcome": str(self.outcome),
            "at": self.at.isoformat(),
            "value": self.value,
            "severity": str(self.severity) if self.severity else None,
            "query": self.query,
            "detail": self.detail,
        }


def assess(guard: Guard, value: float | None, at: datetime, error: str | None = None) -> Observation:
    """Turn what the provider returned into an observation (`error` set: the provider failed)."""
    query = guard.resolved_query()
    if error is not None:
        return Observation(guard.name, Outcome.ERROR, at, query=query, detail=error)
    if value is None or math.isnan(value) or math.isinf(value):
        detail = "no samples" if value is None else f"value is {value}"
        return Observation(guard.name, Outcome.NO_DATA, at, value=None, query=query, detail=detail)
    severity = guard.severity_of(value)
    if severity is None:
        return Observation(guard.name, Outcome.PASS, at, value=value, query=query)
    threshold = guard.thresholds[severity]
    sign = ">" if guard.direction == "above" else "<"
    detail = f"{guard.name} {value:.6g} {sign} {severity} {threshold:g}"
    return Observation(guard.name, Outcome.BREACH, at, value=value, severity=severity, query=query, detail=detail)


@dataclass(frozen=True)
class GuardCounters:
    """Consecutive-evaluation counts for one guard (durable: they survive restarts)."""

    streaks: dict[Severity, int] = field(default_factory=dict)  # consecutive breaches at >= severity
    no_data: int = 0
    errors: int = 0
    last: Observation | None = None

    def observe(self, obs: Observation, regular: bool = True) -> GuardCounters:
        """Count `obs`; from an extra round (`regular=False`) it can end a run, never lengthen one."""
        streaks = {
            s: (self.streaks.get(s, 0) + 1 if obs.severity is not None and obs.severity >= s else 0) for s in Severity
        }
        no_data = self.no_data + 1 if obs.outcome is Outcome.NO_DATA else 0
        errors = self.errors + 1 if obs.outcome is Outcome.ERROR else 0
        if not regular:
            streaks = {s: min(n, self.streaks.get(s, 0)) for s, n in streaks.items()}
            no_data, errors = min(no_data, self.no_data), min(errors, self.errors)
        return replace(self, streaks=streaks, no_data=no_data, errors=errors, last=obs)

    @property
    def breaches(self) -> int:
        """Consecutive breaching evaluations, at any severity."""
        return max(self.streaks.values(), default=0)

    def sustained(self, guard: Guard, interval: timedelta) -> Severity | None:
        """The worst severity breached for long enough to act on, if any."""
        needed = guard.checks_to_sustain(interval)
        hits = [s for s in Severity if self.streaks.get(s, 0) >= needed and s in guard.thresholds]
        return max(hits) if hits else None

    def blind(self, guard: Guard) -> bool:
        """True when the last evaluation could not tell whether things are fine."""
        if self.last is None:
            return True
        if self.last.outcome is Outcome.ERROR:
            return True
        return self.last.outcome is Outcome.NO_DATA and guard.no_data is NoData.HOLD

    def failures(self, guard: Guard) -> int:
        """Consecutive failed checks: errors, and no-data when silence means blindness."""
        return max(self.errors, self.no_data if guard.no_data is NoData.HOLD else 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "streaks": {str(s): n for s, n in self.streaks.items()},
            "no_data": self.no_data,
            "errors": self.errors,
            "last": self.last.to_dict() if self.last else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GuardCounters:
        last = raw.get("last")
        observation = None
        if last:
            observation = Observation(
                guard=last["guard"],
                outcome=Outcome(last["outcome"]),
                at=datetime.fromisoformat(last["at"]),
                value=last.get("value"),
                severity=Severity[last["severity"].upper()] if last.get("severity") else None,
                query=last.get("query"),
                detail=last.get("detail", ""),
            )
        return cls(
            streaks={Severity[k.upper()]: v for k, v in raw.get("streaks", {}).items()},
            no_data=raw.get("no_data", 0),
            errors=raw.get("errors", 0),
            last=observation,
        )
