"""Text coloured by a value per token (a neuron's activation, DLA, loss, a probe's output), the value
shown on hover; one line per series when several are given (circuitsvis `colored_tokens` and
`colored_tokens_multi`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from lmscope.viz._figure import _ID, Figure
from lmscope.viz._svg import (
    ScaleKind,
    check_labels,
    check_size,
    esc,
    fmt,
    make_scale,
    show_token,
    to_numpy,
)

MAX_TOKENS = 50_000  # coloured spans in one figure (series x tokens)
WIDTH = 760  # px, the figure's width (the text wraps inside it)


def colored_tokens(
    tokens: Sequence[str],
    values: Float[Any, "*series pos"],
    *,
    labels: Sequence[str] | None = None,
    title: str = "",
    color: ScaleKind = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Figure:
    """The tokens as text, each on a background coloured by its value; hover shows the value.

    `values` is [pos], or [series, pos] for one line of text per series (named by `labels`), all
    on one colour scale: red-white-blue around 0 when some values are negative, else white to
    blue (`color`, `vmin` and `vmax` override).

    Example:
        >>> from lmscope import viz
        >>> viz.colored_tokens(["The", " cat", " sat"], [0.1, 2.0, -0.5], title="neuron 7").save("neuron.html")
    """
    arr = to_numpy(values, "values", (1, 2))
    series = arr if arr.ndim == 2 else arr[None]
    check_size(series.size, MAX_TOKENS, "colored_tokens", "pass fewer tokens or series")
    toks = check_labels(tokens, series.shape[1], "tokens", "{}")
    names = check_labels(labels, series.shape[0], "labels", "series {}") if arr.ndim == 2 else [""]
    scale = make_scale(series, color, vmin, vmax)
    colors = scale.colors(series)
    dark = scale.dark(series).reshape(-1)
    rows = []
    for s, name in enumerate(names):
        spans = []
        for j, tok in enumerate(toks):
            k = s * len(toks) + j
            v = float(series[s, j])
            tip = f"{(name + ': ') if name else ''}{tok!r} (position {j}): {fmt(v)}"
            fg = "white" if dark[k] else "#111"
            spans.append(
                f"<span class='lmv-tok' data-i='{j}' data-v='{v:.6g}' data-tip='{esc(tip)}' "
                f"style='background:{colors[k]};color:{fg}'>{esc(show_token(tok))}</span>"
            )
        label = f"<div class='lmv-rowname'>{esc(name)}</div>" if name else ""
        rows.append(
            f"<div class='lmv-tokrow'>{label}<div class='lmv-toks'>{''.join(spans)}</div></div>"
        )
    low, high = scale.colors(np.array([scale.vmin, scale.vmax]))
    mid = scale.colors(np.array([(scale.vmin + scale.vmax) / 2]))[0]
    legend = (
        f"<div class='lmv-scale'><span>{fmt(scale.vmin)}</span><span class='lmv-grad' "
        f"style='background:linear-gradient(90deg,{low},{mid},{high})'></span>"
        f"<span>{fmt(scale.vmax)}</span></div>"
    )
    heading = f"<div class='lmv-heading'>{esc(title)}</div>" if title else ""
    body = (
        f"<div class='lmv lmv-tokens' id='{_ID}' data-kind='tokens' style='max-width:{WIDTH}px'>"
        f"{heading}{''.join(rows)}{legend}</div><script>lmscopeViz1.init('{_ID}')</script>"
    )
    chars = sum(len(t) + 1 for t in toks)
    lines = series.shape[0] * math.ceil(chars * 8 / (WIDTH - 40) + 0.5)
    height = 70 + lines * 24 + 22 * series.shape[0] * (arr.ndim == 2)
    return Figure(body, kind="tokens", title=title or "colored tokens", size=(WIDTH + 20, height))
