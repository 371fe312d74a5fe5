"""Notifications against a real HTTP receiver: bodies, retries, give-ups, isolation, drain.

The receiver is a `ThreadingHTTPServer` on a free loopback port in its own thread, so
it keeps answering (or hanging) whatever the event loop under test is doing. It records
every request and answers from a script (503 twice, 429 with Retry-After, 400, hang),
then with its default. Tests wait on outcomes (`drain`, `Receiver.wait_for`), each wait
bounded, and keep backoffs and timeouts tiny so each test takes well under two seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from structlog.testing import capture_logs

from controller.notify import (
    NOTIFY_KINDS,
    Event,
    Notifications,
    alertmanager_body,
    alerts_url,
    redact,
    severity_for,
)
from tests.support.realservers import HOST, free_port

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ROLLOUT = "phase5_hybrid_rag"
STEP = 5.0  # seconds: a bound on any one wait in these tests
FAST = {"timeout": 1.0, "backoff_base": 0.01, "backoff_max": 0.05}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hang: bool = False  # never answer (until the receiver closes)


@dataclass(frozen=True)
class Received:
    path: str
    content_type: str
    body: Any
    at: float  # time.monotonic() on arrival


class Receiver:
    """A real HTTP server that records POSTs and answers from a script, then its default."""

    def __init__(self, script: tuple[Reply, ...] = (), default: Reply = Reply()) -> None:
        self.requests: list[Received] = []
        self._script = deque(script)
        self._default = default
        self._changed = threading.Condition()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer((HOST, 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def wait_for(self, count: int, timeout: float = STEP) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.requests) >= count, timeout)

    async def arrived(self, count: int) -> None:
        """Wait (bounded) until `count` requests have arrived."""
        assert await anyio.to_thread.run_sync(self.wait_for, count), f"{len(self.requests)} < {count} requests"

    def close(self) -> None:
        self._closing.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=STEP)

    def _record(self, request: Received) -> Reply:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
            return self._script.popleft() if self._script else self._default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = receiver._record(
                    Received(self.path, self.headers.get("Content-Type", ""), json.loads(raw), time.monotonic())
                )
                if reply.hang or reply.delay:
                    receiver._closing.wait(None if reply.hang else reply.delay)
                if reply.hang:
                    self.close_connection = True
                    return
                payload = reply.body.encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    """Start receivers: `receiver(Reply(503), Reply(503), default=Reply())`; all closed at teardown."""
    started: list[Receiver] = []

    def start(*script: Reply, default: Reply = Reply()) -> Receiver:
        started.append(Receiver(script, default))
        return started[-1]

    yield start
    for r in started:
        r.close()


def event(
    kind: str = "rollback",
    summary: str = "rolled back to 5%: p95_latency 0.41 > 0.3 for 2 consecutive checks",
    **fields: Any,
) -> Event:
    fields = fields or {
        "stage": 2,
        "percentage": 5.0,
        "agents": ("Builder", "QA"),
        "guard": "p95_latency",
        "reason": "p95_latency 0.41 > critical 0.3 for 2 consecutive checks",
    }
    return Event(kind=kind, severity=severity_for(kind), rollout=ROLLOUT, summary=summary, at=AT, fields=fields)


@asynccontextmanager
async def running(notifications: Notifications) -> AsyncIterator[Notifications]:
    """`notifications.run()` in a task group for the block, cancelled after it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(notifications.run)
        yield notifications
        tg.cancel_scope.cancel()


