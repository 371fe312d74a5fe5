"""The retrieval cache in process: the backend when no Redis is configured.

The epoch scheme and the protocol are in `retrieval.cache`; here an epoch is a plain
counter per namespace, and entries live in one LRU bounded by count and bytes.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from retrieval.cache import DEFAULT_TTL, CacheStats, Clock, FillEpochs, Outcome


class LocalCache:
    """In-process cache: LRU bounded by entry count and value bytes, TTL, epoch per namespace.

    Invalidated entries are not searched out; they fall off the LRU end or expire.
    """

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 2**20,
        ttl: float = DEFAULT_TTL,
        clock: Clock = time.monotonic,
    ) -> None:
        self.stats = CacheStats()
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, int, str], tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._epochs: dict[str, int] = {}
        self._fills = FillEpochs()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    async def get(self, namespace: str, key: str) -> bytes | None:
        return (await self.lookup(namespace, key))[0]

    async def lookup(self, namespace: str, key: str) -> tuple[bytes | None, Outcome]:
        epoch = self._epochs.get(namespace, 0)
        slot = (namespace, epoch, key)
        entry = self._entries.get(slot)
        if entry is not None and entry[0] <= self._clock():
            self._drop(slot)
            entry = None
        if entry is None:
            self.stats.misses += 1
            self._fills.remember(namespace, key, epoch)
            return None, "miss"
        self._entries.move_to_end(slot)
        self.stats.hits += 1
        return entry[1], "hit"

    async def set(self, namespace: str, key: str, value: bytes) -> None:
        epoch = self._epochs.get(namespace, 0)
        if self._fills.take(namespace, key) not in (None, epoch):
            return  # computed before an invalidate: must not be stored under the new epoch
        if len(value) > self.max_bytes:
            return  # would evict everything else and still not fit
        slot = (namespace, epoch, key)
        self._drop(slot)
        self._entries[slot] = (self._clock() + self.ttl, value)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    async def invalidate(self, namespace: str) -> None:
        self._epochs[namespace] = self._epochs.get(namespace, 0) + 1

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, slot: tuple[str, int, str]) -> None:
        entry = self._entries.pop(slot, None)
        if entry is not None:
            self._bytes -= len(entry[1])
