"""Reading flags from JSON: strict on what rolloutd uses, tolerant of what it doesn't.

`parse_flags_text` turns the bytes of flags.json into flags or raises `FlagsFileError`
naming the file, the line and the problem. `flag_from_dict` validates one flag's
mapping and raises `FlagValidationError` naming the field. Keys rolloutd does not use
are kept (other tools write them) unless they look like a misspelling of one it does
use, which would otherwise silently change nothing.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from flags.errors import FlagsFileError, FlagValidationError
from flags.model import (
    DEFAULT_STICKINESS,
    Constraint,
    Flag,
    Operator,
    ProgressiveConfig,
    Strategy,
)

FLAG_KEYS = {
    "enabled",
    "rollout_strategy",
    "rollout_percentage",
    "progressive_config",
    "constraints",
    "stickiness",
    "group_id",
    "description",
    "audit_id",
}
PROGRESSIVE_KEYS = {"initial_percentage", "end_percentage", "start_date", "end_date", "current_percentage"}
CONSTRAINT_KEYS = {"context_name", "operator", "values", "case_insensitive", "inverted"}
_SHORTHAND = re.compile(r"^\s*(NOT\s+)?([A-Za-z_][\w.-]*)\s+([A-Z_]+)\s+(.+?)\s*$")
MAX_DEPTH = 32  # objects and arrays within one another; a flag needs 4, extras of other tools a few more
TOO_DEEP = (
    f"nested too deeply: objects and arrays more than {MAX_DEPTH} levels within one another (a flags file needs 4)"
)


def parse_flags_text(text: str, path: Path | str) -> dict[str, Flag]:
    """Parse and validate a whole flags file; errors name `path` and the line."""
    if not text.strip():
        raise FlagsFileError(path, None, f"the file is empty ({len(text)} bytes); expected a JSON object of flags")
    try:
        raw = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise FlagsFileError(path, exc.lineno, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    except _DuplicateKey as dup:
        raise FlagsFileError(path, _duplicate_line(text), f"duplicate key {dup.key!r}") from None
    except RecursionError:  # the parser recurses per level: thousands of levels exhaust the stack
        raise FlagsFileError(path, None, TOO_DEEP) from None
    except ValueError as exc:  # e.g. a number past Python's 4300-digit limit for integers
        raise FlagsFileError(path, None, f"cannot be read: {unreadable(exc)}") from None
    if deeper_than(raw, MAX_DEPTH):  # kept extras must stay writable, and printable in messages
        raise FlagsFileError(path, None, TOO_DEEP)
    if not isinstance(raw, dict):
        raise FlagsFileError(path, 1, f"expected a JSON object mapping flag names to flags, got {type(raw).__name__}")
    flags = {}
    for name, body in raw.items():
        try:
            flags[name] = flag_from_dict(name, body)
        except FlagValidationError as exc:
            line = locate_line(text, field_path(name, exc.field))
            raise FlagsFileError(path, line, str(exc)) from None
    return flags


def unreadable(exc: ValueError) -> str:
    """What a parser's ValueError says, without Python's advice to the programmer."""
    return str(exc).split("; use sys.set_int_max_str_digits()")[0]


def deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON or TOML nests dicts and lists more than `limit` levels deep.
    Iterative, so it answers for any depth the parser accepted."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def flag_from_dict(name: str, body: Any) -> Flag:
    """Validate one flag's JSON mapping."""
    if not isinstance(name, str) or not name.strip():
        raise FlagValidationError(str(name), "name", "a flag name must be a non-empty string")
    if not isinstance(body, dict):
        raise FlagValidationError(name, "(flag)", f"expected an object, got {_kind(body)}")
    _check_keys(name, body, FLAG_KEYS, "")
    if "enabled" not in body:
        raise FlagValidationError(name, "enabled", 'missing; every flag needs `"enabled": true|false`')
    strategy = _strategy(name, body.get("rollout_strategy", Strategy.ALL.value))
    default_pct = 100.0 if strategy is Strategy.ALL else 0.0
    progressive = None
    if strategy is Strategy.PROGRESSIVE or body.get("progressive_config") is not None:
        progressive = _progressive(name, body.get("progressive_config"))
    return Flag(
        name=name,
        enabled=_bool(name, "enabled", body["enabled"]),
        rollout_strategy=strategy,
        rollout_percentage=_percentage(name, "rollout_percentage", body.get("rollout_percentage", default_pct)),
        progressive_config=progressive,
        constraints=_constraints(name, body.get("constraints", [])),
        stickiness=_string(name, "stickiness", body.get("stickiness", DEFAULT_STICKINESS)),
        group_id=_optional_string(name, "group_id", body.get("group_id")),
        description=_string(name, "description", body.get("description", ""), allow_empty=True),
        audit_id=_optional_string(name, "audit_id", body.get("audit_id")),
        extra={k: v for k, v in body.items() if k not in FLAG_KEYS},
    )


