"""`rolloutctl watch`: the pure frame renderer over real statuses, and the real CLI in a
pseudo-terminal against a real rehearsing daemon.

Statuses for the renderer are built the way the daemon builds them: the seeds' phase5
plan, RolloutStates moved by `controller.decide` every 5 plan minutes on realistic guard
values, and `controller.status.rollout_status` over them. The live test reads the bytes
the CLI writes to a pty and checks the terminal protocol: alternate screen, cursor-home
repaints, never a full-screen clear, and a clean restore on SIGINT.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from controller.decide import (
    RolloutState,
    Transition,
    approve,
    awaiting_verdict,
    checkpoint_verdict,
    decide,
    emergency,
    hold,
    start,
)
from controller.guards import assess
from controller.plan_clock import PlanClock
from controller.plan_load import load_plan
from controller.status import rollout_status
from controller.views.watch_view import render
from tests.support.daemon_harness import REPO, Daemon, write_config
from tests.support.plans import checkpoint, guard, plan_toml, stage
from tests.support.rehearsal import Rehearsal, Stage, daemons, exporter, rehearse, scraped  # noqa: F401  (fixtures)

PHASE5 = load_plan(REPO / "deploy" / "plans" / "phase5.toml")
T0 = datetime(2025, 10, 23, 9, tzinfo=UTC)  # the seeds' hour 0
STEP = timedelta(minutes=5)
REALISTIC = {
    "error_rate": 0.0003,
    "p95_latency": 0.084,
    "test_pass_rate": 99.6,
    "cache_hit_rate": 0.81,
    "retrieval_precision": 0.86,
}
WIDTHS = (60, 80, 100, 120, 200)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COHORT = ("Builder", "Deploy", "QA")


@dataclass
class Run:
    """The phase5 rollout on a fake clock: the state, its journal (as the API lists it) and the plan time."""

    state: RolloutState = field(default_factory=lambda: start(PHASE5, T0))
    journal: list[dict[str, Any]] = field(default_factory=list)
    now: datetime = T0

    def record(self, decisions: tuple[Any, ...]) -> None:
        for d in decisions:
            self.journal.append({"seq": len(self.journal) + 1, **d.to_dict(), "status": "done"})

    def to(self, hours: float, values: Callable[[float], dict[str, float]] = lambda h: {}) -> Run:
        """Evaluate every 5 plan minutes up to `hours`; checkpoint reports say GO."""
        while self.now + STEP <= T0 + timedelta(hours=hours):
            self.now += STEP
            merged = {**REALISTIC, **values((self.now - T0) / timedelta(hours=1))}
            observations = [assess(g, merged[g.name], self.now) for g in PHASE5.guards]
            transition = decide(PHASE5, self.state, self.now, observations)
            self.state = transition.state
            self.record(transition.decisions)
            for index in awaiting_verdict(self.state):
                transition = checkpoint_verdict(PHASE5, self.state, self.now, index, "GO", "every criterion met")
                self.state = transition.state
                self.record(transition.decisions)
        return self

    def then(self, command: Callable[[Run], Transition]) -> Run:
        """An operator's command at this plan time."""
        transition = command(self)
        self.state = transition.state
        self.record(transition.decisions)
        return self

    def status(self, scale: float = 1.0, kill_switch: bool = False) -> dict[str, Any]:
        return rollout_status(PHASE5, self.state, self.now, PlanClock(T0, scale), kill_switch, [])

    def frame(self, width: int, scale: float = 1.0, **options: Any) -> list[str]:
        """The frame at this plan time, seen at the matching wall time."""
        wall = PlanClock(T0, scale).wall_time(self.now)
        return render(
            self.status(scale, options.pop("kill_switch", False)), self.journal, width=width, now=wall, **options
        )


def p95_warning_since(hours: float) -> Callable[[float], dict[str, float]]:
    return lambda h: {"p95_latency": 0.25} if h > hours else {}


SCENARIOS = {
    "running with a warning": Run().to(30.2, p95_warning_since(30.05)),
    "awaiting approval": Run().to(50),
    "rolled back": Run().to(20, lambda h: {"p95_latency": 0.35} if h > 19.8 else {}),
    "completed": Run().to(48.1).then(lambda r: approve(PHASE5, r.state, r.now, "signed off")).to(80),
    "emergency": Run().to(13).then(lambda r: emergency(r.state, r.now, "fire", actor="signal:SIGUSR1")),
    "held": Run().to(5).then(lambda r: hold(r.state, r.now, "dashboards are red", actor="alice")),
    "blind": Run().to(4.5, lambda h: {"test_pass_rate": None} if h > 4.4 else {}),
}


