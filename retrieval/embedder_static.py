"""A static (bag-of-token-vectors) sentence model whose weights ship inside a PyPI wheel.

`wordllama` with its bundled 256-dim `l2_supercat` model (`embedder = "static:wordllama"`,
the default). Offline: weights and tokenizer are read from the installed package and a
missing file is an error, never a download; nothing is written under `~/.cache`. The
package is imported only when the model first loads.

A static model is symmetric, so `kind` (query or passage) changes nothing. It holds the
GIL for part of each batch (Python loops over the tokenizer's output), but briefly: a
batch of 1,000 passages of 60 words runs in under 0.2 s and delays the event loop by
under 10 ms, so batches are not split here (figures in PERFORMANCE.md#retrieval).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from retrieval.embedder import STATIC_MODELS, EmbedderError, EmbedKind, check_kind, l2_normalise


class StaticModelEmbedder:
    """A static sentence-embedding model whose weights ship inside a PyPI wheel.

    `wordllama` bundles `l2_supercat` at 256 dims (16 MB of safetensors) in its
    wheel, so loading reads package data and nothing from a model hub. The model is
    loaded on first use, in a worker thread.
    """

    SUPPORTED = STATIC_MODELS

    def __init__(self, name: str = "wordllama") -> None:
        if name not in self.SUPPORTED:
            raise EmbedderError(f"static:{name}", "unknown static model", f"known: {', '.join(self.SUPPORTED)}")
        self._config, self.dim = self.SUPPORTED[name]
        self.name = f"static:{name}"
        self._model: Any = None
        self._lock = anyio.Lock()

    def _load(self) -> Any:
        try:
            import wordllama  # noqa: PLC0415  (an optional extra: imported only when the model first loads)
        except ImportError as exc:
            raise EmbedderError(
                self.name, "the 'wordllama' package is not installed", "pip install 'wordllama==0.4.0.post1'"
            ) from exc

        # wordllama 0.4 looks for its bundled tokenizer under "tokenizer/" but ships it
        # in "tokenizers/", so it would fetch it from a hub. Pointing cache_dir at the
        # package finds both bundled files; disable_download turns any miss into an
        # error instead of a download.
        package_dir = Path(wordllama.__file__).parent
        try:
            return wordllama.WordLlama.load(
                config=self._config, dim=self.dim, cache_dir=package_dir, disable_download=True
            )
        except (FileNotFoundError, ValueError) as exc:
            raise EmbedderError(self.name, f"cannot load the bundled model: {exc}", "reinstall wordllama") from exc

    def _embed_sync(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        return l2_normalise(vectors.reshape(len(texts), self.dim))

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        check_kind(kind)  # symmetric model: a query embeds like a passage
        texts = list(texts)
        async with self._lock:
            if self._model is None:
                self._model = await anyio.to_thread.run_sync(self._load)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return await anyio.to_thread.run_sync(self._embed_sync, texts)
