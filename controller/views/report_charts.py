"""SVG chart pieces for the HTML report: scales, axes, step and value lines, downsampling.

Pure string building, no JavaScript: every chart is inline SVG whose x axis is plan
hours, so the timeline and every guard's chart line up one above the other. Hover text
is SVG `<title>`, which browsers show as a tooltip. All text goes through `esc`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

WIDTH = 1000
MAX_POINTS = 2000  # per series: the worst observation of each time bucket is kept
T = TypeVar("T")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class Frame:
    """A chart's plot area and scales: plan hours [x0, x1] → pixels, values [y0, y1] → pixels."""

    x0: float
    x1: float
    y0: float
    y1: float
    height: int
    width: int = WIDTH
    left: int = 64
    right: int = 110
    top: int = 24
    bottom: int = 32

    def x(self, hours: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return round(self.left + (hours - self.x0) / span * (self.width - self.left - self.right), 1)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        inner = self.height - self.top - self.bottom
        return round(self.top + (1 - (value - self.y0) / span) * inner, 1)

    @property
    def plot_left(self) -> int:
        return self.left

    @property
    def plot_right(self) -> int:
        return self.width - self.right

    @property
    def plot_top(self) -> int:
        return self.top

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom


def value_range(values: Iterable[float], floor_at_zero: bool = True) -> tuple[float, float]:
    """A padded [low, high] around `values`; starts at 0 when the values sit well above it."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if floor_at_zero and low >= 0 and low <= 0.5 * high:
        low = 0.0
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    return (low if low == 0.0 else low - pad), high + pad


def nice_step(span: float, most: int) -> float:
    """The smallest 1/2/2.5/5 x 10^k step that cuts `span` into at most `most` parts."""
    if span <= 0:
        return 1.0
    raw = span / most
    scale = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * scale >= raw:
            return factor * scale
    return 10 * scale


def hour_step(span: float) -> float:
    """A tick step in hours that reads as time (15m, 30m, 1h, 2h, 3h, 6h, 12h, 24h, ...)."""
    for step in (1 / 60, 5 / 60, 0.25, 0.5, 1, 2, 3, 6, 12, 24, 48, 168):
        if span / step <= 12:
            return step
    return nice_step(span, 12)


def hours_label(hours: float) -> str:
    if hours and abs(hours) < 1:
        return f"{hours * 60:.0f}m"
    return f"{hours:g}h"


def ticks(low: float, high: float, step: float) -> list[float]:
    first = math.ceil(low / step - 1e-9)
    out: list[float] = []
    k = first
    while k * step <= high + 1e-9 and len(out) < 200:
        out.append(round(k * step, 10))
        k += 1
    return out


def axes(frame: Frame, y_label: str, y_format: Callable[[float], str] = num) -> str:
    """Grid, tick labels and axis titles."""
    parts = [
        f'<rect class="plot" x="{frame.plot_left}" y="{frame.plot_top}" '
        f'width="{frame.plot_right - frame.plot_left}" height="{frame.plot_bottom - frame.plot_top}"/>'
    ]
    for h in ticks(frame.x0, frame.x1, hour_step(frame.x1 - frame.x0)):
        x = frame.x(h)
        parts.append(f'<line class="grid" x1="{x}" y1="{frame.plot_top}" x2="{x}" y2="{frame.plot_bottom}"/>')
        parts.append(
            f'<text class="tick" x="{x}" y="{frame.plot_bottom + 14}" text-anchor="middle">{esc(hours_label(h))}</text>'
        )
    for v in ticks(frame.y0, frame.y1, nice_step(frame.y1 - frame.y0, 4)):
        y = frame.y(v)
        parts.append(f'<line class="grid" x1="{frame.plot_left}" y1="{y}" x2="{frame.plot_right}" y2="{y}"/>')
        parts.append(
            f'<text class="tick" x="{frame.plot_left - 6}" y="{y + 4}" text-anchor="end">{esc(y_format(v))}</text>'
        )
    parts.append(f'<text class="axis" x="{frame.plot_left}" y="{frame.plot_top - 8}">{esc(y_label)}</text>')
    parts.append(
        f'<text class="axis" x="{frame.plot_right}" y="{frame.height - 4}" text-anchor="end">plan hours</text>'
    )
    return "".join(parts)


def svg(frame: Frame, body: str, label: str, css_class: str) -> str:
    return (
        f'<svg class="chart {esc(css_class)}" role="img" '
        f'aria-label="{esc(label)}" viewBox="0 0 {frame.width} {frame.height}" '
        f'width="{frame.width}" height="{frame.height}"><title>{esc(label)}</title>{body}</svg>'
    )


def step_path(frame: Frame, points: Sequence[tuple[float, float]], until: float) -> str:
    """An SVG path through (hours, value) that holds each value until the next point (then `until`)."""
    if not points:
        return ""
    first_h, first_v = points[0]
    d = [f"M{frame.x(first_h)},{frame.y(first_v)}"]
    for h, v in points[1:]:
        d.append(f"H{frame.x(h)}V{frame.y(v)}")
    d.append(f"H{frame.x(max(until, points[-1][0]))}")
    return "".join(d)


def polylines(frame: Frame, runs: Iterable[Sequence[tuple[float, float]]], css_class: str) -> str:
    """One polyline per run of consecutive values (a gap between runs is missing data)."""
    out = []
    for run in runs:
        if len(run) == 1:
            h, v = run[0]
            out.append(f'<circle class="{css_class} dot" cx="{frame.x(h)}" cy="{frame.y(v)}" r="1.8"/>')
        elif run:
            coords = " ".join(f"{frame.x(h)},{frame.y(v)}" for h, v in run)
            out.append(f'<polyline class="{css_class}" points="{coords}"/>')
    return "".join(out)


def downsample(
    items: Sequence[T], hours: Callable[[T], float], badness: Callable[[T], tuple[float, ...]], limit: int = MAX_POINTS
) -> list[T]:
    """At most ~`limit` items: the worst of each equal slice of time, so no breach or gap
    disappears however long the rollout ran. Order is kept."""
    if len(items) <= limit:
        return list(items)
    start, end = hours(items[0]), hours(items[-1])
    width = ((end - start) or 1.0) / limit
    kept: list[T] = []
    bucket: int | None = None
    for item in items:
        index = min(int((hours(item) - start) / width), limit - 1)
        if index != bucket:
            kept.append(item)
            bucket = index
        elif badness(item) > badness(kept[-1]):
            kept[-1] = item
    return kept
