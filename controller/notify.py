"""Notifications: tell humans about decisions without ever holding a decision up.

    Event            one decision worth telling: kind, severity, rollout, summary, at, fields
    Notifications    submit(event) -> None (synchronous, O(1), never raises); run() delivers
    ├── webhooks     Slack-compatible JSON (Slack, Mattermost, Rocket.Chat incoming webhooks)
    └── Alertmanager one v2 alert per event, POST <base>/api/v2/alerts

Design:

- One FIFO queue and one worker per destination. A destination that is down or hangs
  holds up only its own later events; the others are delivered as if it did not exist.
  Each destination sees events in submit order (one delivery at a time, retries
  included); across destinations there is no order.
- A full queue drops its oldest event: the newest one describes the rollout as it is now.
- Retried: transport errors, timeouts, 429 and 5xx, after base * 2^(attempt-1) seconds
  (capped at backoff_max, "equal jitter": half fixed, half random), or after Retry-After
  when it is a number of seconds (capped too; an HTTP-date falls back to the backoff).
  Not retried: every other status (3xx, 4xx): a wrong URL or a rejected body stays wrong.
- `stats` counts deliveries (one event to one destination): one event sent to two
  destinations is sent=2. "failed" is a delivery given up on, "retried" one retry.
- The workers run in run()'s task, not the submitter's, so contextvars bound by the
  service (rollout, stage) are not in their logs: each log event names the rollout itself.

Call submit() from the event loop's thread (it sets an anyio.Event).
"""

from __future__ import annotations

import math
import random
import re
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx
import structlog

log = structlog.get_logger("rolloutd.notify")

ALERTS_PATH = "/api/v2/alerts"
# Alertmanager resolves an alert nobody re-posts once endsAt passes: an hour keeps a
# rollback on the on-call's screen without needing a "resolved" event we do not have.
ALERT_TTL = timedelta(hours=1)
NOTIFY_KINDS = frozenset(
    {"warning", "rollback", "hold", "checkpoint", "awaiting_approval", "emergency", "emergency_cleared", "completed"}
)
_CRITICAL = frozenset({"rollback", "emergency"})
_WARNING = frozenset({"warning", "hold", "awaiting_approval"})
_COLORS = {"critical": "#d32f2f", "warning": "#f9a825", "info": "#2e7d32"}
_SNIPPET = 200  # characters of a rejecting answer worth a log line
_SECRET_SEGMENT = 16  # a path segment this long is a webhook token (Slack, Mattermost, Discord)
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")  # Alertmanager rejects other annotation names


def severity_for(kind: str) -> str:
    """The default severity of a decision kind: who should be woken by it."""
    if kind in _CRITICAL:
        return "critical"
    if kind in _WARNING:
        return "warning"
    return "info"


@dataclass(frozen=True)
class Event:
    """One decision worth telling humans about."""

    kind: str  # the decision's action: "rollback", "emergency", "checkpoint", ...
    severity: str  # "info" | "warning" | "critical"
    rollout: str  # the plan's name
    summary: str  # one human line
    at: datetime  # aware UTC (plan time); a naive one is taken as UTC
    fields: Mapping[str, Any] = field(default_factory=dict)  # stage, percentage, guard, reason, ...


# -- bodies ---------------------------------------------------------------------------------


def slack_body(event: Event) -> dict[str, Any]:
    """A Slack incoming-webhook message; Mattermost and Rocket.Chat accept the same shape."""
    text = _one_line(f"[{event.severity.upper()}] {event.rollout} {event.kind}: {event.summary}")
    fields = [{"title": str(k), "value": _text(v), "short": True} for k, v in event.fields.items()]
    return {
        "text": text,
        "attachments": [
            {
                "fallback": text,
                "color": _COLORS.get(event.severity, _COLORS["info"]),
                "title": f"{event.rollout}: {event.kind.replace('_', ' ')}",
                "text": event.summary,
                "fields": fields,
                "ts": int(_utc(event.at).timestamp()),
            }
        ],
    }


