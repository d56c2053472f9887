"""Heatmaps: any [rows, cols] values as coloured cells with labels, a colour bar and a tooltip per
cell. `heatmap` is the general figure (TransformerLens notebooks' `imshow`); the logit lens, DLA
and patching figures draw with `heatmap_panel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from lmscope.viz._figure import Figure
from lmscope.viz._svg import (
    FONT,
    Panel,
    Scale,
    ScaleKind,
    arrange,
    check_labels,
    check_size,
    colorbar,
    esc,
    figure_from_panel,
    fmt,
    make_scale,
    show_token,
    text_width,
    title_text,
    to_numpy,
    with_title,
)

MAX_CELLS = 100_000  # cells in one heatmap (each is an SVG rect with a tooltip)
LABEL_CHARS = 18  # longer labels are cut in the figure (the tooltip has them whole)


def _every(n_labels: int, cell: float, need: float) -> int:
    """Show every k-th label so labels `need` px apart fit cells of `cell` px."""
    return max(1, math.ceil(need / cell)) if n_labels > 1 else 1


def heatmap_panel(
    values: np.ndarray,
    row_labels: list[str],
    col_labels: list[str],
    *,
    scale: Scale,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cell_text: list[list[str]] | None = None,
    tips: list[list[str]] | None = None,
    value_name: str = "value",
    show_colorbar: bool = True,
    colorbar_label: str = "",
) -> Panel:
    """A heatmap of [rows, cols] `values` as an SVG panel (see `heatmap` for the arguments)."""
    n_rows, n_cols = values.shape
    rows = [show_token(s, LABEL_CHARS) for s in row_labels]
    cols = [show_token(s, LABEL_CHARS) for s in col_labels]
    if cell_text is not None:
        longest = max(len(show_token(t, 12)) for row in cell_text for t in row)
        cw = max(44.0, longest * 6.0 + 8)
        ch = 18.0
    else:
        cw = min(44.0, max(4.0, 560.0 / n_cols))
        ch = min(26.0, max(4.0, 380.0 / n_rows))
    row_every = _every(n_rows, ch, FONT + 1)
    col_every = _every(n_cols, cw, FONT + 1)
    row_w = max(text_width(s) for s in rows[::row_every])
    col_len = max(text_width(s) for s in cols[::col_every])
    rotate = col_len > cw - 2  # column labels go diagonal unless they fit under their cell
    left = (18 if ylabel else 0) + row_w + 6
    top = 24 if title else 4
    plot_w, plot_h = n_cols * cw, n_rows * ch
    bottom = (col_len * 0.72 + 12 if rotate else FONT + 8) + (18 if xlabel else 0)

    parts = [title_text(title, left)]
    colors = scale.colors(values)
    dark = scale.dark(values).reshape(-1)
    cells = [f"<g class='lmv-cells' transform='translate({left:.1f},{top})'>"]
    for i in range(n_rows):
        for j in range(n_cols):
            k = i * n_cols + j
            v = float(values[i, j])
            tip = (
                tips[i][j]
                if tips is not None
                else f"{row_labels[i]} \u00d7 {col_labels[j]}: {value_name} {fmt(v)}"
            )
            cells.append(
                f"<rect x='{j * cw:.2f}' y='{i * ch:.2f}' width='{cw + 0.3:.2f}' "
                f"height='{ch + 0.3:.2f}' fill='{colors[k]}'><title>{esc(tip)}</title></rect>"
            )
            if cell_text is not None:
                fill = "white" if dark[k] else "#111"
                cells.append(
                    f"<text x='{j * cw + cw / 2:.1f}' y='{i * ch + ch / 2 + 4:.1f}' "
                    f"text-anchor='middle' fill='{fill}' font-size='10' pointer-events='none' "
                    f"style='white-space:pre'>{esc(show_token(cell_text[i][j], 12))}</text>"
                )
    cells.append(
        f"<rect x='0' y='0' width='{plot_w:.1f}' height='{plot_h:.1f}' fill='none' "
        "stroke='#999' stroke-width='0.5'/></g>"
    )
    parts.extend(cells)
    for i in range(0, n_rows, row_every):
        y = top + i * ch + ch / 2 + 4
        parts.append(
            f"<text class='lmv-rowlabel' x='{left - 5:.1f}' y='{y:.1f}' text-anchor='end' "
            f"style='white-space:pre'>{esc(rows[i])}</text>"
        )
    label_y = top + plot_h + 4
    for j in range(0, n_cols, col_every):
        x = left + j * cw + cw / 2
        if rotate:
            parts.append(
                f"<text class='lmv-collabel' x='{x + 3:.1f}' y='{label_y + 4:.1f}' "
                f"text-anchor='end' transform='rotate(-45 {x + 3:.1f} {label_y + 4:.1f})' "
                f"style='white-space:pre'>{esc(cols[j])}</text>"
            )
        else:
            parts.append(
                f"<text class='lmv-collabel' x='{x:.1f}' y='{label_y + FONT:.1f}' "
                f"text-anchor='middle' style='white-space:pre'>{esc(cols[j])}</text>"
            )
    if xlabel:
        parts.append(
            f"<text x='{left + plot_w / 2:.1f}' y='{top + plot_h + bottom - 4:.1f}' "
            f"text-anchor='middle' font-weight='600'>{esc(xlabel)}</text>"
        )
    if ylabel:
        cy = top + plot_h / 2
        parts.append(
            f"<text x='12' y='{cy:.1f}' text-anchor='middle' font-weight='600' "
            f"transform='rotate(-90 12 {cy:.1f})'>{esc(ylabel)}</text>"
        )
    width, height = left + plot_w, top + plot_h + bottom
    if show_colorbar:
        bar_top = top + (22 if colorbar_label else 10)
        bar = colorbar(scale, width + 14, bar_top, max(40, min(plot_h - 10, 220)), colorbar_label)
        parts.append(bar.body)
        width += 14 + bar.width
        height = max(height, bar_top + bar.height + 12)
    return Panel("".join(parts), width, height)


def heatmap(
    values: Float[Any, "rows cols"],
    x_labels: Sequence[Any] | None = None,
    y_labels: Sequence[Any] | None = None,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    value_name: str = "value",
    color: ScaleKind = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """Draw [rows, cols] values as a heatmap with labels, colour bar and a tooltip per cell.

    `color="auto"` uses a red-white-blue scale centred on 0 when the values have negative entries
    (as TransformerLens notebooks' `imshow(..., color_continuous_midpoint=0)`), else white to blue;
    `vmin` / `vmax` fix the range. Up to 100,000 cells.

    Example:
        >>> from lmscope import viz
        >>> fig = viz.heatmap(torch.randn(4, 6), xlabel="position", ylabel="layer", title="random")
        >>> fig.save("random.svg")
    """
    arr = to_numpy(values, "values", (2,))
    check_size(arr.size, MAX_CELLS, "the heatmap", "slice or average it first")
    rows = check_labels(y_labels, arr.shape[0], "y_labels", "{}")
    cols = check_labels(x_labels, arr.shape[1], "x_labels", "{}")
    scale = make_scale(arr, color, vmin, vmax)
    panel = heatmap_panel(
        arr, rows, cols, scale=scale, title=title, xlabel=xlabel, ylabel=ylabel,
        value_name=value_name,
    )  # fmt: skip
    return figure_from_panel(panel, "heatmap", title or "heatmap")


def heatmaps(
    panels: Sequence[tuple[str, np.ndarray]],
    rows: list[str],
    cols: list[str],
    *,
    kind: str,
    title: str,
    xlabel: str,
    ylabel: str,
    value_name: str,
    color: ScaleKind = "auto",
) -> Figure:
    """Several same-shaped heatmaps side by side, sharing one colour scale (and one colour bar)."""
    scale = make_scale(np.stack([v for _, v in panels]), color)
    drawn = [
        heatmap_panel(
            v, rows, cols, scale=scale, title=name, xlabel=xlabel, ylabel=ylabel if i == 0 else "",
            value_name=value_name, show_colorbar=i == len(panels) - 1,
        )
        for i, (name, v) in enumerate(panels)
    ]  # fmt: skip
    return figure_from_panel(with_title(arrange(drawn, "h"), title), kind, title or kind)
