"""Shared pieces of the static figures: input checks, colour scales, labels, SVG panels.

A panel is a piece of SVG drawn from (0, 0) with its size; `figure_from_panels` lays panels out
side by side or stacked into one SVG document, which is both the `.svg` file and, inline, the HTML
figure (the shared JS turns each `<title>` into a hover tooltip).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lmscope.errors import FigureTooLargeError
from lmscope.viz._figure import _ID, Figure

FONT = 11  # px, labels and ticks
CHAR_W = 6.4  # px per character of an 11 px sans-serif label, for layout
# Colour stops (RGB): sequential white -> dark blue ("Blues"), diverging red -> white -> blue
# ("RdBu": negative red, positive blue, as TransformerLens notebooks' imshow).
BLUES = ((247, 251, 255), (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107))
RDBU = (
    (103, 0, 31), (214, 96, 77), (253, 219, 199), (247, 247, 247),
    (209, 229, 240), (67, 147, 195), (5, 48, 97),
)  # fmt: skip
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
NAN_FILL = "#d9d9d9"
ScaleKind = Literal["auto", "sequential", "diverging"]


def to_numpy(x: Any, name: str, ndims: Sequence[int]) -> np.ndarray:
    """`x` (tensor, array or nested list) as a float64 array with one of `ndims` dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a tensor, an array or a list of numbers: {err}") from err
    if arr.ndim not in ndims:
        want = " or ".join(f"{d}-d" for d in ndims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)}): nothing to draw")
    return arr


def check_labels(labels: Sequence[Any] | None, n: int, name: str, default: str) -> list[str]:
    """`labels` as n strings, or `default.format(i)` for each i when None."""
    if labels is None:
        return [default.format(i) for i in range(n)]
    if isinstance(labels, str):
        raise TypeError(f"{name} must be a list of {n} labels, not one string")
    out = [str(x) for x in labels]
    if len(out) != n:
        raise ValueError(f"{name} has {len(out)} labels but the values have {n} along that axis")
    return out


def check_size(n: int, limit: int, what: str, fix: str) -> None:
    """Refuse an input whose element count `n` is over `limit`, saying how to cut it."""
    if n > limit:
        raise FigureTooLargeError(
            f"{what} has {n:,} values, more than the {limit:,} one figure draws; {fix}"
        )


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def show_token(text: str, max_chars: int = 0) -> str:
    """A label as displayed: newlines and tabs visible, cut to `max_chars` (0: no cut)."""
    text = text.replace("\n", "\u21b5").replace("\t", "\u2192")
    if text and not text.strip():  # spaces alone would show nothing
        text = text.replace(" ", "\u2423")
    if max_chars and len(text) > max_chars:
        text = text[: max_chars - 1] + "\u2026"
    return text


def fmt(v: float) -> str:
    """A value as tooltips and ticks print it."""
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.4g}"


def text_width(text: str, size: float = FONT) -> float:
    return len(text) * CHAR_W * size / FONT


@dataclass(frozen=True)
class Scale:
    """A colour scale: `stops` spread evenly from vmin to vmax."""

    stops: tuple[tuple[int, int, int], ...]
    vmin: float
    vmax: float

    def rgb(self, values: np.ndarray) -> np.ndarray:
        """[..., 3] RGB in 0..255 for `values` (clipped to the range)."""
        span = self.vmax - self.vmin
        t = np.clip((values - self.vmin) / span if span > 0 else np.zeros_like(values), 0, 1)
        t = np.nan_to_num(t)
        stops = np.asarray(self.stops, dtype=np.float64)
        pos = t * (len(stops) - 1)
        lo = np.minimum(pos.astype(int), len(stops) - 2)
        frac = (pos - lo)[..., None]
        return stops[lo] * (1 - frac) + stops[lo + 1] * frac

    def colors(self, values: np.ndarray) -> list[str]:
        """One `#rrggbb` per value, grey for NaN."""
        rgb = np.rint(self.rgb(values)).astype(int).reshape(-1, 3)
        nan = np.isnan(values).reshape(-1)
        return [
            NAN_FILL if bad else f"#{r:02x}{g:02x}{b:02x}"
            for (r, g, b), bad in zip(rgb.tolist(), nan.tolist(), strict=True)
        ]

    def dark(self, values: np.ndarray) -> np.ndarray:
        """True where the colour is dark enough to need white text."""
        rgb = self.rgb(values)
        return (rgb @ np.array([0.299, 0.587, 0.114])) < 140


