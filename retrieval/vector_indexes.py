"""One vector index per namespace, saved to disk and brought back in line with the store.

The retriever's vector leg: a namespace's search never sees another's vectors, and its
k results are all its own. Each index is saved under `directory` (see
`retrieval.index_files`) with a fingerprint of every memory's text it was computed
from; on start, only memories added, changed or deleted since the save are embedded
again. A file from another embedder or index kind, or a torn one, is rebuilt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import structlog

from retrieval.index_files import index_path, pack, reconcile, unpack
from retrieval.vector_index import Hits, IndexFileError, Kind, VectorIndex

log = structlog.get_logger("rolloutd.retrieval")

Embed = Callable[[Sequence[str]], Awaitable[np.ndarray]]
RELOAD_BATCH = 4096  # texts embedded per step while reconciling a loaded file


class VectorIndexes:
    """namespace → `VectorIndex`, with the fingerprints each was built from."""

    def __init__(self, directory: Path, embedder_name: str, dim: Callable[[], int], kind: Kind) -> None:
        """`dim` is asked when an index is made: an HTTP embedder learns it from its first answer."""
        self.directory, self.embedder_name, self._dim, self.kind = directory, embedder_name, dim, kind
        self._indexes: dict[str, VectorIndex] = {}
        self.fingerprints: dict[str, dict[int, int]] = defaultdict(dict)  # what each index was built from
        self.dirty: set[str] = set()

    @property
    def dim(self) -> int:
        return self._dim()

    def get(self, namespace: str) -> VectorIndex | None:
        return self._indexes.get(namespace)

    def _meta(self, namespace: str) -> dict[str, str]:
        return {"namespace": namespace, "embedder": self.embedder_name, "kind": self.kind}

    async def load(self, namespace: str, prints: Mapping[int, int], texts: Mapping[int, str], embed: Embed) -> int:
        """Load `namespace`'s file if usable, re-embed what differs; return how many were embedded."""
        path = index_path(self.directory, namespace)
        index, saved, why = None, {}, "no index file"
        if path.exists():
            try:
                index = await VectorIndex.load(path)
                meta, expected = index.saved_meta, self._meta(namespace)
                wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
                if wrong or index.dim != self.dim:
                    why, index = f"built with {wrong or {'dim': index.dim}}, now {expected}", None
                else:
                    saved = unpack(index.saved_extra)
            except (IndexFileError, ValueError) as exc:
                why, index = f"unusable index file: {exc}", None
        if index is None:
            log.info("retrieval.index.rebuild", namespace=namespace, memories=len(prints), reason=why)
            index, saved = VectorIndex(self.dim, self.kind), {}
        self._indexes[namespace] = index
        self.fingerprints[namespace] = dict(saved)
        todo = reconcile(saved, dict(prints))
        if todo.remove:
            await index.remove(todo.remove)
            for key in todo.remove:
                self.fingerprints[namespace].pop(key, None)
        for start in range(0, len(todo.embed), RELOAD_BATCH):
            keys = todo.embed[start : start + RELOAD_BATCH]
            await index.add(keys, await embed([texts[k] for k in keys]))
            for key in keys:
                self.fingerprints[namespace][key] = prints[key]
        if todo:
            self.dirty.add(namespace)
            log.info(
                "retrieval.index.reconciled", namespace=namespace, embedded=len(todo.embed), removed=len(todo.remove)
            )
        return len(todo.embed)

    def drop_files_except(self, namespaces: Sequence[str]) -> None:
        """Delete the saved files of namespaces the store no longer holds."""
        expected = {index_path(self.directory, ns) for ns in namespaces}
        for stale in self.directory.glob("*.rvix"):
            if stale not in expected:
                stale.unlink()

    async def add(self, namespace: str, keys: Sequence[int], vectors: np.ndarray, prints: Sequence[int]) -> None:
        index = self._indexes.get(namespace)
        if index is None:
            index = self._indexes[namespace] = VectorIndex(self.dim, self.kind)
        await index.add(keys, vectors)
        self.fingerprints[namespace].update(zip(keys, prints, strict=True))
        self.dirty.add(namespace)

    async def remove(self, namespace: str, key: int) -> None:
        index = self._indexes.get(namespace)
        if index is not None and index.contains(key):
            await index.remove([key])
        self.fingerprints[namespace].pop(key, None)
        self.dirty.add(namespace)

    async def search(self, namespace: str, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        index = self._indexes.get(namespace)
        if index is None or not len(index):
            return []
        hits: Hits = await index.search(vector, k)
        return hits[0]

    async def save_one(self, namespace: str) -> bool:
        """Write `namespace`'s file (the caller holds the write lock); False when it has no index."""
        self.dirty.discard(namespace)
        index = self._indexes.get(namespace)
        if index is None:
            return False
        try:
            await index.save(
                index_path(self.directory, namespace),
                meta=self._meta(namespace),
                extra=pack(self.fingerprints[namespace]),
            )
        except BaseException:
            self.dirty.add(namespace)
            raise
        return True
