"""The memory model: one stored piece of agent memory, and the rules it must satisfy.

A `Memory` is identified by `(namespace, id)`; its `links` name other memories of the
*same* namespace (a link string is an id, never a qualified name, so a link cannot
cross namespaces by construction). `memory_vid(namespace, id)` is the memory's 63-bit
integer key, shared by the vector index and the graph adjacency; it is a murmur3
hash, so every process and every restart computes the same key without a lookup table.

Limits are checked when a `Memory` is built, so a store never sees an invalid one and
the HTTP layer can turn `InvalidMemory.field` into a 4xx naming the field.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import mmh3

from flags.clock import utcnow
from flags.request_json import RequestRejected, check

MAX_TEXT_BYTES = 32 * 1024
MAX_LINKS = 256
MAX_METADATA_BYTES = 16 * 1024
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_VID_MASK = (1 << 63) - 1


class InvalidMemory(ValueError):
    """A memory breaks a rule of the model; `field` names the offending field."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"memory field {field!r}: {problem}")


def memory_vid(namespace: str, id: str) -> int:
    """The memory's stable positive int64 key: murmur3 x64 128-bit of `namespace\\0id`, low 63 bits."""
    # NUL cannot occur in a namespace or an id, so ("a", "b.c") and ("a.b", "c") differ.
    digest = mmh3.hash128(f"{namespace}\0{id}".encode(), 0, True, False)
    return (digest & _VID_MASK) or 1  # 0 is FAISS-friendly too, but "positive" is the contract


def new_memory_id() -> str:
    """A fresh random id for a memory the caller did not name (128 bits, URL-safe)."""
    return secrets.token_hex(16)


def validate_id(value: object, field: str = "id") -> str:
    """Return `value` if it is a valid memory id, else raise `InvalidMemory`."""
    if not isinstance(value, str):
        raise InvalidMemory(field, f"must be a string, got {type(value).__name__}")
    if not ID_PATTERN.fullmatch(value):
        raise InvalidMemory(
            field,
            f"{value[:40]!r} is not 1-128 characters of A-Z a-z 0-9 . _ : @ - starting with a letter or digit",
        )
    return value


def validate_namespace(value: object) -> str:
    """Return `value` if it is a valid namespace, else raise `InvalidMemory`."""
    if not isinstance(value, str):
        raise InvalidMemory("namespace", f"must be a string, got {type(value).__name__}")
    if not NAMESPACE_PATTERN.fullmatch(value):
        raise InvalidMemory(
            "namespace",
            f"{value[:40]!r} is not 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit",
        )
    return value


def validate_text(value: object) -> str:
    """Return `value` if it is non-blank text within MAX_TEXT_BYTES of UTF-8."""
    if not isinstance(value, str):
        raise InvalidMemory("text", f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidMemory("text", "is empty")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidMemory(
            "text",
            f"holds a lone surrogate (\\u{ord(value[exc.start]):04x} at character {exc.start}), "
            "which is not Unicode; send valid UTF-8 text",
        ) from None
    if size > MAX_TEXT_BYTES:
        raise InvalidMemory("text", f"{size:,} bytes > limit {MAX_TEXT_BYTES:,} bytes; split it into linked memories")
    return value


def validate_links(value: Iterable[object], own_id: str) -> tuple[str, ...]:
    """Return the links as a tuple of ids, duplicates dropped in order; no self-links."""
    if isinstance(value, (str, bytes)):
        raise InvalidMemory("links", "must be a list of ids, got a single string")
    value = list(value)
    if len(value) > MAX_LINKS:  # before de-duplicating: 100,000 copies of one id are not one link's work
        raise InvalidMemory("links", f"{len(value)} links > limit {MAX_LINKS}")
    links = tuple(dict.fromkeys(validate_id(link, "links") for link in value))
    if len(links) > MAX_LINKS:
        raise InvalidMemory("links", f"{len(links)} links > limit {MAX_LINKS}")
    if own_id in links:
        raise InvalidMemory("links", f"memory {own_id!r} links to itself")
    return links


def validate_metadata(value: object) -> Mapping[str, Any]:
    """Return a read-only copy of JSON-compatible metadata within MAX_METADATA_BYTES."""
    if not isinstance(value, Mapping):
        raise InvalidMemory("metadata", f"must be an object, got {type(value).__name__}")
    try:
        check(dict(value), path="metadata")  # lone surrogates, 64-bit integers, depth
    except RequestRejected as exc:
        raise InvalidMemory(exc.field or "metadata", exc.problem) from None
    try:
        # Both stores must round-trip it unchanged: JSON types only, no NaN.
        encoded = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidMemory("metadata", f"is not plain JSON ({exc})") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidMemory("metadata", f"{len(encoded.encode()):,} bytes of JSON > limit {MAX_METADATA_BYTES:,} bytes")
    if any(key.startswith("$") or "." in key or "\0" in key for key in _keys(value)):
        raise InvalidMemory("metadata", "keys may not start with '$' or contain '.' or NUL (MongoDB)")
    return MappingProxyType(json.loads(encoded))


def _keys(value: object) -> Iterable[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def normalise_time(value: object) -> datetime:
    """An aware datetime in UTC, truncated to the millisecond MongoDB stores."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidMemory("created_at", f"must be a timezone-aware datetime, got {value!r}")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class Memory:
    """One memory; built valid or not at all (see the module docstring for the limits)."""

    id: str
    namespace: str
    text: str
    links: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once, at construction
        validate_id(self.id)
        validate_namespace(self.namespace)
        validate_text(self.text)
        set_(self, "links", validate_links(self.links, self.id))
        set_(self, "metadata", validate_metadata(self.metadata))
        set_(self, "created_at", normalise_time(self.created_at))

    @classmethod
    def stored(
        cls,
        id: str,
        namespace: str,
        text: str,
        links: tuple[str, ...],
        metadata: Mapping[str, Any],
        created_at: datetime,
    ) -> Memory:
        """A memory read back from a store, which validated it when it was written: built
        without validating again (a restart reads every memory; validation was ~45% of it)."""
        memory = object.__new__(cls)
        for name, value in (
            ("id", id),
            ("namespace", namespace),
            ("text", text),
            ("links", links),
            ("metadata", metadata),
            ("created_at", created_at),
        ):
            object.__setattr__(memory, name, value)
        return memory

    @property
    def vid(self) -> int:
        return memory_vid(self.namespace, self.id)
