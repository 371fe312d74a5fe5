"""The systemd watchdog as systemd sees it: WATCHDOG=1 datagrams on a real NOTIFY_SOCKET.

The pings come from the daemon's event loop (`controller.host.daemon._watchdog`), so they
are evidence that the loop runs: while the loop is stalled they must stop for longer
than WatchdogSec= (systemd then kills and restarts the unit), and when it runs again
they must resume at half the interval. Two kinds of stall are made for real, without
any test hook in the daemon: a blocking call on the loop of an in-process daemon, and
SIGSTOP of a daemon process. Timing bounds are generous (two shared cores), but every
one of them separates a working watchdog from a broken one.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from controller.host.config import load_config
from controller.host.daemon import run_daemon
from controller.host.sdnotify import Notifier
from tests.support.daemon_harness import Daemon, write_config

INTERVAL = 1.0  # WATCHDOG_USEC as the tests set it: a ping is due every 0.5 s
PERIOD = INTERVAL / 2
SLACK = 0.3  # scheduling noise allowed on a loaded two-core machine
STALL = 3.0  # well past INTERVAL: systemd would have killed the unit
READY_TIMEOUT = 30.0


class NotifyRecorder:
    """A real NOTIFY_SOCKET: a thread receives every datagram and notes its monotonic arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.05)
        self.received: list[tuple[float, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._changed:
                self.received.append((time.monotonic(), fields))
                self._changed.notify_all()

    def wait_for(self, key: str, value: str, timeout: float, count: int = 1) -> float:
        """Block until `count` datagrams with key=value have arrived; the arrival time of the last."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.times(key, value)) >= count, timeout):
                raise AssertionError(f"{count} x {key}={value} not received within {timeout}s; got {self.received}")
            return self.times(key, value)[count - 1]

    def times(self, key: str = "WATCHDOG", value: str = "1") -> list[float]:
        return [t for t, fields in list(self.received) if fields.get(key) == value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[NotifyRecorder]:
    rec = NotifyRecorder(tmp_path / "notify.sock")
    yield rec
    rec.close()


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]


def between(times: list[float], start: float, end: float) -> list[float]:
    return [t for t in times if start <= t <= end]


# -- a stall of the event loop, in process ------------------------------------------------------


class InProcessDaemon:
    """`run_daemon` in the test's own event loop, so a blocking call in the test stalls the daemon's loop."""

    def __init__(self, tmp_path: Path, recorder: NotifyRecorder) -> None:
        self.config = load_config(write_config(tmp_path))
        self.notifier = Notifier(
            env={"NOTIFY_SOCKET": str(recorder.path), "WATCHDOG_USEC": str(int(INTERVAL * 1_000_000))}
        )
        self.exit_status: int | None = None

    async def run(self) -> None:
        self.exit_status = await run_daemon(self.config, notifier=self.notifier)

    def stop(self) -> None:
        """SIGTERM to this process: run_daemon's own signal receiver takes it (it runs in the main
        thread), and the daemon drains and returns. Sent only while run_daemon is still running
        (and so still receiving), or the default action would end the test run."""
        if self.exit_status is None:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.anyio
async def test_a_stalled_event_loop_stops_the_pings_past_the_interval_and_they_resume(
    tmp_path: Path, recorder: NotifyRecorder
) -> None:
    """Pings every half interval; a 3 s block of the loop leaves a gap past WatchdogSec=; then they resume."""
    daemon = InProcessDaemon(tmp_path, recorder)
    async with anyio.create_task_group() as group:
        group.start_soon(daemon.run)
        with anyio.fail_after(READY_TIMEOUT + 20):
            ready = await anyio.to_thread.run_sync(recorder.wait_for, "READY", "1", READY_TIMEOUT)
            await anyio.to_thread.run_sync(recorder.wait_for, "WATCHDOG", "1", 10.0, 5)
            stalled = time.monotonic()
            time.sleep(STALL)  # noqa: ASYNC251  (the point: nothing else on this loop runs now)
            resumed = time.monotonic()
            so_far = len(recorder.times())
            await anyio.to_thread.run_sync(recorder.wait_for, "WATCHDOG", "1", 10.0, so_far + 4)
            daemon.stop()
            await anyio.to_thread.run_sync(recorder.wait_for, "STOPPING", "1", 10.0)
    assert daemon.exit_status == 0

    pings = [t for t in recorder.times() if t >= ready]
    before, after = between(pings, ready, stalled), between(pings, stalled, float("inf"))
    assert len(before) >= 5 and max(gaps(before)) <= PERIOD + SLACK, f"irregular before the stall: {gaps(before)}"
    assert not between(pings, stalled + SLACK, resumed), "a ping was sent while the loop was blocked"
    silence = after[0] - before[-1]
    assert silence > INTERVAL, f"only {silence:.2f}s without a ping: systemd would not have noticed the stall"
    assert after[0] - resumed <= SLACK, f"first ping {after[0] - resumed:.2f}s after the loop ran again"
    # Resumed at the half-interval pace: no burst of the pings missed, no slower beat.
    assert all(PERIOD - SLACK <= g <= PERIOD + SLACK for g in gaps(after)), f"after the stall: {gaps(after)}"


@pytest.mark.anyio
async def test_a_busy_loop_that_is_late_to_every_wakeup_still_pings_on_schedule(
    tmp_path: Path, recorder: NotifyRecorder
) -> None:
    """Blocking the loop 0.3 s at a time (less than a period) delays single pings but never lets them drift."""
    daemon, block, busy_for = InProcessDaemon(tmp_path, recorder), 0.3, 6.0
    async with anyio.create_task_group() as group:
        group.start_soon(daemon.run)
        with anyio.fail_after(READY_TIMEOUT + 20):
            await anyio.to_thread.run_sync(recorder.wait_for, "READY", "1", READY_TIMEOUT)
            first = await anyio.to_thread.run_sync(recorder.wait_for, "WATCHDOG", "1", 10.0, 2)
            until = time.monotonic() + busy_for
            while time.monotonic() < until:
                time.sleep(block)  # noqa: ASYNC251  (a slow callback, as a CPU-bound one would be)
                await anyio.sleep(0.02)  # long enough for the loop to run everything that fell due
            daemon.stop()
            await anyio.to_thread.run_sync(recorder.wait_for, "STOPPING", "1", 10.0)
    assert daemon.exit_status == 0

    pings = between(recorder.times(), first, first + busy_for)
    assert len(pings) >= int(busy_for / PERIOD) - 1, f"{len(pings)} pings in {busy_for}s: {gaps(pings)}"
    # Ping k is due at first + k * PERIOD; each may be late by one block, but lateness must not add up.
    late = [round(t - (first + k * PERIOD), 3) for k, t in enumerate(pings)]
    assert max(late) <= block + SLACK, f"pings drifted behind their schedule: {late}"
    assert max(gaps(pings)) < INTERVAL, f"a gap of WatchdogSec= or more would get the unit killed: {gaps(pings)}"


# -- a stall of the whole process, as a real subprocess ----------------------------------------------


def test_a_stopped_daemon_process_stops_pinging_and_resumes_after_sigcont(
    tmp_path: Path, recorder: NotifyRecorder
) -> None:
    """SIGSTOP silences the pings past WatchdogSec=; SIGCONT brings them back at half the interval."""
    env = {"NOTIFY_SOCKET": str(recorder.path), "WATCHDOG_USEC": str(int(INTERVAL * 1_000_000))}
    daemon = Daemon(write_config(tmp_path), env=env).start(wait=False)
    try:
        recorder.wait_for("READY", "1", READY_TIMEOUT)
        settled = recorder.wait_for("WATCHDOG", "1", 10.0, 5)
        daemon.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(STALL)
        daemon.signal(signal.SIGCONT)
        resumed = time.monotonic()
        recorder.wait_for("WATCHDOG", "1", 10.0, len(recorder.times()) + 4)
    finally:
        daemon.signal(signal.SIGCONT)
        output = daemon.stop()
    assert daemon.proc is not None and daemon.proc.returncode == 0, output

    pings = recorder.times()
    before = [t for t in pings if t <= stopped]
    after = [t for t in pings if t > stopped]
    assert max(gaps(between(before, before[0], settled))) <= PERIOD + SLACK, f"before: {gaps(before)}"
    assert not between(pings, stopped + SLACK, resumed), "a stopped process cannot ping"
    assert after[0] - before[-1] > INTERVAL, f"the gap {after[0] - before[-1]:.2f}s would not trip WatchdogSec="
    assert after[0] - resumed <= SLACK + PERIOD, f"pings resumed {after[0] - resumed:.2f}s after SIGCONT"
    assert max(gaps(after)) <= PERIOD + SLACK, f"after SIGCONT: {gaps(after)}"


def test_watchdog_meant_for_another_pid_sends_no_pings(tmp_path: Path, recorder: NotifyRecorder) -> None:
    """With WATCHDOG_PID naming another process, the daemon is ready but never pings (sd_watchdog_enabled's rule)."""
    env = {"NOTIFY_SOCKET": str(recorder.path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    daemon = Daemon(write_config(tmp_path), env=env).start(wait=False)
    try:
        ready = recorder.wait_for("READY", "1", READY_TIMEOUT)
        time.sleep(1.0)  # five pings' worth at this interval
        # The loop ran meanwhile (it answers), so silence on the socket is the watchdog's choice.
        assert httpx.get(daemon.base_url + "/readyz", timeout=5.0).status_code == 200
    finally:
        daemon.stop()
    assert [t for t in recorder.times() if t >= ready] == [], "pinged a watchdog meant for another process"
    assert recorder.times("STOPPING", "1"), "the daemon did talk to NOTIFY_SOCKET, just not WATCHDOG=1"


def test_notifier_reads_watchdog_usec_only_for_its_own_pid() -> None:
    """WATCHDOG_USEC counts when WATCHDOG_PID is absent or this process; not for another pid, nor when 0."""
    own, other = str(os.getpid()), str(os.getpid() + 1)
    assert Notifier(env={"WATCHDOG_USEC": "30000000"}).watchdog_seconds == 30.0
    assert Notifier(env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": own}).watchdog_seconds == 1.0
    assert Notifier(env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": other}).watchdog_seconds is None
    assert Notifier(env={"WATCHDOG_USEC": "0"}).watchdog_seconds is None
    assert Notifier(env={"WATCHDOG_USEC": "soon"}).watchdog_seconds is None


def test_a_watchdog_kill_leaves_the_event_loops_stack_in_the_log(tmp_path: Path) -> None:
    """Killed as systemd's watchdog kills (SIGABRT) under the unit's PYTHONFAULTHANDLER=1, the daemon leaves
    every thread's Python stack on its output, the event loop's among them, before it dies of the signal."""
    daemon = Daemon(write_config(tmp_path), env={"PYTHONFAULTHANDLER": "1"}).start()
    daemon.signal(signal.SIGABRT)
    status = daemon.wait(timeout=20)
    output = daemon.read_output()
    assert status == -signal.SIGABRT, output
    assert "Fatal Python error: Aborted" in output
    assert "(most recent call first)" in output and "in run_forever" in output, output
