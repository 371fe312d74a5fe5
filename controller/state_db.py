"""Durable controller state and the decision journal, in SQLite under `state_dir`.

    state_dir/controller.db   WAL, synchronous=FULL

Every decision that changes flags is written in three steps:

    1. intent   one transaction: the journal rows (status 'intent') and the new state
    2. apply    the flags are written (the flag store fsyncs them)
    3. commit   the journal rows are marked 'done'

A crash before 1 loses nothing that happened; a crash between 1 and 3 leaves intents
that `pending()` returns on the next start, and re-applying them is idempotent (a
decision sets flags *to* a percentage, never *by* one). So a restart converges to the
flags and phase of an uninterrupted run, and no stage appears twice in the journal.

Guard history: every round's observations (plan time, guard, outcome, value, severity)
go to `observations`, which keeps only the newest `keep_observations` rows. The service
stages a round's observations (`stage_observations`) before committing the round, and
`record` writes them in the round's own transaction with one executemany, so a guard
round costs no extra fsync. Losing a round's observations in a crash is acceptable;
they never delay or reorder a decision.

Opening never starts over silently: only a missing controller.db begins a new rollout.
A file that exists but cannot be read — empty, truncated, not SQLite, without our tables
(state_file.py checks those), or whose rows are not ours — raises `StateFileError`
naming the file, the problem and the remedy, before anything is written.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from controller.decide import Phase, RolloutState
from controller.decision import OPERATOR, ROLLOUTD, Action, Decision, Trigger, TriggerKind
from controller.errors import StateFileError
from controller.guards import GuardCounters, Observation, Outcome
from controller.plan import Severity
from controller.plan_clock import iso_z
from controller.state_file import open_state_file

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    plan        TEXT NOT NULL,
    plan_digest TEXT NOT NULL,
    state       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    action      TEXT NOT NULL,
    stage       INTEGER NOT NULL,
    percentage  REAL NOT NULL,
    reason      TEXT NOT NULL,
    decision    TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('intent', 'done'))
);
CREATE INDEX IF NOT EXISTS journal_pending ON journal (status) WHERE status = 'intent';
CREATE TABLE IF NOT EXISTS observations (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    guard       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    value       REAL,
    severity    TEXT,
    detail      TEXT
);
"""
KEEP_OBSERVATIONS = 50_000  # ~3.3 MB; at a 5m guard interval and 5 guards, about 35 days of rounds
DETAIL_CHARS = 200  # an error's or no-data's detail, cut to this


