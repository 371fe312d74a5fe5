"""Exceptions raised by the flags package.

    FlagsError
     ├── FlagsFileError        the flags file is unreadable, not JSON, or invalid (path, line, what)
     ├── FlagValidationError   a proposed flag or change is invalid (field, what, remedy)
     ├── UnknownFlagError      no flag of that name
     ├── StoreLockedError      another process holds the state directory's lock
     ├── BackupNotFoundError   no backup of that name
     └── StorageError          a write under state_dir failed: full, read-only, failing disk
                               (also an OSError, with the cause's errno)

Messages are built in the constructors so every raiser says the same thing the
same way, and each names what to do about it.
"""

from __future__ import annotations

import errno as errnos
import os
from pathlib import Path


class FlagsError(Exception):
    """Base class of every error the flags package raises."""


class FlagsFileError(FlagsError, ValueError):
    """The flags file cannot be used; it is left untouched on disk."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(
            f"{where}: {problem} — the file was not changed; fix it by hand, or list and "
            f"restore a backup with `rolloutctl flags restore`"
        )


class FlagValidationError(FlagsError, ValueError):
    """A flag definition or a requested change breaks a rule of the model."""

    def __init__(self, flag: str, field: str, problem: str) -> None:
        self.flag = flag
        self.field = field
        self.problem = problem
        super().__init__(f"flag {flag!r}, field {field!r}: {problem}")


class UnknownFlagError(FlagsError, KeyError):
    """The named flag does not exist."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(f"no flag named {name!r}; known flags: {', '.join(sorted(known)) or '(none)'}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StoreLockedError(FlagsError, RuntimeError):
    """Another process owns the state directory."""

    def __init__(self, lock_path: Path, holder: str) -> None:
        self.lock_path = lock_path
        super().__init__(
            f"{lock_path} is locked by another process ({holder}); only one rolloutd may use a "
            f"state_dir — stop the other one, or talk to it with `rolloutctl`"
        )


class BackupNotFoundError(FlagsError, LookupError):
    """The named backup does not exist."""

    def __init__(self, name: str, directory: Path) -> None:
        super().__init__(f"no backup named {name!r} in {directory}; run `rolloutctl flags restore` to list them")


# errno → (what happened to state_dir, what to do about it)
_DISK_PROBLEMS = {
    errnos.ENOSPC: ("is full", "free space and retry"),
    errnos.EDQUOT: ("is over its disk quota", "raise the quota or free space and retry"),
    errnos.EROFS: ("is on a read-only filesystem", "remount it read-write and retry"),
    errnos.EIO: ("had an I/O error", "check the disk (`dmesg`) and retry"),
    errnos.EACCES: ("is not writable by rolloutd", "give the rolloutd user write access and retry"),
    errnos.EPERM: ("is not writable by rolloutd", "give the rolloutd user write access and retry"),
}


class StorageError(FlagsError, OSError):
    """A write under state_dir failed; what was being written is unchanged (or, for the
    kill switch, in force in memory until it can be written)."""

    def __init__(self, state_dir: Path | str, action: str, cause: OSError | int) -> None:
        code = cause.errno if isinstance(cause, OSError) else cause
        self.state_dir = Path(state_dir)
        self.action = action
        if code in _DISK_PROBLEMS:
            (what, remedy), why = _DISK_PROBLEMS[code], errnos.errorcode[code]
        elif code:
            what, remedy = "could not be written", "fix the cause and retry"
            why = f"{errnos.errorcode.get(code, code)}: {os.strerror(code)}"
        else:
            what, remedy, why = "could not be written", "fix the cause and retry", str(cause)
        super().__init__(f"state_dir {self.state_dir} {what} ({why}) while {action}: {remedy}")
        self.errno = code


def disk_nearly_full(directory: Path, floor: int = 64 << 10) -> bool:
    """Whether the filesystem of `directory` has less than `floor` bytes left for rolloutd: what
    SQLite's bare "disk I/O error" means when it cannot allocate its shared-memory file."""
    try:
        fs = os.statvfs(directory)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < floor
