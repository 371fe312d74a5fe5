"""JSON from untrusted clients: bounded in size, depth and content before anything uses it.

Every public and admin endpoint reads its body through `read_json`, so that no handler,
C extension or store ever sees what a hostile client can put in valid-looking JSON:

    size       over `limit` bytes (declared or streamed)           → 413
    depth      nested deeper than MAX_DEPTH objects/arrays         → 400 (json's own recursion
               guard raises RecursionError near 1,000 levels; the limit here is far below it)
    strings    a lone UTF-16 surrogate (the escape "\\ud800" alone) → 400: it is not Unicode,
               cannot be encoded as UTF-8, and crashed mmh3 5.3.1 with a segfault
    integers   outside the signed 64-bit range                     → 400: BSON, SQLite and the
               Prometheus exposition cannot hold them; send such ids as strings
    numbers    NaN, Infinity, or a literal that overflows a double  → 400: not JSON (RFC 8259)

Errors name the JSON path of the offending value (`memories[3].metadata.owner`), so the
4xx answer says what to fix. The checks are one iterative walk over the parsed value,
so they cost O(values), never recursion.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

MAX_DEPTH = 32
INT64 = range(-(1 << 63), 1 << 63)
_SURROGATE = re.compile("[\ud800-\udfff]")


class RequestRejected(ValueError):
    """A request body that must not be used; `status` is the HTTP answer, `field` the JSON path."""

    def __init__(self, status: int, problem: str, field: str | None = None) -> None:
        self.status, self.problem, self.field = status, problem, field
        super().__init__(problem)


async def read_json(request: Request, limit: int, *, empty: Any = None) -> Any:
    """The request's body parsed by `loads`, refused with 413 past `limit` bytes.

    No body at all is `empty` when given, else a 400; whitespace alone is not JSON (400)."""
    raw = await read_bounded(request, limit)
    if not raw:
        if empty is not None:
            return empty
        raise RequestRejected(400, "the request body is empty; send a JSON object")
    return loads(raw)


async def read_bounded(request: Request, limit: int) -> bytes:
    """The raw body, read no further than `limit` bytes (a lying Content-Length included)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRejected(413, f"request body of {declared} bytes is over the limit of {limit}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise RequestRejected(413, f"request body is over the limit of {limit} bytes")
    return bytes(raw)


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON and `check` it; a `RequestRejected(400)` says what is wrong and where."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise RequestRejected(400, f"request body is nested too deeply (more than {max_depth} levels)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, the constants, >4300-digit ints
        raise RequestRejected(400, f"request body is not JSON: {exc}") from None
    check(value, max_depth=max_depth)
    return value


def check(value: Any, *, max_depth: int = MAX_DEPTH, path: str = "") -> None:
    """Raise `RequestRejected(400)` for the first value no store or hash may be given."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            _check_string(item, where)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if item not in INT64:
                raise RequestRejected(
                    400,
                    f"{_name(where)} is {_short(item)}, outside the 64-bit integer range; send it as a string",
                    where or None,
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise RequestRejected(400, f"{_name(where)} is not a finite number", where or None)
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                raise RequestRejected(400, f"{_name(where)} is nested more than {max_depth} levels deep", where or None)
            stack.extend(_children(item, where, depth + 1))


def _children(item: dict[str, Any] | list[Any], where: str, depth: int) -> list[tuple[Any, str, int]]:
    if isinstance(item, list):
        return [(v, f"{where}[{n}]", depth) for n, v in enumerate(item)]
    out = []
    for key, v in item.items():
        if isinstance(key, str):  # always, for parsed JSON; a mapping built in code may differ
            _check_string(key, where, is_key=True)
        out.append((v, f"{where}.{key}" if where else str(key), depth))
    return out


def _check_string(text: str, where: str, *, is_key: bool = False) -> None:
    if text.isascii():
        return
    bad = _SURROGATE.search(text)
    if bad is not None:
        what = f"a key of {_name(where)}" if is_key else _name(where)
        raise RequestRejected(
            400,
            f"{what} holds a lone surrogate (\\u{ord(bad.group()):04x} at character "
            f"{bad.start()}), which is not Unicode; send valid UTF-8 text",
            where or None,
        )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _name(where: str) -> str:
    return f"field {where!r}" if where else "the body"


def _short(number: int) -> str:
    text = str(number)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"
