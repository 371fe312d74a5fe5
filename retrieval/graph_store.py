"""The graph store contract, its errors, and the in-process adjacency both stores share.

A store keeps memories in a system of record (MongoDB, or SQLite when none is
configured) and mirrors their links in an `Adjacency` in process, so k-hop expansion
is a dictionary walk and never a database query (`$graphLookup` is one collection scan
per hop on the test server, and a round trip per query on a real one). The mirror is
rebuilt from the system of record on `open()` and changed only *after* a write to the
system of record succeeded, so a failed write leaves both as they were.

    GraphStoreError
     ├── UnknownLinks        links name memories that do not exist in that namespace
     ├── StoreUnavailable    the system of record cannot be reached (the retriever: 503)
     └── KeyCollision        two memories hash to one 63-bit key (never seen; refused)

`InvalidMemory` (a ValueError from `retrieval.memory`) covers malformed input.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Protocol

from retrieval.memory import InvalidMemory, Memory, memory_vid

DEFAULT_EXPAND_LIMIT = 100


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
    """Memories and their links: a system of record plus an in-process adjacency."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def put(self, memory: Memory) -> None: ...
    async def put_many(self, memories: Sequence[Memory]) -> None: ...
    async def delete(self, namespace: str, id: str) -> bool: ...
    async def get_many(self, namespace: str, ids: Iterable[str]) -> dict[str, Memory]: ...
    def iter_all(self) -> AsyncIterator[Memory]: ...
    def expand(
        self, namespace: str, seeds: Sequence[str], hops: int = 2,
        limit: int = DEFAULT_EXPAND_LIMIT,
    ) -> list[tuple[str, int]]: ...
    def count(self, namespace: str | None = None) -> int: ...
    async def ping(self) -> None: ...


def check_batch(memories: Sequence[Memory], exists: Mapping[str, set[str]]) -> None:
    """Raise `UnknownLinks` unless every link targets `exists[namespace]` or the batch.

    `exists` maps each namespace to the stored ids among the batch's link targets.
    """
    batch: dict[str, set[str]] = {}
    for memory in memories:
        batch.setdefault(memory.namespace, set()).add(memory.id)
    for namespace, ids in batch.items():
        known = ids | exists.get(namespace, set())
        missing = {l for m in memories if m.namespace == namespace for l in m.links} - known
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


_EMPTY = array("q")


class Adjacency:
    """Links of every stored memory, keyed by `memory_vid`, for BFS in process.

    Each node keeps two sorted `array('q')`s -- the keys it links to and the keys that
    link to it -- so an upsert can drop exactly its own old out-links (A→B and B→A are
    separate facts), and traversal visits neighbours in key order: the same order in
    every process and after every rebuild. Keys embed the namespace, and links never
    cross namespaces, so a walk can never leave its namespace.
    """

    def __init__(self) -> None:
        self._keys: dict[int, tuple[str, str]] = {}   # vid -> (namespace, id), stored nodes
        self._out: dict[int, array] = {}
        self._in: dict[int, array] = {}
        self._counts: Counter[str] = Counter()

    def __contains__(self, key: tuple[str, str]) -> bool:
        return memory_vid(*key) in self._keys

    def resolve(self, vid: int) -> tuple[str, str] | None:
        """The (namespace, id) behind a key, e.g. a vector-index hit."""
        return self._keys.get(vid)

    def count(self, namespace: str | None = None) -> int:
        return self._counts[namespace] if namespace is not None else len(self._keys)

    def check_keys(self, memories: Iterable[Memory]) -> None:
        """Raise `KeyCollision` before a write that would alias two memories."""
        for memory in memories:
            known = self._keys.get(memory.vid)
            if known is not None and known != (memory.namespace, memory.id):
                raise KeyCollision((memory.namespace, memory.id), known)

    def put(self, namespace: str, id: str, links: Iterable[str]) -> None:
        """Record a stored memory and replace its out-links."""
        vid = memory_vid(namespace, id)
        if vid not in self._keys:
            self._keys[vid] = (namespace, id)
            self._counts[namespace] += 1
        old = self._out.get(vid, _EMPTY)
        new = array("q", sorted({memory_vid(namespace, link) for link in links}))
        for target in set(old) - set(new):
            _discard(self._in, target, vid)
        for target in set(new) - set(old):
            insort(self._in.setdefault(target, array("q")), vid)
        if new:
            self._out[vid] = new
        else:
            self._out.pop(vid, None)

    def remove(self, namespace: str, id: str) -> bool:
        """Forget a memory and every link from or to it."""
        vid = memory_vid(namespace, id)
        if self._keys.pop(vid, None) is None:
            return False
        self._counts[namespace] -= 1
        for target in self._out.pop(vid, _EMPTY):
            _discard(self._in, target, vid)
        for source in self._in.pop(vid, _EMPTY):
            _discard(self._out, source, vid)
        return True

    def expand(
        self, namespace: str, seeds: Sequence[str], hops: int = 2,
        limit: int = DEFAULT_EXPAND_LIMIT,
    ) -> list[tuple[str, int]]:
        """Ids within `hops` links of the seeds (either direction), nearest first.

        Seeds are excluded. Within a hop, nodes come in discovery order: the seeds in the
        order given (best vector hit first), each node's neighbours in key order.
        """
        keys, out, inc = self._keys, self._out, self._in
        frontier = list(dict.fromkeys(memory_vid(namespace, s) for s in seeds))
        seen = set(frontier)
        frontier = [v for v in frontier if v in keys]
        found: list[tuple[str, int]] = []
        for hop in range(1, hops + 1):
            following: list[int] = []
            for vid in frontier:
                for neighbours in (out.get(vid, _EMPTY), inc.get(vid, _EMPTY)):
                    for n in neighbours:
                        if n in seen:
                            continue
                        seen.add(n)
                        key = keys.get(n)
                        if key is None:  # linked, but not (yet) stored here
                            continue
                        found.append((key[1], hop))
                        if len(found) >= limit:
                            return found
                        following.append(n)
            frontier = following
        return found


def _discard(index: dict[int, array], node: int, value: int) -> None:
    """Remove one `value` from `index[node]` (sorted), dropping the entry when empty."""
    values = index.get(node)
    if values is None:
        return
    at = bisect_left(values, value)
    if at < len(values) and values[at] == value:
        del values[at]
    if not values:
        del index[node]
