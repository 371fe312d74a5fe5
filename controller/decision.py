"""A decision, as the journal keeps it: what it did, why, what caused it and who acted.

Every decision carries, as data, what caused it (`trigger`: a kind from a closed list and
a detail) and who acted (`actor`), so counting and rendering never parse its reason:

    trigger kind    detail                  decisions
    schedule        stage label, checkpoint stage_applied (fell due), checkpoint, completed
    guard           the guard               rollback (a sustained breach), warning
    failure_limit   the guard               rollback (failed checks past failure_limit)
    blindness       the blind guards        hold (not advancing while blind), resume (every guard
                                            reports again)
    checkpoint      the checkpoint          verdict, awaiting_approval, and its HOLD or NO-GO
    operator        the command             hold, resume, approve, promote, rollback, clear_emergency
    emergency       -                       emergency (SIGUSR1, the admin API, the kill switch)
    clock_jump      -                       hold (the wall clock jumped)

    actor           "rolloutd" for what rolloutd concludes by itself (and approvals the demo
                    and `replay --approve` give themselves); for commands and emergencies,
                    whoever asked: the admin API's `actor` ("alice@ops-1"), "signal:SIGUSR1"

The reason is the why alone; `Decision.said` puts the who in front for people to read
("operator: alice@ops-1: dashboards are red").
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from controller.plan import Severity
from controller.plan_clock import iso_z

ROLLOUTD = "rolloutd"  # the actor of every decision rolloutd takes by itself
OPERATOR = "operator"  # the actor of a command that names nobody


class Action(enum.StrEnum):
    """What a decision does; its value is what the journal, replay and the logs print."""

    STAGE_APPLIED = "stage_applied"
    ROLLBACK = "rollback"
    HOLD = "hold"
    RESUME = "resume"
    WARNING = "warning"
    CHECKPOINT = "checkpoint"
    VERDICT = "verdict"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    EMERGENCY = "emergency"
    EMERGENCY_CLEARED = "emergency_cleared"
    COMPLETED = "completed"

    @property
    def changes_flags(self) -> bool:
        return self in (Action.STAGE_APPLIED, Action.ROLLBACK, Action.EMERGENCY, Action.EMERGENCY_CLEARED)


class TriggerKind(enum.StrEnum):
    """What caused a decision (the table in this module's docstring)."""

    SCHEDULE = "schedule"
    GUARD = "guard"
    FAILURE_LIMIT = "failure_limit"
    BLINDNESS = "blindness"
    CHECKPOINT = "checkpoint"
    OPERATOR = "operator"
    EMERGENCY = "emergency"
    CLOCK_JUMP = "clock_jump"


@dataclass(frozen=True)
class Trigger:
    """What caused a decision: a kind, and which guard, checkpoint, stage or command."""

    kind: TriggerKind
    detail: str = ""
    legacy: bool = False  # derived from the reason of a journal row written before triggers were recorded

    @property
    def label(self) -> str:
        """The `trigger` label of rolloutd_rollout_rollbacks_total: the guard's name for a guard's
        breach, else the kind (failure_limit, checkpoint, operator)."""
        return self.detail if self.kind is TriggerKind.GUARD and self.detail else str(self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "detail": self.detail, **({"legacy": True} if self.legacy else {})}


@dataclass(frozen=True)
class Decision:
    """One journal entry; `action` is what replay and the journal print."""

    at: datetime
    action: Action
    stage: int
    percentage: float
    agents: tuple[str, ...]
    reason: str  # why, in words; who acted is `actor`, never a prefix here
    severity: Severity | None = None
    checkpoint: int | None = None
    guard: str | None = None
    recommendation: str | None = None  # verdict: GO, NO-GO or HOLD
    trigger: Trigger = Trigger(TriggerKind.SCHEDULE)  # decide() always sets it; the default is for tools
    actor: str = ROLLOUTD

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))  # a plain string is accepted, and checked

    @property
    def changes_flags(self) -> bool:
        return self.action.changes_flags

    @property
    def said(self) -> str:
        """The reason as people read it, led by whoever acted when it was not rolloutd alone."""
        if self.trigger.legacy:
            return self.reason  # rows from before `actor` carry the who in their reason already
        return said(self.actor, self.reason, self.trigger.kind is TriggerKind.OPERATOR)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": iso_z(self.at),
            "action": str(self.action),
            "stage": self.stage,
            "percentage": self.percentage,
            "agents": list(self.agents),
            "reason": self.reason,
            "severity": str(self.severity) if self.severity else None,
            "checkpoint": self.checkpoint,
            "guard": self.guard,
            "recommendation": self.recommendation,
            "trigger": self.trigger.to_dict(),
            "actor": self.actor,
        }


def entry_said(entry: Mapping[str, Any]) -> str:
    """`Decision.said` for a journal entry as `StateDB.journal` returns it."""
    trigger = entry.get("trigger") or {}
    if trigger.get("legacy"):
        return str(entry.get("reason") or "")
    return said(
        str(entry.get("actor") or ROLLOUTD), str(entry.get("reason") or ""), trigger.get("kind") == TriggerKind.OPERATOR
    )


def said(actor: str, reason: str, by_operator: bool) -> str:
    """`reason` led by who acted: "operator: alice: why" for a command, "signal:SIGUSR1: why" for
    a signal, the reason alone for rolloutd (an operator who gave no name is just "operator")."""
    who = "" if actor == ROLLOUTD else f"{OPERATOR}: {actor}" if by_operator and actor != OPERATOR else actor
    return f"{who}: {reason}" if who and reason else who or reason
