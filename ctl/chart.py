"""A line chart in the terminal, drawn with braille dots (2 x 4 dots per character cell).

Pure: series of (x, y) points in, lines of text out. Where there are more points than dot
columns, each column shows the mean of its points (a long run's noisy loss reads as its
trend); consecutive dots are joined so that sparse series (evaluations) read as lines.
Several series (items) share the axes; where each begins is marked under the x axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BRAILLE = 0x2800
DOT = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col] within a cell


@dataclass(frozen=True)
class Series:
    label: str  # a mark under the x axis where this series begins ("a", "b", ...)
    points: list[tuple[float, float]]  # (x, y), x increasing


def number(value: float) -> str:
    """A short label: 3 significant digits, no scientific notation for everyday sizes."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}" if magnitude < 1 else f"{value:.3g}" if magnitude < 1000 else f"{value:.0f}"


def render(series: list[Series], *, width: int = 72, height: int = 14) -> list[str]:
    """The chart as lines: y labels on the left, the x axis with each series' start marked."""
    points = [(x, y) for s in series for x, y in s.points if math.isfinite(y)]
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y0 == y1:  # a flat line (a constant learning rate) in the middle, at its own scale
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    labels = [number(y1), number((y0 + y1) / 2), number(y0)]
    margin = max(len(label) for label in labels) + 1
    cols = max(8, width - margin - 1)
    dots_x, dots_y = cols * 2, height * 4
    cells = [[0] * cols for _ in range(height)]

    def to_dot_x(x: float) -> int:
        return 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (dots_x - 1))

    for s in series:
        previous = None
        for dx, y in _columns(s.points, to_dot_x):
            dy = round((y1 - y) / (y1 - y0) * (dots_y - 1))
            for px, py in _segment(previous, (dx, dy)):
                cells[py // 4][px // 2] |= DOT[py % 4][px % 2]
            previous = (dx, dy)

    out = []
    for row in range(height):
        label = labels[0] if row == 0 else labels[2] if row == height - 1 else (
            labels[1] if row == height // 2 else "")
        tick = "┤" if label else "│"
        dots = "".join(chr(BRAILLE + c) if c else " " for c in cells[row])
        out.append(f"{label:>{margin - 1}} {tick}{dots}".rstrip())
    axis, marks = ["─"] * cols, [" "] * cols
    for s in series:
        if s.points:
            col = to_dot_x(s.points[0][0]) // 2
            axis[col] = "┬"
            marks[col : col + len(s.label)] = list(s.label)[: cols - col]
    out.append(" " * margin + "└" + "".join(axis))
    ends = f"{number(x0)}" + " " * max(1, cols - len(number(x0)) - len(number(x1))) + f"{number(x1)}"
    if len(series) > 1:
        out.append(" " * (margin + 1) + "".join(marks).rstrip())
    out.append(" " * (margin + 1) + ends)
    return out


def _columns(points: list[tuple[float, float]], to_dot_x) -> list[tuple[int, float]]:
    """The mean y of the points falling in each dot column, in order."""
    sums: dict[int, list[float]] = {}
    for x, y in points:
        if math.isfinite(y):
            sums.setdefault(to_dot_x(x), []).append(y)
    return [(dx, sum(v) / len(v)) for dx, v in sorted(sums.items())]


def _segment(start: tuple[int, int] | None, end: tuple[int, int]) -> list[tuple[int, int]]:
    """The dots from ``start`` to ``end`` (Bresenham); just ``end`` without a start."""
    if start is None:
        return [end]
    (xa, ya), (xb, yb) = start, end
    dx, dy = abs(xb - xa), -abs(yb - ya)
    sx, sy = (1 if xb > xa else -1), (1 if yb > ya else -1)
    err, dots = dx + dy, []
    while True:
        dots.append((xa, ya))
        if (xa, ya) == (xb, yb):
            return dots
        e2 = 2 * err
        if e2 >= dy:
            err, xa = err + dy, xa + sx
        if e2 <= dx:
            err, ya = err + dx, ya + sy
