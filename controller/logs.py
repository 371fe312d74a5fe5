"""Structured logs: one JSON object a line on stdout, prefixed with `<N>` for journald.

With `SyslogLevelPrefix=yes` (the default for services) journald strips the `<N>`
and files the line at priority N, so `journalctl -u rolloutd -p warning` works. An
event may carry `priority="notice"` (or any syslog name) to be filed above `info`
without being a warning: decisions such as "stage applied" are notices.

Third-party libraries that log through the standard `logging` module (uvicorn) are
rendered by the same code, so every line in the journal has one shape.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

import structlog

SYSLOG_PRIORITY = {
    "emerg": 0, "alert": 1, "critical": 2, "crit": 2, "error": 3, "err": 3,
    "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7,
}


def render_line(event: dict[str, Any]) -> str:
    """`<N>{json}` for one event; `priority` (a syslog name) overrides the level's."""
    level = str(event.get("level", "info")).lower()
    wanted = str(event.pop("priority", level)).lower()
    priority = SYSLOG_PRIORITY.get(wanted, 6)
    if wanted in SYSLOG_PRIORITY:
        event["level"] = wanted
    event.setdefault("time", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
    return f"<{priority}>" + json.dumps(event, default=str, separators=(",", ":"))


def _renderer(_logger: Any, _method: str, event: dict[str, Any]) -> str:
    return render_line(event)


def configure_logging(stream: TextIO | None = None, level: int = logging.INFO) -> None:
    """Send structlog and stdlib logging to `stream` as prefixed JSON lines."""
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
