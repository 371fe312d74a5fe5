"""The rollout report as one self-contained HTML page (`rolloutctl report --html FILE`).

    render_html(status, decisions, observations, reports, prometheus=None) -> str

Pure: the admin API's answers in (GET /v1/rollout, the whole journal, the guard
observations, every checkpoint report; optionally the seeds' metrics read from
Prometheus by `report_page.py`), one page out. Self-contained: inline CSS and inline
SVG, no JavaScript, and nothing fetched from elsewhere (fonts, images, scripts, links),
so the page can be attached to an incident and opened offline. Every text that came
from the daemon is escaped: a reason is data, never markup.

    header       rollout, phase, position, counts
    timeline     the applied percentage over plan hours (a step line through the journal's
                 stage_applied / rollback / emergency decisions), the plan's stages dashed,
                 checkpoints with their GO / HOLD / NO-GO, rollbacks and emergencies in red,
                 operator commands as blue diamonds, automatic holds in amber
    guards       one chart per guard over the hours lived so far: its values against its
                 thresholds, breaches as dots, no-data and error rounds as gaps with ticks
    prometheus   the seeds' metrics over the rollout, or why they could not be read
    checkpoints  each report: criteria, metrics, issues, recommendation
    decisions    the journal as a table
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from controller.views.journal_text import actor, is_operator, said
from controller.views.report_charts import (
    Frame,
    axes,
    downsample,
    esc,
    num,
    polylines,
    step_path,
    svg,
    value_range,
)

FLAG_CHANGES = ("stage_applied", "rollback", "emergency", "emergency_cleared")
SEVERITY_RANK = {None: 0, "warning": 1, "critical": 2, "emergency": 3}
OUTCOME_RANK = {"pass": 0, "no_data": 1, "error": 2, "breach": 3}
VERDICT_CLASS = {"GO": "go", "HOLD": "hold", "NO-GO": "nogo"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;margin:24px;max-width:1060px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}
h3{font-size:15px;margin:18px 0 6px}p.meta{color:#4b5563;margin:2px 0}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px}
th,td{border:1px solid #e5e7eb;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f9fafb}td.num{text-align:right;font-variant-numeric:tabular-nums}
.go{color:#15803d;font-weight:600}.hold{color:#b45309;font-weight:600}.nogo{color:#b91c1c;font-weight:600}
.note{color:#6b7280}.error{color:#b91c1c}.legend span{margin-right:14px}
tr.rollback td,tr.emergency td{background:#fef2f2}tr.operator td{background:#eff6ff}
svg.chart{display:block;margin:4px 0;max-width:100%;height:auto;font:11px system-ui,sans-serif}
svg .plot{fill:#fff;stroke:#d1d5db}svg .grid{stroke:#f3f4f6}svg .tick{fill:#6b7280}svg .axis{fill:#374151}
svg .applied{fill:none;stroke:#2563eb;stroke-width:2.2}svg .planned{fill:none;stroke:#9ca3af;stroke-dasharray:5 4}
svg .value{fill:none;stroke:#0f766e;stroke-width:1.4}svg .value.dot{fill:#0f766e;stroke:none}
svg .zone{fill:#fee2e2;opacity:.55}svg .now{stroke:#6b7280;stroke-dasharray:2 3}
svg .th-warning{stroke:#d97706}svg .th-critical{stroke:#dc2626}svg .th-emergency{stroke:#7f1d1d}
svg line.th{stroke-dasharray:6 3;stroke-width:1.2}
svg .lbl-warning{fill:#b45309}svg .lbl-critical{fill:#dc2626}svg .lbl-emergency{fill:#7f1d1d}
svg circle.breach{stroke:#fff;stroke-width:.6}svg .sev-warning{fill:#d97706}svg .sev-critical{fill:#dc2626}
svg .sev-emergency{fill:#7f1d1d}svg .t-no_data{stroke:#6b7280;stroke-width:1.4}svg .t-error{stroke:#7c3aed;stroke-width:1.4}
svg .cp line{stroke-width:1.5;stroke-dasharray:4 2}svg .cp.go line{stroke:#16a34a}svg .cp.hold line{stroke:#d97706}
svg .cp.nogo line{stroke:#dc2626}svg .cp.pending line{stroke:#9ca3af}svg .cp text{font-weight:600}
svg .cp.go text{fill:#15803d}svg .cp.hold text{fill:#b45309}svg .cp.nogo text{fill:#b91c1c}svg .cp.pending text{fill:#6b7280}
svg .rollback line,svg .emergency line{stroke:#dc2626;stroke-width:1.2}svg .rollback path{fill:#dc2626}
svg .emergency path{fill:#7f1d1d}svg .operator path{fill:#2563eb;stroke:#fff}svg .hold rect{fill:#d97706}
"""