class StateDB:
    FILE = "controller.db"

    def __init__(self, state_dir: Path, durable: bool = True, keep_observations: int = KEEP_OBSERVATIONS) -> None:
        """`durable=False` (replay's scratch state only): no fsync per transaction."""
        self.path = Path(state_dir) / self.FILE
        self.keep_observations = keep_observations
        self._staged: list[Observation] = []
        self._reader: sqlite3.Connection | None = None  # history reads, off the event loop (observations())
        self._reader_lock = threading.Lock()
        self._db = open_state_file(self.path, SCHEMA, durable=durable)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._db.close()

    def load(self) -> RolloutState | None:
        """The rollout's state; None only for a new file. Raises `StateFileError` when the
        state row cannot be read, or is missing from a file that has a journal."""
        row = self._db.execute("SELECT state FROM rollout WHERE id = 1").fetchone()
        if row is not None:
            return self._parsed(row[0], "the rollout state (table rollout, column state)", state_from_json)
        if entries := self._db.execute("SELECT COUNT(*) FROM journal").fetchone()[0]:
            raise StateFileError(
                self.path, f"has {entries} journal entries but no rollout state (table rollout is empty)"
            )
        return None

    def record(self, state: RolloutState, decisions: tuple[Decision, ...], now: datetime) -> list[int]:
        """Step 1: the new state and the decisions as intents, in one transaction."""
        ids = []
        staged, self._staged = self._staged, []
        with _transaction(self._db):
            self._write_observations(staged)
            for d in decisions:
                cursor = self._db.execute(
                    "INSERT INTO journal (at, action, stage, percentage, reason, decision, status) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        d.at.isoformat(),
                        str(d.action),
                        d.stage,
                        d.percentage,
                        d.reason,
                        json.dumps(d.to_dict()),
                        "intent" if d.changes_flags else "done",
                    ),
                )
                ids.append(int(cursor.lastrowid or 0))  # always set after an INSERT
            self._db.execute(
                "INSERT INTO rollout (id, plan, plan_digest, state, updated_at) VALUES (1, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET plan = excluded.plan, plan_digest = excluded.plan_digest, "
                "state = excluded.state, updated_at = excluded.updated_at",
                (state.plan, state.plan_digest, json.dumps(state_to_json(state)), now.isoformat()),
            )
        return ids

    def complete(self, ids: list[int]) -> None:
        """Step 3: the intents' flags are applied."""
        if ids:
            marks = ",".join("?" * len(ids))
            self._db.execute(f"UPDATE journal SET status = 'done' WHERE seq IN ({marks})", ids)

    def withdraw(self, ids: list[int], state: RolloutState, now: datetime) -> None:
        """Undo step 1 when step 2 failed before any flag changed (a full disk refused flags.json):
        drop the intents and put `state` back, so a refused command leaves nothing behind."""
        marks = ",".join("?" * len(ids))
        with _transaction(self._db):
            self._db.execute(f"DELETE FROM journal WHERE seq IN ({marks})", ids)
            self._db.execute(
                "UPDATE rollout SET state = ?, updated_at = ? WHERE id = 1",
                (json.dumps(state_to_json(state)), now.isoformat()),
            )

    def pending(self) -> list[tuple[int, Decision]]:
        """Intents whose flags may not have been applied (a crash between steps 1 and 3)."""
        rows = self._db.execute("SELECT seq, decision FROM journal WHERE status = 'intent' ORDER BY seq").fetchall()
        return [(seq, self._parsed(raw, f"journal entry {seq}", decision_from_json)) for seq, raw in rows]

    def journal(self, limit: int = 100, since_seq: int = 0, before_seq: int = 0) -> list[dict[str, Any]]:
        """Oldest first: the newest `limit` decisions, or with `since_seq` the `limit` after it
        (so a follower paging with the last seq it saw never misses one), or with `before_seq`
        the newest `limit` before it (so a reader can page back to the first decision)."""
        if since_seq:
            rows = self._db.execute(
                "SELECT seq, decision, status FROM journal WHERE seq > ? ORDER BY seq LIMIT ?", (since_seq, limit)
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT seq, decision, status FROM journal WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                (before_seq or 2**63 - 1, limit),
            ).fetchall()[::-1]
        return [
            {"seq": seq, **self._parsed(raw, f"journal entry {seq}", with_trigger), "status": status}
            for seq, raw, status in rows
        ]

    def _parsed(self, raw: Any, what: str, build: Callable[[dict[str, Any]], T]) -> T:
        """`build` over the JSON object in a row; anything else there is damage, said as such."""
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise TypeError(f"a JSON {type(value).__name__}, not an object")
            return build(value)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise StateFileError(self.path, f"{what} is not a rolloutd record: {_why(exc)}") from None

    def stage_observations(self, observations: Iterable[Observation]) -> None:
        """Have the next `record` write these observations in its transaction."""
        self._staged = [*self._staged, *observations]

    def record_observations(self, observations: Iterable[Observation]) -> None:
        """Write observations in a transaction of their own (tests, tools)."""
        with _transaction(self._db):
            self._write_observations(list(observations))

    def _write_observations(self, observations: list[Observation]) -> None:
        if not observations:
            return
        self._db.executemany(
            "INSERT INTO observations (at, guard, outcome, value, severity, detail) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    iso_z(o.at),
                    o.guard,
                    str(o.outcome),
                    o.value,
                    str(o.severity) if o.severity else None,
                    o.detail[:DETAIL_CHARS] if o.detail and o.outcome is not Outcome.PASS else None,
                )
                for o in observations
            ],
        )
        # Seqs only grow, so the newest rows are a seq range: one indexed delete keeps the table bounded.
        self._db.execute("DELETE FROM observations WHERE seq <= last_insert_rowid() - ?", (self.keep_observations,))

    def observations(self, since_seq: int = 0, limit: int = 1000, guard: str | None = None) -> list[dict[str, Any]]:
        """Oldest first: the `limit` observations after `since_seq` (0: from the oldest kept),
        of one guard or all; page on with the last seq seen. Safe from any thread: it reads on a
        connection of its own, which sees committed rounds only (WAL lets it run beside a write)."""
        where, args = ("seq > ? AND guard = ?", (since_seq, guard)) if guard is not None else ("seq > ?", (since_seq,))
        with self._reader_lock:
            if self._reader is None:
                self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            rows = self._reader.execute(
                f"SELECT seq, at, guard, outcome, value, severity, detail FROM observations "
                f"WHERE {where} ORDER BY seq LIMIT ?",
                (*args, limit),
            ).fetchall()
        keys = ("seq", "at", "guard", "outcome", "value", "severity", "detail")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def count(self, action: str) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM journal WHERE action = ?", (action,)).fetchone()[0])


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is missing or unknown"
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc.msg} at character {exc.pos})"
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply"
    return str(exc) or type(exc).__name__


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def state_to_json(state: RolloutState) -> dict[str, Any]:
    raw = asdict(state)
    raw["phase"] = str(state.phase)
    raw["started_at"] = state.started_at.isoformat()
    raw["guards"] = {name: counters.to_dict() for name, counters in state.guards.items()}
    for key in ("last_clean_at", "last_evaluation_at"):
        value = getattr(state, key)
        raw[key] = value.isoformat() if value else None
    return raw


