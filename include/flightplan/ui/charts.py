"""Line charts as inline SVG, drawn on the server: the Models page shows them without a script or a request
of its own. Every text in them (versions, decisions, reasons) is escaped."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 28, 36  # margins: the y axis' values left, the legend right
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Point:
    at: datetime
    value: float
    note: str = ""  # shown when the pointer is on the point (the decision taken there)


@dataclass(frozen=True)
class Chart:
    """Named series of points over time; ``name`` identifies the chart in the page (its ``data-chart``)."""

    name: str
    title: str
    series: dict[str, list[Point]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not any(math.isfinite(p.value) for series in self.series.values() for p in series)


def svg(chart: Chart) -> Markup:
    """The chart as an ``<svg>`` element: a polyline and a circle per point for each series (its colour in the
    legend), the value range on the y axis, the first and last time on the x axis."""
    # A metric may be undefined in a window (NaN: a ranking metric of one class): such a point is not drawn.
    drawn = {name: [p for p in series if math.isfinite(p.value)] for name, series in chart.series.items()}
    points = [p for series in drawn.values() for p in series]
    if not points:
        return Markup("")
    times = [p.at.timestamp() for p in points]
    values = [p.value for p in points]
    t0, t1 = min(times), max(times)
    v0, v1 = min(values), max(values)
    if v0 == v1:
        v0, v1 = v0 - 0.5, v1 + 0.5
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(point: Point) -> tuple[float, float]:
        x = LEFT + (inner_w * (point.at.timestamp() - t0) / (t1 - t0) if t1 > t0 else inner_w / 2)
        return round(x, 1), round(TOP + inner_h * (v1 - point.value) / (v1 - v0), 1)

    parts = [
        f"<svg class='chart' data-chart='{escape(chart.name)}' viewBox='0 0 {WIDTH} {HEIGHT}' width='{WIDTH}' "
        f"height='{HEIGHT}' role='img' aria-label='{escape(chart.title)}'>",
        f"<text x='{LEFT}' y='16' class='chart-title'>{escape(chart.title)}</text>",
        f"<line x1='{LEFT}' y1='{TOP + inner_h}' x2='{LEFT + inner_w}' y2='{TOP + inner_h}' stroke='#999'/>",
        f"<line x1='{LEFT}' y1='{TOP}' x2='{LEFT}' y2='{TOP + inner_h}' stroke='#999'/>",
        f"<text x='{LEFT - 4}' y='{TOP + 4}' text-anchor='end'>{v1:.3g}</text>",
        f"<text x='{LEFT - 4}' y='{TOP + inner_h}' text-anchor='end'>{v0:.3g}</text>",
        f"<text x='{LEFT}' y='{HEIGHT - 8}'>{min(points, key=lambda p: p.at).at:%Y-%m-%d %H:%M}</text>",
        f"<text x='{LEFT + inner_w}' y='{HEIGHT - 8}' text-anchor='end'>"
        f"{max(points, key=lambda p: p.at).at:%Y-%m-%d %H:%M}</text>",
    ]
    for place, (name, series) in enumerate(drawn.items()):
        parts += _series(name, sorted(series, key=lambda p: p.at), COLORS[place % len(COLORS)], place, xy)
    parts.append("</svg>")
    return Markup("".join(parts))


def _series(
    name: str, series: list[Point], color: str, place: int, xy: Callable[[Point], tuple[float, float]]
) -> list[str]:
    """One series: its line, its points (each with a tooltip), its entry in the legend."""
    where = [xy(p) for p in series]
    legend_y = TOP + 14 * place + 8
    parts = [
        f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{' '.join(f'{x},{y}' for x, y in where)}'/>",
        f"<rect x='{WIDTH - RIGHT + 12}' y='{legend_y - 8}' width='10' height='10' fill='{color}'/>",
        f"<text x='{WIDTH - RIGHT + 26}' y='{legend_y + 1}' class='legend'>{escape(name)}</text>",
    ]
    for point, (x, y) in zip(series, where, strict=True):
        tip = f"{name} {point.at:%Y-%m-%d %H:%M}: {point.value:.4f}" + (f" ({point.note})" if point.note else "")
        parts.append(
            f"<circle cx='{x}' cy='{y}' r='4' fill='{color}' data-value='{point.value:.6g}'>"
            f"<title>{escape(tip)}</title></circle>"
        )
    return parts
