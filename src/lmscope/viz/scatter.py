"""Scatter plots: one point per pair of values with its label on hover (e.g. attribution
patching's estimate against exact patching, per head), optional groups and a y = x line."""

from __future__ import annotations

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

MAX_POINTS = 20_000


def scatter(
    x: Float[Any, " n"],
    y: Float[Any, " n"],
    *,
    labels: Sequence[Any] | None = None,
    groups: Sequence[Any] | None = None,
    diagonal: bool = False,
    title: str = "",
    xlabel: str = "x",
    ylabel: str = "y",
) -> Figure:
    """One point per (x, y) pair; hover shows its label and values. `groups` colours the points
    by group (with a legend); `diagonal=True` draws the line y = x (estimate vs exact). Inputs of
    any shape are flattened (a [layer, head] grid against another gives one point per head).
    Up to 20,000 points.

    Example:
        >>> from lmscope import viz
        >>> exact, estimate = torch.randn(4, 8), torch.randn(4, 8)     # [layer, head]
        >>> labels = [f"L{l}H{h}" for l in range(4) for h in range(8)]
        >>> viz.scatter(exact, estimate, labels=labels, diagonal=True).save("attr_vs_exact.svg")
    """
    xs = to_numpy(x, "x", range(1, 8)).reshape(-1)
    ys = to_numpy(y, "y", range(1, 8)).reshape(-1)
    if xs.size != ys.size:
        raise ValueError(f"x has {xs.size} values and y {ys.size}: pass one y per x")
    check_size(xs.size, MAX_POINTS, "the scatter plot", "plot a sample of the points")
    names = check_labels(labels, xs.size, "labels", "#{}")
    group_of = check_labels(groups, xs.size, "groups", "") if groups is not None else None
    kinds = list(dict.fromkeys(group_of)) if group_of is not None else []
    lo = float(np.nanmin(np.concatenate([xs, ys]))) if diagonal else None
    hi = float(np.nanmax(np.concatenate([xs, ys]))) if diagonal else None
    span_x = np.array([lo, hi]) if diagonal else xs
    span_y = np.array([lo, hi]) if diagonal else ys
    axes = make_axes(np.concatenate([xs, span_x]), np.concatenate([ys, span_y]),
                     title=title, ylabel=ylabel, pad_x=0.05)  # fmt: skip
    parts = axes.draw(title, xlabel, ylabel)
    if diagonal:
        a, b = max(axes.x_lo, axes.y_lo), min(axes.x_hi, axes.y_hi)
        parts.append(
            f"<line class='lmv-diagonal' x1='{axes.px(a):.1f}' y1='{axes.py(a):.1f}' "
            f"x2='{axes.px(b):.1f}' y2='{axes.py(b):.1f}' stroke='#888' stroke-dasharray='4 3'/>"
        )
    points = []
    for i in range(xs.size):
        if not (np.isfinite(xs[i]) and np.isfinite(ys[i])):
            continue
        color = PALETTE[kinds.index(group_of[i]) % len(PALETTE)] if group_of else PALETTE[0]
        group = f" ({group_of[i]})" if group_of else ""
        tip = f"{names[i]}{group}: {xlabel}={fmt(float(xs[i]))}, {ylabel}={fmt(float(ys[i]))}"
        points.append(
            f"<circle cx='{axes.px(xs[i]):.1f}' cy='{axes.py(ys[i]):.1f}' r='3.5' fill='{color}' "
            f"fill-opacity='0.75'><title>{esc(tip)}</title></circle>"
        )
    parts.append(f"<g class='lmv-points'>{''.join(points)}</g>")
    entries, legend_w = legend(kinds, axes.right, axes.top, marker="dot")
    parts += entries
    panel = Panel("".join(parts), axes.right + legend_w, axes.bottom)
    return figure_from_panel(panel, "scatter", title or "scatter")
