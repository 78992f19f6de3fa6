"""Line charts as inline SVG markup: no script, no font file, nothing fetched.

Every piece of text that reaches the markup (series names, item names in marker tooltips,
tick labels) goes through ``escape`` (``display_name``, then ``html.escape``); numbers are
formatted here. The points should
already be downsampled (``downsample.minmax``): a chart draws what it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape as _html_escape

from trainer.spool.item import display_name

WIDTH, HEIGHT = 960, 260


def escape(value: str) -> str:
    """Text for the markup: control characters and bidi overrides as escapes, then HTML-escaped."""
    return _html_escape(display_name(value))


LEFT, RIGHT, TOP, BOTTOM = 64, 16, 24, 36  # room for the axes' labels


@dataclass(frozen=True)
class Series:
    name: str
    color: str  # a CSS colour of ours, never user data
    points: list[tuple[float, float]]
    dots: bool = False  # a few points each worth seeing (eval results), not a line


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x``, e.g. where an item starts; ``label`` shows on hover."""

    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    markers: list[Marker] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] | None = None  # named positions (versions) instead of numbers
    width: int = WIDTH  # the viewBox: text is drawn at this scale, then the whole scales to the page
    height: int = HEIGHT


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low] if math.isfinite(low) else []
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def number(value: float) -> str:
    """A tick label: short, no float noise."""
    if value == 0:
        return "0"
    if abs(value) >= 10_000:
        return f"{value / 1000:.0f}k" if abs(value) < 10_000_000 else f"{value / 1e6:.0f}M"
    return f"{value:.4g}"


def _extent(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high == low:
        pad = abs(low) * 0.05 or 1.0
        return low - pad, high + pad
    return low, high


def render(chart: Chart) -> str:
    """The chart as an ``<svg>`` element (it scales to its container's width)."""
    width, height = chart.width, chart.height
    points = [p for s in chart.series for p in s.points]
    head = (f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(chart.title)}" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{escape(chart.title)}</title>")
    if not points:
        return (head + f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" class="empty">'
                f"no data yet</text></svg>")
    xs = [x for x, _ in points] + [m.x for m in chart.markers] + [x for x, _ in chart.x_ticks or []]
    x_low, x_high = _extent(xs)
    y_low, y_high = _extent([y for _, y in points])
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - (y - y_low) / (y_high - y_low)) * plot_h

    parts = [head, _axes(chart, x_low, x_high, y_low, y_high, px, py, width, height)]
    parts += [_marker(m, px(m.x), height) for m in chart.markers]
    parts += [_series(s, px, py) for s in chart.series]
    parts.append(_legend(chart.series, width))
    parts.append("</svg>")
    return "".join(parts)


def _axes(chart: Chart, x_low, x_high, y_low, y_high, px, py, width, height) -> str:
    bottom = height - BOTTOM
    out = [f'<path class="axis" d="M{LEFT},{TOP}V{bottom}H{width - RIGHT}"/>']
    for y in nice_ticks(y_low, y_high):
        out.append(f'<path class="grid" d="M{LEFT},{py(y):.1f}H{width - RIGHT}"/><text class="tick" '
                   f'x="{LEFT - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{escape(number(y))}</text>')
    ticks = chart.x_ticks if chart.x_ticks is not None else [(x, number(x)) for x in nice_ticks(x_low, x_high, 8)]
    for x, label in ticks:
        out.append(f'<text class="tick" x="{px(x):.1f}" y="{bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text class="label" x="{(LEFT + width - RIGHT) / 2:.0f}" y="{height - 4}" '
               f'text-anchor="middle">{escape(chart.x_label)}</text>')
    out.append(f'<text class="label" x="12" y="{TOP + (bottom - TOP) / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {TOP + (bottom - TOP) / 2:.0f})">{escape(chart.y_label)}</text>')
    return "".join(out)


def _marker(marker: Marker, x: float, height: int) -> str:
    return (f'<path class="marker" d="M{x:.1f},{TOP}V{height - BOTTOM}">'
            f"<title>{escape(marker.label)}</title></path>")


def _series(series: Series, px, py) -> str:
    if series.dots:
        circles = "".join(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4"><title>{escape(series.name)} '
                          f"{escape(number(y))}</title></circle>" for x, y in series.points)
        return f'<g class="dots" fill="{series.color}" data-series="{escape(series.name)}">{circles}</g>'
    d = "M" + "L".join(f"{px(x):.1f},{py(y):.1f}" for x, y in series.points)
    return (f'<path class="line" d="{d}" stroke="{series.color}" data-series="{escape(series.name)}">'
            f"<title>{escape(series.name)}</title></path>")


LEGEND_SLOT = 220  # each entry its own slot, the label cut to fit: names of any length lay out alike
LEGEND_CHARS = 30


def _legend(series: list[Series], width: int) -> str:
    out = []
    for index, s in enumerate(series[: max(1, (width - LEFT) // LEGEND_SLOT)]):
        x = LEFT + 8 + index * LEGEND_SLOT
        name = s.name if len(s.name) <= LEGEND_CHARS else s.name[: LEGEND_CHARS - 1] + "\u2026"
        out.append(f'<rect x="{x}" y="6" width="12" height="4" fill="{s.color}"/>'
                   f'<text class="legend" x="{x + 16}" y="12">{escape(name)}</text>')
    return "".join(out)
