"""`rolloutctl watch`: the rollout, repainted in place every `--interval` seconds.

On a terminal: the alternate screen with the cursor hidden (and typed keys not echoed).
Each frame moves the cursor home and rewrites every line followed by erase-to-end-of-line,
then erases below: the screen is never cleared between frames, so nothing flickers. A
frame is one write, bracketed by synchronized-update mode 2026 (terminals without it
ignore it). The size is read for every frame, and a SIGWINCH repaints at once. Ctrl-C
(SIGINT), SIGTERM and SIGHUP restore the screen, the cursor and the echo, and exit 0.

Not a terminal (piped, or TERM=dumb): one plain frame per interval, no escape codes,
frames separated by a blank line, width from $COLUMNS (else 80); `--once` prints one
frame and exits.

The daemon: unreachable for the first frame, watch exits 3 like every rolloutctl
command (the message names the socket): there is nothing to show, and a script learns
it at once. Once a frame has been shown, a daemon that goes away (restarting, being
upgraded) puts a "daemon unreachable: ... retrying" line above the last frame, and
watch keeps asking every interval until it answers again.

What is drawn is `controller.views.watch_view.render`; this module only fetches and paints.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import termios
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from controller.views.watch_view import fit, render
from deploy.client import AdminClient, ApiError, Unreachable

EXIT_OK = 0
PIPED_DECISIONS = 10
ALT_SCREEN, MAIN_SCREEN = "\x1b[?1049h", "\x1b[?1049l"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
HOME, ERASE_LINE, ERASE_BELOW, RESET = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[0m"
SYNC_BEGIN, SYNC_END = "\x1b[?2026h", "\x1b[?2026l"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Snapshot:
    status: dict[str, Any]
    decisions: list[dict[str, Any]]
    at: datetime


def fetch(client: AdminClient, decisions: int) -> Snapshot:
    status = client.get("/v1/rollout")
    journal = client.get(f"/v1/rollout/journal?limit={decisions}")["decisions"]
    return Snapshot(status, journal, datetime.now(UTC))


def watch(
    client: AdminClient, *, interval: float = 1.0, once: bool = False, color: bool = True, out: TextIO | None = None
) -> int:
    """Run the view until a stop signal; the first fetch's Unreachable/ApiError is the caller's."""
    out = out or sys.stdout
    live = out.isatty() and os.environ.get("TERM") != "dumb"
    color = color and live and "NO_COLOR" not in os.environ
    try:
        if once or not live:
            return _plain(client, interval, once, color and once, out)  # piped frames are plain
        return _live(client, interval, color, out)
    except KeyboardInterrupt:  # before the handlers were in place (during the first fetch)
        return EXIT_OK


class _Signals:
    """Stop signals end the loop, SIGWINCH wakes it; the previous handlers return on exit.

    A stop signal raises KeyboardInterrupt to cut a fetch or a wait short, but never in
    the middle of writing a frame (`quiet`): a half-written escape sequence would be left
    on the screen. Once stopping, further signals are ignored so the restore completes.
    """

    def __init__(self) -> None:
        self.wake = threading.Event()
        self.stopping = False
        self.quiet = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for signum in STOP_SIGNALS:
            self._saved[signum] = signal.signal(signum, self._stop)
        self._saved[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, lambda *_: self.wake.set())
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _stop(self, signum: int, frame: object) -> None:
        already, self.stopping = self.stopping, True
        self.wake.set()
        if not already and not self.quiet:
            raise KeyboardInterrupt

    def sleep(self, seconds: float) -> None:
        """Until the next frame is due, a resize, or a stop."""
        self.wake.wait(seconds)
        self.wake.clear()


def _refresh(client: AdminClient, last: Snapshot, decisions: int, interval: float) -> tuple[Snapshot, str | None]:
    why: Exception
    try:
        return fetch(client, decisions), None
    except Unreachable as exc:
        what, why = "daemon unreachable", exc
    except ApiError as exc:
        what, why = "daemon answered an error", exc
    return last, f"{what}: retrying every {interval:g}s (the frame below is from {last.at:%H:%M:%S}Z): {why}"


def _frame(snap: Snapshot, problem: str | None, width: int, height: int | None, color: bool) -> list[str]:
    top = [fit(problem, width, "red", color)] if problem else []
    rest = None if height is None else max(0, height - len(top))
    return top + render(snap.status, snap.decisions, width=width, now=datetime.now(UTC), color=color, height=rest)


def _plain(client: AdminClient, interval: float, once: bool, color: bool, out: TextIO) -> int:
    snap, problem = fetch(client, PIPED_DECISIONS), None
    with _Signals() as signals:
        try:
            while True:
                signals.quiet = True
                out.write("\n".join(_frame(snap, problem, shutil.get_terminal_size().columns, None, color)) + "\n")
                out.flush()
                signals.quiet = False
                if once or signals.stopping:
                    return EXIT_OK
                signals.sleep(interval)
                snap, problem = _refresh(client, snap, PIPED_DECISIONS, interval)
                out.write("\n")
        except KeyboardInterrupt:
            return EXIT_OK
        except BrokenPipeError:  # `rolloutctl watch | head`: the reader is gone, and so are we
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            return EXIT_OK


def _live(client: AdminClient, interval: float, color: bool, out: TextIO) -> int:
    size = shutil.get_terminal_size()
    snap, problem = fetch(client, max(PIPED_DECISIONS, size.lines)), None
    with _Signals() as signals, _Screen(out, signals):
        try:
            while not signals.stopping:
                size = shutil.get_terminal_size()
                # One column short of the edge: a character in the last column leaves the cursor
                # there, and the erase-to-end-of-line after it would erase that character.
                lines = _frame(snap, problem, max(1, size.columns - 1), size.lines, color)
                signals.quiet = True
                out.write(SYNC_BEGIN + HOME + (ERASE_LINE + "\r\n").join(lines) + ERASE_LINE + ERASE_BELOW + SYNC_END)
                out.flush()
                signals.quiet = False
                if signals.stopping:
                    break
                signals.sleep(interval)
                snap, problem = _refresh(client, snap, max(PIPED_DECISIONS, size.lines), interval)
        except KeyboardInterrupt:
            pass
    return EXIT_OK


class _Screen:
    """The alternate screen, a hidden cursor and no echo while watching; all restored on exit."""

    def __init__(self, out: TextIO, signals: _Signals) -> None:
        self.out, self.signals = out, signals
        self._echo: list[Any] | None = None

    def __enter__(self) -> _Screen:
        if sys.stdin.isatty():  # keys typed while watching would scribble over the frame
            fd = sys.stdin.fileno()
            self._echo = termios.tcgetattr(fd)
            quiet = termios.tcgetattr(fd)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
        self.out.write(ALT_SCREEN + HIDE_CURSOR)
        self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        self.signals.stopping = self.signals.quiet = True  # a second Ctrl-C must not cut the restore short
        try:
            self.out.write(RESET + MAIN_SCREEN + SHOW_CURSOR)
            self.out.flush()
        except OSError:
            pass  # the terminal is gone: nothing left to restore on it
        if self._echo is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, self._echo)
