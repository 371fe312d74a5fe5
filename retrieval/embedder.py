"""Text embedders: turn texts into L2-normalised float32 rows for the vector index.

This module is the contract: the `Embedder` protocol, `EmbedderError`, `l2_normalise`,
and the grammar of `[retrieval] embedder` specs (`check_spec`). One file per backend:

- `embedder_hashing.HashingEmbedder` ("hashing", "hashing:DIM"; the default): signed
  feature hashing of word unigrams, word bigrams and character trigrams, with sublinear
  tf. Offline, nothing to download, the same vector for the same text everywhere.
- `embedder_http.HttpEmbedder` ("http:URL#MODEL"): an OpenAI-compatible
  `POST {url}/v1/embeddings` endpoint.
- `embedder_static.StaticModelEmbedder` ("static:wordllama"): a static sentence model
  whose weights ship inside a PyPI wheel. Optional: imported only when used.

`retrieval.backends.build_embedder(spec)` turns a spec into one of them.

Errors:

    EmbedderError (RuntimeError)   an embedder cannot produce vectors (names the
                                   backend or URL, the problem and the remedy)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

# The static models a spec may name: (wordllama config, dim). Here, not in the backend,
# so a config check needs no model package.
STATIC_MODELS = {"wordllama": ("l2_supercat", 256)}


class EmbedderError(RuntimeError):
    """An embedder could not turn texts into vectors."""

    def __init__(self, source: str, problem: str, remedy: str = "") -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"embedder {source}: {problem}" + (f" — {remedy}" if remedy else ""))


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into float32 rows of shape (n, dim), L2-normalised (zero rows stay zero).

    `name` is recorded in each index file (a different name rebuilds the index); `dim` may
    be learnt from the first answer (`HttpEmbedder`), so both are read-only here.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Scale each row to unit length in place; all-zero rows stay zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def check_spec(spec: str) -> tuple[str, tuple[Any, ...]]:
    """Parse an embedder spec without building anything: (kind, constructor arguments)."""
    kind, _, rest = spec.partition(":")
    if kind == "hashing":
        if not rest:
            return kind, ()
        if not rest.isdigit():
            raise EmbedderError(spec, f"dim {rest!r} is not a positive integer", 'use e.g. "hashing:512"')
        return kind, (int(rest),)
    if kind == "http":
        url, _, model = rest.partition("#")
        if not url.startswith(("http://", "https://")) or not model:
            raise EmbedderError(spec, "expected http:URL#MODEL", 'e.g. "http:http://127.0.0.1:8080#bge-small"')
        return kind, (url, model)
    if kind == "static":
        name = rest or "wordllama"
        if name not in STATIC_MODELS:
            raise EmbedderError(spec, "unknown static model", f"known: {', '.join(STATIC_MODELS)}")
        return kind, (name,)
    raise EmbedderError(
        spec, f"unknown embedder kind {kind!r}", 'use "hashing", "hashing:DIM", "http:URL#MODEL" or "static:NAME"'
    )
