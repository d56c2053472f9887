"""Line plots of losses and metrics: one or more series over steps (or any x), with axes, a legend,
and the value of each point on hover. Long series are thinned to at most 2,000 points each."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from lmscope.viz._figure import Figure
from lmscope.viz._svg import (
    PALETTE,
    Panel,
    check_labels,
    check_size,
    esc,
    figure_from_panel,
    fmt,
    nice_ticks,
    text_width,
    title_text,
    to_numpy,
)

MAX_POINTS = 2_000  # drawn per series; longer series are thinned evenly (first and last kept)
MAX_MARKERS = 300  # points with a hover marker per series
MAX_SERIES = 50
PLOT_W, PLOT_H = 560, 300


def _thin(n: int) -> np.ndarray:
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, MAX_POINTS).round().astype(int))


def line(
    values: Float[Any, "*series x"],
    x: Sequence[float] | Any | None = None,
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    log_y: bool = False,
) -> Figure:
    """A line plot of [x] or [series, x] values (a loss curve, a metric per layer, ...).

    `x` gives the x values (default 0, 1, ...); `labels` name the series for the legend; `log_y`
    draws the y axis on a log scale (positive values only). Each point shows its value on hover.

    Example:
        >>> from lmscope import viz
        >>> viz.line([4.1, 3.2, 2.9, 2.7], title="training loss", ylabel="loss").save("loss.svg")
    """
    arr = to_numpy(values, "values", (1, 2))
    series = arr if arr.ndim == 2 else arr[None]
    check_size(series.shape[0], MAX_SERIES, "the line plot's series count", "plot fewer series")
    n = series.shape[1]
    xs = np.arange(n, dtype=np.float64) if x is None else to_numpy(x, "x", (1,))
    if xs.size != n:
        raise ValueError(f"x has {xs.size} values but each series has {n}")
    names = (
        check_labels(labels, series.shape[0], "labels", "series {}")
        if labels or arr.ndim == 2
        else []
    )
    if log_y:
        if np.nanmin(series) <= 0:
            raise ValueError("log_y needs positive values; some are <= 0")
        ys = np.log10(series)
    else:
        ys = series
    keep = _thin(n)
    finite = ys[np.isfinite(ys)]
    y_lo, y_hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_lo, x_hi = float(xs.min()), float(xs.max())
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    y_ticks = [t for t in nice_ticks(y_lo, y_hi, 6) if y_lo <= t <= y_hi]
    x_ticks = [t for t in nice_ticks(x_lo, x_hi, 7) if x_lo <= t <= x_hi]
    tick_labels = [fmt(10**t) if log_y else fmt(t) for t in y_ticks]
    left = max([text_width(s) for s in tick_labels] + [10]) + (26 if ylabel else 10)
    top = 26 if title else 8

    def px(v: float) -> float:
        return left + (v - x_lo) / (x_hi - x_lo) * PLOT_W

    def py(v: float) -> float:
        return top + (y_hi - v) / (y_hi - y_lo) * PLOT_H

    parts = [title_text(title, left)]
    parts.append(
        f"<rect x='{left}' y='{top}' width='{PLOT_W}' height='{PLOT_H}' fill='none' stroke='#999' "
        "stroke-width='0.5'/>"
    )
    for t, lab in zip(y_ticks, tick_labels, strict=True):
        y = py(t)
        parts.append(
            f"<line x1='{left}' x2='{left + PLOT_W}' y1='{y:.1f}' y2='{y:.1f}' stroke='#eee'/>"
            f"<text x='{left - 5}' y='{y + 3.5:.1f}' text-anchor='end'>{lab}</text>"
        )
    for t in x_ticks:
        xp = px(t)
        parts.append(
            f"<line x1='{xp:.1f}' x2='{xp:.1f}' y1='{top + PLOT_H}' y2='{top + PLOT_H + 4}' "
            f"stroke='#555'/><text x='{xp:.1f}' y='{top + PLOT_H + 16}' text-anchor='middle'>"
            f"{fmt(t)}</text>"
        )
    for s in range(series.shape[0]):
        color = PALETTE[s % len(PALETTE)]
        pts = [(px(xs[i]), py(ys[s, i]), i) for i in keep if np.isfinite(ys[s, i])]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b, _ in pts)
        parts.append(
            f"<polyline class='lmv-series' points='{path}' fill='none' stroke='{color}' "
            "stroke-width='1.6'/>"
        )
        marker_every = max(1, math.ceil(len(pts) / MAX_MARKERS))
        name = f"{names[s]}: " if names else ""
        shown = "" if len(pts) <= 60 else " fill-opacity='0'"  # dense: hover targets only
        markers = [
            f"<circle cx='{a:.1f}' cy='{b:.1f}' r='2.5' fill='{color}'{shown}><title>"
            f"{esc(name)}x={fmt(float(xs[i]))}, {esc(ylabel or 'y')}={fmt(float(series[s, i]))}"
            "</title></circle>"
            for a, b, i in pts[::marker_every]
        ]
        parts.append(f"<g class='lmv-points'>{''.join(markers)}</g>")
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
    width = left + PLOT_W
    for s, name in enumerate(names):
        y = top + 8 + s * 16
        parts.append(
            f"<line x1='{width + 14}' x2='{width + 34}' y1='{y}' y2='{y}' "
            f"stroke='{PALETTE[s % len(PALETTE)]}' stroke-width='2'/>"
            f"<text class='lmv-legend' x='{width + 38}' y='{y + 4}'>{esc(name)}</text>"
        )
    if names:
        width += 40 + max(text_width(nm) for nm in names)
    height = top + PLOT_H + (40 if xlabel else 22)
    return figure_from_panel(Panel("".join(parts), width, height), "line", title or "line")
