"""Vector index files under `state_dir/retrieval/vectors/`, one per namespace, and how a
loaded file is brought back in line with the system of record.

Each file carries, under the index's own checksum (`VectorIndex.save(meta=, extra=)`):
the namespace, the embedder's name and the index kind (`meta`), and a fingerprint per
memory -- (key, mmh3 of its text) -- of exactly what the vectors were computed from
(`extra`). On start, the store is read in full anyway (adjacency, texts), so comparing
fingerprints tells which memories were added, changed or deleted since the file was
saved: only those are embedded again. A file from another embedder or index kind, or
one that is torn or corrupt, is rebuilt from scratch (and the log says why).

Files are written every `save_interval` seconds while there are changes, and on a
clean stop; a crash loses at most the re-embedding of what changed since the last save.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import mmh3
import numpy as np

SUFFIX = ".rvix"


def namespace_stem(namespace: str) -> str:
    """A file-name-safe name for `namespace`'s index (hashed: namespaces may hold any character)."""
    return hashlib.sha256(namespace.encode()).hexdigest()[:24]


def index_path(directory: Path, namespace: str) -> Path:
    """The file of `namespace`'s vector index."""
    return directory / f"{namespace_stem(namespace)}{SUFFIX}"


def fingerprint(text: str) -> int:
    """A signed 64-bit digest of a memory's text."""
    return mmh3.hash64(text.encode("utf-8", "surrogatepass"), signed=True)[0]  # bytes: see flags/bucket.py


def pack(fingerprints: dict[int, int]) -> bytes:
    """key → fingerprint as little-endian int64 pairs."""
    pairs = np.fromiter((v for kv in fingerprints.items() for v in kv), dtype="<i8", count=2 * len(fingerprints))
    return pairs.tobytes()


def unpack(blob: bytes) -> dict[int, int]:
    pairs = np.frombuffer(blob, dtype="<i8")
    if pairs.size % 2:
        raise ValueError(f"fingerprint table of {len(blob)} bytes is not whole (key, fingerprint) pairs")
    return dict(zip(pairs[0::2].tolist(), pairs[1::2].tolist(), strict=False))


@dataclass
class Reconciliation:
    """What a loaded index lacks (`embed`: keys to (re)embed) and holds in excess (`remove`)."""

    embed: list[int] = field(default_factory=list)
    remove: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.embed or self.remove)


def reconcile(saved: dict[int, int], current: dict[int, int]) -> Reconciliation:
    """Compare the fingerprints a file was saved with against the store's, both key → fingerprint."""
    embed = [key for key, fp in current.items() if saved.get(key) != fp]
    remove = [key for key in saved if key not in current]
    return Reconciliation(embed, remove)