def line_with(lines: list[str], text: str) -> str:
    return next(line for line in lines if text in line)


def bar_of(lines: list[str]) -> str:
    """The timeline's bar: the line drawn with `=`/`-` and the `>` cursor."""
    return next(line for line in lines if line.startswith("  ") and ">" in line and set(line.strip()) <= set("=-|+!>"))


# -- the renderer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_line_fits_the_width(name: str, width: int) -> None:
    """No line is longer than the width, plain or coloured (escape codes take no columns), nor has a control code."""
    run = SCENARIOS[name]
    for color in (False, True):
        lines = run.frame(width, color=color)
        visible = [ANSI.sub("", line) for line in lines]
        assert max(len(line) for line in visible) <= width, "\n".join(visible)
        assert all(ch.isprintable() for line in visible for ch in line)
        assert any("\x1b[" in line for line in lines) is color


@pytest.mark.parametrize("width", WIDTHS)
def test_the_cursor_moves_with_plan_time(width: int) -> None:
    """The bar's `>` sits at the plan time's column (hour 0 at column 2, hour 72 at the end), with `=` behind it."""
    size = width - 4
    columns = []
    for hours in (6, 30, 60):
        bar = bar_of(Run().to(hours).frame(width))
        assert bar.index(">") == 2 + round(hours / 72 * (size - 1)), bar
        assert set(bar[2 : bar.index(">")]) <= {"=", "|", "+", "!"} and "=" in bar[2 : bar.index(">")]
        assert "=" not in bar[bar.index(">") :]
        columns.append(bar.index(">"))
    assert columns == sorted(columns) and len(set(columns)) == 3


def test_header_shows_name_phase_plan_time_scale_and_kill_switch() -> None:
    """The first line: the rollout, its phase, hours elapsed of the plan's 72, a time scale not 1, the kill switch."""
    run = SCENARIOS["running with a warning"]
    header = run.frame(120, scale=60)[0]
    assert header.startswith("phase5_hybrid_rag  RUNNING  plan h 30.2 / 72  time x60  kill switch off")
    assert "time x" not in run.frame(120)[0]
    assert "kill switch ON" in SCENARIOS["emergency"].frame(120, kill_switch=True)[0]


def test_timeline_marks_stages_checkpoints_and_the_applied_percentage() -> None:
    """Stage percentages above the bar, `|` per stage, `+` per checkpoint, `!` for one needing approval, hours below."""
    lines = SCENARIOS["running with a warning"].frame(200)
    bar = bar_of(lines)
    above, below = lines[lines.index(bar) - 1], lines[lines.index(bar) + 1]
    size = 200 - 4
    col = {h: 2 + round(h / 72 * (size - 1)) for h in (0, 4, 12, 24, 48, 49, 52, 56, 72)}
    for hours, pct in ((0, "0%"), (4, "5%"), (12, "10%"), (49, "15%"), (52, "20%"), (56, "25%")):
        assert above[col[hours] :].startswith(pct) and bar[col[hours]] == "|", hours
    assert (bar[col[24]], bar[col[48]], bar[col[72]]) == ("+", "!", "+")
    for hours, label in ((24, "24h"), (48, "48h!"), (72, "72h"), (12, "12h")):
        assert below[col[hours] - len(label) + 1 if hours == 72 else col[hours] :].startswith(label), label
    assert "^h 30.2" in below
    assert "applied: 10% of 5 agents: Builder, Deploy, QA, Support, Marketing" in lines


def test_next_transition_in_wall_time_and_plan_time() -> None:
    """At time_scale 60 the 48h checkpoint, 17h50m of plan time away (at h 30.17), is 17m50s of wall time away."""
    lines = SCENARIOS["running with a warning"].frame(140, scale=60)
    assert line_with(lines, "next in").startswith(
        "next in 17m50s: Day 2 checkpoint (48 hours): go/no-go for Day 3  (plan h 48, 17.8 plan h away)"
    )


@pytest.mark.parametrize("width", (100, 200))
def test_guards_show_values_in_their_units_against_every_threshold(width: int) -> None:
    """Wide: each guard's value (ratio as %, seconds as ms, percent as %), its warning, critical, emergency limits."""
    lines = SCENARIOS["running with a warning"].frame(width)
    expected = {
        "error_rate": ["0.03%", ">0.1%", ">0.5%", ">1%", "pass"],
        "test_pass_rate": ["99.6%", "<98%", "<95%", "<90%", "pass"],
        "cache_hit_rate": ["81%", "<50%", "<30%", "-"],
        "retrieval_precision": ["86%", "<70%", "<50%"],
    }
    for name, cells in expected.items():
        assert line_with(lines, name).split()[: len(cells) + 1] == [name, *cells]


