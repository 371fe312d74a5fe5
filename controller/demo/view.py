"""What `rolloutd demo` shows: the live timeline while it runs, then the summary.

On a terminal the live view is `rolloutctl watch`'s screen (controller/views/watch_view.py), painted
in place on the alternate screen; piped, or with `--plain`, it is one line per decision
and a guard line every six plan hours — readable in a CI log.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from controller.demo.fleet import Tally
from controller.views.journal_text import said
from controller.views.report_html import render_html
from controller.views.watch_view import render
from flags.atomic import atomic_write
from flags.clock import utcnow
from retrieval.validation import percentile

ENTER, LEAVE, HOME, ERASE_LINE, ERASE_BELOW = (
    "\x1b[?1049h\x1b[?25l",
    "\x1b[?25h\x1b[?1049l",
    "\x1b[H",
    "\x1b[K",
    "\x1b[J",
)
UNITS = {"seconds": (1000, "ms"), "ratio": (100, "%"), "percent": (1, "%")}


class DemoView:
    def __init__(self, out: TextIO, *, plain: bool) -> None:
        self._out, self._plain = out, plain
        self._decisions: list[dict[str, Any]] = []
        self._notes: list[str] = []
        self._next_guard_line = 0.0
        self._live = False
        self._final: tuple[dict[str, Any], float] | None = None
        self._tally = Tally()

    # --- while running ---------------------------------------------------------------------

    def note(self, text: str) -> None:
        self._notes.append(text)
        if self._plain:
            self._print(f"  {text}")

    def refresh(self, controller: Any, tally: Tally) -> None:
        since = self._decisions[-1]["seq"] if self._decisions else 0
        new = controller.journal(limit=1000, since_seq=since) if since else controller.journal(limit=1000)
        self._decisions += new
        self._tally = tally
        status = controller.status()
        if self._plain:
            for decision in new:
                self._print(decision_line(decision, status))
            if status["plan_hours_elapsed"] >= self._next_guard_line:
                self._print(guard_line(status, tally))
                self._next_guard_line = (int(status["plan_hours_elapsed"]) // 6 + 1) * 6
            return
        self._paint(status, tally)

    def _paint(self, status: dict[str, Any], tally: Tally) -> None:
        size = shutil.get_terminal_size((100, 40))
        width = size.columns - 1  # erase-to-end-of-line after the last column would erase it
        if not self._live:
            self._out.write(ENTER)
            self._live = True
        notes = self._notes[-2:]
        lines = render(
            status,
            self._decisions[-50:],
            width=width,
            now=utcnow(),
            color=True,
            height=max(10, size.lines - 3 - len(notes)),
        )
        lines += ["", fleet_line(tally, width), *(n[:width] for n in notes)]
        self._out.write(HOME + "".join(line + ERASE_LINE + "\n" for line in lines) + ERASE_BELOW)
        self._out.flush()

    def close(self) -> None:
        if self._live:
            self._out.write(LEAVE)
            self._out.flush()
            self._live = False
            for note in self._notes:
                self._print(f"  {note}")

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    # --- at the end ------------------------------------------------------------------------

    def finish(self, controller: Any, html: Path) -> None:
        """Read the last status and journal while the state is open, and write the HTML report."""
        since = self._decisions[-1]["seq"] if self._decisions else 0
        self._decisions += controller.journal(limit=1000, since_seq=since) if since else controller.journal(limit=1000)
        status = controller.status()
        self._final = (status, controller.plan.end.total_seconds())
        observations: list[dict[str, Any]] = []
        while page := controller.observations(since_seq=observations[-1]["seq"] if observations else 0, limit=5000):
            observations += page
        reports = [json.loads(path.read_text()) for path in controller.reports()]
        atomic_write(html, render_html(status, self._decisions, observations, reports).encode())

    def summary(self, outcome: Any, out: Path, args: argparse.Namespace) -> None:
        if self._final is None:
            self._print(
                "rolloutd demo: stopped before the plan's end; see the daemon log: " + str(out / "rolloutd.log")
            )
            return
        status, plan_seconds = self._final
        for line in summary_lines(status, self._decisions, outcome, out, args, plan_seconds):
            self._print(line)
        agents = ", ".join(f"{agent} {n}" for agent, n in sorted(self._tally.by_agent.items(), key=lambda kv: -kv[1]))
        self._print(f"{fleet_line(self._tally, 10_000)}; by agent: {agents or 'none'}")


def decision_line(d: dict[str, Any], status: dict[str, Any]) -> str:
    hours = _hours(d["at"], status)
    what = f"{d['percentage']:g}%" if d.get("percentage") is not None else ""
    extra = f" [{d['recommendation']}]" if d.get("recommendation") else ""
    return f"h{hours:6.2f}  {d['action']:<17} {what:>4}{extra}  {said(d)}"


def guard_line(status: dict[str, Any], tally: Tally) -> str:
    """Phase, percentage, every guard's value against its thresholds, the next transition."""
    parts = []
    for g in status["guards"]:
        scale, unit = UNITS.get(g["unit"], (1, ""))
        value = "--" if g["value"] is None else f"{g['value'] * scale:.3g}{unit}"
        sign = ">" if g["direction"] == "above" else "<"
        limits = "/".join(f"{v * scale:g}" for v in g["thresholds"].values())
        mark = {"pass": "", "breach": f" !{g['severity']}", "no_data": " no data", "error": " error"}.get(
            g["verdict"], f" {g['verdict']}"
        )
        parts.append(f"{g['name']} {value} ({sign}{limits}{unit}){mark}")
    nxt = f"  next: {status['next_transition']}" if status.get("next_transition") else ""
    return (
        f"h{status['plan_hours_elapsed']:6.2f}  {status['phase']:<17} {status['percentage']:>3g}%  "
        + " | ".join(parts)
        + f"  · fleet {tally.sent} queries{nxt}"
    )


