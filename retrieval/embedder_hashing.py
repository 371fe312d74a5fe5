"""The hashing embedder (the default): deterministic, offline, nothing to download.

Signed feature hashing of word unigrams, word bigrams and character trigrams, with
sublinear tf. The same vector for the same text in every process on every machine
(mmh3 with a fixed seed, never Python's salted `hash()`). It knows no synonyms; it does
make near-duplicates and texts sharing words score above unrelated ones.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise

import anyio
import mmh3
import numpy as np

from retrieval.embedder import EmbedderError, EmbedKind, check_kind, l2_normalise

DEFAULT_DIM = 384
HASH_SEED = 0x5EED_0001  # part of the on-disk format: changing it invalidates stored vectors
# A single short query embeds in ~20 µs; a thread hop costs more than that, so only
# batches this large (in characters) go to a worker thread.
INLINE_MAX_CHARS = 2_000

_WORD = re.compile(r"\w+")
# Char trigrams outnumber words ~5:1; without a lower weight they would drown the
# word features that carry most of the meaning.
_WEIGHT_UNIGRAM, _WEIGHT_BIGRAM, _WEIGHT_TRIGRAM = 1.0, 0.7, 0.35


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
        hashes.extend(_bigram_feature(a, b) for a, b in pairwise(words))
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

    async def embed(self, texts: Sequence[str], *, kind: EmbedKind = "passage") -> np.ndarray:
        """Symmetric: a query and a passage of the same words get the same vector (`kind` is checked, not used)."""
        check_kind(kind)
        texts = list(texts)
        if sum(map(len, texts)) <= INLINE_MAX_CHARS:
            return hash_embed(texts, self.dim)
        return await anyio.to_thread.run_sync(hash_embed, texts, self.dim)

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """The same vectors without an event loop (benchmarks, test servers)."""
        return hash_embed(list(texts), self.dim)
