"""Evaluating flags for a context: pure functions over a frozen snapshot.

A flag is on for a context when the kill switch is off, the flag is enabled, its
constraints all match, and (for percentage and progressive flags) the context's
sticky bucket falls under the flag's percentage at `now`. The answer carries a
reason, as OpenFeature reports it, so operators and agents can tell "off because
disabled" from "off because not in the 5%".

Contexts are plain mappings: ``{"targetingKey": "task-123", "agent": "Builder", ...}``.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flags.bucket import in_rollout
from flags.model import DEFAULT_STICKINESS, KILL_SWITCH, Constraint, Flag, Operator, Strategy


class Reason(enum.StrEnum):
    STATIC = "STATIC"  # on/off for everyone it applies to
    TARGETING_MATCH = "TARGETING_MATCH"  # on because the constraints matched
    SPLIT = "SPLIT"  # decided by the sticky percentage bucket
    DEFAULT = "DEFAULT"  # off because the constraints did not match
    DISABLED = "DISABLED"  # off because `enabled` is false
    KILL_SWITCH = "KILL_SWITCH"  # off because `emergency_shutdown` is on
    ERROR = "ERROR"


class ErrorCode(enum.StrEnum):
    FLAG_NOT_FOUND = "FLAG_NOT_FOUND"
    TARGETING_KEY_MISSING = "TARGETING_KEY_MISSING"
    INVALID_CONTEXT = "INVALID_CONTEXT"
    PARSE_ERROR = "PARSE_ERROR"
    GENERAL = "GENERAL"


@dataclass(frozen=True, slots=True)
class Resolution:
    key: str
    value: bool
    reason: Reason
    error: ErrorCode | None = None
    detail: str = ""

    @property
    def variant(self) -> str:
        return "on" if self.value else "off"


def evaluate(flag: Flag, context: Mapping[str, Any], now: datetime, kill_switch: bool = False) -> Resolution:
    """Evaluate one flag for `context` at `now`."""
    return CompiledFlag(flag).evaluate(context, now, kill_switch)


class CompiledFlag:
    """A flag with its constraints turned into ready-to-call predicates."""

    __slots__ = ("flag", "key", "_checks", "_static", "_stickiness")

    def __init__(self, flag: Flag) -> None:
        self.flag = flag
        self.key = flag.name
        self._checks = tuple(_compile_constraint(c) for c in flag.constraints)
        self._static = flag.rollout_strategy is Strategy.ALL
        self._stickiness = flag.stickiness

    def evaluate(self, context: Mapping[str, Any], now: datetime, kill_switch: bool) -> Resolution:
        flag = self.flag
        if self.key == KILL_SWITCH:
            return Resolution(self.key, flag.enabled, Reason.STATIC)
        if kill_switch:
            return Resolution(self.key, False, Reason.KILL_SWITCH, detail=f"{KILL_SWITCH} is on")
        if not flag.enabled:
            return Resolution(self.key, False, Reason.DISABLED)
        for check in self._checks:
            if not check(context):
                return Resolution(self.key, False, Reason.DEFAULT)
        if self._static:
            return Resolution(self.key, True, Reason.TARGETING_MATCH if self._checks else Reason.STATIC)
        return self._split(context, flag.percentage_at(now))

    def _split(self, context: Mapping[str, Any], percentage: float) -> Resolution:
        if percentage <= 0 or percentage >= 100:
            return Resolution(self.key, percentage >= 100, Reason.SPLIT)
        value = context.get(self._stickiness)
        if value is None or value == "":
            return self._missing_stickiness()
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            return Resolution(
                self.key,
                False,
                Reason.ERROR,
                ErrorCode.INVALID_CONTEXT,
                f"context field {self._stickiness!r} must be a string or number to bucket on",
            )
        return Resolution(self.key, in_rollout(self.flag.bucket_group, str(value), percentage), Reason.SPLIT)

    def _missing_stickiness(self) -> Resolution:
        if self._stickiness == DEFAULT_STICKINESS:
            return Resolution(
                self.key,
                False,
                Reason.ERROR,
                ErrorCode.TARGETING_KEY_MISSING,
                f"flag {self.key!r} is rolled out by percentage and needs a targetingKey",
            )
        return Resolution(
            self.key,
            False,
            Reason.ERROR,
            ErrorCode.INVALID_CONTEXT,
            f"flag {self.key!r} is bucketed on context field {self._stickiness!r}, which is missing",
        )


class FlagSet:
    """An immutable snapshot of every flag, ready to evaluate.

    `revision` identifies the snapshot's content (it changes whenever any flag
    changes), which is what OFREP's bulk ETag is derived from.
    """

    def __init__(self, flags: Mapping[str, Flag], revision: str | None = None) -> None:
        self.flags: Mapping[str, Flag] = dict(flags)
        self._compiled = {name: CompiledFlag(f) for name, f in self.flags.items()}
        self.revision = revision or content_revision(self.flags)
        kill = self.flags.get(KILL_SWITCH)
        self.kill_switch = bool(kill and kill.enabled)

    def __contains__(self, key: str) -> bool:
        return key in self.flags

    def __len__(self) -> int:
        return len(self.flags)

    def evaluate(self, key: str, context: Mapping[str, Any], now: datetime) -> Resolution:
        compiled = self._compiled.get(key)
        if compiled is None:
            return Resolution(key, False, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND, f"flag {key!r} does not exist")
        return compiled.evaluate(context, now, self.kill_switch)

    def evaluate_all(self, context: Mapping[str, Any], now: datetime) -> list[Resolution]:
        kill = self.kill_switch
        return [c.evaluate(context, now, kill) for c in self._compiled.values()]


def content_revision(flags: Mapping[str, Flag]) -> str:
    """A short stable digest of the flags' content."""
    body = json.dumps({n: f.to_dict() for n, f in sorted(flags.items())}, sort_keys=True, default=str)
    return hashlib.blake2b(body.encode(), digest_size=12).hexdigest()


def _compile_constraint(c: Constraint) -> Callable[[Mapping[str, Any]], bool]:
    name, inverted = c.context_name, c.inverted
    fold: Callable[[str], str] = str.casefold if c.case_insensitive else (lambda s: s)
    values = tuple(fold(v) for v in c.values)
    test = _operator_test(c.operator, values)
    # As in Unleash: a missing field is in no list, so NOT_IN matches it and nothing else does.
    when_missing = (c.operator is Operator.NOT_IN) != inverted

    def check(context: Mapping[str, Any]) -> bool:
        raw = context.get(name)
        if raw is None:
            return when_missing
        return test(fold(raw if isinstance(raw, str) else str(raw))) != inverted

    return check


def _operator_test(op: Operator, values: tuple[str, ...]) -> Callable[[str], bool]:
    members = frozenset(values)
    if op is Operator.IN or op is Operator.STR_EQ:
        return members.__contains__
    if op is Operator.NOT_IN:
        return lambda v: v not in members
    if op is Operator.STR_CONTAINS:
        return lambda v: any(x in v for x in values)
    if op is Operator.STR_STARTS_WITH:
        return lambda v: v.startswith(values)
    return lambda v: v.endswith(values)  # STR_ENDS_WITH
