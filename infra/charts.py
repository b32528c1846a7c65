"""Server-side SVG charts for the dashboard: no script, no network, nothing to download.

One function, :func:`chart`: lines of points (each point a ``<circle class="pt">`` with
its value as a tooltip), optional error bars, a shaded band (a sliding range), horizontal
reference lines (a margin, a boundary) and vertical markers (deploys, rollbacks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Callable, Sequence

PALETTE = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626"]


@dataclass
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str | None = None
    errors: Sequence[tuple[float, float]] | None = None     # (low, high) per point
    line: bool = True
    labels: Sequence[str] | None = None                     # a tooltip per point


@dataclass
class Band:
    name: str
    points: Sequence[tuple[float, float, float]]            # (x, low, high)
    color: str = "#93c5fd"


@dataclass
class Chart:
    title: str
    series: list[Series] = field(default_factory=list)
    bands: list[Band] = field(default_factory=list)
    hlines: list[tuple[float, str, str]] = field(default_factory=list)      # (y, label, color)
    markers: list[tuple[float, str, str]] = field(default_factory=list)     # (x, label, color)
    x_format: Callable[[float], str] = lambda x: f"{x:g}"
    y_format: Callable[[float], str] = lambda y: f"{y:.3g}"
    width: int = 640
    height: int = 220


def day_label(x: float) -> str:
    return datetime.fromtimestamp(x, tz=timezone.utc).strftime("%m-%d %H:%M")


def pct(y: float) -> str:
    return f"{y * 100:+.1f}%"


def _finite(v: float | None) -> bool:
    return v is not None and math.isfinite(v)


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


MAX_POINTS = 400   # per series and for markers: a long history is thinned (every k-th, the last kept)


def _thin(items: Sequence, limit: int = MAX_POINTS) -> list:
    if len(items) <= limit:
        return list(items)
    k = -(-len(items) // limit)
    kept = list(items[::k])
    if kept[-1] != items[-1]:
        kept.append(items[-1])
    return kept


def thin_series(s: Series) -> Series:
    if len(s.points) <= MAX_POINTS:
        return s
    idx = _thin(list(range(len(s.points))))
    return Series(s.name, [s.points[i] for i in idx], s.color, None if s.errors is None else [s.errors[i] for i in idx],
                  s.line, None if s.labels is None else [s.labels[i] for i in idx])


def chart(c: Chart) -> str:
    """The chart as an inline ``<svg>`` (``data-points``: how many points it draws)."""
    c = Chart(c.title, [thin_series(s) for s in c.series], [Band(b.name, _thin(b.points), b.color) for b in c.bands],
              c.hlines, _thin(c.markers, 200), c.x_format, c.y_format, c.width, c.height)
    left, right, top, bottom = 64, 12, 24, 36
    w, h = c.width, c.height
    xs: list[float] = []
    ys: list[float] = []
    for s in c.series:
        for i, (x, y) in enumerate(s.points):
            if _finite(x) and _finite(y):
                xs.append(x)
                ys.append(y)
            if s.errors and i < len(s.errors):
                ys += [v for v in s.errors[i] if _finite(v)]
    for b in c.bands:
        for x, lo, hi in b.points:
            xs.append(x)
            ys += [v for v in (lo, hi) if _finite(v)]
    ys += [y for y, _, _ in c.hlines if _finite(y)]
    xs += [x for x, _, _ in c.markers if _finite(x)]
    npoints = sum(1 for s in c.series for x, y in s.points if _finite(x) and _finite(y))
    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
           f'role="img" aria-label="{escape(c.title)}" data-points="{npoints}">',
           f'<text x="{left}" y="15" class="ct">{escape(c.title)}</text>']
    if not xs or not ys:
        out.append(f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle" class="empty">no data yet</text></svg>')
        return "".join(out)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    integer_x = all(float(x).is_integer() for x in xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    xpad = (x1 - x0) * 0.04
    x0, x1 = x0 - xpad, x1 + xpad
    pad = (y1 - y0) * 0.08 or (abs(y0) * 0.1 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (h - top - bottom)

    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{w - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{escape(c.y_format(t))}</text>')
    if integer_x:   # looks, cycles: whole numbers only
        lo, hi = math.ceil(x0), math.floor(x1)
        step = max(1, math.ceil((hi - lo) / 6))
        xticks = [float(t) for t in range(lo, hi + 1, step)]
    else:
        xticks = _ticks(x0 + xpad, x1 - xpad, 3)
    for t in xticks:
        out.append(f'<text x="{px(t):.1f}" y="{h - bottom + 16}" text-anchor="middle" class="tick">'
                   f'{escape(c.x_format(t))}</text>')
    for b in c.bands:
        pts = [(x, lo, hi) for x, lo, hi in b.points if _finite(lo) and _finite(hi)]
        if pts:
            upper = " ".join(f"{px(x):.1f},{py(hi):.1f}" for x, _, hi in pts)
            lower = " ".join(f"{px(x):.1f},{py(lo):.1f}" for x, lo, _ in reversed(pts))
            out.append(f'<polygon class="band" points="{upper} {lower}" fill="{b.color}" fill-opacity="0.35">'
                       f'<title>{escape(b.name)}</title></polygon>')
    for y, label, color in c.hlines:
        if _finite(y):
            out.append(f'<line class="ref" x1="{left}" x2="{w - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                       f'stroke="{color}" stroke-dasharray="5 3"/><text x="{w - right - 2}" y="{py(y) - 3:.1f}" '
                       f'text-anchor="end" class="tick" fill="{color}">{escape(label)}</text>')
    for x, label, color in c.markers:
        if _finite(x):
            out.append(f'<line class="marker" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{h - bottom}" '
                       f'stroke="{color}" stroke-opacity="0.6"><title>{escape(label)}</title></line>')
    for n, s in enumerate(c.series):
        color = s.color or PALETTE[n % len(PALETTE)]
        pts = [(i, x, y) for i, (x, y) in enumerate(s.points) if _finite(x) and _finite(y)]
        if s.line and len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for _, x, y in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        for i, x, y in pts:
            if s.errors and i < len(s.errors) and all(_finite(v) for v in s.errors[i]):
                lo, hi = s.errors[i]
                out.append(f'<line class="err" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(lo):.1f}" y2="{py(hi):.1f}" '
                           f'stroke="{color}"/>')
            tip = s.labels[i] if s.labels and i < len(s.labels) else f"{c.x_format(x)}: {c.y_format(y)}"
            out.append(f'<circle class="pt" data-series="{escape(s.name)}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" '
                       f'fill="{color}"><title>{escape(s.name)} {escape(tip)}</title></circle>')
    legend_x = left
    for n, s in enumerate(c.series):
        color = s.color or PALETTE[n % len(PALETTE)]
        out.append(f'<rect x="{legend_x}" y="{h - 12}" width="10" height="4" fill="{color}"/>'
                   f'<text x="{legend_x + 14}" y="{h - 8}" class="tick">{escape(s.name)}</text>')
        legend_x += 18 + 7 * len(s.name)
    out.append("</svg>")
    return "".join(out)