def logged(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rollback_reaches_webhook_as_slack_message(receiver: Callable[..., Receiver]) -> None:
    """A rollback is POSTed as Slack JSON: one-line text, and attachment fields with guard and percentage."""
    hook = receiver()
    with anyio.fail_after(STEP):
        async with running(Notifications([hook.url + "/hooks/rollouts"], **FAST)) as n:
            n.submit(event())
            await n.drain(STEP)
    [got] = hook.requests
    assert (got.path, got.content_type) == ("/hooks/rollouts", "application/json")
    assert got.body["text"] == (
        f"[CRITICAL] {ROLLOUT} rollback: rolled back to 5%: p95_latency 0.41 > 0.3 for 2 consecutive checks"
    )
    [attachment] = got.body["attachments"]
    assert attachment["title"] == f"{ROLLOUT}: rollback"
    assert attachment["ts"] == int(AT.timestamp())
    fields = {f["title"]: f["value"] for f in attachment["fields"]}
    assert fields["guard"] == "p95_latency" and fields["percentage"] == "5.0"
    assert fields["agents"] == "Builder, QA"
    assert all(f["short"] is True for f in attachment["fields"])
    assert n.stats == {"sent": 1, "failed": 0, "retried": 0, "dropped": 0}


@pytest.mark.anyio
async def test_alertmanager_receives_a_v2_alert_list(receiver: Callable[..., Receiver]) -> None:
    """The Alertmanager destination gets a one-alert v2 list at /api/v2/alerts, ending an hour later."""
    am = receiver()
    with anyio.fail_after(STEP):
        async with running(Notifications(alertmanager_url=am.url, **FAST)) as n:
            n.submit(event())
            await n.drain(STEP)
    [got] = am.requests
    assert got.path == "/api/v2/alerts"
    assert got.body == [
        {
            "labels": {
                "alertname": "RolloutdRollback",
                "severity": "critical",
                "rollout": ROLLOUT,
                "guard": "p95_latency",
            },
            "annotations": {
                "summary": event().summary,
                "description": event().fields["reason"],
                "stage": "2",
                "percentage": "5.0",
                "agents": "Builder, QA",
                "guard": "p95_latency",
            },
            "startsAt": "2026-03-01T12:00:00Z",
            "endsAt": "2026-03-01T13:00:00Z",
        }
    ]


def test_emergency_fires_until_cleared_resolves_it() -> None:
    """An emergency has no endsAt; emergency_cleared posts the same alert (same labels) with endsAt=at."""
    [fired] = alertmanager_body(event("emergency", "kill switch on", guard="error_rate", reason="error_rate 0.2"))
    cleared_at = AT + timedelta(minutes=20)
    [cleared] = alertmanager_body(
        Event(
            kind="emergency_cleared",
            severity=severity_for("emergency_cleared"),
            rollout=ROLLOUT,
            summary="kill switch off",
            at=cleared_at,
        )
    )
    assert "endsAt" not in fired
    assert (
        fired["labels"]
        == cleared["labels"]
        == {"alertname": "RolloutdEmergency", "severity": "critical", "rollout": ROLLOUT}
    )
    assert fired["annotations"]["guard"] == "error_rate"
    assert (cleared["startsAt"], cleared["endsAt"]) == ("2026-03-01T12:20:00Z", "2026-03-01T12:20:00Z")


def test_camel_case_alertname_and_annotation_names() -> None:
    """Kinds become CamelCase alert names; fields whose names Alertmanager would reject are left out."""
    [alert] = alertmanager_body(
        event(
            "awaiting_approval",
            "checkpoint 1 needs approval",
            **{"report path": "/x", "report_path": "/var/lib/r.md", "checkpoint": 1},
        )
    )
    assert alert["labels"] == {"alertname": "RolloutdAwaitingApproval", "severity": "warning", "rollout": ROLLOUT}
    assert alert["annotations"]["report_path"] == "/var/lib/r.md" and "report path" not in alert["annotations"]
    assert alert["annotations"]["description"] == "checkpoint 1 needs approval"


@pytest.mark.parametrize(
    "url", ["http://am:9093", "http://am:9093/", "http://am:9093/api/v2/alerts", "http://am:9093/api/v2/alerts/"]
)
def test_alerts_url_accepts_base_or_endpoint(url: str) -> None:
    """A base URL gains /api/v2/alerts; a URL that already names the endpoint is kept."""
    assert alerts_url(url) == "http://am:9093/api/v2/alerts"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@alerts.example:8443/hooks?token=abc", "https://alerts.example:8443/hooks"),
        (
            "https://hooks.slack.com/services/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",
            "https://hooks.slack.com/services/T0123ABCD/B0123ABCD/***",
        ),
        ("http://[::1]:9093/api/v2/alerts", "http://[::1]:9093/api/v2/alerts"),
    ],
)
def test_destination_in_logs_hides_credentials(url: str, shown: str) -> None:
    """Logs name a destination without user:password, query or a webhook token in its path."""
    assert redact(url) == shown


def test_severity_and_default_kinds() -> None:
    """Rollbacks and emergencies are critical, warnings/holds/approvals warnings, the rest info."""
    assert [
        severity_for(k)
        for k in (
            "rollback",
            "emergency",
            "warning",
            "hold",
            "awaiting_approval",
            "checkpoint",
            "completed",
            "stage_applied",
        )
    ] == ["critical"] * 2 + ["warning"] * 3 + ["info"] * 3
    assert "stage_applied" not in NOTIFY_KINDS and "emergency_cleared" in NOTIFY_KINDS


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_5xx_is_retried_until_it_succeeds(receiver: Callable[..., Receiver]) -> None:
    """Two 503s then a 200: three requests, sent=1 retried=2, each retry logged with its attempt."""
    hook = receiver(Reply(503, "busy"), Reply(503, "busy"))
    with capture_logs() as logs, anyio.fail_after(STEP):
        async with running(Notifications([hook.url], **FAST)) as n:
            n.submit(event())
            await n.drain(STEP)
    assert len(hook.requests) == 3
    assert n.stats == {"sent": 1, "failed": 0, "retried": 2, "dropped": 0}
    assert [(e["attempt"], e["status"]) for e in logged(logs, "notify.retry")] == [(1, 503), (2, 503)]
    [sent] = logged(logs, "notify.sent")
    assert (sent["destination"], sent["kind"], sent["attempt"]) == (hook.url, "rollback", 3)


