"""The vector index: faiss behind an async API, exact by default, IVF or HNSW as options.

Ids are int64 chosen by the caller (who maps memory ids to them). Scores are inner
products of L2-normalised vectors, i.e. cosine similarity, highest first.

Kinds:
- "flat": `IndexIDMap2(IndexFlatIP)`, exact; removal compacts the flat storage.
- "ivf": exact (as "flat") until it holds `ivf_train_at` vectors; then k-means
  centroids are trained on everything it holds (nlist = √n, at most 4096) and the vectors
  move into an `IndexIVFFlat`, searched in the `nprobe` lists nearest the query
  (default: max(48, nlist / 6); a fixed 48 fell to recall 0.70 at 1,000,000).
  Removal is native (`remove_ids`). Training (and, whenever the index has grown to 4x
  what it was trained with, training again so lists stay balanced at √n) runs like an
  HNSW rebuild: in a worker thread while searches read the old index, then a swap.
  Recall@10 against exact: see the README.
- "hnsw": `IndexHNSWFlat` (inner product). HNSW cannot remove a node, so removal
  is a tombstone: the id's internal label is marked dead in `_label_ids` and added
  to an `IDSelectorNot(IDSelectorBatch)` passed to every search, so faiss skips dead
  labels while still walking through them as graph connectors, and always returns
  k live results. (Over-fetching k + tombstones would instead force efSearch up to
  thousands once tombstones pile up.) Re-adding a live id tombstones its old label
  and adds the vector under a fresh one. When tombstones exceed `rebuild_fraction`
  of the stored vectors, `rebuild()` runs: the live vectors are read back from the
  HNSW storage (no separate vector copy is kept) into a fresh graph.

Concurrency. faiss allows concurrent reads (search, reconstruct, serialize) but no
read concurrent with a write. So every faiss call holds `_rw`, a readers-writer
lock: searches share it, mutations take it alone; a waiting writer stops new
readers so a search storm cannot starve an add. Mutations are also serialised by
`_mutating` (an anyio.Lock), which a rebuild holds for its whole run: the new graph
is built in a worker thread while searches keep reading the old one, and the write
lock is taken only for the pointer swap. All faiss work runs in worker threads,
limited to one per core per index, and a cancelled caller still waits for
its thread, so a lock is never released while faiss is inside the index.

faiss's own OpenMP threads are pinned to 1 at import: on two cores, concurrent
requests already keep both busy from separate threads, and OpenMP teams on top
oversubscribe the cores (spinning OpenMP workers cost more than they parallelise
for one query's scan).

Persistence: one file, written with `atomic_write` (temp, fsync, rename, fsync
dir): a header line of JSON (format, kind, dim, count, epoch, payload length and
sha256) followed by the payload — the serialised faiss index, then for HNSW the
label → id table. One file, not index + sidecar, because two files cannot be
replaced atomically together. A torn or corrupt file fails `load` with
`IndexFileError` naming the file and the mismatch.

Errors:

    VectorIndexError (ValueError)
     ├── IndexShapeError    ids/vectors of the wrong shape, dtype or dimension
     └── IndexFileError     a saved index is missing, torn, corrupt or of another format
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import faiss
import numpy as np

from flags.atomic import atomic_write

faiss.omp_set_num_threads(1)
_FAISS: Any = faiss  # for what its stubs lack (SearchParametersHNSW exists at run time)

FORMAT = "rolloutd-vector-index/1"
_MAGIC = b"RVIX1 "
_CORES = max(1, os.cpu_count() or 1)
_DEAD = -1

Kind = Literal["flat", "ivf", "hnsw"]
T = TypeVar("T")
KINDS = ("flat", "ivf", "hnsw")
_EXACT_LIKE = ("flat", "ivf")  # id == label, removal by id
IVF_RETRAIN_GROWTH = 4
IVF_MIN_NPROBE, IVF_PROBE_SHARE = 48, 6  # default nprobe: max(48, nlist / 6)
Hits = list[list[tuple[int, float]]]


class VectorIndexError(ValueError):
    """Base class of the vector index's errors."""


class IndexShapeError(VectorIndexError):
    """Ids or vectors handed to the index do not fit it."""


