"""The live view of a rollout as lines of text: what `rolloutctl watch` paints each second.

Pure: `render(status, decisions, width=..., now=...)` reads only its arguments (and the
clock, when `now` is left out). `status` is what `GET /v1/rollout` answers (`rolloutctl
status --json`), `decisions` are journal entries from `GET /v1/rollout/journal`, oldest
first as the API returns them (ordered by `seq` when they carry one). It never reaches
the daemon, so `rolloutd demo` draws its timeline with the same function.

    phase5_hybrid_rag  RUNNING  plan h 30.2 / 72  kill switch off          14:02:07Z
    stage 2/5: Hour 12: 10%, adding Support and Marketing
    ...                                       (see `render` for the sections)

Every line fits `width` columns: a longer one is cut and ends in `~`, nothing wraps.
Below 100 columns the guard table folds its three thresholds into one column and drops
the position gauges; the rest degrades by truncation down to 60 columns. With `color`,
SGR codes wrap segments and take no columns. The view draws in ASCII only; text from
operators keeps its characters, but control characters become spaces and double-width
ones `?`, so one character is always one column.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

from controller.views.journal_text import said

WIDE = 100  # from here on: one column per threshold, and gauges
SEVERITIES = ("warning", "critical", "emergency")
PHASE_STYLE = {
    "running": "green",
    "completed": "green",
    "holding": "yellow",
    "awaiting_approval": "yellow",
    "rolled_back": "red",
    "emergency": "red",
}
ACTION_STYLE = {
    "stage_applied": "green",
    "approved": "green",
    "completed": "green",
    "resume": "green",
    "warning": "yellow",
    "hold": "yellow",
    "awaiting_approval": "yellow",
    "checkpoint": "cyan",
    "verdict": "cyan",
    "rollback": "red",
    "emergency": "red",
}
WAITS_FOR = {
    "awaiting_approval": "waits for an approval",
    "holding": "waits for the hold to end",
    "rolled_back": "waits for `rolloutctl resume`",
}
SEVERITY_STYLE = {"warning": "yellow", "critical": "red", "emergency": "red"}
SGR = {"bold": "1", "dim": "2", "red": "1;31", "green": "32", "yellow": "33", "cyan": "36"}


class Line:
    """Text in styled parts; `render` cuts it to a width and paints it (or not)."""

    def __init__(self, *parts: tuple[str, str | None]) -> None:
        self.parts: list[tuple[str, str | None]] = []
        for text, style in parts:
            self.add(text, style)

    def add(self, text: str, style: str | None = None) -> Line:
        self.parts.append(("".join(map(_cell, text)), style))
        return self

    def render(self, width: int, color: bool) -> str:
        parts = _rstripped(self.parts)
        cut = sum(len(t) for t, _ in parts) > width
        room, out = max(0, width - 1 if cut else width), []
        for text, style in parts:
            piece, room = text[:room], room - min(room, len(text))
            if piece:
                out.append(f"\x1b[{SGR[style]}m{piece}\x1b[0m" if color and style else piece)
        return "".join(out) + ("~" if cut and width > 0 else "")


def _cell(char: str) -> str:
    """One column per character: reasons come from operators, and no control character may
    move the terminal's cursor, nor a double-width one push the line past its width."""
    if not char.isprintable():
        return " "
    return "?" if unicodedata.east_asian_width(char) in ("W", "F") else char


