"""Text embedders: turn texts into L2-normalised float32 rows for the vector index.

Three backends behind one small `Embedder` protocol:

- `HashingEmbedder` (the default): signed feature hashing of word unigrams, word
  bigrams and character trigrams, with sublinear tf. Offline, nothing to download,
  and the same vector for the same text in every process on every machine (mmh3
  with a fixed seed, never Python's salted `hash()`). It knows no synonyms; it does
  make near-duplicates and texts sharing words score above unrelated ones.
- `HttpEmbedder`: an OpenAI-compatible `POST {url}/v1/embeddings` endpoint.
- `StaticModelEmbedder`: a static (bag-of-token-vectors) sentence model whose
  weights ship inside a PyPI wheel — `wordllama` with its bundled 256-dim
  `l2_supercat` model. Optional: imported only when used.

`build_embedder(spec)` turns a config string into one of them.

Errors:

    EmbedderError (RuntimeError)   an embedder cannot produce vectors (names the
                                   backend or URL, the problem and the remedy)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import httpx
import mmh3
import numpy as np

DEFAULT_DIM = 384
HASH_SEED = 0x5EED_0001  # part of the on-disk format: changing it invalidates stored vectors
# A single short query embeds in ~20 µs; a thread hop costs more than that, so only
# batches this large (in characters) go to a worker thread.
INLINE_MAX_CHARS = 2_000

_WORD = re.compile(r"\w+")
# Char trigrams outnumber words ~5:1; without a lower weight they would drown the
# word features that carry most of the meaning.
_WEIGHT_UNIGRAM, _WEIGHT_BIGRAM, _WEIGHT_TRIGRAM = 1.0, 0.7, 0.35


class EmbedderError(RuntimeError):
    """An embedder could not turn texts into vectors."""

    def __init__(self, source: str, problem: str, remedy: str = "") -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"embedder {source}: {problem}" + (f" — {remedy}" if remedy else ""))


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into float32 rows of shape (n, dim), L2-normalised (zero rows stay zero)."""

    name: str
    dim: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    """Scale each row to unit length in place; all-zero rows stay zero."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


# --- hashing ----------------------------------------------------------------------


@lru_cache(maxsize=1 << 17)
def _word_features(word: str) -> tuple[int, ...]:
    """Hashes of a word's unigram feature followed by its boundary-marked char trigrams."""
    marked = f"<{word}>"
    grams = [mmh3.hash(_utf8("w:" + word), HASH_SEED, signed=False)]
    grams += [mmh3.hash(_utf8("c:" + marked[i : i + 3]), HASH_SEED, signed=False) for i in range(len(marked) - 2)]
    return tuple(grams)


@lru_cache(maxsize=1 << 17)
def _bigram_feature(first: str, second: str) -> int:
    return mmh3.hash(_utf8(f"b:{first} {second}"), HASH_SEED, signed=False)