class IndexFileError(VectorIndexError):
    """A saved index cannot be loaded."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {problem} — delete the file to rebuild the index from the graph store")


class ReadWriteLock:
    """Many readers or one writer, for tasks of one event loop; writers are preferred."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._changed = anyio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        while self._writer or self._writers_waiting:
            await self._changed.wait()
        self._readers += 1
        try:
            yield
        finally:
            self._readers -= 1
            if not self._readers:
                self._notify()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        self._writers_waiting += 1
        try:
            while self._writer or self._readers:
                await self._changed.wait()
        finally:
            self._writers_waiting -= 1
        self._writer = True
        try:
            yield
        finally:
            self._writer = False
            self._notify()


class VectorIndex:
    """int64 id → normalised float32 vector, searched by inner product."""

    def __init__(
        self,
        dim: int,
        kind: Kind = "flat",
        *,
        hnsw_m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 80,
        rebuild_fraction: float = 0.2,
        nprobe: int | None = None,
        ivf_train_at: int = 20_000,
    ) -> None:
        if kind not in KINDS:
            raise VectorIndexError(f"index kind {kind!r} is not one of {', '.join(KINDS)}")
        if dim < 1:
            raise VectorIndexError(f"dim {dim} < 1")
        self.dim, self.kind = dim, kind
        self.hnsw_m, self.ef_search, self.ef_construction = hnsw_m, ef_search, ef_construction
        self.rebuild_fraction = rebuild_fraction
        self.nprobe, self.ivf_train_at = nprobe, ivf_train_at
        self._ivf_trained_on = 0  # vectors the IVF lists were trained with (0: not trained)
        self.epoch = 0  # +1 on every mutation; caches key on it
        self._live: dict[int, int] = {}  # id → label (flat: label == id)
        self._label_ids = np.empty(0, dtype=np.int64)  # hnsw: label → id, _DEAD if tombstoned
        self._tombstones = 0
        self._selector: tuple[faiss.IDSelector, ...] | None = None
        # Any: faiss-cpu's stubs miss what SWIG adds at run time (IndexIDMap2.id_map, IndexIVF.nlist, ...)
        self._index: Any = self._new_faiss_index()
        self._rw = ReadWriteLock()
        self._mutating = anyio.Lock()
        self._saving = anyio.Lock()
        self._limiter: anyio.CapacityLimiter | None = None  # made in the loop that uses it
        self.saved_meta: dict = {}  # what `save(meta=, extra=)` stored, after `load`
        self.saved_extra: bytes = b""

    @property
    def probes(self) -> int:
        """The lists an IVF search probes: `nprobe` if set, else max(48, ⌈nlist / 6⌉), which
        keeps recall@10 near 0.9 as nlist grows with the collection (see the README)."""
        if self.nprobe:
            return self.nprobe
        nlist = self._index.nlist if self.trained else 1
        return max(IVF_MIN_NPROBE, -(-nlist // IVF_PROBE_SHARE))

    @property
    def trained(self) -> bool:
        """For "ivf": whether the vectors have moved into the IVF lists (always False otherwise)."""
        return isinstance(self._index, faiss.IndexIVF)

    def _new_faiss_index(self) -> faiss.Index:
        if self.kind in _EXACT_LIKE:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(_CORES)
        return await anyio.to_thread.run_sync(_single_threaded, func, *args, limiter=self._limiter)

    def __len__(self) -> int:
        return len(self._live)

    def ids(self) -> np.ndarray:
        """Every live id (int64, unordered)."""
        return np.fromiter(self._live, dtype=np.int64, count=len(self._live))

    def contains(self, id_: int) -> bool:
        return int(id_) in self._live

    @property
    def tombstones(self) -> int:
        """Dead HNSW labels still in the graph (always 0 for flat)."""
        return self._tombstones

    # --- mutations ----------------------------------------------------------------

    async def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under `ids`; an id already present is replaced."""
        ids_arr, vecs = self._check_batch(ids, vectors)
        if not ids_arr.size:
            return
        async with self._mutating:
            replaced = [i for i in ids_arr.tolist() if i in self._live]
            async with self._rw.write():
                try:
                    await self._in_thread(self._add_sync, ids_arr, vecs, replaced)
                finally:  # a cancelled caller still waited for the thread: the change happened
                    self.epoch += 1
            await self._maybe_rebuild()

    async def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove `ids`; return how many were present."""
        present = [i for i in dict.fromkeys(np.asarray(ids, dtype=np.int64).tolist()) if i in self._live]
        if not present:
            return 0
        async with self._mutating:
            present = [i for i in present if i in self._live]
            async with self._rw.write():
                try:
                    await self._in_thread(self._remove_sync, present)
                finally:  # a cancelled caller still waited for the thread: the change happened
                    self.epoch += 1
            await self._maybe_rebuild()
        return len(present)

    def _add_sync(self, ids: np.ndarray, vecs: np.ndarray, replaced: list[int]) -> None:
        if replaced:
            self._remove_sync(replaced)
        if self.kind in _EXACT_LIKE:
            self._index.add_with_ids(vecs, ids)
            self._live.update(zip(ids.tolist(), ids.tolist(), strict=False))
            return
        first = self._index.ntotal
        self._index.add(vecs)
        self._label_ids = np.concatenate([self._label_ids, ids])
        self._live.update(zip(ids.tolist(), range(first, first + len(ids)), strict=False))

    def _remove_sync(self, ids: list[int]) -> None:
        labels = [self._live.pop(i) for i in ids]
        if self.kind in _EXACT_LIKE:
            self._index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
            return
        self._label_ids[labels] = _DEAD
        self._tombstones += len(labels)
        self._refresh_selector()

    def _contents(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of an "ivf" index, staged (exact) or trained."""
        index = self._index
        if not isinstance(index, faiss.IndexIVF):
            ids = faiss.vector_to_array(index.id_map).astype(np.int64)
            return ids, faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
        lists: Any = index.invlists  # never None on a built IndexIVF (the stubs say Optional)
        id_parts, vector_parts = [np.empty(0, np.int64)], [np.empty((0, self.dim), np.float32)]
        for i in range(index.nlist):
            size = lists.list_size(i)
            if size:  # IVFFlat codes are the raw float32 vectors
                id_parts.append(faiss.rev_swig_ptr(lists.get_ids(i), size).astype(np.int64))
                codes = faiss.rev_swig_ptr(lists.get_codes(i), size * lists.code_size)
                vector_parts.append(np.frombuffer(bytes(codes), dtype=np.float32).reshape(size, self.dim))
        return np.concatenate(id_parts), np.concatenate(vector_parts)

    def _trained_ivf(self) -> faiss.Index:
        """A fresh IndexIVFFlat trained on, and holding, everything the index holds now."""
        ids, vectors = self._contents()
        n = len(ids)
        nlist = int(min(4096, max(1, round(np.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = (
            vectors if n <= 256 * nlist else vectors[np.random.default_rng(0).choice(n, 256 * nlist, replace=False)]
        )
        ivf.train(sample)
        ivf.add_with_ids(vectors, ids)
        return ivf

    def _refresh_selector(self) -> None:
        if not self._tombstones:
            self._selector = None
            return
        dead = np.flatnonzero(self._label_ids == _DEAD).astype(np.int64)
        batch = faiss.IDSelectorBatch(dead)
        self._selector = (faiss.IDSelectorNot(batch), batch)  # keep `batch` alive

    def needs_rebuild(self) -> bool:
        """HNSW: too many tombstones. IVF: time to train (the threshold is reached), or to
        train again (4x the vectors it was trained with: √n lists, balanced again)."""
        if self.kind == "ivf":
            n = self._index.ntotal
            return n >= self.ivf_train_at and n >= IVF_RETRAIN_GROWTH * self._ivf_trained_on
        return self.kind == "hnsw" and self._tombstones > self.rebuild_fraction * max(1, self._index.ntotal)

    async def _maybe_rebuild(self) -> None:
        if self.needs_rebuild():
            await self._rebuild_locked()

    async def rebuild(self) -> None:
        """Rebuild the HNSW graph from its live vectors, dropping tombstones (no-op for flat)."""
        async with self._mutating:
            await self._rebuild_locked()

    async def _rebuild_locked(self) -> None:
        if self.kind == "ivf":
            if not self.needs_rebuild():
                return
            async with self._rw.read():  # searches go on meanwhile; `_mutating` freezes the contents
                fresh = await self._in_thread(self._trained_ivf)
            async with self._rw.write():
                self._index, self._ivf_trained_on = fresh, fresh.ntotal
            return
        if self.kind != "hnsw" or not self._tombstones:
            return
        # Holding `_mutating` freezes the contents; searches go on reading the old
        # graph meanwhile (reads only), and wait just for the swap.
        async with self._rw.read():
            fresh, label_ids = await self._in_thread(self._build_from_live)
        async with self._rw.write():
            self._index, self._label_ids = fresh, label_ids
            self._live = dict(zip(label_ids.tolist(), range(len(label_ids)), strict=False))
            self._tombstones = 0
            self._selector = None

    def _build_from_live(self) -> tuple[faiss.Index, np.ndarray]:
        live = np.flatnonzero(self._label_ids != _DEAD)
        vectors = self._index.reconstruct_batch(live.astype(np.int64)) if live.size else np.empty((0, self.dim), "f4")
        fresh = self._new_faiss_index()
        fresh.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return fresh, self._label_ids[live].copy()

    # --- search -------------------------------------------------------------------

    async def search(self, queries: np.ndarray, k: int) -> Hits:
        """The k best (id, score) per query row, best first; fewer when the index is smaller."""
        if k < 1:
            raise IndexShapeError(f"k {k} < 1")
        queries = self._check_vectors(queries)
        if not queries.shape[0]:
            return []
        async with self._rw.read():
            return await self._in_thread(self._search_sync, queries, k)

    def _search_sync(self, queries: np.ndarray, k: int) -> Hits:
        k = min(k, len(self._live))
        if not k:
            return [[] for _ in range(queries.shape[0])]
        if self.kind == "ivf" and self.trained:
            params = faiss.SearchParametersIVF()
            params.nprobe = self.probes
            scores, ids = self._index.search(queries, k, params=params)
        elif self.kind in _EXACT_LIKE:
            scores, ids = self._index.search(queries, k)
        else:
            params = _FAISS.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
            if self._selector is not None:
                params.sel = self._selector[0]
            scores, labels = self._index.search(queries, k, params=params)
            ids = np.where(labels >= 0, self._label_ids[labels], -1)
        return [
            [(i, s) for i, s in zip(row_ids.tolist(), row_scores.tolist(), strict=False) if i != -1]
            for row_ids, row_scores in zip(ids, scores, strict=False)
        ]

    # --- validation ---------------------------------------------------------------

    def _check_vectors(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise IndexShapeError(f"vectors of shape {vectors.shape}, expected (n, {self.dim})")
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _check_batch(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids_arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = self._check_vectors(vectors)
        if ids_arr.shape[0] != vecs.shape[0]:
            raise IndexShapeError(f"{ids_arr.shape[0]} ids for {vecs.shape[0]} vectors")
        if np.unique(ids_arr).size != ids_arr.size:
            raise IndexShapeError("duplicate ids in one add() batch")
        if not np.isfinite(vecs).all():
            raise IndexShapeError("vectors contain NaN or infinity")
        return ids_arr, vecs

    # --- persistence --------------------------------------------------------------

    async def save(self, path: Path | str, *, meta: dict | None = None, extra: bytes = b"") -> None:
        """Write the index to `path` crash-safely: readers see the old file or the new one.

        `meta` (JSON) and `extra` (bytes) travel in the same file, under the same checksum,
        so a caller's bookkeeping about the index can never disagree with the index itself;
        `load` gives them back as `saved_meta` and `saved_extra`.
        """
        path = Path(path)
        async with self._saving:
            async with self._rw.read():
                blob = await self._in_thread(self._to_bytes, meta or {}, extra)
            await anyio.to_thread.run_sync(atomic_write, path, blob)

    def _to_bytes(self, meta: dict | None = None, extra: bytes = b"") -> bytes:
        payload = faiss.serialize_index(self._index).tobytes()
        faiss_len = len(payload)
        if self.kind == "hnsw":
            payload += self._label_ids.astype("<i8").tobytes()
        elif self.kind == "ivf":
            payload += self.ids().astype("<i8").tobytes()
        ids_len = len(payload)
        payload += extra
        header = {
            "meta": meta or {},
            "ids_bytes": ids_len,
            "format": FORMAT,
            "kind": self.kind,
            "dim": self.dim,
            "count": len(self._live),
            "epoch": self.epoch,
            "hnsw": [self.hnsw_m, self.ef_search, self.ef_construction, self.rebuild_fraction],
            "ivf": [self.nprobe, self.ivf_train_at, self._ivf_trained_on],
            "faiss_bytes": faiss_len,
            "payload_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        return _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload

    @classmethod
    async def load(cls, path: Path | str) -> VectorIndex:
        """Read an index written by `save`, raising `IndexFileError` if it is torn or corrupt."""
        return await anyio.to_thread.run_sync(cls.load_sync, Path(path))

    @classmethod
    def load_sync(cls, path: Path) -> VectorIndex:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IndexFileError(path, f"cannot read: {exc.strerror}") from exc
        header, payload = _split(path, data)
        try:
            return cls._from_parts(path, header, payload)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IndexFileError):
                raise
            # The checksum covers the payload, not the header line: a damaged header key or
            # value must still be a file error, never an exception nobody expects.
            raise IndexFileError(path, f"bad header ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _from_parts(cls, path: Path, header: dict, payload: bytes) -> VectorIndex:
        index = cls(
            header["dim"],
            header["kind"],
            **dict(zip(("hnsw_m", "ef_search", "ef_construction", "rebuild_fraction"), header["hnsw"], strict=False)),
            **dict(zip(("nprobe", "ivf_train_at"), header.get("ivf", ())[:2], strict=False)),
        )
        if header["kind"] == "ivf":
            index._ivf_trained_on = header["ivf"][2]
        try:
            index._index = faiss.deserialize_index(np.frombuffer(payload[: header["faiss_bytes"]], dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(path, f"faiss cannot read the index: {exc}") from exc
        index.epoch = header["epoch"]
        ids_end = header.get("ids_bytes", len(payload))
        index._restore_ids(path, payload[header["faiss_bytes"] : ids_end], header["count"])
        index.saved_meta = header.get("meta", {})
        index.saved_extra = payload[ids_end:]
        return index

    def _restore_ids(self, path: Path, tail: bytes, count: int) -> None:
        if self.kind == "flat":
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            self._live = dict(zip(ids.tolist(), ids.tolist(), strict=False))
        elif self.kind == "ivf":
            ids = np.frombuffer(tail, dtype="<i8").astype(np.int64)
            if ids.size != self._index.ntotal:
                raise IndexFileError(path, f"{ids.size} ids for {self._index.ntotal} vectors")
            self._live = dict(zip(ids.tolist(), ids.tolist(), strict=False))
        else:
            self._label_ids = np.frombuffer(tail, dtype="<i8").astype(np.int64)
            if self._label_ids.size != self._index.ntotal:
                raise IndexFileError(path, f"{self._label_ids.size} labels for {self._index.ntotal} vectors")
            live = np.flatnonzero(self._label_ids != _DEAD)
            self._live = dict(zip(self._label_ids[live].tolist(), live.tolist(), strict=False))
            self._tombstones = int(self._label_ids.size - live.size)
            self._refresh_selector()
        if len(self._live) != count:
            raise IndexFileError(path, f"{len(self._live)} ids inside, header says {count}")


def _single_threaded(func: Callable[..., T], *args: object) -> T:
    # OpenMP's thread count is per thread: the import-time setting covers only the importing
    # thread, and a worker thread would otherwise run every search with an OpenMP team of
    # one per core (measured: flat search p95 16 ms instead of 1.2 ms at 10,000 vectors).
    faiss.omp_set_num_threads(1)
    return func(*args)


def _split(path: Path, data: bytes) -> tuple[dict, bytes]:
    """Header and payload of a saved index, checked against each other."""
    if not data.startswith(_MAGIC):
        raise IndexFileError(path, f"not a vector index file (expected {FORMAT})")
    line_end = data.find(b"\n")
    try:
        header = json.loads(data[len(_MAGIC) : line_end])
    except (ValueError, UnicodeDecodeError) as exc:
        raise IndexFileError(path, f"unreadable header: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise IndexFileError(
            path, f"format {header.get('format') if isinstance(header, dict) else header!r} != {FORMAT}"
        )
    payload = data[line_end + 1 :]
    if len(payload) != header["payload_bytes"]:
        raise IndexFileError(path, f"torn: {len(payload)} payload bytes, header says {header['payload_bytes']}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise IndexFileError(path, "corrupt: payload sha256 does not match the header")
    return header, payload
