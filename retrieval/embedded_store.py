"""The graph store when no MongoDB is configured: SQLite under `state_dir/retrieval`.

Same semantics as `MongoStore`, one file `graph.sqlite3` (WAL, synchronous=FULL, so a
committed write survives power loss):

    memories(namespace, id, text, links JSON, metadata JSON, created_at ISO-8601)
    links(namespace, src, dst)      one row per link, indexed by target for deletes

`memories.links` keeps the caller's order; the `links` table answers "who links to
X?" when X is deleted. Every write is one SQLite transaction (the link check included),
run on a worker thread; SQLite work is serialised by a capacity-1 limiter, so the one
connection is never used by two threads at once. The in-process `Adjacency` changes
only after the commit returned (`BaseGraphStore` does that part for both stores).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from retrieval.adjacency import Adjacency
from retrieval.graph_store import BaseGraphStore, StoreUnavailable, check_batch, link_targets
from retrieval.memory import Memory

log = structlog.get_logger("rolloutd.retrieval")
T = TypeVar("T")

FILE = "graph.sqlite3"
PAGE = 1000
_CHUNK = 500  # ids per IN (...): far below SQLite's bound-variable limit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    namespace TEXT NOT NULL, id TEXT NOT NULL, text TEXT NOT NULL, links TEXT NOT NULL,
    metadata TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    namespace TEXT NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL,
    PRIMARY KEY (namespace, src, dst)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_by_dst ON links (namespace, dst);
"""
_COLUMNS = "namespace, id, text, links, metadata, created_at"


class EmbeddedStore(BaseGraphStore):
    """Memories in a local SQLite file, their links mirrored in process for `expand`."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = Path(directory)
        self.path = self.directory / FILE
        self._db: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._db is None:
            raise RuntimeError("EmbeddedStore is not open; call `await store.open()` first")
        try:
            return await anyio.to_thread.run_sync(partial(fn, self._db, *args), limiter=self._limiter)
        except sqlite3.OperationalError as exc:  # locked by another process, disk full, I/O error
            raise StoreUnavailable(f"SQLite at {self.path}", fn.__name__.strip("_"), exc) from exc

    async def open(self) -> None:
        """Create the directory and schema if needed, and rebuild the adjacency from it."""
        self._db = await anyio.to_thread.run_sync(_connect, self.path, limiter=self._limiter)
        adjacency = Adjacency()
        for namespace, id, links in await self._run(_all_links):
            adjacency.put(namespace, id, json.loads(links))
        self._adjacency = adjacency
        log.info("graph.opened", store="sqlite", path=str(self.path), memories=adjacency.count())

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await anyio.to_thread.run_sync(db.close, limiter=self._limiter)

    async def _write(self, memories: list[Memory]) -> None:
        """One SQLite transaction: the link check, the rows, their links."""
        await self._run(_put_many, memories)

    async def _remove(self, namespace: str, id: str) -> bool:
        return await self._run(_delete, namespace, id)

    async def get_many(self, namespace: str, ids: Iterable[str]) -> dict[str, Memory]:
        """The stored memories among `ids`, by id (absent ids are simply missing)."""
        rows = await self._run(_select_ids, namespace, list(dict.fromkeys(ids)))
        return {row[1]: from_row(row) for row in rows}

    async def iter_all(self) -> AsyncIterator[Memory]:
        """Every stored memory, by (namespace, id), a page at a time."""
        after = ("", "")
        while rows := await self._run(_page, after):
            for row in rows:
                yield from_row(row)
            after = rows[-1][:2]

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless the SQLite file answers now."""
        await self._run(_ping)


# Everything below runs on the worker thread, one call at a time.


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def _all_links(db: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return db.execute("SELECT namespace, id, links FROM memories").fetchall()


def _transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _stored(db: sqlite3.Connection, namespace: str, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for at in range(0, len(ids), _CHUNK):
        chunk = ids[at : at + _CHUNK]
        marks = ",".join("?" * len(chunk))
        found.update(
            row[0]
            for row in db.execute(
                f"SELECT id FROM memories WHERE namespace = ? AND id IN ({marks})", (namespace, *chunk)
            )
        )
    return found


def _put_many(db: sqlite3.Connection, memories: list[Memory]) -> None:
    def work() -> None:
        targets = link_targets(memories)
        check_batch(memories, {ns: _stored(db, ns, sorted(ids)) for ns, ids in targets.items()})
        db.executemany(
            f"INSERT OR REPLACE INTO memories ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", [to_row(m) for m in memories]
        )
        db.executemany("DELETE FROM links WHERE namespace = ? AND src = ?", [(m.namespace, m.id) for m in memories])
        db.executemany(
            "INSERT INTO links (namespace, src, dst) VALUES (?, ?, ?)",
            [(m.namespace, m.id, dst) for m in memories for dst in m.links],
        )

    _transaction(db, work)


def _delete(db: sqlite3.Connection, namespace: str, id: str) -> bool:
    def work() -> bool:
        if not db.execute("DELETE FROM memories WHERE namespace = ? AND id = ?", (namespace, id)).rowcount:
            return False
        sources = [
            row[0] for row in db.execute("SELECT src FROM links WHERE namespace = ? AND dst = ?", (namespace, id))
        ]
        for src in sources:
            (links,) = db.execute(
                "SELECT links FROM memories WHERE namespace = ? AND id = ?", (namespace, src)
            ).fetchone()
            kept = [link for link in json.loads(links) if link != id]
            db.execute(
                "UPDATE memories SET links = ? WHERE namespace = ? AND id = ?", (json.dumps(kept), namespace, src)
            )
        db.execute("DELETE FROM links WHERE namespace = ? AND (src = ? OR dst = ?)", (namespace, id, id))
        return True

    return _transaction(db, work)


def _select_ids(db: sqlite3.Connection, namespace: str, ids: list[str]) -> list[tuple]:
    rows: list[tuple] = []
    for at in range(0, len(ids), _CHUNK):
        chunk = ids[at : at + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows += db.execute(
            f"SELECT {_COLUMNS} FROM memories WHERE namespace = ? AND id IN ({marks})", (namespace, *chunk)
        ).fetchall()
    return rows


def _page(db: sqlite3.Connection, after: tuple[str, str]) -> list[tuple]:
    return db.execute(
        f"SELECT {_COLUMNS} FROM memories WHERE (namespace, id) > (?, ?) ORDER BY namespace, id LIMIT {PAGE}", after
    ).fetchall()


def _ping(db: sqlite3.Connection) -> None:
    db.execute("SELECT count(*) FROM sqlite_master").fetchone()


def to_row(memory: Memory) -> tuple[str, ...]:
    return (
        memory.namespace,
        memory.id,
        memory.text,
        json.dumps(list(memory.links)),
        json.dumps(dict(memory.metadata), ensure_ascii=False),
        memory.created_at.isoformat(),
    )


def from_row(row: tuple) -> Memory:
    namespace, id, text, links, metadata, created_at = row
    return Memory.stored(
        id=id,
        namespace=namespace,
        text=text,
        links=tuple(json.loads(links)),
        metadata=json.loads(metadata),
        created_at=datetime.fromisoformat(created_at),
    )
