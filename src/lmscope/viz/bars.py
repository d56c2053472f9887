"""Horizontal bar charts of signed values (direct logit attribution per component, head or
neuron): positive bars blue, negative red, the value on each bar and in its tooltip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from lmscope.viz._figure import Figure
from lmscope.viz._svg import (
    Panel,
    check_labels,
    check_size,
    esc,
    figure_from_panel,
    fmt,
    show_token,
    text_width,
    title_text,
    to_numpy,
)

MAX_BARS = 2_000
POSITIVE, NEGATIVE = "#2171b5", "#d6604d"
BAR_H, GAP, PLOT_W = 16, 4, 360


def top_k_indices(values: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the `k` largest |values|, largest first (all indices, in order, when k is None)."""
    if k is None:
        return np.arange(values.size)
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    order = np.argsort(-np.abs(np.nan_to_num(values)), kind="stable")
    return order[:k]


def bars_panel(
    values: np.ndarray, labels: list[str], *, title: str = "", xlabel: str = ""
) -> Panel:
    """Signed horizontal bars, one per value, labelled on the left (see `bars`)."""
    shown = [show_token(s, 24) for s in labels]
    left = max(text_width(s) for s in shown) + 8
    top = 24 if title else 4
    finite = values[np.isfinite(values)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(0.0, float(finite.max())) if finite.size else 1.0
    span = (hi - lo) or 1.0
    value_w = max(text_width(fmt(float(v))) for v in values) + 6
    pad_l = value_w if lo < 0 else 0.0  # room for value text left of negative bars
    scale = (PLOT_W - pad_l - (value_w if hi > 0 else 0)) / span
    zero = left + pad_l + (-lo) * scale
    parts = [title_text(title, left)]
    for i, (v, label) in enumerate(zip(values.tolist(), shown, strict=True)):
        y = top + i * (BAR_H + GAP)
        val = 0.0 if np.isnan(v) else v
        x0, w = (zero, val * scale) if val >= 0 else (zero + val * scale, -val * scale)
        color = POSITIVE if val >= 0 else NEGATIVE
        tip = f"{labels[i]}: {fmt(v)}"
        parts.append(
            f"<g class='lmv-bar'><rect x='{x0:.1f}' y='{y}' width='{max(w, 0.5):.1f}' "
            f"height='{BAR_H}' fill='{color}'><title>{esc(tip)}</title></rect>"
            f"<text x='{left - 6:.1f}' y='{y + 12}' text-anchor='end' style='white-space:pre'>"
            f"{esc(label)}</text>"
        )
        tx, anchor = (x0 + w + 3, "start") if val >= 0 else (x0 - 3, "end")
        parts.append(
            f"<text x='{tx:.1f}' y='{y + 12}' text-anchor='{anchor}' font-size='10' "
            f"fill='#444'>{fmt(v)}</text></g>"
        )
    height = top + len(values) * (BAR_H + GAP)
    parts.append(
        f"<line x1='{zero:.1f}' x2='{zero:.1f}' y1='{top - 2}' y2='{height:.1f}' stroke='#333'/>"
    )
    if xlabel:
        parts.append(
            f"<text x='{left + PLOT_W / 2:.1f}' y='{height + 14:.1f}' text-anchor='middle' "
            f"font-weight='600'>{esc(xlabel)}</text>"
        )
        height += 18
    return Panel("".join(parts), left + PLOT_W, height)


def bars(
    values: Float[Any, " n"],
    labels: Sequence[Any] | None = None,
    *,
    top_k: int | None = None,
    title: str = "",
    xlabel: str = "",
) -> Figure:
    """One horizontal bar per value (positive blue, negative red), e.g. DLA per component.

    `top_k` keeps the k values of largest magnitude, largest first. Up to 2,000 bars.

    Example:
        >>> from lmscope import viz
        >>> viz.bars([0.5, -1.2, 2.0], ["embed", "0_attn_out", "0_mlp_out"], title="DLA").save("dla.svg")
    """
    arr = to_numpy(values, "values", (1,))
    names = check_labels(labels, arr.size, "labels", "{}")
    keep = top_k_indices(arr, top_k)
    check_size(keep.size, MAX_BARS, "the bar chart", "pass top_k to keep the largest")
    panel = bars_panel(arr[keep], [names[i] for i in keep], title=title, xlabel=xlabel)
    return figure_from_panel(panel, "bars", title or "bars")
