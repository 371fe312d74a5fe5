"""Opening `state_dir/controller.db`: create it atomically, or check it before trusting it.

A missing file is the only way a new rollout begins. The file is born whole: the schema
is built in a temp file beside it, fsynced and renamed into place, so an existing
controller.db always holds the schema and a zero-length one always means damage (a crash
of the filesystem, a careless `> controller.db`). An existing file is checked before it
is opened for writing — a regular file, SQLite's header, `PRAGMA quick_check` and the
rollout's tables — on a connection that cannot write, so a damaged file is left exactly
as it was found, for a backup to replace or for forensics. The check is cheap: opening a
file that holds the full 50k observations (2.8 MB) takes ~6 ms, quick_check included.

    StateFileError    controller.db exists but cannot be used: the file, the problem, the remedy
                      (controller/errors.py; importable from here too)
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import tempfile
from pathlib import Path

from controller.errors import StateFileError
from flags.atomic import fsync_dir
from flags.errors import disk_nearly_full

HEADER = b"SQLite format 3\x00"
REQUIRED_TABLES = frozenset({"rollout", "journal"})  # `observations` came later: added when missing
DISK_FULL = "free space in state_dir and start rolloutd again; the file is intact: do not move it aside"


def open_state_file(path: Path, schema: str, *, durable: bool = True) -> sqlite3.Connection:
    """A read-write connection to `path` in WAL mode, creating the file (with `schema`)
    when there is none; raises `StateFileError` when the file exists but is not sound."""
    if not os.path.lexists(path):
        _refuse_orphaned_wal(path)
        _create(path, schema, durable)
    tables = check_state_file(path)
    db = _connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=OFF")
        if not tables >= _tables_of(schema):
            db.executescript(schema)  # a file from before a table was added: only IF NOT EXISTS ones
    except sqlite3.DatabaseError as exc:
        db.close()
        if disk_nearly_full(path.parent):  # SQLite's "disk I/O error" when its -shm file gets no space
            raise StateFileError(path, f"SQLite cannot open it: {exc}: state_dir is full", DISK_FULL) from None
        raise StateFileError(path, f"SQLite cannot use it: {exc}") from None
    return db


def check_state_file(path: Path) -> set[str]:
    """The tables of the SQLite database at `path`, once it is known to be sound."""
    _check_header(path)
    wal = path.with_name(path.name + "-wal")
    # Without a WAL to replay, read the file as immutable: SQLite then creates no -wal or
    # -shm beside it. With one, read through it (read-only; a reader never writes the WAL).
    query = "mode=ro" if _size(wal) else "immutable=1"
    try:
        probe = sqlite3.connect(f"{path.absolute().as_uri()}?{query}", uri=True)
    except sqlite3.OperationalError as exc:
        raise StateFileError(path, f"cannot open it: {exc}", _permissions(path)) from None
    try:
        verdict = probe.execute("PRAGMA quick_check").fetchone()[0]
        tables = {row[0] for row in probe.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise StateFileError(path, f"SQLite reports it damaged: {exc}") from None
    finally:
        probe.close()
    if verdict != "ok":
        raise StateFileError(path, f"SQLite reports it damaged: quick_check says {verdict!r}")
    if missing := REQUIRED_TABLES - tables:
        found = ", ".join(sorted(tables)) or "none"
        raise StateFileError(
            path,
            f"is an SQLite database but not rolloutd's: no table {', '.join(sorted(missing))} (tables found: {found})",
        )
    return tables


def _check_header(path: Path) -> None:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise StateFileError(
                path,
                "is not a regular file (a directory?)",
                "move it aside; rolloutd keeps its rollout state in a file of that name",
            )
        with path.open("rb") as handle:
            head = handle.read(len(HEADER))
    except OSError as exc:
        raise StateFileError(path, f"cannot read it: {exc.strerror}", _permissions(path)) from None
    if info.st_size == 0:
        raise StateFileError(
            path,
            "is empty (0 bytes), which rolloutd never writes: it was truncated (by a crash "
            "of the filesystem, or by `> controller.db`) and the rollout's history is lost",
        )
    if head != HEADER:
        raise StateFileError(path, f"is not an SQLite database ({info.st_size} bytes beginning {head[:16]!r})")


def _refuse_orphaned_wal(path: Path) -> None:
    """A WAL without its database holds the newest transactions of a file moved away."""
    wal = path.with_name(path.name + "-wal")
    if size := _size(wal):
        raise StateFileError(
            path,
            f"is missing, but {wal.name} ({size} bytes) beside it holds its latest transactions",
            f"put {path.name} back beside it, or move {wal.name} and "
            f"{path.name}-shm aside too to begin a new rollout of the plan from hour 0",
        )


def _create(path: Path, schema: str, durable: bool) -> None:
    """The schema built in a temp file, made durable, then renamed into place."""
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):  # left by a creation that was killed
        stale.unlink(missing_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            _build(Path(tmp), schema, durable)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            fsync_dir(path.parent)
    except (OSError, sqlite3.Error) as exc:
        raise StateFileError(path, f"cannot create it: {exc}", _permissions(path)) from None


def _build(tmp: Path, schema: str, durable: bool) -> None:
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")  # recorded in the file's header
        db.executescript(schema)
    finally:
        db.close()  # checkpoints the temp WAL into the file and removes it
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as exc:
        raise StateFileError(path, f"cannot open it for writing: {exc}", _permissions(path)) from None


def _tables_of(schema: str) -> set[str]:
    return set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", schema))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _permissions(path: Path) -> str:
    return (
        f"check that rolloutd's user can read and write {path} and the directory {path.parent}, "
        "and that the disk has space"
    )
