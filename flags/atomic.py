"""Crash-safe file replacement: temp file, fsync, rename, fsync the directory.

After `atomic_write` returns, the new content is durable; if the process dies at
any instant before that, the old file is still there, whole. A killed writer can
leave a temp file behind; `remove_stale_temps` sweeps those on the next start.

A shared helper, bottom layer (like `flags/clock.py`): it imports nothing of ours, and
any part may use it — the flag store, retrieval's index files, the controller's reports
and state, rolloutctl's HTML report. It sits in `flags` only because the top level is
fixed and `flags` depends on nothing else of ours; it knows nothing about flags.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Replace `path` with `data` so that readers see the old file or the new, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write, not a buffered file: a full disk fails here, not in a hidden flush
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)  # a full disk's temp file goes, and its blocks with it
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or link in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files a killed writer of `path` left behind; return what was removed."""
    stale = list(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))
    for leftover in stale:
        _unlink_quietly(leftover)
    return stale


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