def _rstripped(parts: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    parts = list(parts)
    while parts and not parts[-1][0].rstrip():
        parts.pop()
    if parts:
        parts[-1] = (parts[-1][0].rstrip(), parts[-1][1])
    return parts


def fit(text: str, width: int, style: str | None = None, color: bool = False) -> str:
    """One line of `text`, cut to `width` (for lines the caller adds, e.g. "daemon unreachable")."""
    return Line((text, style)).render(width, color)


def render(
    status: dict[str, Any],
    decisions: list[dict[str, Any]],
    *,
    width: int,
    now: datetime | None = None,
    color: bool = False,
    height: int | None = None,
) -> list[str]:
    """The frame: header, what needs an operator, stage and cohort, next transition, timeline,
    guards, then the latest decisions (most recent first) in whatever height is left."""
    now = now or datetime.now(UTC)
    top = [_header(status, now, width), *_attention(status), *_position(status, now)]
    sections = [top, _timeline(status, width), _guards(status, width)]
    lines = [line for i, section in enumerate(sections) for line in ([Line()] if i else []) + section]
    room = None if height is None else height - len(lines) - 2
    if room is None or room > 0:
        lines += [Line(), *_decisions(status, decisions, width, room)]
    if height is not None:
        lines = _squeeze(lines, height)
    return [line.render(width, color) for line in lines]


def _squeeze(lines: list[Line], height: int) -> list[Line]:
    """Too tall: drop the blank separators first, then cut from the bottom."""
    if len(lines) > height:
        lines = [line for line in lines if line.parts]
    return lines[: max(0, height)]


# -- header and position ------------------------------------------------------------------------


def _header(s: dict[str, Any], now: datetime, width: int) -> Line:
    """Name, phase, plan time, time scale, kill switch; the clock at the right when it fits.
    Under 80 columns the gaps narrow so that it still fits 60 columns with a typical name."""
    phase, elapsed, total = s["phase"], s["plan_hours_elapsed"], _plan_hours(s)
    gap = "  " if width >= 80 else " "
    line = Line((s["rollout"], "bold"), (gap, None), (phase.upper().replace("_", " "), PHASE_STYLE.get(phase)))
    line.add(f"{gap}plan h {_h(elapsed, total)} / {total:g}" if width >= 80 else f" h{_h(elapsed, total)}/{total:g}")
    if s.get("time_scale", 1) != 1:
        line.add(f"{gap}time x{s['time_scale']:g}")
    line.add(f"{gap}kill switch ").add(*(("ON", "red") if s.get("kill_switch") else ("off", None)))
    clock = f"{now.astimezone(UTC):%H:%M:%S}Z"
    used = sum(len(t) for t, _ in line.parts)
    if used + 2 + len(clock) <= width:
        line.add(" " * (width - used - len(clock))).add(clock, "dim")
    return line


def _attention(s: dict[str, Any]) -> list[Line]:
    """What an operator may have to act on, and the command that does it."""
    phase, reason = s["phase"], (s.get("hold_reason") or "").replace(" (`rolloutctl approve`)", "")
    if phase == "emergency" or s.get("emergency"):
        return [
            Line(("EMERGENCY: ", "red"), ("the kill switch is on: every flag is off", None)),
            Line(('  run `rolloutctl resume --clear-emergency --reason "..."` once it is safe', None)),
        ]
    if phase == "awaiting_approval":
        return [
            Line(("AWAITING APPROVAL: ", "yellow"), (reason, None)),
            Line(
                (
                    '  run `rolloutctl approve --reason "..."` to go on (`rolloutctl report` shows the '
                    "checkpoint's report)",
                    None,
                )
            ),
        ]
    if phase == "holding":
        hint = (
            "  (clears itself once every guard reports)"
            if s.get("held_by_operator") is False
            else ""
            if "rolloutctl" in reason
            else '  run `rolloutctl resume --reason "..."`'
        )
        return [Line(("HOLDING: ", "yellow"), (reason, None), (hint, None))]
    if phase == "rolled_back":
        return [
            Line(("ROLLED BACK: ", "red"), (reason, None)),
            Line(('  run `rolloutctl resume --reason "..."` to advance again', None)),
        ]
    return []


def _position(s: dict[str, Any], now: datetime) -> list[Line]:
    total = len(s.get("stages") or []) or None
    stage = (
        f"stage {s['stage']}{f'/{total - 1}' if total else ''}: {s['stage_name']}"
        if s["stage"] >= 0
        else "no stage applied yet"
    )
    agents = s.get("agents") or []
    cohort = (
        f"{s['percentage']:g}% of {len(agents)} agent{'s' if len(agents) != 1 else ''}: {', '.join(agents)}"
        if agents
        else f"{s['percentage']:g}% (no agents)"
    )
    return [Line((stage, None)), Line(("applied: ", "dim"), (cohort, "bold")), _next(s, now)]


def _next(s: dict[str, Any], now: datetime) -> Line:
    if not s.get("next_transition"):
        return Line(("next: nothing left to schedule", "dim"))
    if s.get("next_transition_due"):
        waits = WAITS_FOR.get(s["phase"], "waits for a clean guard evaluation")
        return Line((f"next: due now, {waits}: ", "yellow"), (s["next_transition"], "bold"))
    wall = (_moment(s["next_transition_at"]) - now).total_seconds()
    plan = (_moment(s["next_transition_plan_at"]) - _moment(s["plan_now"])).total_seconds() / 3600
    at = (_moment(s["next_transition_plan_at"]) - _moment(s["started_at"])).total_seconds() / 3600
    away = f", {plan:.1f} plan h away" if s.get("time_scale", 1) != 1 else ""
    return Line((f"next in {_span(wall)}: ", None), (s["next_transition"], "bold"), (f"  (plan h {at:g}{away})", "dim"))


# -- timeline -----------------------------------------------------------------------------------


class _Canvas:
    """One row of the timeline: characters with styles; labels placed without overlapping."""

    def __init__(self, size: int, fill: str = " ") -> None:
        self.chars: list[str] = [fill] * size
        self.styles: list[str | None] = [None] * size
        self.taken = [False] * size

    def put(self, col: int, char: str, style: str | None = None) -> None:
        self.chars[col], self.styles[col] = char, style

    def label(self, col: int, text: str, style: str | None = None, force: bool = False) -> bool:
        size = len(self.chars)
        start = max(0, min(col, size - len(text)))
        span = range(max(0, start - 1), min(size, start + len(text) + 1))  # one blank on either side
        if len(text) > size or (not force and any(self.taken[i] for i in span)):
            return False
        for i, char in enumerate(text):
            self.put(start + i, char, style)
            self.taken[start + i] = True
        return True

    def line(self, indent: str) -> Line:
        line, run, style = Line((indent, None)), "", self.styles[0] if self.styles else None
        for char, st in zip(self.chars, self.styles, strict=False):
            if st != style:
                line.add(run, style)
                run, style = "", st
            run += char
        return line.add(run, style)


def _timeline(s: dict[str, Any], width: int) -> list[Line]:
    """Legend, stage percentages, the bar (`=` behind now, `|` stages, `+`/`!` checkpoints), hours."""
    total, elapsed = _plan_hours(s), max(0.0, s["plan_hours_elapsed"])
    size = max(10, width - 4)

    def col(hours: float) -> int:
        return round(min(max(hours, 0.0), total) / total * (size - 1)) if total > 0 else 0

    now_col = col(elapsed)
    pct, bar, hours = _Canvas(size), _Canvas(size, "-"), _Canvas(size)
    for i in range(now_col + 1):
        bar.put(i, "=", "green")
    stages = s.get("stages") or []
    current = [st for i, st in enumerate(stages) if i == s["stage"]]
    for st in current + [st for st in stages if st not in current]:  # the applied stage's label first
        style = "bold" if st in current else "green" if st.get("applied") else None
        pct.label(col(st["at_hours"]), f"{st['percentage']:g}%", style)
        bar.put(col(st["at_hours"]), "|", "bold")
    hours.label(
        now_col, f"^h {_h(elapsed, total)}" if now_col + 8 < size else f"h {_h(elapsed, total)}^", "bold", force=True
    )
    for cp in s.get("checkpoints") or []:
        needs = cp.get("requires_approval") and not cp.get("approved")
        at = _checkpoint_hours(s, cp)
        bar.put(col(at), "!" if needs else "+", "yellow" if needs else "cyan")
        hours.label(col(at), f"{_at(at)}h" + ("!" if needs else ""), "yellow" if needs else "cyan")
    for st in stages:
        hours.label(col(st["at_hours"]), f"{_at(st['at_hours'])}h", "dim")
    bar.put(now_col, ">", "bold")
    key = (
        "   | stage (% above)   + checkpoint   ! needs approval   > now"
        if width >= WIDE
        else "  |stage  +checkpoint  !approval  >now"
    )
    legend = Line(("timeline", "bold"), (key, "dim"))
    return [legend, pct.line("  "), bar.line("  "), hours.line("  ")]


def _checkpoint_hours(s: dict[str, Any], cp: dict[str, Any]) -> float:
    if cp.get("at_hours") is not None:
        return float(cp["at_hours"])
    return (_moment(cp["plan_at"]) - _moment(s["started_at"])).total_seconds() / 3600


def _plan_hours(s: dict[str, Any]) -> float:
    """The timeline's length: the plan's last stage or checkpoint (a status without it: what it shows)."""
    if s.get("plan_hours"):
        return float(s["plan_hours"])
    ends = [_checkpoint_hours(s, cp) for cp in s.get("checkpoints") or []]
    return max([*ends, s["plan_hours_elapsed"], 1.0])


# -- guards ---------------------------------------------------------------------------------------


def _guards(s: dict[str, Any], width: int) -> list[Line]:
    guards = s.get("guards") or []
    if not guards:
        return [Line(("guards: none in this plan", "dim"))]
    wide = width >= WIDE
    name_w = max(len("GUARD"), *(len(g["name"]) for g in guards))
    if not wide:
        name_w = min(name_w, max(10, width - 46))  # the threshold column needs up to 14
    head = Line(("  " + "GUARD".ljust(name_w) + "  VALUE   ", "bold"))
    if wide:
        head.add("WARNING   CRITICAL  EMERGENCY VERDICT (xN in a row) POSITION", "bold")
    else:
        head.add("VERDICT             THRESHOLDS", "bold")
    gauge_w = min(40, width - (2 + name_w + 10 + 3 * 10 + 22)) if wide else 0  # what is left of the row
    rows = [head, *(_guard_row(g, name_w, wide, gauge_w) for g in guards)]
    every = s.get("guard_interval")
    title = Line(("guards", "bold"), (f"   checked every {every}" if every else "", "dim"))
    return [title, *rows]


def _guard_row(g: dict[str, Any], name_w: int, wide: bool, gauge_w: int) -> Line:
    verdict, severity = g["verdict"], g.get("severity")
    blind = g.get("consecutive_failures", 0) > 0  # no data counts only where the plan says silence is blindness
    mark, style = {
        "breach": ("! ", SEVERITY_STYLE.get(severity or "", "red")),
        "error": ("? ", "red"),
        "no_data": ("? ", "yellow") if blind else ("  ", "dim"),
    }.get(verdict, ("  ", None))
    name = g["name"] if len(g["name"]) <= name_w else g["name"][: name_w - 1] + "~"
    value = "  " + _fmt(g.get("value"), g.get("unit")).ljust(8)
    line = Line((mark, style), (name.ljust(name_w), style), (value, None))
    sign = ">" if g.get("direction", "above") == "above" else "<"
    limits = g.get("thresholds") or {"warning": g["threshold"]}
    text = _verdict(g)
    if wide:
        for sev in SEVERITIES:
            line.add((sign + _fmt(limits[sev], g.get("unit")) if sev in limits else "-").ljust(10))
        line.add(text.ljust(22), style if verdict != "pass" else "green")
        if gauge_w >= 12 and g.get("value") is not None:
            _gauge(line, g, limits, gauge_w)
        return line
    line.add(text.ljust(20), style if verdict != "pass" else "green")
    numbers = "/".join(_fmt(limits[sev], g.get("unit"), bare=True) for sev in SEVERITIES if sev in limits)
    return line.add(sign + numbers + _suffix(g.get("unit")))


def _verdict(g: dict[str, Any]) -> str:
    verdict = g["verdict"]
    if verdict == "breach":
        return f"BREACH {g.get('severity') or ''} x{g.get('consecutive_breaches', 0)}"
    failures = g.get("consecutive_failures", 0)
    text = {"pass": "pass", "no_data": "no data", "error": "ERROR", "not_evaluated": "not checked yet"}.get(
        verdict, verdict
    )
    return f"{text} x{failures}" if failures and verdict in ("no_data", "error") else text


def _gauge(line: Line, g: dict[str, Any], limits: dict[str, float], width: int) -> None:
    """`[====|==>..|.....]`: the value's badness, one zone per threshold; longer is worse."""
    severities = [sev for sev in SEVERITIES if sev in limits]
    bounds = [_best(g, limits, severities)] + [limits[sev] for sev in severities]
    bounds.append(bounds[-1] + (bounds[-1] - bounds[-2]))
    zones = len(bounds) - 1
    zone_w = max(2, (width - 2 - (zones - 1)) // zones)
    value, above = g["value"], g.get("direction", "above") == "above"
    passed = sum(1 for t in bounds[1:-1] if (value > t if above else value < t))
    a, b = bounds[passed], bounds[passed + 1]
    frac = min(max((value - a) / (b - a), 0.0), 1.0) if b != a else 0.0
    filled = passed * (zone_w + 1) + min(zone_w - 1, int(frac * zone_w))
    line.add("[", "dim")
    for i in range(zones * (zone_w + 1) - 1):
        zone = i // (zone_w + 1)
        char = "|" if i % (zone_w + 1) == zone_w else ">" if i == filled else "=" if i < filled else "."
        line.add(
            char,
            SEVERITY_STYLE.get(severities[zone - 1]) if zone and char != "." else ("green" if char != "." else "dim"),
        )
    line.add("]", "dim")


def _best(g: dict[str, Any], limits: dict[str, float], severities: list[str]) -> float:
    """Where the gauge starts: the best value the guard can have."""
    first = limits[severities[0]]
    if g.get("direction", "above") == "above":
        return 0.0 if first > 0 else first - 1
    perfect = {"percent": 100.0, "ratio": 1.0}.get(g.get("unit") or "")
    if perfect is not None and perfect > first:
        return perfect
    step = first - limits[severities[1]] if len(severities) > 1 else abs(first) or 1.0
    return first + step


# -- decisions ------------------------------------------------------------------------------------


def _decisions(s: dict[str, Any], decisions: list[dict[str, Any]], width: int, room: int | None) -> list[Line]:
    ordered = sorted(decisions, key=lambda d: d.get("seq", 0)) if all("seq" in d for d in decisions) else decisions
    latest = list(reversed(ordered))[:room]
    title = Line(("last decisions", "bold"), ("   most recent first", "dim"))
    if not latest:
        return [title, Line(("  none yet", "dim"))]
    start = _moment(s["started_at"])
    return [title, *(_decision_row(d, start, width >= WIDE) for d in latest)]


def _decision_row(d: dict[str, Any], start: datetime, wide: bool) -> Line:
    at = _moment(d["at"])
    hours = (at - start).total_seconds() / 3600
    line = Line((f"  h{hours:6.2f}  ", None))
    if wide:
        line.add(f"{at:%m-%d %H:%M}  ", "dim")
    severity = d.get("severity")
    line.add(d["action"].ljust(18), SEVERITY_STYLE.get(severity or "") or ACTION_STYLE.get(d["action"]))
    line.add(f"#{d['stage']} {d['percentage']:g}%".ljust(9))
    pending = "(being applied) " if d.get("status") == "intent" else ""
    return line.add(pending + said(d))


# -- formatting -----------------------------------------------------------------------------------


def _fmt(value: float | None, unit: str | None, bare: bool = False) -> str:
    """A guard value in its unit: ratio as %, seconds as ms, percent as %; `bare`: no unit."""
    if value is None:
        return "-"
    scaled = value * {"ratio": 100, "seconds": 1000}.get(unit or "", 1)
    return _num(scaled) + ("" if bare else _suffix(unit))


def _suffix(unit: str | None) -> str:
    return {"ratio": "%", "percent": "%", "seconds": "ms"}.get(unit or "", f" {unit}" if unit else "")


def _num(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def _h(hours: float, total: float) -> str:
    return f"{hours:.1f}" if total >= 10 else f"{hours:.2f}"


def _at(hours: float) -> str:
    """An hour of the plan as a label: 48, 49.5, 0.33."""
    return f"{hours:.2f}".rstrip("0").rstrip(".")


def _span(seconds: float) -> str:
    """A wall-clock duration as an operator reads it: 42s, 12m05s, 3h12m, 2d03h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 48 * 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
