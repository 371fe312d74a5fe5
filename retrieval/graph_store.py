"""The graph store contract, its errors, and the part both stores share.

A store keeps memories in a system of record (MongoDB, or SQLite under `state_dir` when
none is configured: `mongo_store.py`, `embedded_store.py`) and mirrors their links in an
`Adjacency` (`retrieval.adjacency`) in process, so k-hop expansion is a dictionary walk,
never a database query. The mirror is rebuilt from the system of record on `open()` and
changed only *after* a write to it succeeded, so a failed write leaves both as they were.

`BaseGraphStore` writes that order once -- the checks before a write (`InvalidMemory` for
a repeated id, `KeyCollision`), the write lock, the system of record, then the mirror --
and each backend supplies only its own I/O.

    GraphStoreError
     ├── UnknownLinks        links name memories that do not exist in that namespace
     ├── StoreUnavailable    the system of record cannot be reached (the retriever: 503)
     └── KeyCollision        two memories hash to one 63-bit key (never seen; refused)

`InvalidMemory` (a ValueError from `retrieval.memory`) covers malformed input.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Protocol

import anyio

from retrieval.adjacency import DEFAULT_EXPAND_LIMIT, Adjacency
from retrieval.memory import InvalidMemory, Memory


class GraphStoreError(Exception):
    """Base class of every error a graph store raises."""


class UnknownLinks(GraphStoreError, ValueError):
    """A write named link targets that are not stored; nothing was written."""

    def __init__(self, namespace: str, missing: Iterable[str]) -> None:
        self.namespace = namespace
        self.missing = tuple(sorted(set(missing)))
        shown = ", ".join(repr(m) for m in self.missing[:10])
        more = f" and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
        super().__init__(
            f"links to {len(self.missing)} unknown memor{'y' if len(self.missing) == 1 else 'ies'} "
            f"in namespace {namespace!r}: {shown}{more}; store them first, or send them in the "
            f"same batch"
        )


class StoreUnavailable(GraphStoreError, ConnectionError):
    """The system of record did not answer; the write was not applied (or not confirmed)."""

    def __init__(self, store: str, operation: str, cause: BaseException | str) -> None:
        self.store = store
        self.operation = operation
        super().__init__(
            f"{store} unavailable during {operation}: {cause}; memories cannot be written until "
            f"it is back (retrieval keeps serving from the in-process graph and vectors)"
        )


class KeyCollision(GraphStoreError, ValueError):
    """Two distinct memories share a 63-bit key; the second is refused."""

    def __init__(self, new: tuple[str, str], existing: tuple[str, str]) -> None:
        super().__init__(f"memory {new} has the same 63-bit key as {existing}; rename one of them")


class GraphStore(Protocol):
    """Memories and their links: a system of record plus an in-process adjacency.

    `resolve`, `expand` and `count` are synchronous reads of the adjacency: no I/O, and
    they keep answering while the system of record is down. The retriever depends on
    them (a vector hit's key → its memory, the k-hop walk), so the protocol names them.
    The store, not the retriever, owns the adjacency because only the store knows what
    its system of record holds: it checks keys against the mirror before a write, and
    after a write whose outcome was unknown (MongoDB) it re-reads exactly those
    memories. A second copy in the retriever could not follow either.
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def put(self, memory: Memory) -> None: ...
    async def put_many(self, memories: Sequence[Memory]) -> None: ...
    async def delete(self, namespace: str, id: str) -> bool: ...
    async def get_many(self, namespace: str, ids: Iterable[str]) -> dict[str, Memory]: ...
    def iter_all(self) -> AsyncIterator[Memory]: ...
    async def ping(self) -> None: ...
    def resolve(self, vid: int) -> tuple[str, str] | None: ...
    def expand(
        self,
        namespace: str,
        seeds: Sequence[str],
        hops: int = 2,
        limit: int = DEFAULT_EXPAND_LIMIT,
    ) -> list[tuple[str, int]]: ...
    def neighbours(self, vid: int) -> list[int]: ...
    def count(self, namespace: str | None = None) -> int: ...


def check_batch(memories: Sequence[Memory], exists: Mapping[str, set[str]]) -> None:
    """Raise `UnknownLinks` unless every link targets `exists[namespace]` or the batch.

    `exists` maps each namespace to the stored ids among the batch's link targets.
    """
    batch: dict[str, set[str]] = {}
    for memory in memories:
        batch.setdefault(memory.namespace, set()).add(memory.id)
    for namespace, ids in batch.items():
        known = ids | exists.get(namespace, set())
        missing = {link for m in memories if m.namespace == namespace for link in m.links} - known
        if missing:
            raise UnknownLinks(namespace, missing)


def link_targets(memories: Sequence[Memory]) -> dict[str, set[str]]:
    """Every namespace's link targets in a batch, to look up in the system of record."""
    targets: dict[str, set[str]] = {}
    for memory in memories:
        targets.setdefault(memory.namespace, set()).update(memory.links)
    return targets


def reject_duplicate_ids(memories: Sequence[Memory]) -> None:
    """A batch may name each memory once; a repeat would make the result order-dependent."""
    seen: set[tuple[str, str]] = set()
    for memory in memories:
        key = (memory.namespace, memory.id)
        if key in seen:
            raise InvalidMemory("id", f"{memory.id!r} appears twice in one batch")
        seen.add(key)


class BaseGraphStore:
    """The half of a graph store that is the same on every backend: the adjacency, and
    the order of a write.

    A write is checked before any I/O (a repeated id, a key collision), then runs under
    one lock: the backend's hook, then the adjacency -- only if the hook returned.
    Subclasses implement the protocol's I/O (`open`, `close`, `get_many`, `iter_all`,
    `ping`) and two hooks, which run under the lock:

    - `_write(memories)`: check the batch's links against the system of record
      (`check_batch`) and store the batch, atomically where the backend can;
    - `_remove(namespace, id)`: delete a memory and every link to it; True if it existed.

    `open()` fills `_adjacency` from the system of record (`Adjacency.put` per memory).
    A hook may also correct the adjacency from the system of record (`MongoStore`
    re-reads the memories of writes whose outcome was unknown); the lock covers that too.
    """

    def __init__(self) -> None:
        self._adjacency = Adjacency()
        self._write_lock = anyio.Lock()

    async def put(self, memory: Memory) -> None:
        """Insert or replace one memory; its links must already be stored."""
        await self.put_many([memory])

    async def put_many(self, memories: Sequence[Memory]) -> None:
        """Insert or replace a batch; links may point to stored memories or within the batch."""
        memories = list(memories)
        if not memories:
            return
        reject_duplicate_ids(memories)
        clash = self._adjacency.collision(memories)
        if clash is not None:
            raise KeyCollision(*clash)
        async with self._write_lock:
            await self._write(memories)
            for memory in memories:
                self._adjacency.put(memory.namespace, memory.id, memory.links)

    async def delete(self, namespace: str, id: str) -> bool:
        """Delete a memory and every link to it; False when it did not exist."""
        async with self._write_lock:
            deleted = await self._remove(namespace, id)
            self._adjacency.remove(namespace, id)
            return deleted

    def resolve(self, vid: int) -> tuple[str, str] | None:
        """The (namespace, id) behind a key, e.g. a vector-index hit; None if not stored."""
        return self._adjacency.resolve(vid)

    def expand(
        self,
        namespace: str,
        seeds: Sequence[str],
        hops: int = 2,
        limit: int = DEFAULT_EXPAND_LIMIT,
    ) -> list[tuple[str, int]]:
        """k-hop neighbours from the in-process adjacency; never touches the system of record."""
        return self._adjacency.expand(namespace, seeds, hops, limit)

    def neighbours(self, vid: int) -> list[int]:
        """Keys of the stored memories linked to or from `vid` (explicit links), from the adjacency."""
        return self._adjacency.neighbours(vid)

    def count(self, namespace: str | None = None) -> int:
        return self._adjacency.count(namespace)

    async def _write(self, memories: list[Memory]) -> None:
        raise NotImplementedError

    async def _remove(self, namespace: str, id: str) -> bool:
        raise NotImplementedError
