"""One lexical (BM25) index per namespace, on disk, reconciled with the store on start.

The retriever's lexical leg. Each namespace's index lives in its own directory under
`directory` (named by a hash: namespaces may hold any character) and records, for each
memory, the fingerprint of the text it indexed. On start the store's fingerprints are
compared with the index's: only memories added, changed or deleted since are indexed
again, so a restart never re-indexes what is unchanged, and never serves a stale text.
An index that cannot be opened is deleted and rebuilt from the store (the log says why).

Every call into the engine runs in a worker thread: indexing a batch of 1,000 texts
must not hold up the event loop that serves queries.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import structlog

from retrieval.index_files import namespace_stem, reconcile
from retrieval.lexical_index import LexicalIndex, LexicalIndexError

log = structlog.get_logger("rolloutd.retrieval")

RELOAD_BATCH = 4096


def lexical_dir(directory: Path, namespace: str) -> Path:
    return directory / namespace_stem(namespace)


class LexicalIndexes:
    """namespace → `LexicalIndex`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._indexes: dict[str, LexicalIndex] = {}

    async def _open(self, namespace: str) -> LexicalIndex:
        path = lexical_dir(self.directory, namespace)
        try:
            return await anyio.to_thread.run_sync(LexicalIndex.open, path)
        except LexicalIndexError as exc:
            log.warning("retrieval.lexical.rebuild", namespace=namespace, reason=f"unusable index: {exc}")
            await anyio.to_thread.run_sync(shutil.rmtree, path, True)
            return await anyio.to_thread.run_sync(LexicalIndex.open, path)

    async def load(self, namespace: str, prints: Mapping[int, int], texts: Mapping[int, str]) -> int:
        """Open `namespace`'s index and bring it in line with the store; return how many were indexed."""
        index = self._indexes[namespace] = await self._open(namespace)
        todo = reconcile(await anyio.to_thread.run_sync(index.fingerprints), dict(prints))
        if todo.remove:
            await anyio.to_thread.run_sync(index.remove, todo.remove)
        for start in range(0, len(todo.embed), RELOAD_BATCH):
            keys = todo.embed[start : start + RELOAD_BATCH]
            await anyio.to_thread.run_sync(index.upsert, [(k, texts[k], prints[k]) for k in keys])
        if todo:
            log.info(
                "retrieval.lexical.reconciled", namespace=namespace, indexed=len(todo.embed), removed=len(todo.remove)
            )
        return len(todo.embed)

    async def drop_except(self, namespaces: Sequence[str]) -> None:
        """Delete the index directories of namespaces the store no longer holds."""
        if not self.directory.exists():
            return
        expected = {lexical_dir(self.directory, ns) for ns in namespaces}
        for stale in self.directory.iterdir():
            if stale not in expected:
                await anyio.to_thread.run_sync(shutil.rmtree, stale, True)

    async def upsert(self, namespace: str, items: Sequence[tuple[int, str, int]]) -> None:
        index = self._indexes.get(namespace)
        if index is None:
            index = self._indexes[namespace] = await self._open(namespace)
        await anyio.to_thread.run_sync(index.upsert, list(items))

    async def remove(self, namespace: str, keys: Sequence[int]) -> None:
        index = self._indexes.get(namespace)
        if index is not None:
            await anyio.to_thread.run_sync(index.remove, list(keys))

    async def search(self, namespace: str, query: str, k: int) -> list[tuple[int, float]]:
        index = self._indexes.get(namespace)
        if index is None:
            return []
        return await anyio.to_thread.run_sync(index.search, query, k)

    def close(self) -> None:
        for index in self._indexes.values():
            index.close()
        self._indexes.clear()