@pytest.mark.anyio
async def test_429_retry_after_is_honoured_up_to_backoff_max(receiver: Callable[..., Receiver]) -> None:
    """A 429's Retry-After replaces the (tiny) backoff, capped at backoff_max."""
    hook = receiver(Reply(429, "slow down", {"Retry-After": "1"}))
    with capture_logs() as logs, anyio.fail_after(STEP):
        async with running(Notifications([hook.url], timeout=1.0, backoff_base=0.001, backoff_max=0.25)) as n:
            n.submit(event())
            await n.drain(STEP)
    [retry] = logged(logs, "notify.retry")
    assert (retry["status"], retry["delay"]) == (429, 0.25)
    first, second = hook.requests
    assert second.at - first.at >= 0.2
    assert n.stats["sent"] == 1


@pytest.mark.anyio
async def test_400_is_not_retried(receiver: Callable[..., Receiver]) -> None:
    """A 400 fails at once: one request, failed=1, the status and the body's start in the log."""
    hook = receiver(default=Reply(400, "invalid_payload: missing text\n" + "x" * 1000))
    with capture_logs() as logs, anyio.fail_after(STEP):
        async with running(Notifications([hook.url], **FAST)) as n:
            n.submit(event())
            await n.drain(STEP)
    assert len(hook.requests) == 1
    assert n.stats == {"sent": 0, "failed": 1, "retried": 0, "dropped": 0}
    [failed] = logged(logs, "notify.failed")
    assert failed["log_level"] == "error" and failed["status"] == 400 and failed["gave_up"] == "not retryable"
    assert failed["error"].startswith("HTTP 400: invalid_payload: missing text x") and len(failed["error"]) < 250


@pytest.mark.anyio
async def test_unreachable_destination_gives_up_after_max_attempts() -> None:
    """Nothing listening: three refused attempts, then failed=1; nothing escapes run()."""
    url = f"http://{HOST}:{free_port()}/hook"
    with capture_logs() as logs, anyio.fail_after(STEP):
        async with running(Notifications([url], max_attempts=3, **FAST)) as n:
            n.submit(event())
            await n.drain(STEP)
    assert n.stats == {"sent": 0, "failed": 1, "retried": 2, "dropped": 0}
    assert [e["attempt"] for e in logged(logs, "notify.retry")] == [1, 2]
    [failed] = logged(logs, "notify.failed")
    assert (failed["attempt"], failed["gave_up"], failed["destination"]) == (3, "after 3/3 attempts", url)
    assert failed["error"].startswith("ConnectError")


@pytest.mark.anyio
async def test_silent_destination_times_out_and_is_retried(receiver: Callable[..., Receiver]) -> None:
    """A destination that never answers costs one timeout per attempt, then failed=1."""
    hook = receiver(default=Reply(hang=True))
    with capture_logs() as logs, anyio.fail_after(STEP):
        async with running(Notifications([hook.url], timeout=0.2, max_attempts=2, backoff_base=0.01)) as n:
            n.submit(event())
            await n.drain(STEP)
    assert len(hook.requests) == 2
    assert n.stats == {"sent": 0, "failed": 1, "retried": 1, "dropped": 0}
    [failed] = logged(logs, "notify.failed")
    assert failed["error"] == "no answer within 0.2s (ReadTimeout)"


# --- isolation, queue, drain -------------------------------------------------------------------


@pytest.mark.anyio
async def test_hanging_destination_does_not_delay_others_or_submit(receiver: Callable[..., Receiver]) -> None:
    """While one webhook hangs, submit() returns at once and the other webhook gets every event in order."""
    stuck, healthy = receiver(default=Reply(hang=True)), receiver()
    with anyio.fail_after(STEP):
        async with running(Notifications([stuck.url, healthy.url], timeout=30.0, backoff_base=0.01)) as n:
            started = time.monotonic()
            n.submit(event("warning", "first"))
            n.submit(event("hold", "second"))
            assert time.monotonic() - started < 0.05
            assert healthy.requests == [] and stuck.requests == []  # submit did no I/O
            await healthy.arrived(2)
            await stuck.arrived(1)
            n.submit(event("completed", "third"))
            await healthy.arrived(3)
            assert [r.body["attachments"][0]["text"] for r in healthy.requests] == ["first", "second", "third"]
            assert len(stuck.requests) == 1  # still on the first event, the rest queued behind it
            # One delivery at a time per destination: the third arrived, so the second was counted.
            assert n.stats["sent"] >= 2 and n.stats["failed"] == 0


