"""Log lines: `<N>` syslog priority prefix plus one JSON object, as journald reads them."""

from __future__ import annotations

import io
import json
import logging

import structlog

from controller.host.logs import configure_logging, render_line


def parse(line: str) -> tuple[int, dict]:
    assert line.startswith("<") and ">" in line, line
    prio, _, body = line[1:].partition(">")
    return int(prio), json.loads(body)


def test_levels_map_to_syslog_priorities() -> None:
    """error → 3, warning → 4, info → 6, and an explicit notice → 5 with level 'notice'."""
    assert parse(render_line({"event": "x", "level": "error"}))[0] == 3
    assert parse(render_line({"event": "x", "level": "warning"}))[0] == 4
    assert parse(render_line({"event": "x", "level": "info"}))[0] == 6
    prio, event = parse(render_line({"event": "stage.applied", "level": "info", "priority": "notice"}))
    assert prio == 5 and event["level"] == "notice" and "priority" not in event


def test_structlog_and_stdlib_share_one_shape() -> None:
    """structlog events and stdlib records (uvicorn's) both come out as prefixed JSON lines."""
    out = io.StringIO()
    configure_logging(out)
    structlog.get_logger("t").critical("emergency.activated", reason="test")
    logging.getLogger("uvicorn.error").error("boom %s", 1)
    lines = out.getvalue().splitlines()
    first, second = parse(lines[0]), parse(lines[1])
    assert first[0] == 2 and first[1]["event"] == "emergency.activated" and first[1]["reason"] == "test"
    assert second[0] == 3 and second[1]["event"] == "boom 1" and second[1]["logger"] == "uvicorn.error"
    configure_logging()
