"""`rolloutd demo --inject KIND[=AMOUNT]@START[+DURATION]`: faults scheduled in plan time.

    latency@30h          every retrieval 400 ms slower from hour 30 to the end
    latency=250ms@30h+2h 250 ms, for two plan hours
    errors@40h           5% of retrievals fail from hour 40
    errors=2%@40h+90m    2%, for 90 plan minutes

Pure: parsing, and which faults are active at a plan offset. The demo applies them to the
retriever's `Faults` (retrieval/faults.py) as plan time passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from controller.plan import format_duration, parse_duration

DEFAULTS = {"latency": 0.4, "errors": 0.05}
USAGE = "write KIND[=AMOUNT]@START[+DURATION], e.g. latency@30h, latency=250ms@30h+2h, errors=2%@40h"


@dataclass(frozen=True)
class Injection:
    kind: str  # "latency" (amount in seconds) or "errors" (amount a share, 0-1)
    amount: float
    start: timedelta
    duration: timedelta | None = None  # None: until the demo ends

    def active(self, elapsed: timedelta) -> bool:
        return elapsed >= self.start and (self.duration is None or elapsed < self.start + self.duration)

    def describe(self) -> str:
        amount = (
            f"+{self.amount * 1000:g} ms per retrieval"
            if self.kind == "latency"
            else f"{self.amount:.1%} of retrievals fail"
        )
        until = f" for {format_duration(self.duration)}" if self.duration else ""
        return f"{self.kind} ({amount}) from hour {self.start.total_seconds() / 3600:g}{until}"


def parse_injection(text: str) -> Injection:
    """One --inject value; ValueError names what is wrong."""
    head, at, when = text.partition("@")
    if not at or not when:
        raise ValueError(f"--inject {text!r}: no start time; {USAGE}")
    kind, eq, amount_text = head.partition("=")
    if kind not in DEFAULTS:
        raise ValueError(f"--inject {text!r}: unknown fault {kind!r}; faults: {', '.join(DEFAULTS)}")
    amount = _amount(kind, amount_text, text) if eq else DEFAULTS[kind]
    start_text, plus, duration_text = when.partition("+")
    try:
        start = _offset(start_text)
        duration = _offset(duration_text) if plus else None
    except ValueError as exc:
        raise ValueError(f"--inject {text!r}: {exc}") from None
    if duration is not None and duration <= timedelta(0):
        raise ValueError(f"--inject {text!r}: the duration must be positive")
    return Injection(kind, amount, start, duration)


def _offset(text: str) -> timedelta:
    """A plan offset: "30h", "90m", or a bare number of hours as plans write them."""
    try:
        return parse_duration(float(text))
    except ValueError:
        return parse_duration(text)


def _amount(kind: str, text: str, whole: str) -> float:
    try:
        if kind == "errors":
            value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
            if not 0 < value <= 1:
                raise ValueError
            return value
        seconds = float(text[:-2]) / 1000 if text.endswith("ms") else parse_duration(text).total_seconds()
        if seconds <= 0:
            raise ValueError
        return seconds
    except ValueError:
        what = "a share like 2% or 0.02" if kind == "errors" else "a duration like 400ms or 1s"
        raise ValueError(f"--inject {whole!r}: {kind} amount {text!r} must be {what}") from None


def active_faults(injections: list[Injection], elapsed: timedelta) -> tuple[float, float]:
    """(added latency in seconds, error share) from the injections active at plan offset `elapsed`."""
    latency = sum(i.amount for i in injections if i.kind == "latency" and i.active(elapsed))
    errors = max([i.amount for i in injections if i.kind == "errors" and i.active(elapsed)], default=0.0)
    return latency, min(1.0, errors)
