"""The graph store on MongoDB (the system of record), through PyMongo's AsyncMongoClient.

One collection, `memories`: `{namespace, id, text, links, metadata, created_at}` with a
unique index on (namespace, id) and one on (namespace, links) so a delete finds the
memories that link to it. The database is the URI's path (default `rolloutd`).

Writes: validate links against the database, write, and only then update the
in-process `Adjacency`. When the server reports a replica set (or mongos) a write runs
in a transaction, so a batch or a delete with its link clean-up is all-or-nothing; on a
standalone server they run without one (a crash between a delete and its `$pull` can
leave a link string to a deleted memory; traversal ignores it). A write whose outcome
is unknown (network error, timeout, cancellation) marks its keys *dirty*: before the
next write the adjacency re-reads exactly those documents, so it converges on what the
database holds without a full rebuild.

Outage: operations fail fast (`timeout` for server selection, connect and socket) with
`StoreUnavailable`; `expand` and `count` keep answering from memory. PyMongo's monitor
reconnects on its own, so the first call after the server returns succeeds.

Limits: one process is assumed to write a given database. Replicas sharing it would
each need a change stream to follow the others' writes (not built).
Test server (secantusdb 0.7.0b3): reports a replica set named `secantus` and honours
transactions, including abort; no adaptation was needed for the commands used here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from collections.abc import Set as AbstractSet
from datetime import UTC
from typing import Any

import structlog
from pymongo import ASCENDING, AsyncMongoClient, ReplaceOne
from pymongo.errors import ConnectionFailure, PyMongoError

from retrieval.adjacency import Adjacency
from retrieval.graph_store import BaseGraphStore, GraphStoreError, StoreUnavailable, check_batch, link_targets
from retrieval.memory import Memory

log = structlog.get_logger("rolloutd.retrieval")

COLLECTION = "memories"
_FIELDS = {"_id": 0, "namespace": 1, "id": 1, "text": 1, "links": 1, "metadata": 1, "created_at": 1}


class MongoStore(BaseGraphStore):
    """Memories in MongoDB, their links mirrored in process for `expand`."""

    def __init__(self, uri: str, *, timeout: float = 3.0, database: str = "rolloutd") -> None:
        super().__init__()
        self.uri = uri
        self.timeout = timeout
        self.default_database = database
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._transactions = False
        self._dirty: set[tuple[str, str]] = set()

    @property
    def _open_client(self) -> AsyncMongoClient[dict[str, Any]]:
        if self._client is None:
            raise RuntimeError("MongoStore is not open; call `await store.open()` first")
        return self._client

    @property
    def _collection(self) -> Any:
        return self._open_client.get_default_database(self.default_database)[COLLECTION]

    async def open(self) -> None:
        """Connect, create the indexes, and rebuild the adjacency from the collection."""
        ms = int(self.timeout * 1000)
        self._client = AsyncMongoClient(
            self.uri,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=ms,
            tz_aware=True,
            appname="rolloutd",
        )
        try:
            async with self._translate("open"):
                hello = await self._client.admin.command("hello")
                self._transactions = "setName" in hello or hello.get("msg") == "isdbgrid"
                await self._collection.create_index(
                    [("namespace", ASCENDING), ("id", ASCENDING)], unique=True, name="namespace_id"
                )
                await self._collection.create_index(
                    [("namespace", ASCENDING), ("links", ASCENDING)], name="namespace_links"
                )
                adjacency = Adjacency()
                cursor = self._collection.find({}, {"_id": 0, "namespace": 1, "id": 1, "links": 1})
                async for doc in cursor.batch_size(5000):
                    adjacency.put(doc["namespace"], doc["id"], doc.get("links", ()))
        except BaseException:
            await self.close()
            raise
        self._adjacency = adjacency
        log.info("graph.opened", store="mongodb", memories=adjacency.count(), transactions=self._transactions)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _write(self, memories: list[Memory]) -> None:
        """The link check and the upserts, in one transaction when the server has them."""
        await self._resync()
        keys = {(m.namespace, m.id) for m in memories}
        async with self._translate("put", keys), self._session() as session:
            check_batch(memories, await self._existing(link_targets(memories), session))
            await self._collection.bulk_write(
                [ReplaceOne({"namespace": m.namespace, "id": m.id}, to_doc(m), upsert=True) for m in memories],
                ordered=True,
                session=session,
            )

    async def _remove(self, namespace: str, id: str) -> bool:
        """The delete and the `$pull` of links to it, in one transaction when the server has them."""
        await self._resync()
        async with self._translate("delete", {(namespace, id)}), self._session() as session:
            result = await self._collection.delete_one({"namespace": namespace, "id": id}, session=session)
            if result.deleted_count:
                await self._collection.update_many(
                    {"namespace": namespace, "links": id}, {"$pull": {"links": id}}, session=session
                )
        return bool(result.deleted_count)

    async def get_many(self, namespace: str, ids: Iterable[str]) -> dict[str, Memory]:
        """The stored memories among `ids`, by id (absent ids are simply missing)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        async with self._translate("get"):
            cursor = self._collection.find({"namespace": namespace, "id": {"$in": ids}}, _FIELDS)
            return {doc["id"]: from_doc(doc) async for doc in cursor}

    async def iter_all(self) -> AsyncIterator[Memory]:
        """Every stored memory, in no particular order (the vector index rebuilds from it)."""
        async with self._translate("iter_all"):
            async for doc in self._collection.find({}, _FIELDS).batch_size(1000):
                yield from_doc(doc)

    async def ping(self) -> None:
        """Raise `StoreUnavailable` unless MongoDB answers now."""
        if self._client is None:
            raise StoreUnavailable("MongoDB", "ping", "the store is not open")
        async with self._translate("ping"):
            await self._client.admin.command("ping")

    async def _existing(self, targets: dict[str, set[str]], session: Any) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for namespace, ids in targets.items():
            if ids:
                cursor = self._collection.find(
                    {"namespace": namespace, "id": {"$in": sorted(ids)}}, {"_id": 0, "id": 1}, session=session
                )
                found[namespace] = {doc["id"] async for doc in cursor}
        return found

    async def _resync(self) -> None:
        """Re-read the documents behind writes whose outcome was unknown."""
        if not self._dirty:
            return
        dirty = set(self._dirty)
        async with self._translate("resync"):
            stored: dict[tuple[str, str], list[str]] = {}
            for namespace in {ns for ns, _ in dirty}:
                ids = sorted(id for ns, id in dirty if ns == namespace)
                cursor = self._collection.find(
                    {"namespace": namespace, "id": {"$in": ids}}, {"_id": 0, "id": 1, "links": 1}
                )
                stored.update({(namespace, d["id"]): d.get("links", []) async for d in cursor})
        for key in dirty:
            if key in stored:
                self._adjacency.put(*key, stored[key])
            else:
                self._adjacency.remove(*key)
        self._dirty -= dirty
        log.info("graph.resynced", store="mongodb", memories=len(dirty))

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        if not self._transactions:
            yield None
            return
        async with self._open_client.start_session() as session:
            async with await session.start_transaction():
                yield session

    @contextlib.asynccontextmanager
    async def _translate(self, operation: str, keys: AbstractSet[tuple[str, str]] = frozenset()) -> AsyncIterator[None]:
        """Map PyMongo errors to ours; remember keys whose write may or may not have landed."""
        try:
            yield
        except GraphStoreError:
            raise  # ours, raised before anything was written
        except PyMongoError as exc:
            self._dirty |= keys
            cause = f"{type(exc).__name__}: {str(exc)[:200]}"
            if isinstance(exc, ConnectionFailure) or exc.has_error_label("TransientTransactionError"):
                log.warning("graph.unavailable", store="mongodb", operation=operation, error=cause)
                raise StoreUnavailable("MongoDB", operation, cause) from exc
            raise GraphStoreError(f"MongoDB refused {operation}: {cause}") from exc
        except BaseException:
            self._dirty |= keys  # cancelled mid-write: the server may have applied it
            raise


def to_doc(memory: Memory) -> dict[str, Any]:
    return {
        "namespace": memory.namespace,
        "id": memory.id,
        "text": memory.text,
        "links": list(memory.links),
        "metadata": dict(memory.metadata),
        "created_at": memory.created_at,
    }


def from_doc(doc: dict[str, Any]) -> Memory:
    created = doc["created_at"]
    if created.tzinfo is None:  # tz_aware=True makes this UTC-aware already; a foreign writer may not
        created = created.replace(tzinfo=UTC)
    return Memory.stored(
        id=doc["id"],
        namespace=doc["namespace"],
        text=doc["text"],
        links=tuple(doc.get("links", ())),
        metadata=doc.get("metadata", {}),
        created_at=created,
    )