def test_narrow_guards_fold_thresholds_into_one_column() -> None:
    """At 60 columns each guard still shows its value, verdict and every threshold, as `>200/300/500ms`."""
    lines = SCENARIOS["running with a warning"].frame(60)
    assert line_with(lines, "p95_latency").split()[-1] == ">200/300/500ms"
    assert line_with(lines, "error_rate").split()[1:] == ["0.03%", "pass", ">0.1/0.5/1%"]


def test_a_breaching_guard_is_marked_with_its_streak_and_position() -> None:
    """p95 at 250ms for 2 checks: its row starts with `!`, says BREACH warning x2; its gauge is in the warning zone."""
    lines = SCENARIOS["running with a warning"].frame(200)
    row = line_with(lines, "p95_latency")
    assert row.startswith("! p95_latency") and "250ms" in row and "BREACH warning x2" in row
    gauge = row[row.index("[") : row.index("]") + 1]
    zones = gauge[1:-1].split("|")
    assert len(zones) == 4 and ">" in zones[1] and set(zones[0]) == {"="}, gauge
    assert not any(line_with(lines, g).startswith("!") for g in ("error_rate", "test_pass_rate", "cache_hit_rate"))


def test_decisions_most_recent_first_and_fitting_the_height() -> None:
    """The journal is listed newest first; with a height, the frame has exactly that many lines and keeps the newest."""
    run = SCENARIOS["running with a warning"]
    lines = run.frame(120)
    rows = lines[lines.index(line_with(lines, "last decisions")) + 1 :]
    assert len(rows) == len(run.journal)
    assert rows[0].split()[:3] == ["h", "30.08", "10-24"] and "warning" in rows[0] and "p95_latency" in rows[0]
    hours = [float(row.split()[1]) for row in rows]
    assert hours == sorted(hours, reverse=True)
    short = run.frame(120, height=len(lines) - 3)
    assert len(short) == len(lines) - 3
    assert short[short.index(line_with(short, "last decisions")) + 1 :] == rows[:-3]
    assert len(run.frame(120, height=12)) == 12  # too short for every section: cut, never longer


def test_awaiting_approval_says_how_to_approve() -> None:
    """At hour 50 the 48h checkpoint waits: the frame says so, names `rolloutctl approve --reason`; the stage waits."""
    lines = SCENARIOS["awaiting approval"].frame(120)
    assert lines[0].startswith("phase5_hybrid_rag  AWAITING APPROVAL")
    assert lines[1] == "AWAITING APPROVAL: Day 2 checkpoint (48 hours): go/no-go for Day 3 needs an operator's approval"
    assert lines[2].startswith('  run `rolloutctl approve --reason "..."` to go on')
    assert line_with(lines, "next:") == "next: due now, waits for an approval: Hour 49: 15%"


def test_holding_and_rolled_back_say_why_and_what_resumes() -> None:
    """A hold shows the operator's reason and `rolloutctl resume`; a rollback shows the guard's reason."""
    held = SCENARIOS["held"].frame(120)
    assert held[1] == 'HOLDING: operator: alice: dashboards are red  run `rolloutctl resume --reason "..."`'
    assert "hold" in line_with(held, "h  5.00") and line_with(held, "h  5.00").endswith(
        "operator: alice: dashboards are red"
    ), "the decision row names the actor from its field"
    blind = SCENARIOS["blind"].frame(120)
    assert blind[1].startswith("HOLDING: not advancing while blind: test_pass_rate")
    assert blind[1].endswith("(clears itself once every guard reports)"), "an automatic hold, by held_by_operator"
    back = SCENARIOS["rolled back"].frame(120)
    assert back[1].startswith("ROLLED BACK: p95_latency 0.35 > critical 0.3 for 2 consecutive check(s)")
    assert "rolloutctl resume" in back[2]
    assert "applied: 5% of 3 agents: Builder, Deploy, QA" in back


def test_emergency_and_completed() -> None:
    """An emergency names the kill switch and `--clear-emergency`; a completed rollout has nothing left to schedule."""
    lines = SCENARIOS["emergency"].frame(100, kill_switch=True)
    assert lines[1].startswith("EMERGENCY: the kill switch is on") and "--clear-emergency" in lines[2]
    done = SCENARIOS["completed"].frame(100)
    assert "COMPLETED" in done[0] and "next: nothing left to schedule" in done
    assert bar_of(done).rstrip().endswith(">")  # past the plan's end, the cursor stays at its end


