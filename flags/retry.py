"""Retrying a write until the disk takes it: a thread that waits on an event with a deadline.

The flag store is synchronous and also runs without an event loop (`rolloutctl flags
restore`, the crash tests), so its one background duty — writing an emergency that a full
disk kept in memory only — runs in a thread of its own. The thread exists only while
there is something to write: it tries after `first` seconds, doubling up to `cap`, and at
once when `wake()` is called; it ends when `attempt()` reports nothing is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Retrier:
    def __init__(self, attempt: Callable[[], bool], *, name: str, first: float = 0.25, cap: float = 5.0) -> None:
        """`attempt()` tries once and returns True when nothing is left to write."""
        self._attempt, self._name = attempt, name
        self._first, self._cap = first, cap
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._again = False  # start() was called after the running attempt began
        self._stopped = False
        self.attempts = 0

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def start(self) -> None:
        """Begin retrying (or, when already retrying, carry on after the current attempt)."""
        with self._lock:
            if self._stopped:
                return
            self._again = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def wake(self) -> None:
        """Try again now rather than at the next deadline."""
        self._wakeup.set()

    def stop(self, timeout: float = 5.0) -> None:
        """No more attempts; wait (bounded) for one in progress to finish."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wakeup.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        delay = self._first
        while True:
            self._wakeup.wait(delay)
            with self._lock:
                if self._stopped:
                    self._thread = None
                    return
                self._wakeup.clear()
                self._again = False
            self.attempts += 1
            try:
                done = self._attempt()
            except Exception:  # noqa: BLE001  (the attempt logs its own failures; the thread must live on)
                done = False
            with self._lock:
                if done and not self._again:
                    self._thread = None
                    return
            delay = self._first if done else min(delay * 2, self._cap)
