"""`state_dir/backups/`: the previous flags.json, hard-linked before every change.

flags.<UTC time>.json         one per change, oldest pruned past `keep`
flags.<UTC time>-NNNN.json    the same clock reading twice: numbered so they still sort in order
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flags.atomic import fsync_dir

_BACKUP_NAME = re.compile(r"flags\.(.+?)(?:-(\d+))?\.json")


@dataclass(frozen=True, slots=True)
class BackupInfo:
    name: str
    size: int
    flags: int | None  # how many flags it holds; None when it is not a valid flags file
    problem: str | None  # why it cannot be restored, if it cannot


class Backups:
    def __init__(self, directory: Path, keep: int) -> None:
        self.directory, self.keep = directory, keep

    def paths(self) -> list[Path]:
        """Backups oldest first (by time, then by the sequence a same-time collision gets)."""
        return sorted(self.directory.glob("flags.*.json"), key=backup_order)

    def link(self, current: Path, now: datetime, backups: list[Path]) -> Path | None:
        """Link `current` into the directory (durably); the link, or None when there is no file."""
        if not current.exists():
            return None
        self.directory.mkdir(mode=0o750, exist_ok=True)
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        seq = max((n for t, n in map(backup_order, backups) if t == stamp), default=0) + 1
        target = self.directory / (f"flags.{stamp}.json" if seq == 1 else f"flags.{stamp}-{seq:04d}.json")
        os.link(current, target)  # the old inode lives on as the backup; no copy needed
        try:
            fsync_dir(self.directory)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return target

    def prune(self, backups: list[Path]) -> None:
        """Delete all but the newest `keep` of `backups` (oldest first)."""
        for old in backups[: max(0, len(backups) - self.keep)]:
            old.unlink(missing_ok=True)


def backup_order(path: Path) -> tuple[str, int]:
    match = _BACKUP_NAME.fullmatch(path.name)
    return (match.group(1), int(match.group(2) or 1)) if match else (path.name, 0)
