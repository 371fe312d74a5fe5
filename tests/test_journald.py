"""Decisions as journald files them: one `<N>`-prefixed JSON line per journal entry, at its priority.

Operators read rolloutd with `journalctl -u rolloutd -p warning` and filter one
rollout's decisions by their fields, so every decision the controller journals
(controller.db) must be exactly one log event named `rollout.<action>`, at the
syslog priority the table below gives, carrying the fields they filter by. The log
lines are the real renderer's output (`configure_logging`), parsed as journald
parses them: the `<N>` prefix is the priority, the rest is the message.
"""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from controller.host.logs import SYSLOG_PRIORITY, configure_logging
from tests.support.daemon_harness import REPO, Daemon, write_config
from tests.support.service_rig import rigs  # noqa: F401  (a fixture)

pytestmark = pytest.mark.anyio

NOTICE, WARNING, ERR, CRIT = 5, 4, 3, 2
# The contract documented for operators (README "Journald"); rollback is ERR, or CRIT when
# an emergency-severity breach caused it.
PRIORITY = {
    "stage_applied": NOTICE,
    "checkpoint": NOTICE,
    "verdict": NOTICE,
    "completed": NOTICE,
    "resume": NOTICE,
    "approved": NOTICE,
    "emergency_cleared": NOTICE,
    "hold": WARNING,
    "warning": WARNING,
    "awaiting_approval": WARNING,
    "rollback": ERR,
    "emergency": CRIT,
}
# Events about decisions that are not decisions themselves.
NOT_DECISIONS = {"checkpoint.report"}  # the report file was written; its verdict follows as rollout.verdict
# What every decision line carries, so `jq 'select(.rollout == ... and .action == ...)'` works.
COMMON_FIELDS = {"event", "level", "time", "rollout", "phase", "at", "action", "stage", "percentage", "reason"}


@pytest.fixture
def journal_lines() -> Iterator[io.StringIO]:
    """The daemon's log output (structlog and stdlib) captured as the journal would receive it."""
    saved, root = structlog.get_config(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging(out)
    yield out
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def parse(text: str) -> list[dict[str, Any]]:
    """Each line as journald reads it: `<N>` → PRIORITY, the JSON after it → the event (with `_priority`)."""
    events = []
    for line in text.splitlines():
        assert line.startswith("<") and ">" in line, f"a line without a syslog priority prefix: {line!r}"
        prio, _, body = line[1:].partition(">")
        events.append({**json.loads(body), "_priority": int(prio)})
    return events


def decision_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == f"rollout.{e.get('action')}"]