def parse_constraint(name: str, raw: Any, where: str = "constraints") -> Constraint:
    """One constraint, as an object or as the shorthand ``agent IN [Builder, QA]``."""
    if isinstance(raw, str):
        return _shorthand(name, raw, where)
    if not isinstance(raw, dict):
        raise FlagValidationError(
            name, where, f"expected an object or a string like 'agent IN [Builder, QA]', got {_kind(raw)}"
        )
    _check_keys(name, raw, CONSTRAINT_KEYS, where + ".")
    for key in ("context_name", "operator", "values"):
        if key not in raw:
            raise FlagValidationError(name, f"{where}.{key}", "missing")
    values = raw["values"]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FlagValidationError(name, f"{where}.values", "expected a list of strings")
    return Constraint(
        context_name=_string(name, f"{where}.context_name", raw["context_name"]),
        operator=_operator(name, f"{where}.operator", raw["operator"]),
        values=tuple(values),
        case_insensitive=_bool(name, f"{where}.case_insensitive", raw.get("case_insensitive", False)),
        inverted=_bool(name, f"{where}.inverted", raw.get("inverted", False)),
    )


def locate_line(text: str, path: tuple[str | int, ...]) -> int | None:
    """The line of the key at `path` (e.g. ``("f", "constraints", 0, "operator")``).

    A key that is missing is located at its nearest enclosing key, so "missing
    `enabled`" points at the flag that lacks it.
    """
    positions = _key_positions(text)
    for depth in range(len(path), 0, -1):
        for key_path, pos in positions:
            if key_path == path[:depth]:
                return text.count("\n", 0, pos) + 1
    return None


def field_path(flag: str, field: str) -> tuple[str | int, ...]:
    """``"constraints[0].operator"`` → ``(flag, "constraints", 0, "operator")``."""
    parts: list[str | int] = [flag]
    for piece in field.split("."):
        name, bracket, rest = piece.partition("[")
        index = rest[:-1] if rest.endswith("]") else ""
        if bracket and index.isascii() and index.isdigit():
            parts += [name, int(index)]
        else:
            parts.append(piece)  # a key that itself holds a "[" (an unknown key is named as written)
    return tuple(parts)


def _duplicate_line(text: str) -> int | None:
    seen: set[tuple[str | int | None, ...]] = set()
    for key_path, pos in _key_positions(text):
        if key_path in seen:
            return text.count("\n", 0, pos) + 1
        seen.add(key_path)
    return None