def _utf8(text: str) -> bytes:
    """mmh3 gets bytes (the same hash as the str for valid text): given a str holding a lone
    surrogate, mmh3 5.3.1 segfaults (see flags/bucket.py)."""
    return text.encode("utf-8", "surrogatepass")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens after NFKC normalisation (so "ﬁle" and "file" agree)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def _collect_features(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row index, feature hash and type weight of every feature occurrence in `texts`."""
    rows: list[int] = []
    hashes: list[int] = []
    weights: list[float] = []
    for row, text in enumerate(texts):
        words = tokenize(text)
        start = len(hashes)
        for word in words:
            feats = _word_features(word)
            hashes.extend(feats)
            weights.append(_WEIGHT_UNIGRAM)
            weights.extend([_WEIGHT_TRIGRAM] * (len(feats) - 1))
        hashes.extend(_bigram_feature(a, b) for a, b in zip(words, words[1:]))
        weights.extend([_WEIGHT_BIGRAM] * (len(hashes) - len(weights)))
        rows.extend([row] * (len(hashes) - start))
    return (
        np.asarray(rows, dtype=np.int64),
        np.asarray(hashes, dtype=np.int64),
        np.asarray(weights, dtype=np.float32),
    )


def hash_embed(texts: Sequence[str], dim: int) -> np.ndarray:
    """Synchronous core of `HashingEmbedder`: (len(texts), dim) float32, rows normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    rows, hashes, weights = _collect_features(texts)
    if rows.size == 0:
        return out
    # tf per (text, feature) before hashing into buckets, so sublinear scaling applies
    # to the feature, not to whatever collided with it.
    keys, first, counts = np.unique((rows << 32) | hashes, return_index=True, return_counts=True)
    feature = keys & 0xFFFF_FFFF
    sign = np.where(feature >> 31, -1.0, 1.0).astype(np.float32)
    value = sign * weights[first] * (1.0 + np.log(counts, dtype=np.float32))
    flat = (keys >> 32) * dim + feature % dim
    out += np.bincount(flat, weights=value, minlength=out.size).reshape(out.shape).astype(np.float32)
    return l2_normalise(out)


class HashingEmbedder:
    """Deterministic, offline feature-hashing embedder (the default)."""

    def __init__(self, dim: int = DEFAULT_DIM) -> None:
        if not 8 <= dim <= 65_536:
            raise EmbedderError(f"hashing:{dim}", f"dim {dim} is outside 8..65536")
        self.dim = dim
        self.name = f"hashing:{dim}"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if sum(map(len, texts)) <= INLINE_MAX_CHARS:
            return hash_embed(texts, self.dim)
        return await anyio.to_thread.run_sync(hash_embed, texts, self.dim)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """The same vectors without an event loop (benchmarks, test servers)."""
        return hash_embed(list(texts), self.dim)


# --- OpenAI-compatible HTTP -------------------------------------------------------


class HttpEmbedder:
    """Embeddings from an OpenAI-compatible `/v1/embeddings` endpoint, batched.

    With `dim=None` the first response fixes the dimension; every later response
    must match it. Pass `client` to share a connection pool; it is then not closed here.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        dim: int | None = None,
        batch_size: int = 64,
        timeout: float = 10,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if batch_size < 1:
            raise EmbedderError(url, f"batch_size {batch_size} < 1")
        self.url = url.rstrip("/")
        self.model = model
        self.name = f"http:{self.url}#{model}"
        self.batch_size = batch_size
        self._dim = dim
        self._owns_client = client is None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), trust_env=False
        )
        self._headers = headers

    @property
    def dim(self) -> int:
        if self._dim is None:
            raise EmbedderError(self.url, "dimension unknown before the first response", "pass dim=")
        return self._dim

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> HttpEmbedder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        parts = [
            await self._embed_batch(texts[i : i + self.batch_size])
            for i in range(0, len(texts), self.batch_size)
        ]
        return l2_normalise(np.concatenate(parts))

    async def _embed_batch(self, texts: list[str]) -> np.ndarray:
        endpoint = f"{self.url}/v1/embeddings"
        try:
            response = await self._client.post(
                endpoint, json={"model": self.model, "input": texts}, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise EmbedderError(endpoint, f"request failed: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise EmbedderError(
                endpoint, f"HTTP {response.status_code}: {response.text[:200]!r}", "check url, model and api key"
            )
        try:
            body = response.json()
        except ValueError as exc:
            raise EmbedderError(endpoint, "response is not JSON") from exc
        return self._parse(endpoint, body, len(texts))

    def _parse(self, endpoint: str, body: Any, expected: int) -> np.ndarray:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != expected:
            got = len(data) if isinstance(data, list) else type(data).__name__
            raise EmbedderError(endpoint, f"expected {expected} embeddings in 'data', got {got}")
        try:
            ordered = sorted(data, key=lambda item: item["index"])
            matrix = np.asarray([item["embedding"] for item in ordered], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbedderError(endpoint, f"malformed 'data' items: {exc}") from exc
        if [item["index"] for item in ordered] != list(range(expected)):
            raise EmbedderError(endpoint, f"'index' values are not 0..{expected - 1}")
        if matrix.ndim != 2:
            raise EmbedderError(endpoint, "embeddings are not equal-length number lists")
        if self._dim is None:
            self._dim = matrix.shape[1]
        elif matrix.shape[1] != self._dim:
            raise EmbedderError(endpoint, f"dim {matrix.shape[1]} != configured {self._dim}", "fix dim= or the model")
        if not np.isfinite(matrix).all():
            raise EmbedderError(endpoint, "embeddings contain NaN or infinity")
        return matrix


# --- static model from a wheel ----------------------------------------------------


class StaticModelEmbedder:
    """A static sentence-embedding model whose weights ship inside a PyPI wheel.

    `wordllama` bundles `l2_supercat` at 256 dims (16 MB of safetensors) in its
    wheel, so loading reads package data and nothing from a model hub. The model is
    loaded on first use, in a worker thread.
    """

    SUPPORTED = {"wordllama": ("l2_supercat", 256)}

    def __init__(self, name: str = "wordllama") -> None:
        if name not in self.SUPPORTED:
            raise EmbedderError(f"static:{name}", "unknown static model", f"known: {', '.join(self.SUPPORTED)}")
        self._config, self.dim = self.SUPPORTED[name]
        self.name = f"static:{name}"
        self._model: Any = None
        self._lock = anyio.Lock()

    def _load(self) -> Any:
        try:
            from wordllama import WordLlama
        except ImportError as exc:
            raise EmbedderError(
                self.name, "the 'wordllama' package is not installed", "pip install 'wordllama==0.4.0.post1'"
            ) from exc
        import wordllama

        # wordllama 0.4 looks for its bundled tokenizer under "tokenizer/" but ships it
        # in "tokenizers/", so it would fetch it from a hub. Pointing cache_dir at the
        # package finds both bundled files; disable_download turns any miss into an
        # error instead of a download.
        package_dir = Path(wordllama.__file__).parent
        try:
            return WordLlama.load(config=self._config, dim=self.dim, cache_dir=package_dir, disable_download=True)
        except (FileNotFoundError, ValueError) as exc:
            raise EmbedderError(self.name, f"cannot load the bundled model: {exc}", "reinstall wordllama") from exc

    def _embed_sync(self, texts: list[str]) -> np.ndarray:
        vectors = np.asarray(self._model.embed(texts, norm=True), dtype=np.float32)
        return l2_normalise(vectors.reshape(len(texts), self.dim))

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        async with self._lock:
            if self._model is None:
                self._model = await anyio.to_thread.run_sync(self._load)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return await anyio.to_thread.run_sync(self._embed_sync, texts)


# --- from config ------------------------------------------------------------------


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
        if name not in StaticModelEmbedder.SUPPORTED:
            raise EmbedderError(spec, "unknown static model", f"known: {', '.join(StaticModelEmbedder.SUPPORTED)}")
        return kind, (name,)
    raise EmbedderError(spec, f"unknown embedder kind {kind!r}", 'use "hashing", "hashing:DIM", "http:URL#MODEL" or "static:NAME"')


def build_embedder(spec: str) -> Embedder:
    """Build an embedder from "hashing", "hashing:DIM", "http:URL#MODEL" or "static:NAME"."""
    kind, args = check_spec(spec)
    return {"hashing": HashingEmbedder, "http": HttpEmbedder, "static": StaticModelEmbedder}[kind](*args)
