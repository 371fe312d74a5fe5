"""Structured logs: one JSON object a line on stdout, prefixed with `<N>` for journald.

With `SyslogLevelPrefix=yes` (the default for services) journald strips the `<N>`
and files the line at priority N, so `journalctl -u rolloutd -p warning` works. An
event may carry `priority="notice"` (or any syslog name) to be filed above `info`
without being a warning: decisions such as "stage applied" are notices.

Third-party libraries that log through the standard `logging` module (uvicorn) are
rendered by the same code, so every line in the journal has one shape. So is an
exception nothing caught: Python would print its traceback to stderr, one journal
entry per line at the unit's default priority (info), invisible to `journalctl -p
err`; instead it becomes one `daemon.crashed` event at crit. Only where the log is the
journal (stdout, the default): `rolloutd demo` and `replay` log elsewhere and keep
their crashes on the terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import MutableMapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import structlog

SYSLOG_PRIORITY = {
    "emerg": 0,
    "alert": 1,
    "critical": 2,
    "crit": 2,
    "error": 3,
    "err": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


def render_line(event: MutableMapping[str, Any]) -> str:
    """`<N>{json}` for one event; `priority` (a syslog name) overrides the level's."""
    level = str(event.get("level", "info")).lower()
    wanted = str(event.pop("priority", level)).lower()
    priority = SYSLOG_PRIORITY.get(wanted, 6)
    if wanted in SYSLOG_PRIORITY:
        event["level"] = wanted
    event.setdefault("time", datetime.now(UTC).isoformat(timespec="milliseconds"))
    return f"<{priority}>" + json.dumps(event, default=str, separators=(",", ":"))


def _renderer(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> str:
    return render_line(event)


def configure_logging(
    stream: TextIO | None = None, level: int = logging.INFO, *, log_crashes: bool | None = None
) -> None:
    """Send structlog and stdlib logging to `stream` as prefixed JSON lines; and an uncaught
    exception too, when `log_crashes` (by default: when logging to stdout)."""
    out = stream or sys.stdout
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            _renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_StdlibJsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # third-party chatter stays out unless it matters
    crashes = stream is None if log_crashes is None else log_crashes
    if crashes:
        sys.excepthook = _CrashWriter(out)


class _CrashWriter:
    """sys.excepthook: the exception that ends the process as one crit line."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def __call__(self, kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            sys.__excepthook__(kind, exc, tb)
            return
        event = {
            "event": "daemon.crashed",
            "level": "crit",
            "error": f"{kind.__name__}: {exc}",
            "exception": "".join(traceback.format_exception(kind, exc, tb)),
        }
        print(render_line(event), file=self.out, flush=True)


class _StdlibJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "event": record.getMessage(),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return render_line(event)
