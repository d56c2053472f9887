"""Line plots of losses and metrics: one or more series over steps (or any x), with axes, a legend,
and the value of each point on hover. Long series are thinned to at most 2,000 points each."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from lmscope.viz._axes import legend, make_axes
from lmscope.viz._figure import Figure
from lmscope.viz._svg import (
    PALETTE,
    Panel,
    check_labels,
    check_size,
    esc,
    figure_from_panel,
    fmt,
    to_numpy,
)

MAX_POINTS = 2_000  # drawn per series; longer series are thinned evenly (first and last kept)
MAX_MARKERS = 300  # points with a hover marker per series
MAX_SERIES = 50


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
    axes = make_axes(xs, ys, title=title, ylabel=ylabel, log_y=log_y)
    parts = axes.draw(title, xlabel, ylabel)
    px, py = axes.px, axes.py
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
    entries, legend_w = legend(names, axes.right, axes.top)
    parts += entries
    width, height = axes.right + legend_w, axes.bottom if xlabel else axes.bottom - 18
    return figure_from_panel(Panel("".join(parts), width, height), "line", title or "line")
