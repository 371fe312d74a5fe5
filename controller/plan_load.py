"""Reading and checking a plan file; every problem is reported, each with its line.

`load_plan(path)` returns a `Plan` or raises `PlanError` listing *all* problems found
(not just the first), each as ``FILE:LINE: where: what`` (the class is in
controller/errors.py, importable from here too). `check_promql(plan)` asks
promtool (or a Prometheus server) whether each guard's query parses; it is separate
because it needs a tool or a server, and `rolloutctl plan validate` runs both.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from controller.errors import PlanError
from controller.plan import (
    BUILTIN_SIGNALS,
    DEFAULT_RESPONSE,
    Checkpoint,
    Direction,
    Guard,
    NoData,
    Plan,
    Response,
    Severity,
    Stage,
    digest_of,
    format_duration,
    parse_duration,
)
from flags.parse import deeper_than, unreadable

SECTIONS = {"plan", "stages", "checkpoints", "guards"}
PLAN_KEYS = {"name", "description", "flags", "guard_interval", "failure_limit", "failure_response", "start"}
STAGE_KEYS = {"at", "percentage", "agents", "name"}
CHECKPOINT_KEYS = {
    "at",
    "name",
    "requires_approval",
    "criteria",
    "max_rollbacks",
    "max_manual_interventions",
    "next_milestone",
}
GUARD_KEYS = {
    "name",
    "description",
    "query",
    "builtin",
    "direction",
    "warning",
    "critical",
    "emergency",
    "window",
    "sustain",
    "no_data",
    "on_warning",
    "on_critical",
    "on_emergency",
    "unit",
    "min_samples",
}
MAX_DEPTH = 8  # tables and arrays within one another; a plan needs 4
TOO_DEEP = f"nested too deeply: tables and arrays more than {MAX_DEPTH} levels within one another (a plan needs 4)"
LONGEST = timedelta(days=36525)  # 100 years: any duration or offset in a plan
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


@dataclass(frozen=True)
class Problem:
    where: str
    line: int | None
    message: str

    def render(self, file: Path | str) -> str:
        location = f"{file}:{self.line}" if self.line else str(file)
        return f"{location}: {self.where}: {self.message}"


def load_plan(path: Path | str) -> Plan:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError(path, [Problem("(file)", None, f"cannot read it: {exc}")]) from None
    return parse_plan(text, path)


def parse_plan(text: str, file: Path | str = "<plan>") -> Plan:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"at line (\d+)", str(exc))
        raise PlanError(
            file, [Problem("(syntax)", int(match.group(1)) if match else None, f"not valid TOML: {exc}")]
        ) from None
    except RecursionError:  # tomllib recurses per level of nesting
        raise PlanError(file, [Problem("(syntax)", None, TOO_DEEP)]) from None
    except ValueError as exc:  # e.g. a number past Python's 4300-digit limit for integers
        raise PlanError(file, [Problem("(syntax)", None, f"not valid TOML: {unreadable(exc)}")]) from None
    if deeper_than(raw, MAX_DEPTH):
        raise PlanError(file, [Problem("(syntax)", None, TOO_DEEP)])
    checker = _Checker(text)
    plan = checker.plan(raw)
    if checker.problems or plan is None:
        raise PlanError(file, checker.problems)
    return plan


class _Checker:
    """Walks the raw TOML, building the plan and collecting every problem on the way."""

    def __init__(self, text: str) -> None:
        self.problems: list[Problem] = []
        self._locate = _TomlLocator(text)
        self._digest = digest_of(text)

    def fail(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(Problem(_dotted(path), self._locate(path), message))

    def get(
        self,
        table: dict[str, Any],
        path: tuple[str | int, ...],
        key: str,
        convert: Callable[[Any], Any],
        default: Any = ...,
    ) -> Any:
        """`convert(table[key])`, recording a problem (and returning None) when it fails."""
        if key not in table:
            if default is ...:
                self.fail(path + (key,), f"missing; add `{key} = ...`")
                return None
            return default
        try:
            return convert(table[key])
        except (ValueError, TypeError) as exc:
            self.fail(path + (key,), str(exc))
            return None

    def plan(self, raw: dict[str, Any]) -> Plan | None:
        self.keys(raw, (), SECTIONS)
        head = self.table(raw, "plan")
        guards = self.guards(raw.get("guards", []))
        # Names as written, not only the guards that came out valid: a guard with a
        # problem of its own is reported once, not again by every checkpoint naming it.
        guard_names = {g.name for g in guards} | _declared_names(raw.get("guards"))
        interval = self.get(head, ("plan",), "guard_interval", _positive_duration, timedelta(minutes=5))
        plan = Plan(
            name=self.get(head, ("plan",), "name", _identifier),
            description=self.get(head, ("plan",), "description", _text, ""),
            flags=self.get(head, ("plan",), "flags", _flag_list),
            stages=self.stages(raw.get("stages", [])),
            checkpoints=self.checkpoints(raw.get("checkpoints", []), guard_names),
            guards=guards,
            guard_interval=interval,
            failure_limit=self.get(head, ("plan",), "failure_limit", _at_least(1), 5),
            failure_response=self.get(head, ("plan",), "failure_response", _choice(Response), Response.ROLLBACK_ZERO),
            start=self.get(head, ("plan",), "start", _moment, None),
            digest=self._digest,
        )
        self.keys(head, ("plan",), PLAN_KEYS)
        return None if self.problems else plan

    def table(self, raw: dict[str, Any], name: str) -> dict[str, Any]:
        value = raw.get(name)
        if not isinstance(value, dict):
            self.fail((name,), f"missing [{name}] table" if value is None else f"[{name}] must be a table")
            return {}
        return value

    def array(self, value: Any, name: str) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.fail((name,), f"write each entry as a [[{name}]] table")
            return []
        return value

    def keys(self, table: dict[str, Any], path: tuple[str | int, ...], known: set[str]) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
                self.fail(path + (key,), f"unknown {'key' if path else 'section'}{hint}")

    def stages(self, value: Any) -> tuple[Stage, ...]:
        entries = self.array(value, "stages")
        if not entries and value != []:
            return ()
        if not entries:
            self.fail(("stages",), "a plan needs at least one [[stages]] entry")
        stages: list[Stage] = []
        for i, entry in enumerate(entries):
            path = ("stages", i)
            self.keys(entry, path, STAGE_KEYS)
            at = self.get(entry, path, "at", _offset)
            pct = self.get(entry, path, "percentage", _percentage)
            agents = self.get(entry, path, "agents", _name_list, ())
            if at is None or pct is None or agents is None:
                continue
            if stages and at <= stages[-1].at:
                self.fail(
                    path + ("at",),
                    f"{format_duration(at)} is not after the previous stage's "
                    f"{format_duration(stages[-1].at)}; list stages in time order",
                )
            if stages and pct < stages[-1].percentage:
                self.fail(
                    path + ("percentage",),
                    f"{pct:g}% is below the previous stage's {stages[-1].percentage:g}%; "
                    f"a plan only expands (rollbacks are decided, not planned)",
                )
            dropped = [a for a in stages[-1].agents if a not in agents] if stages else []
            if dropped:
                self.fail(
                    path + ("agents",),
                    f"cohorts are cumulative: {', '.join(dropped)} from the previous stage is missing",
                )
            stages.append(Stage(i, at, pct, tuple(agents), self.get(entry, path, "name", _text, "")))
        return tuple(stages)

    def checkpoints(self, value: Any, guard_names: set[str]) -> tuple[Checkpoint, ...]:
        out: list[Checkpoint] = []
        for i, entry in enumerate(self.array(value, "checkpoints")):
            path = ("checkpoints", i)
            self.keys(entry, path, CHECKPOINT_KEYS)
            at = self.get(entry, path, "at", _offset)
            criteria = self.get(entry, path, "criteria", _name_list, tuple(sorted(guard_names)))
            for name in criteria or ():
                if name not in guard_names:
                    self.fail(
                        path + ("criteria",),
                        f"no guard named {name!r}; guards: {', '.join(sorted(guard_names)) or '(none)'}",
                    )
            if at is None:
                continue
            if out and at <= out[-1].at:
                self.fail(
                    path + ("at",),
                    f"{format_duration(at)} is not after the previous checkpoint's "
                    f"{format_duration(out[-1].at)}; list checkpoints in time order",
                )
            out.append(
                Checkpoint(
                    at=at,
                    name=self.get(entry, path, "name", _text, f"checkpoint at {format_duration(at)}"),
                    requires_approval=self.get(entry, path, "requires_approval", _boolean, False),
                    criteria=tuple(criteria or ()),
                    max_rollbacks=self.get(entry, path, "max_rollbacks", _at_least(0), 0),
                    max_manual_interventions=self.get(entry, path, "max_manual_interventions", _at_least(0), None),
                    next_milestone=self.get(entry, path, "next_milestone", _text, ""),
                )
            )
        return tuple(out)

    def guards(self, value: Any) -> tuple[Guard, ...]:
        out: list[Guard] = []
        for i, entry in enumerate(self.array(value, "guards")):
            guard = self.guard(entry, ("guards", i))
            if guard and any(g.name == guard.name for g in out):
                self.fail(("guards", i, "name"), f"a guard named {guard.name!r} is already defined")
            elif guard:
                out.append(guard)
        return tuple(out)

    def guard(self, entry: dict[str, Any], path: tuple[str | int, ...]) -> Guard | None:
        self.keys(entry, path, GUARD_KEYS)
        name = self.get(entry, path, "name", _identifier)
        query = self.get(entry, path, "query", _query, None)
        builtin = self.get(entry, path, "builtin", _builtin, None)
        if "query" not in entry and "builtin" not in entry:
            self.fail(path, "a guard needs a PromQL `query`, a `builtin` signal, or both")
        direction = self.get(entry, path, "direction", _choice(Direction), Direction.ABOVE)
        thresholds = {s: self.get(entry, path, str(s), _number) for s in Severity if str(s) in entry}
        if not thresholds:
            self.fail(path, "a guard needs at least one of warning, critical, emergency")
        elif None not in thresholds.values() and direction is not None:
            self.threshold_order(path, direction, thresholds)
        interval_default = timedelta(minutes=5)
        sustain = self.get(entry, path, "sustain", _duration, timedelta(0))
        window = self.get(entry, path, "window", _positive_duration, sustain or interval_default)
        no_data = self.get(entry, path, "no_data", _choice(NoData), NoData.HOLD)
        responses = {s: self.get(entry, path, f"on_{s}", _choice(Response), DEFAULT_RESPONSE[s]) for s in Severity}
        if self.problems and any(p.where.startswith(_dotted(path)) for p in self.problems):
            return None
        return Guard(
            name=name,
            query=query,
            builtin=builtin,
            direction=direction,
            thresholds=thresholds,
            window=window,
            sustain=sustain,
            no_data=no_data,
            responses=responses,
            unit=self.get(entry, path, "unit", _text, ""),
            min_samples=self.get(entry, path, "min_samples", _at_least(0), 0),
            description=self.get(entry, path, "description", _text, ""),
        )

    def threshold_order(
        self, path: tuple[str | int, ...], direction: Direction, thresholds: dict[Severity, float]
    ) -> None:
        ordered = sorted(thresholds.items())
        for (lo_sev, lo), (hi_sev, hi) in zip(ordered, ordered[1:], strict=False):
            wrong = hi <= lo if direction is Direction.ABOVE else hi >= lo
            if wrong:
                word = "above" if direction is Direction.ABOVE else "below"
                self.fail(
                    path + (str(hi_sev),),
                    f"{hi_sev} {hi:g} must be {word} {lo_sev} {lo:g} "
                    f'(direction = "{direction}": worse is further {word})',
                )


def check_promql(
    plan: Plan,
    *,
    promtool: str | None = None,
    prometheus_url: str | None = None,
    plan_text: str | None = None,
    use_promtool: bool = True,
) -> list[Problem]:
    """Parse every guard query with promtool, else with a Prometheus server; [] when all parse.

    `use_promtool=False` asks the server even when promtool is installed. Raises
    RuntimeError when neither is available (or the one asked fails), so a caller never
    mistakes "not checked" for "fine".
    """
    guards = [g for g in plan.guards if g.query]
    if not guards:
        return []
    locate = _TomlLocator(plan_text or "")
    tool = (promtool or shutil.which("promtool")) if use_promtool else None
    if tool:
        failures = _promtool_failures(tool, guards)
    elif prometheus_url:
        failures = _prometheus_failures(prometheus_url, guards)
    else:
        raise RuntimeError("cannot check PromQL: no promtool on PATH and no Prometheus URL given (--prometheus URL)")
    index = {g.name: i for i, g in enumerate(plan.guards)}
    return [
        Problem(
            f"guards[{index[name]}].query",
            locate(("guards", index[name], "query")),
            f"PromQL does not parse: {message}",
        )
        for name, message in failures
    ]


def _promtool_failures(tool: str, guards: list[Guard]) -> list[tuple[str, str]]:
    rules = {
        "groups": [
            {
                "name": "rolloutd_plan_guards",
                "rules": [{"record": f"rolloutd_guard_{g.name}", "expr": g.resolved_query()} for g in guards],
            }
        ]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as handle:
        json.dump(rules, handle)  # JSON is YAML
        handle.flush()
        try:
            done = subprocess.run([tool, "check", "rules", handle.name], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"cannot run promtool ({tool}): {exc}") from None
    failures = []
    for line in (done.stdout + done.stderr).splitlines():
        match = re.search(r'"rolloutd_guard_(\w+)": could not parse expression: (.*)$', line)
        if match:
            failures.append((match.group(1), match.group(2)))
    if done.returncode != 0 and not failures:
        raise RuntimeError(f"promtool failed: {(done.stdout + done.stderr).strip()}")
    return failures


def _prometheus_failures(url: str, guards: list[Guard]) -> list[tuple[str, str]]:
    failures = []
    with httpx.Client(base_url=url, timeout=10.0, trust_env=False) as client:
        for guard in guards:
            try:
                response = client.get("/api/v1/query", params={"query": guard.resolved_query()})
            except httpx.HTTPError as exc:
                raise RuntimeError(f"cannot ask Prometheus at {url} to parse the queries: {exc}") from None
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            if response.status_code == 400 and body.get("errorType") == "bad_data":
                failures.append((guard.name, body.get("error", "bad_data")))
            elif response.status_code >= 400:
                raise RuntimeError(f"Prometheus at {url} answered {response.status_code}: {response.text[:200]}")
    return failures


class _TomlLocator:
    """Finds the line of `stages[2].percentage`-style paths in TOML text (for messages only)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self._blocks: list[tuple[str, int, int]] = []  # (table name, index in its array, first line)
        counts: dict[str, int] = {}
        for number, line in enumerate(self._lines, start=1):
            match = self._HEADER.match(line)
            if match:
                name = match.group(2)
                index = counts.get(name, 0)
                counts[name] = index + 1
                self._blocks.append((name, index if match.group(1) == "[[" else -1, number))

    def __call__(self, path: tuple[str | int, ...]) -> int | None:
        if not path:
            return None
        name = str(path[0])
        index = path[1] if len(path) > 1 and isinstance(path[1], int) else -1
        rest = path[2:] if index != -1 else path[1:]
        for i, (block, block_index, first) in enumerate(self._blocks):
            # A whole section named without an index (`stage`) is its first header, [x] or [[x]].
            if block == name and (block_index == index or (index == -1 and not rest)):
                last = self._blocks[i + 1][2] - 1 if i + 1 < len(self._blocks) else len(self._lines)
                return (self._key_line(str(rest[0]), first, last) or first) if rest else first
        if len(path) == 1:  # a top-level `key = value`, written before the first header
            return self._key_line(name, 1, self._blocks[0][2] - 1 if self._blocks else len(self._lines))
        return None

    def _key_line(self, key: str, first: int, last: int) -> int | None:
        pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for number in range(first, last + 1):
            if pattern.match(self._lines[number - 1]):
                return number
        return None


