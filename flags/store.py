"""The durable flag store: `state_dir/flags.json`, its backups and its audit log.

Files under `state_dir`:

    flags.json        the flags, in the seeds' shape (replaced atomically, never edited in place)
    flags.lock        flock()ed for the store's whole life: one process owns a state_dir
    backups/          flags.<UTC time>.json — the previous file, hard-linked on every change
    audit.jsonl       append-only: time, id, actor, reason, flag, before, after
    emergency.state   the kill switch, preallocated and rewritten in place (flags/emergency.py)

A change is: validate → audit records (fsync) → link the current file into backups/
→ write the new file atomically → prune old backups. An invalid or corrupt flags
file is never overwritten: opening it raises `FlagsFileError` (file, line, problem),
and only `restore()` may replace it. A write that fails (a full disk: ENOSPC, a
read-only or failing one) changes nothing and raises `StorageError` naming the cause.

The emergency wins over a full disk: `kill()` turns the kill switch on in memory at
once, before any disk I/O, and `persist_kill()` writes emergency.state in place (no new
blocks needed), then flags.json. When flags.json cannot take it, the kill switch stays
in force in memory ("held"), is logged at crit, and a thread (flags/retry.py) writes it
as soon as the disk allows; a restart meanwhile finds it in emergency.state. What is
served is flags.json with the held flags on top; the kill switch is on when either
flags.json or emergency.state says so.

The store is synchronous (it is also used by `rolloutctl flags restore` when no
daemon runs, and by the crash tests); the daemon calls it from a worker thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from flags.atomic import atomic_write, remove_stale_temps
from flags.audit import AuditLog
from flags.backups import BackupInfo, Backups, backup_order
from flags.clock import utcnow
from flags.emergency import FILE as EMERGENCY_FILE
from flags.emergency import EmergencySwitch, Marker
from flags.errors import (
    BackupNotFoundError,
    FlagsError,
    FlagsFileError,
    FlagValidationError,
    StorageError,
    StoreLockedError,
    UnknownFlagError,
)
from flags.evaluate import FlagSet
from flags.model import KILL_SWITCH, Flag, Strategy
from flags.parse import flag_from_dict, parse_flags_text
from flags.retry import Retrier

log = structlog.get_logger("rolloutd.flags")
Clock = Callable[[], datetime]
__all__ = ["BackupInfo", "FlagStore", "render", "with_percentage"]


class FlagStore:
    """Owns one state directory's flags file; every write is atomic, audited and backed up."""

    FILE = "flags.json"

    def __init__(self, state_dir: Path, *, clock: Clock = utcnow, keep_backups: int = 50) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / self.FILE
        self.backup_dir = self.state_dir / "backups"
        self._backups = Backups(self.backup_dir, keep_backups)
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self._clock = clock
        self._write_lock = threading.Lock()  # one disk write at a time
        self._memory_lock = threading.Lock()  # what is served; never held across disk I/O
        self._lock_fd: int | None = None
        self.snapshot = FlagSet({})
        self.load_error: FlagsFileError | None = None
        self.emergency = EmergencySwitch(self.state_dir, clock)
        self._durable: dict[str, Flag] = {}  # what flags.json holds
        self._held: dict[str, Flag] = {}  # in force, not yet in flags.json (the emergency's flags)
        self._held_by = ("rolloutd", "the emergency")
        self.held_error: StorageError | None = None  # why the held flags are not written yet
        self._retry = Retrier(self._write_held, name="rolloutd-flags-retry")

    @classmethod
    def open(cls, state_dir: Path, *, strict: bool = True, **kwargs: Any) -> FlagStore:
        """Lock `state_dir` and load its flags (creating the file on first use).

        With `strict=False` an invalid flags file is kept in `load_error` instead of
        raising, so that `restore()` can still replace it.
        """
        store = cls(Path(state_dir), **kwargs)
        store._acquire_lock()
        try:
            store._load(strict)
            store._durable = dict(store.snapshot.flags)
            store._open_emergency()
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self._retry.stop()
        if self._held:
            log.critical(
                "emergency.not_durable_at_exit",
                held=sorted(self._held),
                error=str(self.held_error),
                emergency_file="engaged" if self.emergency.engaged else "not written",
                note="a restart finds the kill switch in emergency.state"
                if self.emergency.engaged
                else "the held flags are lost with this process",
            )
        self.emergency.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> FlagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading --------------------------------------------------------------

    def get(self, name: str) -> Flag:
        flag = self.snapshot.flags.get(name)
        if flag is None:
            raise UnknownFlagError(name, list(self.snapshot.flags))
        return flag

    def reload(self) -> FlagSet:
        """Re-read flags.json (after an edit by hand).

        On error the current flags stay in force, and writes are refused until the file
        is fixed or restored, so the operator's broken edit is not silently replaced.
        """
        with self._write_lock:
            try:
                flags = self._read_file()
            except FlagsFileError as exc:
                self.load_error = exc
                raise
            self.load_error = None
            with self._memory_lock:
                self._durable = flags
                kept = self._publish()
            if kept:
                log.warning(
                    "flags.kill_switch_kept",
                    file=str(self.path),
                    emergency_file=str(self.emergency.path),
                    remedy="clear the emergency with `rolloutctl resume --clear-emergency` (or `rolloutctl "
                    "flags set emergency_shutdown --enabled false`), not by editing flags.json",
                )
                self._retry.start()
            return self.snapshot

    def backups(self) -> list[BackupInfo]:
        """Every backup, oldest first, with whether it can be restored."""
        out = []
        for path in self._backup_paths():
            try:
                count, problem = len(parse_flags_text(path.read_text(), path)), None
            except (FlagsFileError, OSError, UnicodeDecodeError) as exc:
                count, problem = None, str(exc)
            out.append(BackupInfo(path.name, path.stat().st_size, count, problem))
        return out

    # -- writing --------------------------------------------------------------

    def set(
        self, name: str, *, enabled: bool | None = None, percentage: float | None = None, actor: str, reason: str
    ) -> FlagSet:
        """Change a flag's `enabled` and/or rollout percentage (the seeds' way: both fields)."""
        self._refuse_if_invalid()
        flag = self.get(name)
        if enabled is not None:
            flag = replace(flag, enabled=enabled)
        if percentage is not None:
            flag = with_percentage(flag, percentage)
        return self.apply({name: flag}, actor=actor, reason=reason)

    def apply(self, changes: Mapping[str, Flag], *, actor: str, reason: str, force: bool = False) -> FlagSet:
        """Create or replace whole flags; unchanged flags are not rewritten or audited.

        `force` writes even over an invalid flags file (which is kept as a backup):
        only the emergency stop uses it, because turning everything off must not
        wait for someone to fix a typo.
        """
        with self._write_lock:
            if not force:
                self._refuse_if_invalid()
            self._ensure_open()
            for name, flag in changes.items():
                if flag.name != name:
                    raise FlagValidationError(name, "name", f"the flag stored under {name!r} is named {flag.name!r}")
                flag_from_dict(name, flag.to_dict())  # the same rules as the file, before anything is written
            self._flush_held()  # an emergency held in memory goes first, under its own actor
            changed = {n: f for n, f in changes.items() if not _same_content(self._durable.get(n), f)}
            if not changed:
                return self.snapshot
            return self._commit({**self._durable, **changed}, changed, actor, reason, event="change")

    def restore(self, backup_name: str, *, actor: str, reason: str) -> FlagSet:
        """Replace flags.json with a backup (the replaced file is itself backed up first)."""
        path = self.backup_dir / backup_name
        if "/" in backup_name or not path.is_file():
            raise BackupNotFoundError(backup_name, self.backup_dir)
        restored = parse_flags_text(path.read_text(), path)
        with self._write_lock:
            self._ensure_open()
            current = {} if self.load_error else dict(self._durable)
            gone = {n: None for n in current if n not in restored}
            with self._memory_lock:
                held = dict(self._held)  # replaced too: a restore is the whole file, as the backup has it
            return self._commit(
                restored, {**restored, **gone}, actor, f"{reason} (from {backup_name})", event="restore", held=held
            )

    # -- the emergency ----------------------------------------------------------------------

    def kill(self, changes: Mapping[str, Flag] | None = None) -> FlagSet:
        """Turn the kill switch on, and hold `changes` (the rollout's flags off), in memory at once:
        no disk I/O and no waiting for a write in progress, so OFREP and retrieval see it from
        the next request. `persist_kill()` makes it durable."""
        with self._memory_lock:
            served = {**self._durable, **self._held}
            kill = served.get(KILL_SWITCH) or _new_kill_switch()
            self._held = {**self._held, **(changes or {}), KILL_SWITCH: replace(kill, enabled=True)}
            self._publish()
        return self.snapshot

    def persist_kill(self, *, actor: str, reason: str) -> bool:
        """Make what `kill()` turned on durable: emergency.state in place first, then flags.json.

        Never raises for a disk error: the kill switch stays in force in memory, the failure
        is logged at crit, and a thread retries until flags.json has it. True when it has now.
        """
        with self._memory_lock:
            self._held_by = (actor, reason)
        self.emergency.engage(actor, reason)
        if self._write_held():
            return True
        self._retry.start()
        return False

    @property
    def durable(self) -> bool:
        """Whether flags.json holds everything that is served."""
        return not self._held

    def retry_now(self) -> None:
        """Try the held write again now rather than at the retry's next deadline (space was freed)."""
        self._retry.wake()

    # -- internals --------------------------------------------------------------

    def _commit(
        self,
        new: Mapping[str, Flag],
        changed: Mapping[str, Flag | None],
        actor: str,
        reason: str,
        event: str,
        held: Mapping[str, Flag] | None = None,
    ) -> FlagSet:
        """Write `new` as flags.json, audited and backed up; `held`: the held flags it writes."""
        now = self._clock()
        audit_id = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"
        flags = {n: replace(f, audit_id=audit_id) if n in changed else f for n, f in new.items()}
        before = {} if self.load_error else self._durable
        was = None if _kill_on(flags) else self.emergency.clear(actor, reason)  # before flags.json: see clear()
        try:
            self.audit.append(
                _record(now, audit_id, actor, reason, event, name, before.get(name), flags.get(name))
                for name in changed
            )
            backups = self._write_file(now, render(flags))
        except BaseException as exc:
            self._abort(audit_id, exc, was)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise StorageError(self.state_dir, f"writing {self.path.name}", exc) from exc
            raise
        self._prune_backups(backups)
        if _kill_on(flags):
            self.emergency.engage(actor, reason)  # the file follows the kill switch turned on by any route
        with self._memory_lock:
            self._durable, self.load_error = flags, None
            self._held = {n: f for n, f in self._held.items() if (held or {}).get(n) is not f}
            self._publish()
        return self.snapshot

    def _write_file(self, now: datetime, data: bytes) -> list[Path]:
        """Back the current file up and replace it; return the backups, oldest first."""
        backups = self._backup_paths()  # listed once per write: for the new name and for pruning
        backup = self._backup_current(now, backups)
        try:
            atomic_write(self.path, data)
        except BaseException:
            if backup is not None:
                backup.unlink(missing_ok=True)  # the file it backs up did not change
            raise
        return sorted([*backups, backup], key=backup_order) if backup else backups

    def _abort(self, audit_id: str, exc: BaseException, marker: Marker | None) -> None:
        """A write failed: close its audit records, put emergency.state back. Best effort: the
        disk that failed the write may fail these too (the next open closes the records)."""
        try:
            self.audit.append([_aborted(self._clock(), audit_id, f"writing {self.path} failed: {exc!r}")])
        except OSError:
            pass
        if marker is not None:
            self.emergency.put_back(marker)

    def _publish(self) -> bool:
        """Serve flags.json with the held flags on top (caller holds `_memory_lock`); when
        emergency.state is engaged the kill switch is held on too: True when that added it."""
        self._held = {n: f for n, f in self._held.items() if not _same_content(self._durable.get(n), f)}
        added = self.emergency.engaged and not _kill_on({**self._durable, **self._held})
        if added:
            kill = self._durable.get(KILL_SWITCH) or _new_kill_switch()
            self._held[KILL_SWITCH] = replace(kill, enabled=True)
            self._held_by = ("rolloutd", f"{EMERGENCY_FILE} says the kill switch is on")
        self.snapshot = FlagSet({**self._durable, **self._held})
        return added

    def _flush_held(self) -> None:
        """Write the held flags into flags.json (caller holds `_write_lock`); StorageError if it cannot."""
        with self._memory_lock:
            held, (actor, reason) = dict(self._held), self._held_by
        if held:
            self._commit({**self._durable, **held}, held, actor, reason, event="change", held=held)

    def _write_held(self) -> bool:
        """One attempt (inline, or the retry thread's) to make the held flags durable; True when
        nothing is left to write. Logs the first failure of a streak at crit, and its end."""
        with self._write_lock:
            if self._lock_fd is None:
                return True  # closed: emergency.state holds the kill switch, if it could be written
            try:
                self._flush_held()
            except StorageError as error:
                if self.held_error is None:
                    log.critical(
                        "emergency.not_durable",
                        error=str(error),
                        held=sorted(self._held),
                        kill_switch="on, in memory: every flag is served off, retrieval is refused",
                        emergency_file="engaged" if self.emergency.engaged else "NOT written",
                        retry="until flags.json has it",
                    )
                self.held_error = error
                return False
            if self.held_error is not None:
                log.warning("emergency.durable", file=str(self.path), attempts=self._retry.attempts, priority="notice")
                self.held_error = None
            try:
                self.emergency.ensure_open()  # not created at open (a full disk): created now
            except StorageError:
                return False
            if _kill_on(self._durable):
                self.emergency.engage(*self._held_by)  # a file created late follows the kill switch
            return True

    def _open_emergency(self) -> None:
        """Open emergency.state (creating it); an engaged one holds the kill switch on."""
        marker = self.emergency.open()
        if marker is None:
            self._retry.start()  # to create it
            return
        with self._memory_lock:
            found = self._publish()
        if found:
            log.critical(
                "emergency.found_in_file",
                file=str(self.emergency.path),
                actor=marker.actor,
                reason=marker.reason,
                at=marker.at,
                kill_switch="on",
                note="flags.json did not have it yet: it is written there as soon as the disk allows",
            )
            if self.load_error is None and not self._write_held():
                self._retry.start()

    def _load(self, strict: bool) -> None:
        remove_stale_temps(self.path)
        self.audit.repair_torn_tail()
        if not self.path.exists() and not self._backup_paths():
            self._create_initial()  # first start: nothing to lose
            return
        try:
            if not self.path.exists():
                raise FlagsFileError(
                    self.path,
                    None,
                    f"the file is missing but {self.backup_dir} holds backups; it was not recreated empty",
                )
            self.snapshot = FlagSet(self._read_file())
        except FlagsFileError as exc:
            if strict:
                raise
            self.load_error = exc
            return
        self._close_aborted_change()

    def _create_initial(self) -> None:
        kill = _new_kill_switch()
        self.load_error = None
        self._commit({KILL_SWITCH: kill}, {KILL_SWITCH: kill}, "rolloutd", "created the flags file", "create")

    def _read_file(self) -> dict[str, Flag]:
        try:
            text = self.path.read_text()
        except UnicodeDecodeError as exc:
            raise FlagsFileError(self.path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except IsADirectoryError:
            raise FlagsFileError(self.path, None, "is a directory, not a file; move it aside") from None
        except OSError as exc:
            raise FlagsFileError(self.path, None, f"cannot read it: {exc.strerror or exc}") from None
        return parse_flags_text(text, self.path)

    def _close_aborted_change(self) -> None:
        """A crash between the audit records and the file write leaves records for a change
        that never happened; say so in the log rather than leave them looking applied."""
        tail = self.audit.tail(1)
        if not tail or tail[0].get("event") == "aborted":
            return
        last = tail[0]
        flag = self.snapshot.flags.get(last.get("flag", ""))
        committed = (flag.audit_id == last.get("id")) if flag else last.get("after") is None
        if not committed:
            reason = "the process stopped before the flags file was written; the change did not happen"
            try:
                self.audit.append([_aborted(self._clock(), last.get("id"), reason)])
            except OSError as exc:  # a full disk must not stop the start: the next open tries again
                log.warning("audit.aborted_not_recorded", file=str(self.audit.path), id=last.get("id"), error=str(exc))

    def _backup_current(self, now: datetime, backups: list[Path]) -> Path | None:
        return self._backups.link(self.path, now, backups)

    def _prune_backups(self, backups: list[Path]) -> None:
        self._backups.prune(backups)

    def _backup_paths(self) -> list[Path]:
        return self._backups.paths()

    def _refuse_if_invalid(self) -> None:
        if self.load_error is not None:
            raise self.load_error

    def _ensure_open(self) -> None:
        if self._lock_fd is None:
            raise FlagsError(f"the flag store for {self.state_dir} is closed; it no longer owns the state_dir")

    def _acquire_lock(self) -> None:
        self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        lock_path = self.state_dir / "flags.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
            os.close(fd)
            raise StoreLockedError(lock_path, f"pid {holder}") from None
        pid = f"{os.getpid()}\n".encode()
        try:  # over the old pid, in place, then cut: a full disk has no new block to give
            os.pwrite(fd, pid, 0)
            os.ftruncate(fd, len(pid))
        except OSError:
            pass  # the pid only names the holder in a "locked" message
        self._lock_fd = fd


def with_percentage(flag: Flag, percentage: float) -> Flag:
    """The flag rolled out to `percentage`, written where the seeds write it."""
    if flag.name == KILL_SWITCH:
        raise FlagValidationError(
            flag.name, "rollout_percentage", "the kill switch is all or nothing; use --enabled true|false"
        )
    if not 0 <= percentage <= 100:
        raise FlagValidationError(flag.name, "rollout_percentage", f"{percentage} is outside 0-100")
    if flag.rollout_strategy is Strategy.PROGRESSIVE and flag.progressive_config is not None:
        config = replace(flag.progressive_config, current_percentage=float(percentage))
        return replace(flag, rollout_percentage=float(percentage), progressive_config=config)
    return replace(flag, rollout_strategy=Strategy.PERCENTAGE, rollout_percentage=float(percentage))


def _same_content(old: Flag | None, new: Flag) -> bool:
    return old is not None and replace(old, audit_id=None) == replace(new, audit_id=None)


def _kill_on(flags: Mapping[str, Flag]) -> bool:
    kill = flags.get(KILL_SWITCH)
    return bool(kill and kill.enabled)


def _new_kill_switch() -> Flag:
    return Flag(name=KILL_SWITCH, enabled=False, description="When on, every other flag is off.")


def render(flags: Mapping[str, Flag]) -> bytes:
    """flags.json's bytes: indented like the seeds, one trailing newline."""
    return (json.dumps({n: f.to_dict() for n, f in flags.items()}, indent=2) + "\n").encode()


def _aborted(now: datetime, audit_id: str | None, reason: str) -> dict[str, Any]:
    return {"time": now.isoformat(), "id": audit_id, "event": "aborted", "actor": "rolloutd", "reason": reason}


def _record(
    now: datetime,
    audit_id: str,
    actor: str,
    reason: str,
    event: str,
    name: str,
    before: Flag | None,
    after: Flag | None,
) -> dict[str, Any]:
    return {
        "time": now.isoformat(),
        "id": audit_id,
        "event": event,
        "actor": actor,
        "reason": reason,
        "flag": name,
        "before": before.to_dict() if before else None,
        "after": after.to_dict() if after else None,
    }
