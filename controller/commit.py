"""Carrying decisions out durably: intent → apply flags → commit (see state_db.py).

Synchronous on purpose: SQLite and the flag store block on fsync, so the service
calls these from a worker thread, one at a time.

A disk that refuses a write (full, read-only, failing) is one error whichever file it
hit: SQLite's errors become the flag store's `StorageError`, naming controller.db, so an
operator's command and a guard round report one clear cause. When the intent is
recorded but the flags cannot be written before any of them changed, the intent is
withdrawn again: a refused command leaves nothing behind. (Should the withdrawal fail
too, the intent stays, as after a crash, and `recover` finishes it on the next start.)
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from controller.decide import RolloutState, Transition
from controller.decision import Action, Decision
from controller.flag_effects import flag_changes
from controller.plan import Plan
from controller.state_db import StateDB
from flags.errors import StorageError, disk_nearly_full
from flags.store import FlagStore


def begin(db: StateDB, state: RolloutState, now: datetime) -> None:
    """Record a new rollout's first state."""
    with storage(db):
        db.record(state, (), now)


def commit(
    db: StateDB,
    store: FlagStore,
    plan: Plan,
    transition: Transition,
    now: datetime,
    previous: RolloutState | None = None,
) -> None:
    """Persist the transition, apply its flag changes, then mark them applied. `previous`:
    the state to put back should the flags be refused before any changed."""
    with storage(db):
        ids = db.record(transition.state, transition.decisions, now)
    applied = 0
    try:
        for decision in transition.decisions:
            apply(store, plan, decision)
            applied += 1
    except StorageError:
        if previous is not None and not any(d.changes_flags for d in transition.decisions[:applied]):
            _withdraw(db, ids, previous, now)
        raise
    with storage(db):
        db.complete([i for i, d in zip(ids, transition.decisions, strict=False) if d.changes_flags])


def record_applied(db: StateDB, store: FlagStore, plan: Plan, transition: Transition, now: datetime) -> None:
    """Journal a transition whose flags were written first (the emergency stop). Intents
    still pending are closed with it: the emergency's flags supersede whatever they set."""
    with storage(db):
        superseded = [seq for seq, _ in db.pending()]
        db.complete(superseded + db.record(transition.state, transition.decisions, now))


def recover(db: StateDB, store: FlagStore, plan: Plan) -> list[Decision]:
    """Re-apply intents a crash left unapplied (idempotent); return them."""
    done = []
    with storage(db):
        pending = db.pending()
    for seq, decision in pending:
        apply(store, plan, decision)
        with storage(db):
            db.complete([seq])
        done.append(decision)
    return done


def apply(store: FlagStore, plan: Plan, decision: Decision) -> None:
    changes = flag_changes(plan, decision, store.snapshot.flags)
    if changes:
        store.apply(
            changes,
            actor=f"rolloutd plan {plan.name}",
            reason=f"{decision.action}: {decision.said}",
            force=decision.action is Action.EMERGENCY,
        )


@contextmanager
def storage(db: StateDB) -> Iterator[None]:
    """SQLite's disk errors (and the OS's) as `StorageError` naming controller.db."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        code = _disk_errno(exc, db.path.parent)
        if code is None:
            raise
        raise StorageError(db.path.parent, f"writing {db.path.name} ({exc})", code) from exc
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(db.path.parent, f"writing {db.path.name}", exc) from exc


def _disk_errno(exc: sqlite3.OperationalError, directory: Path) -> int | None:
    """The errno behind a SQLite error, when it is the disk's; None for any other error."""
    primary = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if primary == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return errno.ENOSPC
    if primary == sqlite3.SQLITE_READONLY:
        return errno.EROFS
    if primary == sqlite3.SQLITE_IOERR or "disk I/O error" in str(exc):
        return errno.ENOSPC if disk_nearly_full(directory) else errno.EIO
    return None


def _withdraw(db: StateDB, ids: list[int], previous: RolloutState, now: datetime) -> None:
    try:
        with storage(db):
            db.withdraw(ids, previous, now)
    except StorageError:
        pass  # the intent stays, as after a crash: recover() applies it on the next start