def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(plan)"


def _declared_names(entries: Any) -> set[str]:
    """The `name`s written in an array of tables, valid or not."""
    if not isinstance(entries, list):
        return set()
    return {e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}


def _choice(kind: type[enum.StrEnum]) -> Callable[[Any], Any]:
    """A converter to one of `kind`'s values whose error lists them."""

    def convert(value: Any) -> Any:
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"expected one of {', '.join(repr(m.value) for m in kind)}, got {value!r}") from None

    return convert


def _builtin(value: Any) -> str:
    if value not in BUILTIN_SIGNALS:
        close = difflib.get_close_matches(str(value), BUILTIN_SIGNALS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown built-in signal {value!r}{hint}; known: {', '.join(BUILTIN_SIGNALS)}")
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(f"expected a name of letters, digits and _, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _percentage(value: Any) -> float:
    number = _number(value)
    if not 0 <= number <= 100:
        raise ValueError(f"{number:g} is outside 0-100")
    return number


def _at_least(low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"expected a whole number >= {low}, got {value!r}")
        return value

    return check


def _duration(value: Any) -> timedelta:
    try:
        delta = parse_duration(value)
    except OverflowError:
        delta = LONGEST + LONGEST
    if delta < timedelta(0):
        raise ValueError(f"{value!r} is negative; durations and offsets count forward from 0")
    if delta > LONGEST:  # later added to dates, which end in the year 9999
        raise ValueError(f'{value!r} is more than 100 years; a plan counts in hours, e.g. "72h"')
    return delta


def _positive_duration(value: Any) -> timedelta:
    delta = _duration(value)
    if delta <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero")
    return delta


_offset = _duration


def _moment(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
    if moment is None:
        raise ValueError(f"expected a time like 2025-10-23T09:00:00Z, got {value!r}")
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; add Z (UTC) or an offset")
    return moment


def _name_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"expected a list of names, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"names repeat in {value!r}")
    return tuple(value)


def _flag_list(value: Any) -> tuple[str, ...]:
    names = _name_list(value)
    if not names:
        raise ValueError("a plan rolls out at least one flag")
    for name in names:
        _identifier(name)
    if "emergency_shutdown" in names:
        raise ValueError("emergency_shutdown is the kill switch, not a flag to roll out")
    return names


def _query(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a PromQL expression, got {value!r}")
    unknown = [p for p in _PLACEHOLDER.findall(value) if p != "window"]
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{{' + u + '}}' for u in unknown)}; only {{{{window}}}} is filled in"
        )
    return value