def render_html(
    status: dict[str, Any],
    decisions: list[dict[str, Any]],
    observations: list[dict[str, Any]],
    reports: list[dict[str, Any]],
    prometheus: dict[str, Any] | None = None,
) -> str:
    """The whole page; `prometheus`: {"url", "error", "metrics": [{"title", "unit", "query",
    "points": [[plan hours, value or None], ...], "note"}]} from `report_page.prometheus_series`."""
    start = _moment(status["started_at"])
    seen = _seen(status, decisions, observations, start)
    planned = [*status.get("stages", []), *status.get("checkpoints", [])]
    span = max(seen, float(status.get("plan_hours") or 0), *(_hours(x["plan_at"], start) for x in planned))
    title = f"Rollout {status['rollout']}: {status['phase'].upper()}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f'<h1 id="title">{esc(title)}</h1>',
        _summary(status),
        '<h2 id="timeline">Timeline</h2>',
        timeline_svg(status, decisions, start, span),
        _legend(),
        '<h2 id="guards">Guards</h2>',
        *(
            guard_section(guard, _of_guard(observations, guard["name"]), start, seen)
            for guard in _guards(status, observations)
        ),
    ]
    if prometheus is not None:
        parts += ['<h2 id="prometheus">Prometheus</h2>', prometheus_section(prometheus, seen)]
    parts += [
        '<h2 id="checkpoints">Checkpoint reports</h2>',
        *([report_section(r) for r in reports] or ['<p class="note">no checkpoint reports yet</p>']),
        '<h2 id="decisions">Decisions</h2>',
        decisions_table(decisions, start),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


# -- header ------------------------------------------------------------------------------------


def _summary(status: dict[str, Any]) -> str:
    stage = (
        f"stage {status['stage']} ({status.get('stage_name') or '-'})" if status["stage"] >= 0 else "no stage applied"
    )
    scale = f", time_scale {status['time_scale']:g}" if status.get("time_scale", 1) != 1 else ""
    lines = [
        f"{status['percentage']:g}% at {stage}; agents: {', '.join(status['agents']) or 'none'}",
        f"started {status['started_at']}; plan time now {status['plan_now']} "
        f"(+{status['plan_hours_elapsed']:g}h{scale}); guards every {status['guard_interval']}",
        f"rollbacks {status['rollbacks']}, manual interventions {status['manual_interventions']}, "
        f"kill switch {'ON' if status.get('kill_switch') else 'off'}",
    ]
    if status.get("hold_reason"):
        lines.append(f"why: {status['hold_reason']}")
    if status.get("next_transition"):
        lines.append(f"next: {status['next_transition']} at {status['next_transition_at']}")
    return "".join(f'<p class="meta">{esc(line)}</p>' for line in lines)


def _legend() -> str:
    items = [
        ("#2563eb", "━ applied %"),
        ("#9ca3af", "┅ planned stages"),
        ("#16a34a", "┆ checkpoint GO"),
        ("#d97706", "┆ HOLD / ■ automatic hold"),
        ("#dc2626", "▼ rollback, ┆ NO-GO"),
        ("#7f1d1d", "✖ emergency"),
        ("#2563eb", "◆ operator action"),
    ]
    return '<p class="legend">' + "".join(f'<span style="color:{c}">{esc(t)}</span>' for c, t in items) + "</p>"


# -- timeline ------------------------------------------------------------------------------------


def timeline_svg(status: dict[str, Any], decisions: list[dict[str, Any]], start: datetime, span: float) -> str:
    """The applied percentage over plan hours, with every decision worth seeing as a marker."""
    planned = [(_hours(s["plan_at"], start), float(s["percentage"])) for s in status.get("stages", [])]
    changes = [d for d in decisions if d["action"] in FLAG_CHANGES]
    applied = [(0.0, 0.0)] + [(_hours(d["at"], start), float(d["percentage"])) for d in changes]
    top = max([v for _, v in planned + applied] + [1.0])
    frame = Frame(0.0, span, 0.0, top * 1.08, height=300, top=44, bottom=34)
    now = min(float(status["plan_hours_elapsed"]), span)
    body = [axes(frame, "applied %", lambda v: f"{v:g}%")]
    if planned:
        body.append(f'<path class="planned" d="{step_path(frame, [(0.0, 0.0), *planned], span)}"/>')
    body.append(f'<path class="applied" d="{step_path(frame, applied, now)}"><title>applied percentage</title></path>')
    body.append(
        f'<line class="now" x1="{frame.x(now)}" y1="{frame.plot_top}" x2="{frame.x(now)}" '
        f'y2="{frame.plot_bottom}"><title>now: +{now:g}h</title></line>'
    )
    body += _checkpoint_markers(frame, status, decisions, start)
    for d in decisions:
        body.append(_marker(frame, d, _hours(d["at"], start)))
    return svg(frame, "".join(body), f"{status['rollout']}: applied percentage over plan hours", "timeline")


def _checkpoint_markers(
    frame: Frame, status: dict[str, Any], decisions: list[dict[str, Any]], start: datetime
) -> list[str]:
    verdicts = {d.get("checkpoint"): d for d in decisions if d["action"] == "verdict"}
    out = []
    for i, cp in enumerate(status.get("checkpoints", [])):
        verdict = verdicts.get(i)
        word = (verdict.get("recommendation") or "?") if verdict else "pending"
        css = VERDICT_CLASS.get(word, "pending")
        x = frame.x(_hours(cp["plan_at"], start))
        tip = f"{cp['name']} at {cp['plan_at']}: " + (verdict["reason"] if verdict else "not reached yet")
        out.append(
            f'<g class="cp {css}"><title>{esc(tip)}</title>'
            f'<line x1="{x}" y1="{frame.plot_top - 18}" x2="{x}" y2="{frame.plot_bottom}"/>'
            f'<text x="{x + 3 if x < frame.plot_right - 100 else x - 3}" y="{frame.plot_top - 22}" '
            f'text-anchor="{"start" if x < frame.plot_right - 100 else "end"}">'
            f"{esc(f'checkpoint {i + 1}: {word}')}</text></g>"
        )
    return out


def _marker(frame: Frame, d: dict[str, Any], hours: float) -> str:
    x, tip = frame.x(hours), f"+{hours:.3g}h {d['action']} (stage {d['stage']}, {d['percentage']:g}%): {said(d)}"
    title = f"<title>{esc(tip)}</title>"
    out = []
    if d["action"] == "rollback":
        t = frame.plot_top
        out.append(
            f'<g class="marker rollback">{title}<line x1="{x}" y1="{t}" x2="{x}" y2="{frame.plot_bottom}"/>'
            f'<path d="M{x - 6},{t - 10}H{x + 6}L{x},{t}Z"/></g>'
        )
    elif d["action"] == "emergency":
        t = frame.plot_top
        out.append(
            f'<g class="marker emergency">{title}<line x1="{x}" y1="{t}" x2="{x}" y2="{frame.plot_bottom}"/>'
            f'<path d="M{x - 6},{t - 12}L{x + 6},{t}M{x + 6},{t - 12}L{x - 6},{t}" '
            f'style="stroke:#7f1d1d;stroke-width:2.5"/></g>'
        )
    elif d["action"] in ("hold", "resume") and not is_operator(d):
        y = frame.plot_bottom - 5
        out.append(f'<g class="marker hold">{title}<rect x="{x - 3}" y="{y - 3}" width="6" height="6"/></g>')
    if is_operator(d):
        y = frame.plot_bottom - 10
        diamond = f"M{x},{y - 7}L{x + 7},{y}L{x},{y + 7}L{x - 7},{y}Z"
        out.append(f'<g class="marker operator">{title}<path d="{diamond}"/></g>')
    return "".join(out)


# -- guards ------------------------------------------------------------------------------------


def guard_section(guard: dict[str, Any], observations: list[dict[str, Any]], start: datetime, span: float) -> str:
    counts = {k: sum(1 for o in observations if o["outcome"] == k) for k in OUTCOME_RANK}
    sign = ">" if guard.get("direction", "above") == "above" else "<"
    limits = ", ".join(f"{k} {sign} {v:g}" for k, v in guard.get("thresholds", {}).items())
    caption = (
        f"{len(observations)} rounds: {counts['pass']} pass, {counts['breach']} breach, "
        f"{counts['no_data']} no data, {counts['error']} error; breached when {limits or 'never'}; "
        f"last: {guard.get('verdict', '-')} {num(guard.get('value'))}"
    )
    head = f'<h3 id="guard-{esc(guard["name"])}">{esc(guard["name"])}</h3><p class="meta">{esc(caption)}</p>'
    return head + guard_svg(guard, observations, start, span)


def guard_svg(guard: dict[str, Any], observations: list[dict[str, Any]], start: datetime, span: float) -> str:
    """The guard's values over plan hours against its thresholds; breaches stand out, blind rounds are gaps."""
    name, above = guard["name"], guard.get("direction", "above") == "above"
    thresholds: dict[str, float] = guard.get("thresholds", {})

    def badness(o: dict[str, Any]) -> tuple[float, ...]:
        value = o["value"]
        extreme = (value if above else -value) if value is not None else float("-inf")
        return SEVERITY_RANK.get(o["severity"], 0), OUTCOME_RANK.get(o["outcome"], 0), extreme

    points = [(_hours(o["at"], start), o) for o in observations]
    kept = downsample(points, lambda p: p[0], lambda p: badness(p[1]))
    values = [o["value"] for _, o in kept if o["value"] is not None]
    low, high = value_range([*values, *thresholds.values()])
    frame = Frame(0.0, span, low, high, height=190)
    body = [axes(frame, f"{name}" + (f" ({guard['unit']})" if guard.get("unit") else ""))]
    body += _threshold_lines(frame, thresholds, above)
    runs: list[list[tuple[float, float]]] = [[]]
    for h, o in kept:
        if o["value"] is None or o["outcome"] in ("no_data", "error"):
            runs.append([])
            tip = f"+{h:.3g}h {o['at']}: {o['outcome']}" + (f": {o['detail']}" if o.get("detail") else "")
            body.append(
                f'<line class="t-{esc(o["outcome"])}" x1="{frame.x(h)}" y1="{frame.plot_bottom - 7}" '
                f'x2="{frame.x(h)}" y2="{frame.plot_bottom}"><title>{esc(tip)}</title></line>'
            )
        else:
            runs[-1].append((h, o["value"]))
    body.append(polylines(frame, runs, "value"))
    for h, o in kept:
        if o["outcome"] == "breach" and o["value"] is not None:
            tip = f"+{h:.3g}h {o['at']}: {num(o['value'])} breach ({o['severity']})"
            body.append(
                f'<circle class="breach sev-{esc(o["severity"])}" cx="{frame.x(h)}" cy="{frame.y(o["value"])}" '
                f'r="3"><title>{esc(tip)}</title></circle>'
            )
    if not observations:
        body.append(
            f'<text class="tick" x="{frame.plot_left + 10}" y="{frame.plot_top + 20}">no observations recorded</text>'
        )
    label = f"guard {name} over plan hours" + (
        f" ({len(kept)} of {len(points)} rounds, worst per bucket)" if len(kept) < len(points) else ""
    )
    return svg(frame, "".join(body), label, f"guard guard-{name}")


def _threshold_lines(frame: Frame, thresholds: dict[str, float], above: bool) -> list[str]:
    out = []
    if thresholds:
        first = min(thresholds.values()) if above else max(thresholds.values())
        edge, y = (frame.plot_top if above else frame.plot_bottom), frame.y(first)
        y_top, y_bottom = (edge, y) if above else (y, edge)
        out.append(
            f'<rect class="zone" x="{frame.plot_left}" y="{min(y_top, y_bottom)}" '
            f'width="{frame.plot_right - frame.plot_left}" height="{abs(y_bottom - y_top)}"/>'
        )
    for severity, value in thresholds.items():
        y = frame.y(value)
        out.append(
            f'<line class="th th-{esc(severity)}" x1="{frame.plot_left}" y1="{y}" x2="{frame.plot_right}" '
            f'y2="{y}"><title>{esc(f"{severity} threshold {value:g}")}</title></line>'
        )
        out.append(
            f'<text class="lbl-{esc(severity)}" x="{frame.plot_right + 4}" y="{y + 4}">'
            f"{esc(f'{severity} {value:g}')}</text>"
        )
    return out


# -- Prometheus ----------------------------------------------------------------------------------


def prometheus_section(prometheus: dict[str, Any], span: float) -> str:
    where = f'<p class="meta">from {esc(prometheus.get("url", "?"))}</p>'
    if prometheus.get("error"):
        return where + f'<p class="error">Prometheus unreachable: {esc(prometheus["error"])}</p>'
    out = [where]
    for metric in prometheus.get("metrics", []):
        points = [(h, v) for h, v in metric.get("points", [])]
        out.append(f'<h3>{esc(metric["title"])}</h3><p class="meta"><code>{esc(metric.get("query", ""))}</code></p>')
        if metric.get("note"):
            out.append(f'<p class="note">{esc(metric["note"])}</p>')
        if not any(v is not None for _, v in points):
            continue
        low, high = value_range(v for _, v in points if v is not None)
        frame = Frame(0.0, span, low, high, height=170)
        runs: list[list[tuple[float, float]]] = [[]]
        for h, v in points:
            if v is None:
                runs.append([])
            else:
                runs[-1].append((h, v))
        body = axes(frame, f"{metric['title']}" + (f" ({metric['unit']})" if metric.get("unit") else ""))
        label = f"{metric['title']} over plan hours"
        out.append(svg(frame, body + polylines(frame, runs, "value"), label, "prometheus"))
    return "".join(out)


# -- tables --------------------------------------------------------------------------------------


def report_section(report: dict[str, Any]) -> str:
    verdict = report.get("recommendation", "?")
    head = (
        f'<h3>{esc(report.get("checkpoint", "?"))}: <span class="{VERDICT_CLASS.get(verdict, "")}">'
        f"{esc(verdict)}</span></h3><p>{esc(report.get('recommendation_reason', ''))}</p>"
    )
    facts = [
        ("checkpoint time", report.get("checkpoint_time")),
        ("period start", report.get("period_start")),
        ("hours elapsed", report.get("hours_elapsed")),
        ("rollout percentage", report.get("current_rollout_percentage")),
        ("agents", ", ".join(report.get("agents_affected", [])) or "none"),
        ("rollbacks", report.get("rollback_count")),
        ("manual interventions", report.get("manual_interventions")),
        ("approval required", report.get("approval_required")),
        ("next milestone", report.get("next_milestone")),
    ]
    criteria = [
        (c.get("criterion"), c.get("threshold"), _cell(c.get("observed")), c.get("verdict"), c.get("note") or "")
        for c in report.get("criteria", [])
    ]
    unmeasured = report.get("unmeasured", {})
    metrics = [(k, _cell(v), unmeasured.get(k, "") if v is None else "") for k, v in report.get("metrics", {}).items()]
    issues = "".join(f"<li>{esc(i)}</li>" for i in report.get("issues_detected", []))
    return (
        head
        + table(("", ""), facts)
        + "<h4>Criteria</h4>"
        + table(("criterion", "threshold", "observed", "verdict", "note"), criteria, verdict_column=3)
        + "<h4>Metrics</h4>"
        + table(("metric", "value", "note"), metrics)
        + (f"<h4>Issues</h4><ul>{issues}</ul>" if issues else "")
    )


def decisions_table(decisions: list[dict[str, Any]], start: datetime) -> str:
    if not decisions:
        return '<p class="note">no decisions yet</p>'
    rows = []
    for d in decisions:
        css = " ".join(
            c
            for c in (
                d["action"] if d["action"] in ("rollback", "emergency") else "",
                "operator" if is_operator(d) else "",
            )
            if c
        )
        cells = [
            d.get("seq", ""),
            d["at"],
            f"+{_hours(d['at'], start):.3g}h",
            d["action"],
            d["stage"],
            f"{d['percentage']:g}%",
            actor(d),
            d["reason"],
        ]
        rows.append(f'<tr class="{css}">' + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("seq", "plan time", "hours", "action", "stage", "%", "by", "reason"))
    return f'<table class="decisions"><tr>{head}</tr>{"".join(rows)}</table>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], verdict_column: int | None = None) -> str:
    out = ["<table>"]
    if any(header):
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            css = VERDICT_CLASS.get(str(cell), "") if i == verdict_column else ""
            cells.append(f'<td class="{css}">{esc(_cell(cell))}</td>' if css else f"<td>{esc(_cell(cell))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


# -- helpers ---------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _hours(text: str, start: datetime) -> float:
    return (_moment(text) - start).total_seconds() / 3600


def _seen(
    status: dict[str, Any], decisions: list[dict[str, Any]], observations: list[dict[str, Any]], start: datetime
) -> float:
    """The plan hours the rollout has lived so far: the x axis of the guard and metric charts
    (the timeline's runs on to the plan's end, to show what is still to come)."""
    ends = [float(status["plan_hours_elapsed"])] + [_hours(x["at"], start) for x in decisions[-1:] + observations[-1:]]
    return max([*ends, 1 / 60])


def _guards(status: dict[str, Any], observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plan's guards, then any guard only the history knows (dropped by a reloaded plan)."""
    known = [g["name"] for g in status["guards"]]
    extra = sorted({o["guard"] for o in observations} - set(known))
    return [*status["guards"], *({"name": name, "thresholds": {}, "verdict": "not in the plan"} for name in extra)]


def _of_guard(observations: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [o for o in observations if o["guard"] == name]