def make_scale(
    values: np.ndarray,
    kind: ScaleKind = "auto",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Scale:
    """Diverging around 0 (symmetric) when the values change sign or `kind="diverging"`, else
    sequential from min(0, min) to max; `vmin` / `vmax` override either end."""
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    if kind == "auto":
        kind = "diverging" if lo < 0 < hi or (lo < 0 and hi <= 0) else "sequential"
    if kind == "diverging":
        m = max(abs(lo), abs(hi)) or 1.0
        return Scale(RDBU, -m if vmin is None else vmin, m if vmax is None else vmax)
    if kind != "sequential":
        raise ValueError(f"color scale must be 'auto', 'sequential' or 'diverging', got {kind!r}")
    lo = min(lo, 0.0) if vmin is None else vmin
    hi = (hi if hi > lo else lo + 1.0) if vmax is None else vmax
    return Scale(BLUES, lo, hi)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


@dataclass
class Panel:
    """SVG content drawn from (0, 0), `width` x `height` px."""

    body: str
    width: float
    height: float


def title_text(title: str, x: float, y: float = 15, anchor: str = "start") -> str:
    if not title:
        return ""
    return (
        f"<text class='lmv-title' x='{x:.1f}' y='{y}' font-size='13' font-weight='600' "
        f"text-anchor='{anchor}'>{esc(title)}</text>"
    )


def with_title(panel: Panel, title: str) -> Panel:
    """`panel` under a figure title (unchanged when the title is empty)."""
    if not title:
        return panel
    body = title_text(title, 0) + f"<g transform='translate(0,28)'>{panel.body}</g>"
    return Panel(body, max(panel.width, text_width(title, 13)), panel.height + 28)


def svg_document(panel: Panel) -> str:
    """A standalone SVG document of `panel` on a white background."""
    w, h = math.ceil(panel.width), math.ceil(panel.height)
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}' "
        f"font-family='Helvetica, Arial, sans-serif' font-size='{FONT}' class='lmv-svg'>"
        f"<rect width='100%' height='100%' fill='white'/>{panel.body}</svg>"
    )


def arrange(panels: Sequence[Panel], direction: Literal["h", "v"] = "h", gap: float = 24) -> Panel:
    """Panels side by side (`h`) or stacked (`v`), as one panel."""
    parts, offset = [], 0.0
    for p in panels:
        x, y = (offset, 0.0) if direction == "h" else (0.0, offset)
        parts.append(f"<g transform='translate({x:.1f},{y:.1f})'>{p.body}</g>")
        offset += (p.width if direction == "h" else p.height) + gap
    offset -= gap
    if direction == "h":
        return Panel("".join(parts), offset, max(p.height for p in panels))
    return Panel("".join(parts), max(p.width for p in panels), offset)


def figure_from_panel(panel: Panel, kind: str, title: str, margin: float = 8) -> Figure:
    """A static Figure: the SVG document inline in HTML (with tooltips) and as its `.svg`."""
    padded = Panel(
        f"<g transform='translate({margin},{margin})'>{panel.body}</g>",
        panel.width + 2 * margin,
        panel.height + 2 * margin,
    )
    svg = svg_document(padded)
    body = (
        f"<div class='lmv lmv-static' id='{_ID}' data-kind='{kind}'>{svg}</div>"
        f"<script>lmscopeViz1.init('{_ID}')</script>"
    )
    size = (math.ceil(padded.width) + 16, math.ceil(padded.height) + 16)
    return Figure(body, kind=kind, title=title, size=size, svg=svg)


def colorbar(scale: Scale, x: float, y: float, height: float, label: str = "") -> Panel:
    """A vertical colour bar at (x, y) with ticks; `label` above it."""
    grad_id = "g" + format(abs(hash((scale, x, y, height))) % 10**10, "x")
    n = 16
    vals = np.linspace(scale.vmax, scale.vmin, n)
    cols = scale.colors(vals)
    stops = "".join(
        f"<stop offset='{i / (n - 1):.3f}' stop-color='{c}'/>" for i, c in enumerate(cols)
    )
    parts = [
        f"<defs><linearGradient id='{grad_id}' x1='0' y1='0' x2='0' y2='1'>{stops}"
        "</linearGradient></defs>",
        f"<rect x='{x}' y='{y}' width='12' height='{height:.1f}' fill='url(#{grad_id})' "
        "stroke='#888' stroke-width='0.5'/>",
    ]
    if label:
        parts.append(f"<text x='{x}' y='{y - 6}' font-size='10'>{esc(label)}</text>")
    span = scale.vmax - scale.vmin
    for t in nice_ticks(scale.vmin, scale.vmax, 5):
        ty = y + (scale.vmax - t) / span * height if span else y
        parts.append(
            f"<line x1='{x + 12}' x2='{x + 15}' y1='{ty:.1f}' y2='{ty:.1f}' stroke='#555'/>"
            f"<text x='{x + 17}' y='{ty + 3.5:.1f}' font-size='10'>{fmt(t)}</text>"
        )
    width = 17 + max(text_width(fmt(t), 10) for t in (scale.vmin, scale.vmax)) + 4
    width = max(width, text_width(label, 10) + 2)
    return Panel("".join(parts), width, height)
