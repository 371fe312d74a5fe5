"""The in-process adjacency: every stored memory's links, for k-hop walks without I/O.

A graph store mirrors its system of record here (see `retrieval.graph_store`), so
expansion is a dictionary walk and never a database query: `$graphLookup` is one
collection scan per hop on the test server, and a round trip per query on a real one.
Nodes are `memory_vid` keys, the same integers the vector index uses, so a vector hit
resolves to its memory here too.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable, Sequence

from retrieval.memory import Memory, memory_vid

DEFAULT_EXPAND_LIMIT = 100

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
        self._keys: dict[int, tuple[str, str]] = {}  # vid -> (namespace, id), stored nodes
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

    def collision(self, memories: Iterable[Memory]) -> tuple[tuple[str, str], tuple[str, str]] | None:
        """The first memory whose key already names another stored memory, and that one."""
        for memory in memories:
            known = self._keys.get(memory.vid)
            if known is not None and known != (memory.namespace, memory.id):
                return (memory.namespace, memory.id), known
        return None

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

    def neighbours(self, vid: int) -> list[int]:
        """The stored memories `vid` links to or is linked from, in key order (no I/O)."""
        keys = self._keys
        both = sorted(set(self._out.get(vid, _EMPTY)) | set(self._in.get(vid, _EMPTY)))
        return [n for n in both if n in keys]

    def expand(
        self,
        namespace: str,
        seeds: Sequence[str],
        hops: int = 2,
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