def _key_positions(text: str) -> list[tuple[tuple[str | int | None, ...], int]]:
    """Every object key in a JSON text with its full path and offset.

    Only used to point at a line when reporting an error, so it favours being short
    over being fast; it assumes the text is syntactically valid JSON.
    """
    out: list[tuple[tuple[str | int | None, ...], int]] = []  # None: a container before its first key
    stack: list[list[str | int | None]] = []  # [container, current key or index]
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            after = j + 1
            while after < n and text[after] in " \t\r\n":
                after += 1
            if stack and stack[-1][0] == "{" and after < n and text[after] == ":":
                stack[-1][1] = json.loads(text[i : j + 1])
                out.append((tuple(entry[1] for entry in stack), i))
            i = j + 1
            continue
        if ch in "{[":
            stack.append([ch, None if ch == "{" else 0])
        elif ch in "}]" and stack:
            stack.pop()
        elif ch == "," and stack and stack[-1][0] == "[":
            stack[-1][1] = int(stack[-1][1] or 0) + 1
        i += 1
    return out


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _check_keys(name: str, body: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for key in body:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise FlagValidationError(name, prefix + key, f"unknown key; did you mean {close[0]!r}?")
        if prefix:  # nested objects are ours alone: nothing to preserve there
            raise FlagValidationError(name, prefix + key, f"unknown key; expected one of {sorted(known)}")


def _shorthand(name: str, text: str, where: str) -> Constraint:
    match = _SHORTHAND.match(text)
    if not match:
        raise FlagValidationError(
            name, where, f"cannot read constraint {text!r}; write it like 'agent IN [Builder, QA]'"
        )
    negated, context_name, op, rest = match.groups()
    rest = rest.strip()
    if rest.startswith("[") and rest.endswith("]"):
        values = tuple(v.strip().strip("'\"") for v in rest[1:-1].split(",") if v.strip())
    else:
        values = (rest.strip("'\""),)
    return Constraint(context_name, _operator(name, where, op), values, inverted=bool(negated))


def _strategy(name: str, raw: Any) -> Strategy:
    try:
        return Strategy(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in Strategy)
        raise FlagValidationError(name, "rollout_strategy", f"{raw!r} is not one of {allowed}") from None


def _operator(name: str, where: str, raw: Any) -> Operator:
    try:
        return Operator(raw)
    except ValueError:
        allowed = ", ".join(o.value for o in Operator)
        raise FlagValidationError(name, where, f"operator {raw!r} is not one of {allowed}") from None


def _progressive(name: str, raw: Any) -> ProgressiveConfig:
    where = "progressive_config"
    if not isinstance(raw, dict):
        raise FlagValidationError(name, where, f"a progressive flag needs an object here, got {_kind(raw)}")
    _check_keys(name, raw, PROGRESSIVE_KEYS, where + ".")
    for key in ("initial_percentage", "end_percentage", "start_date", "end_date"):
        if key not in raw:
            raise FlagValidationError(name, f"{where}.{key}", "missing")
    start = _time(name, f"{where}.start_date", raw["start_date"])
    end = _time(name, f"{where}.end_date", raw["end_date"])
    if end <= start:
        raise FlagValidationError(
            name, f"{where}.end_date", f"{raw['end_date']} is not after start_date {raw['start_date']}"
        )
    current = raw.get("current_percentage")
    return ProgressiveConfig(
        initial_percentage=_percentage(name, f"{where}.initial_percentage", raw["initial_percentage"]),
        end_percentage=_percentage(name, f"{where}.end_percentage", raw["end_percentage"]),
        start_date=start,
        end_date=end,
        current_percentage=None if current is None else _percentage(name, f"{where}.current_percentage", current),
    )


def _constraints(name: str, raw: Any) -> tuple[Constraint, ...]:
    if not isinstance(raw, list):
        raise FlagValidationError(name, "constraints", f"expected a list, got {_kind(raw)}")
    return tuple(parse_constraint(name, item, f"constraints[{i}]") for i, item in enumerate(raw))


def _percentage(name: str, where: str, raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise FlagValidationError(name, where, f"expected a number from 0 to 100, got {raw!r}")
    if not 0 <= raw <= 100:
        raise FlagValidationError(name, where, f"{raw} is outside 0-100")
    return float(raw)


def _bool(name: str, where: str, raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise FlagValidationError(name, where, f"expected true or false, got {raw!r}")
    return raw


def _string(name: str, where: str, raw: Any, allow_empty: bool = False) -> str:
    if not isinstance(raw, str) or (not allow_empty and not raw.strip()):
        raise FlagValidationError(name, where, f"expected a non-empty string, got {raw!r}")
    return raw


def _optional_string(name: str, where: str, raw: Any) -> str | None:
    return None if raw is None else _string(name, where, raw)


def _time(name: str, where: str, raw: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(raw) if isinstance(raw, str) else None
    except ValueError:
        moment = None
    if moment is None:
        raise FlagValidationError(name, where, f"expected an ISO-8601 time like 2025-10-23T09:00:00Z, got {raw!r}")
    if moment.tzinfo is None:
        raise FlagValidationError(name, where, f"{raw!r} has no time zone; add Z (UTC) or an offset")
    return moment


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), repr(value))