def alertmanager_body(event: Event) -> list[dict[str, Any]]:
    """One Alertmanager v2 alert; "emergency" fires until "emergency_cleared" resolves it.

    Alertmanager matches alerts by their label set, so the emergency pair carries fixed
    labels (no guard label, severity from the kind): the clearing event, which knows no
    guard, then resolves exactly the alert that fired. Other fields become annotations.
    """
    at = _utc(event.at)
    resolves = event.kind == "emergency_cleared"
    kind = "emergency" if resolves else event.kind
    labels = {
        "alertname": "Rolloutd" + "".join(p.capitalize() for p in kind.split("_")),
        "severity": severity_for(kind) if kind == "emergency" else event.severity,
        "rollout": event.rollout,
    }
    if kind != "emergency" and event.fields.get("guard") is not None:
        labels["guard"] = str(event.fields["guard"])
    annotations = {
        str(k): _text(v)
        for k, v in event.fields.items()
        if k != "reason" and v is not None and _LABEL_NAME.match(str(k))
    }
    annotations |= {"summary": event.summary, "description": _text(event.fields.get("reason") or event.summary)}
    alert: dict[str, Any] = {"labels": labels, "annotations": annotations, "startsAt": _rfc3339(at)}
    if resolves:
        alert["endsAt"] = _rfc3339(at)
    elif kind != "emergency":
        alert["endsAt"] = _rfc3339(at + ALERT_TTL)
    return [alert]


def alerts_url(url: str) -> str:
    """Alertmanager's v2 alerts endpoint, from its base URL or the endpoint itself."""
    base = url.rstrip("/")
    return base if base.endswith(ALERTS_PATH) else base + ALERTS_PATH


