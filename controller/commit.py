"""Carrying decisions out durably: intent → apply flags → commit (see state_db.py).

Synchronous on purpose: SQLite and the flag store block on fsync, so the service
calls these from a worker thread, one at a time.
"""

from __future__ import annotations

from datetime import datetime

from controller.decide import Decision, Transition
from controller.flag_effects import flag_changes
from controller.plan import Plan
from controller.state_db import StateDB
from flags.store import FlagStore


def commit(db: StateDB, store: FlagStore, plan: Plan, transition: Transition, now: datetime) -> None:
    """Persist the transition, apply its flag changes, then mark them applied."""
    ids = db.record(transition.state, transition.decisions, now)
    for decision in transition.decisions:
        apply(store, plan, decision)
    db.complete([i for i, d in zip(ids, transition.decisions) if d.changes_flags])


def record_applied(db: StateDB, store: FlagStore, plan: Plan, transition: Transition, now: datetime) -> None:
    """Journal a transition whose flags were written first (the emergency stop)."""
    db.complete(db.record(transition.state, transition.decisions, now))


def recover(db: StateDB, store: FlagStore, plan: Plan) -> list[Decision]:
    """Re-apply intents a crash left unapplied (idempotent); return them."""
    done = []
    for seq, decision in db.pending():
        apply(store, plan, decision)
        db.complete([seq])
        done.append(decision)
    return done


def apply(store: FlagStore, plan: Plan, decision: Decision) -> None:
    changes = flag_changes(plan, decision, store.snapshot.flags)
    if changes:
        store.apply(changes, actor=f"rolloutd plan {plan.name}", reason=f"{decision.action}: {decision.reason}",
                    force=decision.action == "emergency")
