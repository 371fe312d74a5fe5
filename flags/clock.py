"""The wall clock, and the type of an injected one: shared helpers, bottom layer.

    utcnow()   now, timezone-aware, in UTC: the default clock of the flags store, the
               daemon, the demo and memories
    Clock      what takes its place in tests and rehearsals: any `() -> aware datetime`

Bottom layer: this module and `flags/atomic.py` (crash-safe file writes) import nothing of
ours, and any part of rolloutd may use them — `flags`, `retrieval`, `controller`, `deploy`.
They sit in `flags` because the top level is fixed and `flags` is the one package that
depends on nothing else of ours; they know nothing about flags, and `flags.model` (the flag
model) is not a place for helpers. Time is injected everywhere else: only composition
roots (the daemon's main, the demo, a store built without a clock) call `utcnow` directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """Now, timezone-aware, in UTC."""
    return datetime.now(UTC)
