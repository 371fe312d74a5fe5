"""The durable flag store: `state_dir/flags.json`, its backups and its audit log.

Files under `state_dir`:

    flags.json        the flags, in the seeds' shape (replaced atomically, never edited in place)
    flags.lock        flock()ed for the store's whole life: one process owns a state_dir
    backups/          flags.<UTC time>.json — the previous file, hard-linked on every change
    audit.jsonl       append-only: time, id, actor, reason, flag, before, after

A change is: validate → audit records (fsync) → link the current file into backups/
→ write the new file atomically → prune old backups. An invalid or corrupt flags
file is never overwritten: opening it raises `FlagsFileError` (file, line, problem),
and only `restore()` may replace it.

The store is synchronous (it is also used by `rolloutctl flags restore` when no
daemon runs, and by the crash tests); the daemon calls it from a worker thread.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from flags.atomic import atomic_write, fsync_dir, remove_stale_temps
from flags.audit import AuditLog
from flags.errors import (
    BackupNotFoundError,
    FlagsError,
    FlagsFileError,
    FlagValidationError,
    StoreLockedError,
    UnknownFlagError,
)
from flags.evaluate import FlagSet
from flags.model import KILL_SWITCH, Flag, Strategy, utcnow
from flags.parse import flag_from_dict, parse_flags_text

Clock = Callable[[], datetime]
_BACKUP_NAME = re.compile(r"flags\.(.+?)(?:-(\d+))?\.json")


@dataclass(frozen=True, slots=True)
class BackupInfo:
    name: str
    size: int
    flags: int | None       # how many flags it holds; None when it is not a valid flags file
    problem: str | None     # why it cannot be restored, if it cannot


class FlagStore:
    """Owns one state directory's flags file; every write is atomic, audited and backed up."""

    FILE = "flags.json"

    def __init__(self, state_dir: Path, *, clock: Clock = utcnow, keep_backups: int = 50) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / self.FILE
        self.backup_dir = self.state_dir / "backups"
        self.audit = AuditLog(self.state_dir / "audit.jsonl")
        self.keep_backups = keep_backups
        self._clock = clock
        self._write_lock = threading.Lock()
        self._lock_fd: int | None = None
        self.snapshot = FlagSet({})
        self.load_error: FlagsFileError | None = None

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
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
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
                self.snapshot = FlagSet(self._read_file())
            except FlagsFileError as exc:
                self.load_error = exc
                raise
            self.load_error = None
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

    def set(self, name: str, *, enabled: bool | None = None, percentage: float | None = None,
            actor: str, reason: str) -> FlagSet:
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
            current = self.snapshot.flags
            for name, flag in changes.items():
                if flag.name != name:
                    raise FlagValidationError(name, "name", f"the flag stored under {name!r} is named {flag.name!r}")
                flag_from_dict(name, flag.to_dict())  # the same rules as the file, before anything is written
            changed = {n: f for n, f in changes.items() if not _same_content(current.get(n), f)}
            if not changed:
                return self.snapshot
            return self._commit({**current, **changed}, changed, actor, reason, event="change")

    def restore(self, backup_name: str, *, actor: str, reason: str) -> FlagSet:
        """Replace flags.json with a backup (the replaced file is itself backed up first)."""
        path = self.backup_dir / backup_name
        if "/" in backup_name or not path.is_file():
            raise BackupNotFoundError(backup_name, self.backup_dir)
        restored = parse_flags_text(path.read_text(), path)
        with self._write_lock:
            self._ensure_open()
            current = {} if self.load_error else dict(self.snapshot.flags)
            gone = {n: None for n in current if n not in restored}
            return self._commit(restored, {**restored, **gone}, actor, f"{reason} (from {backup_name})", event="restore")

    # -- internals --------------------------------------------------------------

    def _commit(self, new: Mapping[str, Flag], changed: Mapping[str, Flag | None],
                actor: str, reason: str, event: str) -> FlagSet:
        now = self._clock()
        audit_id = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(3)}"
        flags = {n: replace(f, audit_id=audit_id) if n in changed else f for n, f in new.items()}
        data = render(flags)
        before = {} if self.load_error else self.snapshot.flags
        self.audit.append(
            _record(now, audit_id, actor, reason, event, name, before.get(name), flags.get(name))
            for name in changed
        )
        backups = self._backup_paths()  # listed once per write: for the new name and for pruning
        try:
            backups = self._backup_current(now, backups)
            atomic_write(self.path, data)
        except BaseException as exc:
            self.audit.append([_aborted(self._clock(), audit_id, f"writing {self.path} failed: {exc!r}")])
            raise
        self._prune_backups(backups)
        self.snapshot, self.load_error = FlagSet(flags), None
        return self.snapshot

    def _load(self, strict: bool) -> None:
        remove_stale_temps(self.path)
        self.audit.repair_torn_tail()
        if not self.path.exists() and not self._backup_paths():
            self._create_initial()  # first start: nothing to lose
            return
        try:
            if not self.path.exists():
                raise FlagsFileError(self.path, None, f"the file is missing but {self.backup_dir} holds backups; "
                                                      f"it was not recreated empty")
            self.snapshot = FlagSet(self._read_file())
        except FlagsFileError as exc:
            if strict:
                raise
            self.load_error = exc
            return
        self._close_aborted_change()

    def _create_initial(self) -> None:
        kill = Flag(name=KILL_SWITCH, enabled=False, description="When on, every other flag is off.")
        self.load_error = None
        self._commit({KILL_SWITCH: kill}, {KILL_SWITCH: kill}, "rolloutd", "created the flags file", "create")

    def _read_file(self) -> dict[str, Flag]:
        try:
            text = self.path.read_text()
        except UnicodeDecodeError as exc:
            raise FlagsFileError(self.path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
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
            self.audit.append([_aborted(self._clock(), last.get("id"), reason)])

    def _backup_current(self, now: datetime, backups: list[Path]) -> list[Path]:
        """Link the current file into backups/; return `backups` with it, oldest first."""
        if not self.path.exists():
            return backups
        self.backup_dir.mkdir(mode=0o750, exist_ok=True)
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        # The same clock reading twice: number them after the newest so they still sort in order.
        seq = max((n for t, n in map(_backup_order, backups) if t == stamp), default=0) + 1
        target = self.backup_dir / (f"flags.{stamp}.json" if seq == 1 else f"flags.{stamp}-{seq:04d}.json")
        os.link(self.path, target)  # the old inode lives on as the backup; no copy needed
        fsync_dir(self.backup_dir)
        return sorted([*backups, target], key=_backup_order)

    def _prune_backups(self, backups: list[Path]) -> None:
        for old in backups[: max(0, len(backups) - self.keep_backups)]:
            old.unlink(missing_ok=True)

    def _backup_paths(self) -> list[Path]:
        """Backups oldest first (by time, then by the sequence a same-time collision gets)."""
        return sorted(self.backup_dir.glob("flags.*.json"), key=_backup_order)

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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd


def with_percentage(flag: Flag, percentage: float) -> Flag:
    """The flag rolled out to `percentage`, written where the seeds write it."""
    if flag.name == KILL_SWITCH:
        raise FlagValidationError(flag.name, "rollout_percentage", "the kill switch is all or nothing; use --enabled true|false")
    if not 0 <= percentage <= 100:
        raise FlagValidationError(flag.name, "rollout_percentage", f"{percentage} is outside 0-100")
    if flag.rollout_strategy is Strategy.PROGRESSIVE and flag.progressive_config is not None:
        config = replace(flag.progressive_config, current_percentage=float(percentage))
        return replace(flag, rollout_percentage=float(percentage), progressive_config=config)
    return replace(flag, rollout_strategy=Strategy.PERCENTAGE, rollout_percentage=float(percentage))


def _same_content(old: Flag | None, new: Flag) -> bool:
    return old is not None and replace(old, audit_id=None) == replace(new, audit_id=None)


def render(flags: Mapping[str, Flag]) -> bytes:
    """flags.json's bytes: indented like the seeds, one trailing newline."""
    return (json.dumps({n: f.to_dict() for n, f in flags.items()}, indent=2) + "\n").encode()


def _backup_order(path: Path) -> tuple[str, int]:
    match = _BACKUP_NAME.fullmatch(path.name)
    return (match.group(1), int(match.group(2) or 1)) if match else (path.name, 0)


def _aborted(now: datetime, audit_id: str | None, reason: str) -> dict[str, Any]:
    return {"time": now.isoformat(), "id": audit_id, "event": "aborted", "actor": "rolloutd", "reason": reason}


def _record(now: datetime, audit_id: str, actor: str, reason: str, event: str,
            name: str, before: Flag | None, after: Flag | None) -> dict[str, Any]:
    return {
        "time": now.isoformat(), "id": audit_id, "event": event, "actor": actor, "reason": reason,
        "flag": name,
        "before": before.to_dict() if before else None,
        "after": after.to_dict() if after else None,
    }