@pytest.mark.anyio
async def test_full_queue_drops_the_oldest(receiver: Callable[..., Receiver]) -> None:
    """With room for two, a third submit drops the first, logs it and counts dropped=1."""
    hook = receiver()
    n = Notifications([hook.url], queue_size=2, **FAST)
    with capture_logs() as logs, anyio.fail_after(STEP):
        for summary in ("one", "two", "three"):
            n.submit(event("warning", summary))  # run() not started: nothing leaves the queue
        async with running(n):
            await n.drain(STEP)
    assert [r.body["attachments"][0]["text"] for r in hook.requests] == ["two", "three"]
    assert n.stats == {"sent": 2, "failed": 0, "retried": 0, "dropped": 1}
    [dropped] = logged(logs, "notify.dropped")
    assert (dropped["destination"], dropped["kind"], dropped["log_level"]) == (hook.url, "warning", "warning")


@pytest.mark.anyio
async def test_drain_waits_for_in_flight_delivery(receiver: Callable[..., Receiver]) -> None:
    """drain() returns only once a slow answer has come back and been counted."""
    hook = receiver(default=Reply(delay=0.3))
    with anyio.fail_after(STEP):
        async with running(Notifications([hook.url], **FAST)) as n:
            n.submit(event())
            await hook.arrived(1)
            assert n.stats["sent"] == 0
            await n.drain(STEP)
            assert n.stats["sent"] == 1


@pytest.mark.anyio
async def test_drain_gives_up_after_its_timeout(receiver: Callable[..., Receiver]) -> None:
    """With a destination hanging, drain() returns after its timeout and logs what is left."""
    hook = receiver(default=Reply(hang=True))
    with capture_logs() as logs, anyio.fail_after(STEP):
        async with running(Notifications([hook.url], timeout=30.0)) as n:
            n.submit(event())
            n.submit(event("completed", "done"))
            await hook.arrived(1)
            started = time.monotonic()
            await n.drain(0.3)
            waited = time.monotonic() - started
    assert 0.25 <= waited < 1.5
    [timeout] = logged(logs, "notify.drain_timeout")
    assert (timeout["pending"], timeout["sent"], timeout["failed"]) == (2, 0, 0)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_kinds_outside_the_default_set_are_not_sent(receiver: Callable[..., Receiver]) -> None:
    """stage_applied is not in NOTIFY_KINDS, so only the rollback after it reaches the webhook."""
    hook = receiver()
    with anyio.fail_after(STEP):
        async with running(Notifications([hook.url], **FAST)) as n:
            n.submit(event("stage_applied", "stage 2 applied"))
            n.submit(event())
            await n.drain(STEP)
    assert [r.body["attachments"][0]["title"] for r in hook.requests] == [f"{ROLLOUT}: rollback"]


@pytest.mark.anyio
async def test_nothing_configured_is_a_no_op() -> None:
    """Without destinations, submit() does nothing, run() returns and drain() does not wait."""
    n = Notifications()
    assert not n.enabled
    n.submit(event())
    with anyio.fail_after(STEP):
        await n.run()
        await n.drain(STEP)
    assert n.stats == {"sent": 0, "failed": 0, "retried": 0, "dropped": 0}


@pytest.mark.anyio
async def test_injected_client_is_used_and_left_open(receiver: Callable[..., Receiver]) -> None:
    """A client passed in carries the requests and is still open after run() stops."""
    hook = receiver()
    async with httpx.AsyncClient(trust_env=False) as client:
        with anyio.fail_after(STEP):
            async with running(Notifications([hook.url], client=client, **FAST)) as n:
                n.submit(event())
                await n.drain(STEP)
        assert not client.is_closed
    assert n.stats["sent"] == 1


@pytest.mark.parametrize("url", ["hooks.slack.com/services/x", "ftp://example.com/x", "http://", "http://h:port/"])
def test_bad_url_is_rejected_at_construction(url: str) -> None:
    """A URL that is not http(s)://host is a startup error, not a silent loss of alerts."""
    with pytest.raises(ValueError, match="is not an http\\(s\\) URL"):
        Notifications([url])
