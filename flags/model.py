"""The flag model: frozen values in the seeds' `feature_flags.json` shape.

A flag file maps a flag name to `enabled`, `rollout_strategy`, `rollout_percentage`
and (for progressive flags) `progressive_config`, as the seeds write it. rolloutd adds
`constraints`, `stickiness`, `group_id`, `description` and `audit_id`; any other key
a flag carries is kept verbatim in `extra` and written back, so existing readers and
writers keep working.

Strategies:
- ``all``          on for every context that matches the constraints;
- ``percentage``   on for `rollout_percentage` % of contexts (sticky bucketing);
- ``progressive``  like percentage, at `progressive_config.current_percentage` when the
                   controller has set it, else ramping linearly from `initial_percentage`
                   at `start_date` to `end_percentage` at `end_date`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

KILL_SWITCH = "emergency_shutdown"
DEFAULT_STICKINESS = "targetingKey"


class Strategy(enum.StrEnum):
    ALL = "all"
    PERCENTAGE = "percentage"
    PROGRESSIVE = "progressive"


class Operator(enum.StrEnum):
    IN = "IN"
    NOT_IN = "NOT_IN"
    STR_EQ = "STR_EQ"
    STR_CONTAINS = "STR_CONTAINS"
    STR_STARTS_WITH = "STR_STARTS_WITH"
    STR_ENDS_WITH = "STR_ENDS_WITH"


@dataclass(frozen=True, slots=True)
class Constraint:
    """`context_name OPERATOR values`, e.g. ``agent IN [Builder, Deploy, QA]``."""

    context_name: str
    operator: Operator
    values: tuple[str, ...]
    case_insensitive: bool = False
    inverted: bool = False

    def __str__(self) -> str:
        neg = "NOT " if self.inverted else ""
        return f"{neg}{self.context_name} {self.operator} [{', '.join(self.values)}]"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "context_name": self.context_name,
            "operator": str(self.operator),
            "values": list(self.values),
        }
        if self.case_insensitive:
            out["case_insensitive"] = True
        if self.inverted:
            out["inverted"] = True
        return out


@dataclass(frozen=True, slots=True)
class ProgressiveConfig:
    initial_percentage: float
    end_percentage: float
    start_date: datetime
    end_date: datetime
    current_percentage: float | None = None

    def ramp(self, now: datetime) -> float:
        """The linear ramp's percentage at `now`, clamped to the configured dates."""
        span = (self.end_date - self.start_date).total_seconds()
        done = (now - self.start_date).total_seconds() / span
        done = min(1.0, max(0.0, done))
        return self.initial_percentage + (self.end_percentage - self.initial_percentage) * done

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "initial_percentage": self.initial_percentage,
            "end_percentage": self.end_percentage,
            "start_date": format_time(self.start_date),
            "end_date": format_time(self.end_date),
        }
        if self.current_percentage is not None:
            out["current_percentage"] = self.current_percentage
        return out


@dataclass(frozen=True, slots=True)
class Flag:
    name: str
    enabled: bool
    rollout_strategy: Strategy = Strategy.ALL
    rollout_percentage: float = 100.0
    progressive_config: ProgressiveConfig | None = None
    constraints: tuple[Constraint, ...] = ()
    stickiness: str = DEFAULT_STICKINESS
    group_id: str | None = None
    description: str = ""
    audit_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def bucket_group(self) -> str:
        """The hash group: `group_id`, defaulting to the flag name (as Unleash does)."""
        return self.group_id or self.name

    def percentage_at(self, now: datetime) -> float:
        """The share of contexts (0-100) this flag is rolled out to at `now`."""
        if self.rollout_strategy is Strategy.ALL:
            return 100.0
        if self.rollout_strategy is Strategy.PERCENTAGE or self.progressive_config is None:
            return self.rollout_percentage
        if self.progressive_config.current_percentage is not None:
            return self.progressive_config.current_percentage
        return self.progressive_config.ramp(now)

    def to_dict(self) -> dict[str, Any]:
        """The flag as written to flags.json: the seeds' keys first, then ours, then extras."""
        out: dict[str, Any] = {
            "enabled": self.enabled,
            "rollout_strategy": str(self.rollout_strategy),
            "rollout_percentage": self.rollout_percentage,
        }
        if self.progressive_config is not None:
            out["progressive_config"] = self.progressive_config.to_dict()
        if self.description:
            out["description"] = self.description
        if self.constraints:
            out["constraints"] = [c.to_dict() for c in self.constraints]
        if self.stickiness != DEFAULT_STICKINESS:
            out["stickiness"] = self.stickiness
        if self.group_id:
            out["group_id"] = self.group_id
        if self.audit_id:
            out["audit_id"] = self.audit_id
        out.update(self.extra)
        return out


def format_time(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, as the seeds write dates."""
    text = moment.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")