def assert_one_event_per_entry(journal: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """The decision events are the journal entries, one each, in order, same facts, each at its priority."""
    key = ("at", "action", "stage", "percentage", "reason")
    logged = decision_events(events)
    assert [tuple(e[k] for k in key) for e in logged] == [tuple(j[k] for k in key) for j in journal]
    for event in logged:
        missing = COMMON_FIELDS - event.keys()
        assert not missing, f"{event['event']} lacks {sorted(missing)}: {event}"
        expected = PRIORITY[event["action"]]
        if event["action"] == "rollback" and event.get("severity") == "emergency":
            expected = CRIT
        assert event["_priority"] == expected, f"{event['event']} filed at <{event['_priority']}>: {event}"
        assert SYSLOG_PRIORITY[event["level"]] == event["_priority"], "level must name the priority it is filed at"
    # Nothing else claims to be a decision: no second line for one under another name.
    words = set(PRIORITY) | {word for action in PRIORITY for word in action.split("_")}
    others = [
        e["event"]
        for e in events
        if e not in logged
        and e["event"] not in NOT_DECISIONS
        and ("action" in e or words & set(re.split(r"[._]", e["event"])))
    ]
    assert others == [], f"decisions logged a second time under other names: {others}"


def by_action(events: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in decision_events(events) if e["action"] == action]


async def test_a_whole_rollout_logs_each_decision_once_at_its_priority(rigs, journal_lines: io.StringIO) -> None:
    """Stages, checkpoints, approval, an automatic and an operator hold, completion, emergency and its
    clearing: one line per journal entry, notices at <5>, holds at <4>, the emergency at <2>."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12, 24, 48)  # three stages; Day 1 GO; Day 2 waits for approval
    await rig.controller.command("approve", reason="stakeholders signed off", actor="bob")
    await rig.at(49)
    rig.source.guards["test_pass_rate"] = None  # no data with no_data = "hold": blind
    await rig.at(50, 50 + 5 / 60)
    rig.source.guards["test_pass_rate"] = 99.5
    await rig.at(51, 52)  # the automatic hold clears itself
    await rig.controller.command("hold", reason="dashboards look odd", actor="alice")
    await rig.controller.command("resume", reason="they are fine", actor="alice")
    await rig.at(56, 72)  # last stage, Day 3 checkpoint, completed
    await rig.controller.emergency_stop("signal:SIGUSR1", "emergency shutdown requested with SIGUSR1")
    await rig.controller.command("resume", reason="root cause fixed", actor="alice", clear_emergency=True)

    events = parse(journal_lines.getvalue())
    journal = rig.journal()
    assert_one_event_per_entry(journal, events)
    covered = {j["action"] for j in journal}
    assert covered == set(PRIORITY) - {"rollback", "warning"}, "the sequence must cover every other decision"

    applied = by_action(events, "stage_applied")
    assert [(e["stage"], e["percentage"]) for e in applied] == [
        (0, 0.0),
        (1, 5.0),
        (2, 10.0),
        (3, 15.0),
        (4, 20.0),
        (5, 25.0),
    ]
    assert applied[1]["agents"] == ["Builder", "Deploy", "QA"]
    assert [e["checkpoint"] for e in by_action(events, "checkpoint")] == [0, 1, 2]
    assert [e["recommendation"] for e in by_action(events, "verdict")] == ["GO", "GO", "GO"]
    assert by_action(events, "approved")[0]["actor"] == "bob"
    blind, operator = by_action(events, "hold")
    assert "not advancing while blind" in blind["reason"] and "test_pass_rate" in blind["reason"]
    assert operator["actor"] == "alice" and "dashboards look odd" in operator["reason"]
    (emergency,) = [e for e in events if "emergency" in e["event"] and e.get("action") != "emergency_cleared"]
    assert (emergency["event"], emergency["_priority"], emergency["actor"]) == (
        "rollout.emergency",
        CRIT,
        "signal:SIGUSR1",
    )
    assert emergency["phase"] == "emergency" and emergency["percentage"] == 0.0
    (cleared,) = by_action(events, "emergency_cleared")
    assert (cleared["_priority"], cleared["actor"], cleared["phase"]) == (NOTICE, "alice", "rolled_back")


async def test_rollbacks_are_err_and_an_emergency_breach_is_crit(rigs, journal_lines: io.StringIO) -> None:
    """A critical breach's rollback is <3>, an emergency breach's <2>, a checkpoint NO-GO's <3>; each one line
    naming the guard, severity and reason, after one <4> warning when the breach began."""
    rig = rigs()
    await rig.controller.open()
    await rig.at(0, 4, 12)
    rig.source.guards["p95_latency"] = 0.4  # > critical 0.3, sustained for two checks
    await rig.at(12 + 5 / 60, 12 + 10 / 60)
    rig.source.guards["p95_latency"] = 0.01
    await rig.controller.command("resume", reason="cache warmed", actor="carol")
    rig.source.guards["error_rate"] = 0.05  # > emergency 0.01
    await rig.at(12.5, 12.5 + 5 / 60)
    rig.source.guards["error_rate"] = 0.0
    await rig.controller.command("resume", reason="bad deploy reverted", actor="carol")
    await rig.at(13, 14, 24)  # Day 1 with rollbacks behind it: NO-GO

    events = parse(journal_lines.getvalue())
    assert_one_event_per_entry(rig.journal(), events)
    critical, emergency, checkpoint = by_action(events, "rollback")
    assert (critical["_priority"], critical["severity"], critical["guard"]) == (ERR, "critical", "p95_latency")
    assert (critical["stage"], critical["percentage"], critical["phase"]) == (1, 5.0, "rolled_back")
    assert "p95_latency 0.4 > critical 0.3" in critical["reason"]
    assert (emergency["_priority"], emergency["severity"], emergency["guard"]) == (CRIT, "emergency", "error_rate")
    assert (emergency["stage"], emergency["percentage"]) == (0, 0.0)
    assert (checkpoint["_priority"], checkpoint.get("severity")) == (ERR, None)
    assert "NO-GO" in checkpoint["reason"]
    warnings = by_action(events, "warning")
    assert [(w["guard"], w["severity"], w["_priority"]) for w in warnings] == [
        ("p95_latency", "critical", WARNING),
        ("error_rate", "emergency", WARNING),
    ]


def test_sigusr1_in_a_running_daemon_is_one_crit_line(tmp_path: Path) -> None:
    """The real daemon on the seeds' plan: its start-up hold (no regression results yet) is one <4> line,
    and SIGUSR1 one <2> line naming the signal, with nothing else about the emergency."""
    config = write_config(tmp_path, plan=str(REPO / "deploy" / "plans" / "phase5.toml"))
    daemon = Daemon(config).start()
    try:
        _until(lambda: any(e["event"] == "rollout.hold" for e in daemon.events()))
        daemon.signal(signal.SIGUSR1)
        _until(lambda: any(e["event"] == "rollout.emergency" for e in daemon.events()))
    finally:
        output = daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, output
    events = daemon.events()
    (hold,) = [e for e in events if e["event"] == "rollout.hold"]
    assert (hold["_priority"], hold["rollout"], hold["phase"]) == (WARNING, "phase5_hybrid_rag", "holding")
    assert hold["reason"].startswith("not advancing while blind: test_pass_rate")
    (emergency,) = [e for e in events if "emergency" in str(e["event"])]
    assert (emergency["event"], emergency["_priority"], emergency["actor"]) == (
        "rollout.emergency",
        CRIT,
        "signal:SIGUSR1",
    )
    assert emergency["reason"] == "emergency shutdown requested with SIGUSR1" and emergency["trigger"] == "emergency"


@pytest.mark.parametrize("stream", ["", "sys.stderr"])
def test_an_uncaught_exception_is_one_crit_line_where_the_log_is_the_journal(stream: str) -> None:
    """Logging to stdout (the daemon), a crash is one <2> daemon.crashed line with the traceback in a field;
    logging elsewhere (demo, replay), Python's own traceback stays on the terminal."""
    code = (
        "import sys\nfrom controller.host.logs import configure_logging\n"
        f"configure_logging({stream})\n"
        "def serve():\n    raise RuntimeError('the event loop died')\nserve()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    if stream:
        assert done.stdout == "" and done.stderr.startswith("Traceback (most recent call last):"), done
        return
    assert done.stderr == "", done.stderr
    (line,) = done.stdout.splitlines()
    (crash,) = parse(line)
    assert (crash["_priority"], crash["event"], crash["error"]) == (
        CRIT,
        "daemon.crashed",
        "RuntimeError: the event loop died",
    )
    assert "in serve" in crash["exception"]


def _until(check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s")