def test_phase_colours() -> None:
    """With colour, running is green, awaiting approval yellow, rolled back red; without, no escape code at all."""
    assert "\x1b[32mRUNNING\x1b[0m" in SCENARIOS["running with a warning"].frame(100, color=True)[0]
    assert "\x1b[33mAWAITING APPROVAL\x1b[0m" in SCENARIOS["awaiting approval"].frame(100, color=True)[0]
    assert "\x1b[1;31mROLLED BACK\x1b[0m" in SCENARIOS["rolled back"].frame(100, color=True)[0]


def test_operator_text_cannot_move_the_cursor() -> None:
    """A reason with a newline and an escape sequence is drawn on its own line, inert."""
    lines = Run().to(5).then(lambda r: hold(r.state, r.now, "two\nlines \x1b[2J")).frame(100)
    assert "HOLDING: operator: two lines  [2J" in lines[1] and all("\x1b" not in line for line in lines)


# -- the CLI ------------------------------------------------------------------------------------------


def ctl(socket: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLOUTD_SOCKET", "COLUMNS", "LINES")}
    return subprocess.run(
        [sys.executable, "-m", "deploy", "--socket", str(socket), *args],
        cwd=REPO,
        env={**env, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("once", [True, False])
def test_no_daemon_exits_3_naming_the_socket(tmp_path: Path, once: bool) -> None:
    """With no daemon on the socket, watch (piped, with or without --once) exits 3 and names the socket."""
    socket = tmp_path / "nobody.sock"
    done = ctl(socket, "watch", *(["--once"] if once else []), timeout=15)
    assert done.returncode == 3, done
    assert str(socket) in done.stderr and done.stdout == ""


def test_interval_must_be_sensible(tmp_path: Path) -> None:
    """`--interval 0` is a usage error (exit 2) that says what is expected."""
    done = ctl(tmp_path / "s.sock", "watch", "--interval", "0")
    assert done.returncode == 2 and "between 0.1 and 3600" in done.stderr


BUILTIN_PLAN = plan_toml(
    name="watched",
    flags=["watched_ranker"],
    failure_limit=5,
    stages=[stage(0, 0), stage("100h", 25, ["Builder", "Deploy", "QA"])],
    checkpoints=[checkpoint("50h", name="half-way review", requires_approval=True)],
    guards=[
        guard(
            "p95_latency",
            builtin="p95_latency_seconds",
            unit="seconds",
            direction="above",
            warning=0.2,
            critical=0.3,
            no_data="pass",
        )
    ],
)


@pytest.fixture
def quiet_daemon(tmp_path: Path, daemons: Callable[[Path], Daemon]) -> Daemon:  # noqa: F811
    """A daemon running a small plan on its built-in signals (no Prometheus)."""
    plan = tmp_path / "plan.toml"
    plan.write_text(BUILTIN_PLAN)
    return daemons(write_config(tmp_path, plan=str(plan), time_scale=60.0))


def test_once_piped_prints_one_plain_frame(quiet_daemon: Daemon) -> None:
    """Piped, `watch --once` prints one frame without escape codes, at $COLUMNS, and exits 0."""
    done = ctl(quiet_daemon.socket, "watch", "--once")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and done.stdout.count("\nlast decisions") == 1
    lines = done.stdout.splitlines()
    assert lines[0].startswith("watched  RUNNING  plan h ") and " / 100  time x60  kill switch off" in lines[0]
    assert max(map(len, lines)) <= 100 and "\n\n\n" not in done.stdout
    assert bar_of(lines).startswith("  >---") and "? p95_latency" not in done.stdout  # silence passes here


def test_piped_frames_follow_each_other_until_sigint(quiet_daemon: Daemon) -> None:
    """Piped without --once: a plain frame per interval, separated by a blank line; SIGINT exits 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLOUTD_SOCKET", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", "--socket", str(quiet_daemon.socket), "watch", "--interval", "0.2"],
        cwd=REPO,
        env={**env, "COLUMNS": "90"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen, deadline = b"", time.monotonic() + 15
    try:
        while seen.count(b"watched  RUNNING") < 3 and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = (seen + rest).decode()
    assert proc.returncode == 0, err
    headers = [i for i, line in enumerate(out.splitlines()) if line.startswith("watched  RUNNING")]
    assert len(headers) >= 3 and "\x1b" not in out and b"Traceback" not in err
    assert all(out.splitlines()[i - 1] == "" for i in headers[1:])
    assert max(map(len, out.splitlines())) <= 90


class Pty:
    """A pseudo-terminal of `rows` x `cols`, its output read in the background."""

    def __init__(self, rows: int, cols: int) -> None:
        self.master, self.slave = pty.openpty()
        self.resize(rows, cols)
        self.data = bytearray()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def _read(self) -> None:
        while not self._done.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    return
                with self._lock:
                    self.data += chunk

    def output(self) -> bytes:
        with self._lock:
            return bytes(self.data)

    def wait_for(self, predicate: Callable[[bytes], bool], what: str, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(out := self.output()):
                return out
            time.sleep(0.05)
        raise AssertionError(f"not within {timeout}s: {what}\nlast output: {self.output()[-3000:]!r}")

    def close(self) -> None:
        self._done.set()
        self._reader.join(timeout=5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def terminal() -> Iterator[Pty]:
    term = Pty(40, 120)
    yield term
    term.close()


FRAME, END = b"\x1b[?2026h\x1b[H", b"\x1b[?2026l"


def complete(out: bytes) -> bytes:
    """The output up to the end of the last whole frame (the next may still be on its way)."""
    return out[: out.rfind(END) + len(END)] if END in out else b""


def frames(out: bytes) -> list[list[str]]:
    """Each whole painted frame, as its visible lines."""
    # Lines end in CR LF, which the pty's output processing (ONLCR) turns into CR CR LF.
    return [
        [ANSI.sub("", line).rstrip("\r") for line in chunk.split(END)[0].decode().split("\r\n")]
        for chunk in complete(out).split(FRAME)[1:]
    ]


def test_live_view_in_a_terminal(rehearse: Callable[..., Rehearsal], terminal: Pty) -> None:  # noqa: F811
    """In a pty: alternate screen, hidden cursor, no echo, cursor-home repaints with erase-to-end-of-line and never a
    full clear; the name, phase and guards shown; a resize repaints narrower; a daemon gone shows "daemon
    unreachable: retrying ..."; SIGINT exits 0 having left the alternate screen and shown the cursor again."""
    r = rehearse([Stage("0m", 0), Stage("20m", 5, COHORT), Stage("100h", 25, COHORT)], time_scale=600.0)
    env = {k: v for k, v in os.environ.items() if k not in ("ROLLOUTD_SOCKET", "COLUMNS", "LINES", "NO_COLOR")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", "--socket", str(r.daemon.socket), "watch", "--interval", "0.2"],
        cwd=REPO,
        env={**env, "TERM": "xterm-256color"},
        stdin=terminal.slave,
        stdout=terminal.slave,
        stderr=terminal.slave,
        start_new_session=True,
    )
    try:
        out = complete(
            terminal.wait_for(
                lambda o: len(frames(o)) >= 4 and b"5% of 3 agents" in complete(o), "4 frames, stage 1 applied"
            )
        )
        assert out.startswith(b"\x1b[?1049h\x1b[?25l") and b"\x1b[2J" not in out
        assert not termios.tcgetattr(terminal.slave)[3] & termios.ECHO
        shown = frames(out)
        assert all(len(f) <= 40 and max(map(len, f)) <= 119 for f in shown)
        assert out.count(FRAME) == out.count(b"\x1b[K\x1b[J" + END) == len(shown)
        last = shown[-1]
        assert last[0].startswith("rehearsal  RUNNING  plan h ") and "time x600" in last[0]
        assert {"p95_latency", "test_pass_rate"} <= {line.split()[0] for line in last if line.strip()}
        assert len({f[0].split("plan h ")[1].split()[0] for f in shown}) >= 2  # plan time moves between frames

        terminal.resize(30, 70)
        proc.send_signal(signal.SIGWINCH)
        before = len(terminal.output())

        def narrow_frame(o: bytes) -> bool:
            return any(
                f and max(map(len, f)) <= 69 and len(f) <= 30 and any("timeline" in line for line in f)
                for f in frames(o[before:])
            )

        narrow = terminal.wait_for(narrow_frame, "a frame at 70 columns")
        assert b"\x1b[2J" not in narrow

        r.daemon.stop()
        terminal.wait_for(lambda o: b"daemon unreachable: retrying every 0.2s" in o, "the unreachable line")
        assert proc.poll() is None

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=3) == 0
        out = terminal.wait_for(lambda o: o.endswith(b"\x1b[?1049l\x1b[?25h"), "the screen restored")
        assert b"Traceback" not in out
        assert termios.tcgetattr(terminal.slave)[3] & termios.ECHO
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