def fleet_line(tally: Tally, width: int) -> str:
    p95 = f"{percentile(tally.latencies_ms, 0.95):.1f} ms" if tally.latencies_ms else "--"
    hit = f"{tally.hits / tally.answered:.0%}" if tally.answered else "--"
    text = (
        f"fleet: {tally.sent} queries, {tally.answered} answered (p95 {p95}, cache hits {hit}), "
        f"{tally.failed} failed, {tally.refused} refused"
    )
    return text[:width]


def summary_lines(
    status: dict[str, Any],
    decisions: list[dict[str, Any]],
    outcome: Any,
    out: Path,
    args: argparse.Namespace,
    plan_seconds: float,
) -> list[str]:
    budget = plan_seconds / args.speed
    lines = [
        "",
        f"rolloutd demo: {status['rollout']} — {plan_seconds / 3600:g} plan hours in "
        f"{outcome.wall_seconds:.1f} s wall (configured {budget:.0f} s at {args.speed:g}x, "
        f"{(outcome.wall_seconds / budget - 1) * 100:+.1f}%)",
        f"final phase: {status['phase']} at {status['percentage']:g}% ({', '.join(status['agents']) or 'no agents'})",
        "",
    ]
    shown = [
        d
        for d in decisions
        if d["action"]
        in (
            "stage_applied",
            "rollback",
            "emergency",
            "checkpoint",
            "verdict",
            "approved",
            "hold",
            "awaiting_approval",
            "completed",
            "warning",
        )
    ]
    lines += ["decisions:"] + [f"  {decision_line(d, status)}" for d in shown]
    if outcome.injected:
        lines += ["", "faults injected:"] + [f"  {text}" for text in outcome.injected]
    rollbacks = [d for d in decisions if d["action"] in ("rollback", "emergency")]
    lines += [
        "",
        f"rollbacks: {len(rollbacks)}"
        + (
            " — " + "; ".join(f"h{_hours(d['at'], status):.2f} to {d['percentage']:g}%: {said(d)}" for d in rollbacks)
            if rollbacks
            else ""
        ),
    ]
    reports = sorted((out / "state" / "reports").glob("checkpoint-*.json"))
    lines += ["", "checkpoint reports:"]
    for path in reports:
        report = json.loads(path.read_text())
        lines.append(
            f"  {report['checkpoint']}: {report['recommendation']} ({report['recommendation_reason']}) → {path}"
        )
    lines += [
        "",
        f"HTML report: {out / 'report.html'}",
        f"daemon log (JSON lines): {out / 'rolloutd.log'}",
        f"state (flags.json, journal, reports): {out / 'state'}",
    ]
    return lines


def _hours(at: str, status: dict[str, Any]) -> float:
    start = datetime.fromisoformat(status["started_at"].replace("Z", "+00:00"))
    return (datetime.fromisoformat(at.replace("Z", "+00:00")) - start).total_seconds() / 3600
