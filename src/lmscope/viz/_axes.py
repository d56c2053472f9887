"""Cartesian axes shared by the line and scatter plots: ranges with a margin, round ticks, the
frame, grid, tick labels and axis titles, and a legend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmscope.viz._svg import PALETTE, esc, fmt, nice_ticks, text_width, title_text

PLOT_W, PLOT_H = 560, 300


def _span(values: np.ndarray, pad: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


@dataclass
class Axes:
    """A plot area of PLOT_W x PLOT_H px at (left, top) showing [x_lo, x_hi] x [y_lo, y_hi];
    with `log_y` the y values given to `py` are already log10 and ticks are labelled 10**t."""

    x_lo: float
    x_hi: float
    y_lo: float
    y_hi: float
    left: float
    top: float
    log_y: bool = False

    def px(self, v: float) -> float:
        return self.left + (v - self.x_lo) / (self.x_hi - self.x_lo) * PLOT_W

    def py(self, v: float) -> float:
        return self.top + (self.y_hi - v) / (self.y_hi - self.y_lo) * PLOT_H

    def draw(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        """The frame, grid lines, ticks and their labels, the axis titles and the title."""
        left, top = self.left, self.top
        parts = [
            title_text(title, left),
            f"<rect x='{left}' y='{top}' width='{PLOT_W}' height='{PLOT_H}' fill='none' "
            "stroke='#999' stroke-width='0.5'/>",
        ]
        for t, label in zip(*_y_ticks(self.y_lo, self.y_hi, self.log_y), strict=True):
            y = self.py(t)
            parts.append(
                f"<line x1='{left}' x2='{left + PLOT_W}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
                f"<text x='{left - 5}' y='{y + 3.5:.1f}' text-anchor='end'>{label}</text>"
            )
        for t in nice_ticks(self.x_lo, self.x_hi, 7):
            if not self.x_lo <= t <= self.x_hi:
                continue
            x = self.px(t)
            parts.append(
                f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{top + PLOT_H}' y2='{top + PLOT_H + 4}' "
                f"stroke='#555'/><text x='{x:.1f}' y='{top + PLOT_H + 16}' text-anchor='middle'>"
                f"{fmt(t)}</text>"
            )
        if xlabel:
            parts.append(
                f"<text x='{left + PLOT_W / 2}' y='{top + PLOT_H + 34}' text-anchor='middle' "
                f"font-weight='600'>{esc(xlabel)}</text>"
            )
        if ylabel:
            cy = top + PLOT_H / 2
            parts.append(
                f"<text x='12' y='{cy}' text-anchor='middle' font-weight='600' "
                f"transform='rotate(-90 12 {cy})'>{esc(ylabel)}</text>"
            )
        return parts

    @property
    def right(self) -> float:
        return self.left + PLOT_W

    @property
    def bottom(self) -> float:
        return self.top + PLOT_H + 40


def _y_ticks(lo: float, hi: float, log_y: bool) -> tuple[list[float], list[str]]:
    ticks = [t for t in nice_ticks(lo, hi, 6) if lo <= t <= hi]
    return ticks, [fmt(10**t) if log_y else fmt(t) for t in ticks]


def make_axes(
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    title: str,
    ylabel: str,
    log_y: bool = False,
    pad_x: float = 0.0,
) -> Axes:
    """Axes covering `xs` and `ys` (y with a 5% margin), room on the left for the tick labels."""
    x_lo, x_hi = _span(xs, pad_x)
    y_lo, y_hi = _span(ys, 0.05)
    labels = _y_ticks(y_lo, y_hi, log_y)[1]
    left = max([text_width(s) for s in labels] + [10]) + (26 if ylabel else 10)
    return Axes(x_lo, x_hi, y_lo, y_hi, left, 26 if title else 8, log_y)


def legend(
    names: Sequence[str], x: float, y: float, marker: str = "line"
) -> tuple[list[str], float]:
    """A legend at (x, y), one entry per name in the palette's colours, and its width."""
    parts = []
    for s, name in enumerate(names):
        color, ly = PALETTE[s % len(PALETTE)], y + 8 + s * 16
        key = (
            f"<line x1='{x + 14}' x2='{x + 34}' y1='{ly}' y2='{ly}' stroke='{color}' stroke-width='2'/>"
            if marker == "line"
            else f"<circle cx='{x + 24}' cy='{ly}' r='4' fill='{color}'/>"
        )
        parts.append(f"{key}<text class='lmv-legend' x='{x + 38}' y='{ly + 4}'>{esc(name)}</text>")
    width = 40 + max(text_width(n) for n in names) if names else 0.0
    return parts, width