def redact(url: str) -> str:
    """`url` fit for a log line: no user:password, no query, token-like path segments masked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        host += f":{parts.port}" if parts.port else ""
    except ValueError:
        pass  # a bad port is the constructor's to report
    path = "/".join("***" if len(s) >= _SECRET_SEGMENT else s for s in parts.path.split("/"))
    return urlunsplit((parts.scheme, host, path, "", ""))


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _rfc3339(at: datetime) -> str:
    return _utc(at).isoformat().replace("+00:00", "Z")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, datetime):
        return _rfc3339(value)
    return str(value)


# -- delivery -------------------------------------------------------------------------------


@dataclass
class _Destination:
    url: str
    body: Callable[[Event], Any]
    queue: deque[Event] = field(default_factory=deque)
    busy: bool = False  # a delivery (with its retries) is in flight
    wakeup: anyio.Event | None = None  # set by submit() while the worker waits

    @property
    def label(self) -> str:
        return redact(self.url)


@dataclass(frozen=True)
class _Attempt:
    sent: bool
    retryable: bool
    error: str = ""
    status: int | None = None
    retry_after: float | None = None


class Notifications:
    """Deliver events to webhooks and Alertmanager in the background, with retries."""

    def __init__(
        self,
        webhook_urls: Sequence[str] = (),
        alertmanager_url: str | None = None,
        *,
        timeout: float = 5.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        queue_size: int = 1000,
        client: httpx.AsyncClient | None = None,
        kinds: Collection[str] = NOTIFY_KINDS,
    ) -> None:
        if max_attempts < 1 or queue_size < 1 or timeout <= 0:
            raise ValueError(
                f"notifications need max_attempts >= 1 (got {max_attempts}), "
                f"queue_size >= 1 (got {queue_size}) and timeout > 0 (got {timeout})"
            )
        destinations = [_Destination(_checked(url), slack_body) for url in webhook_urls]
        if alertmanager_url:
            destinations.append(_Destination(alerts_url(_checked(alertmanager_url)), alertmanager_body))
        self._destinations = tuple(destinations)
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._queue_size = queue_size
        self._client = client
        self._kinds = frozenset(kinds)
        self._idle: anyio.Event | None = None  # set when the last pending delivery ends (drain)
        self.stats: dict[str, int] = {"sent": 0, "failed": 0, "retried": 0, "dropped": 0}

    @property
    def enabled(self) -> bool:
        return bool(self._destinations)

    def submit(self, event: Event) -> None:
        """Queue `event` for every destination; kinds outside `kinds` are ignored."""
        try:
            if event.kind not in self._kinds:
                return
            for dest in self._destinations:
                if len(dest.queue) >= self._queue_size:
                    self._drop(dest, dest.queue.popleft())
                dest.queue.append(event)
                if dest.wakeup is not None:
                    dest.wakeup.set()
        except Exception:  # a notification must never cost a decision
            log.exception("notify.submit_failed", event_repr=repr(event)[:_SNIPPET])

    async def run(self) -> None:
        """Deliver until cancelled; returns at once when no destination is configured."""
        if not self.enabled:
            return
        client = self._client or httpx.AsyncClient(
            timeout=httpx.Timeout(self._timeout),
            trust_env=False,
            follow_redirects=False,
            headers={"User-Agent": "rolloutd-notify"},
        )
        # trust_env=False: an operator's HTTP(S)_PROXY must not capture (or break) alerting.
        try:
            async with anyio.create_task_group() as tg:
                for dest in self._destinations:
                    tg.start_soon(self._worker, client, dest, name=f"notify {dest.label}")
        finally:
            for dest in self._destinations:
                dest.wakeup = None
            if self._client is None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for every queue to empty and every delivery to end.

        Deliveries progress only while run() runs; submit() keeps accepting meanwhile.
        """
        if self._pending() == 0:
            return
        if self._idle is None or self._idle.is_set():
            self._idle = anyio.Event()
        with anyio.move_on_after(timeout) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            log.warning("notify.drain_timeout", timeout=timeout, pending=self._pending(), **self.stats)

    def _pending(self) -> int:
        return sum(len(d.queue) + d.busy for d in self._destinations)

    def _drop(self, dest: _Destination, event: Event) -> None:
        self.stats["dropped"] += 1
        log.warning(
            "notify.dropped",
            destination=dest.label,
            kind=event.kind,
            rollout=event.rollout,
            attempt=0,
            queue_size=self._queue_size,
        )

    async def _worker(self, client: httpx.AsyncClient, dest: _Destination) -> None:
        while True:
            if not dest.queue:
                dest.wakeup = anyio.Event()
                await dest.wakeup.wait()
                continue
            event = dest.queue.popleft()
            dest.busy = True
            try:
                await self._deliver(client, dest, event)
            finally:
                dest.busy = False
                if self._idle is not None and self._pending() == 0:
                    self._idle.set()

    async def _deliver(self, client: httpx.AsyncClient, dest: _Destination, event: Event) -> None:
        """Try `event` on `dest` up to max_attempts times; every outcome is one log event."""
        for attempt in range(1, self._max_attempts + 1):
            result = await self._attempt(client, dest, event)
            where = {"destination": dest.label, "kind": event.kind, "rollout": event.rollout, "attempt": attempt}
            if result.sent:
                self.stats["sent"] += 1
                log.info("notify.sent", status=result.status, **where)
                return
            if not result.retryable or attempt == self._max_attempts:
                self.stats["failed"] += 1
                log.error(
                    "notify.failed",
                    error=result.error,
                    status=result.status,
                    gave_up=f"after {attempt}/{self._max_attempts} attempts" if result.retryable else "not retryable",
                    **where,
                )
                return
            delay = self._delay(attempt, result.retry_after)
            self.stats["retried"] += 1
            log.warning("notify.retry", error=result.error, status=result.status, delay=round(delay, 3), **where)
            await anyio.sleep(delay)

    async def _attempt(self, client: httpx.AsyncClient, dest: _Destination, event: Event) -> _Attempt:
        try:
            # The timeout goes on each request too: an injected client may have none.
            response = await client.post(dest.url, json=dest.body(event), timeout=self._timeout)
        except httpx.TimeoutException as exc:
            return _Attempt(False, True, f"no answer within {self._timeout:g}s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return _Attempt(False, True, f"{type(exc).__name__}: {exc or 'no details'}")
        except Exception as exc:  # noqa: BLE001  (a bad URL or body: trying again changes nothing)
            return _Attempt(False, False, f"{type(exc).__name__}: {exc or 'no details'}")
        status = response.status_code
        if 200 <= status < 300:
            return _Attempt(True, False, status=status)
        error = f"HTTP {status}: {_one_line(response.text)[:_SNIPPET]}"
        if status == 429 or status >= 500:
            return _Attempt(False, True, error, status, _retry_after(response))
        return _Attempt(False, False, error, status)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._backoff_max)
        ceiling = min(self._backoff_max, self._backoff_base * 2 ** min(attempt - 1, 32))
        # Equal jitter: spreads the retries of many daemons, yet never retries at once.
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds, when the server gave a number (an HTTP-date is ignored)."""
    try:
        seconds = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _checked(url: str) -> str:
    parts = urlsplit(url)
    try:
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid:
        raise ValueError(
            f"notification URL {redact(url)!r} is not an http(s) URL: "
            "expected http(s)://host[:port]/path in [notifications]"
        )
    return url