def state_from_json(raw: dict[str, Any]) -> RolloutState:
    def moment(key: str) -> datetime | None:
        return datetime.fromisoformat(raw[key]) if raw.get(key) else None

    return RolloutState(
        plan=raw["plan"],
        plan_digest=raw["plan_digest"],
        started_at=datetime.fromisoformat(raw["started_at"]),
        phase=Phase(raw["phase"]),
        stage=raw["stage"],
        percentage=raw["percentage"],
        agents=tuple(raw["agents"]),
        hold_reason=raw["hold_reason"],
        held_by_operator=raw["held_by_operator"],
        checkpoints_done=tuple(raw["checkpoints_done"]),
        approved=tuple(raw["approved"]),
        verdicts=tuple(raw.get("verdicts", raw["checkpoints_done"])),
        guards={name: GuardCounters.from_dict(c) for name, c in raw["guards"].items()},
        warned=tuple(raw["warned"]),
        rollbacks=raw["rollbacks"],
        manual_interventions=raw["manual_interventions"],
        last_clean_at=moment("last_clean_at"),
        last_evaluation_at=moment("last_evaluation_at"),
    )


def decision_from_json(raw: dict[str, Any]) -> Decision:
    raw = with_trigger(raw)
    return Decision(
        at=datetime.fromisoformat(raw["at"].replace("Z", "+00:00")),
        action=Action(raw["action"]),
        stage=raw["stage"],
        percentage=raw["percentage"],
        agents=tuple(raw["agents"]),
        reason=raw["reason"],
        severity=Severity[raw["severity"].upper()] if raw.get("severity") else None,
        checkpoint=raw.get("checkpoint"),
        guard=raw.get("guard"),
        recommendation=raw.get("recommendation"),
        trigger=Trigger(
            TriggerKind(raw["trigger"]["kind"]),
            str(raw["trigger"]["detail"]),
            bool(raw["trigger"].get("legacy", False)),
        ),
        actor=str(raw["actor"]),
    )


# -- journal rows from before decisions carried `trigger` and `actor` ------------------------------
# The one place that reads a decision's prose: rows written by rolloutd before the trigger and
# the actor were recorded get both, derived best-effort from their action, guard and reason (as
# the old code wrote them: "operator: WHO: WHY", "WHO: WHY" for an emergency), and marked
# `"legacy": true` in the trigger. Rows that carry a trigger are returned as they are.


def with_trigger(raw: dict[str, Any]) -> dict[str, Any]:
    """The journal row, with `trigger` and `actor` (derived and marked legacy for an old row)."""
    if "trigger" in raw:
        return raw
    trigger, actor = _legacy_trigger(raw)
    return {**raw, "trigger": trigger.to_dict(), "actor": actor}


def _legacy_trigger(raw: dict[str, Any]) -> tuple[Trigger, str]:
    action, reason, guard = raw["action"], str(raw.get("reason") or ""), raw.get("guard") or ""
    kind, detail = _LEGACY_KINDS.get(action, (TriggerKind.SCHEDULE, ""))
    if action == "warning":
        detail = guard
    elif action == "rollback":
        kind, detail = (
            (TriggerKind.FAILURE_LIMIT, guard)
            if "failure_limit" in reason
            else (TriggerKind.GUARD, guard)
            if guard
            else (TriggerKind.CHECKPOINT, "")
            if reason.startswith("checkpoint")
            else (TriggerKind.OPERATOR, "rollback")
        )
    elif action in ("hold", "resume"):
        kind, detail = (
            (TriggerKind.OPERATOR, action)
            if reason.startswith("operator:")
            else (TriggerKind.CHECKPOINT, "")
            if reason.startswith("checkpoint")
            else (TriggerKind.BLINDNESS, "")
            if "blind" in reason or action == "resume"
            else (TriggerKind.CLOCK_JUMP, "")
        )
    elif action == "stage_applied" and "by operator" in reason:
        kind, detail = TriggerKind.OPERATOR, "promote"
    return Trigger(kind, detail, legacy=True), _legacy_actor(kind, reason)


_LEGACY_KINDS = {
    "warning": (TriggerKind.GUARD, ""),
    "checkpoint": (TriggerKind.SCHEDULE, ""),
    "verdict": (TriggerKind.CHECKPOINT, ""),
    "awaiting_approval": (TriggerKind.CHECKPOINT, ""),
    "approved": (TriggerKind.OPERATOR, "approve"),
    "emergency": (TriggerKind.EMERGENCY, ""),
    "emergency_cleared": (TriggerKind.OPERATOR, "clear_emergency"),
}


def _legacy_actor(kind: TriggerKind, reason: str) -> str:
    """Who the old reason names: "operator: WHO: WHY" (a command), "WHO: WHY" (an emergency)."""
    if kind is TriggerKind.OPERATOR:
        parts = reason.split(": ", 2)
        return parts[1] if len(parts) == 3 and parts[0] == OPERATOR else OPERATOR
    if kind is TriggerKind.EMERGENCY and ": " in reason:
        return reason.split(": ", 1)[0]
    return ROLLOUTD
