"""The attention view: every head as a thumbnail (layer x head grid), one head's pattern with the
tokens on both axes, and the text coloured by what the hovered token attends to (or by what
attends to it). Hover a thumbnail to preview a head, click it to keep it.

The page holds every head's full pattern as 16-bit values (exact to 1.5e-5), the lower triangle
only when the pattern is causal; thumbnails are max-pooled to at most 32 x 32. Inputs over
`max_values` are refused (or pooled into position blocks with `downsample=True`), so a pattern
like [30, 9, 1000, 1000] never becomes a 500 MB page.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from lmscope.errors import FigureTooLargeError
from lmscope.viz._figure import _ID, Figure, json_script
from lmscope.viz._svg import BLUES, check_labels, esc, show_token

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache

MAX_VALUES = 4_000_000  # attention values embedded in one page (2 bytes each, ~11 MB as base64)
THUMB = 32  # thumbnails are at most THUMB x THUMB pooled cells
MATRIX_PX = 440  # the detail view's size for long prompts


def _stored_values(n_maps: int, nq: int, nk: int) -> int:
    """How many values the page stores: the lower triangle of square causal patterns."""
    return n_maps * (nq * (nq + 1) // 2 if nq == nk else nq * nk)


def _as_pattern(attention: Any) -> torch.Tensor:
    """`attention` as a [layer, head, q, k] float32 tensor (without copying a tensor's data)."""
    t = attention if isinstance(attention, torch.Tensor) else torch.as_tensor(np.asarray(attention))
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        raise ValueError(
            f"attention must be [head, query, key] or [layer, head, query, key], got shape "
            f"{tuple(t.shape)}; index the batch first (cache['pattern', layer][0])"
        )
    if 0 in t.shape:
        raise ValueError(f"attention is empty (shape {tuple(t.shape)}): nothing to draw")
    if t.shape[-2] > t.shape[-1]:
        raise ValueError(
            f"attention has {t.shape[-2]} query positions but only {t.shape[-1]} key positions; "
            "pass [.., query, key] with at least as many keys as queries"
        )
    return t


def _pool_positions(
    pattern: torch.Tensor, tokens: list[str], factor: int
) -> tuple[torch.Tensor, list[str]]:
    """Blocks of `factor` positions as one: query blocks averaged, key blocks summed (so each row
    still sums to 1); a block is labelled by its first token and its position range."""
    n = pattern.shape[-1]
    x = F.pad(pattern, (0, -n % factor, 0, -n % factor))
    n_layers, n_heads, m = x.shape[:3]
    x = x.reshape(n_layers, n_heads, m // factor, factor, m // factor, factor).sum(dim=(3, 5))
    rows = torch.full((m // factor,), float(factor))
    rows[-1] = n - (m // factor - 1) * factor  # the last block may be short
    labels = [f"{tokens[s]}\u2026[{s}-{min(s + factor, n) - 1}]" for s in range(0, n, factor)]
    return x / rows[:, None], labels


def _encode(pattern: torch.Tensor, tri: bool) -> str:
    """Values in [0, 1] as base64 of little-endian uint16 (lower triangles only when `tri`)."""
    q = (pattern.clamp(0, 1) * 65535).round().to(torch.int32)
    if tri:
        n = q.shape[-1]
        rows, cols = torch.tril_indices(n, n)
        q = q[..., rows, cols]
    return base64.b64encode(q.to(torch.int32).numpy().astype("<u2").tobytes()).decode("ascii")


def _thumbs(pattern: torch.Tensor) -> tuple[str, int, int]:
    nq, nk = pattern.shape[-2:]
    tq, tk = min(nq, THUMB), min(nk, THUMB)
    pooled = F.adaptive_max_pool2d(pattern.reshape(-1, 1, nq, nk), (tq, tk))
    data = (pooled.clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes()
    return base64.b64encode(data).decode("ascii"), tq, tk


def attention_heads(
    attention: Float[Any, "*layer head query key"],
    tokens: Sequence[str],
    *,
    layer_labels: Sequence[Any] | None = None,
    head_labels: Sequence[Any] | None = None,
    selected: tuple[int, int] = (0, 0),
    title: str = "",
    max_values: int = MAX_VALUES,
    downsample: bool = False,
) -> Figure:
    """Interactive attention patterns of many heads: a layer x head grid of thumbnails, the
    selected head with tokens on both axes (hover a cell for its value), and the text coloured by
    what the hovered token attends to (or, switched, by what attends to it).

    `attention` is [head, query, key] (one layer; circuitsvis's `attention_heads` layout) or
    [layer, head, query, key]; `tokens` label the key positions (queries are the last `query`
    keys). `selected` = (layer, head) is shown first. Over `max_values` stored values the call
    fails, unless `downsample=True` pools positions into blocks until it fits.

    Example:
        >>> from lmscope import viz
        >>> logits, cache = model.run_with_cache("a b c d a b c d")
        >>> pattern = cache.stack_activation("pattern")[:, 0]      # [layer, head, q, k]
        >>> viz.attention_heads(pattern, model.to_str_tokens("a b c d a b c d")).save("attn.html")
    """
    pattern = _as_pattern(attention)
    n_layers, n_heads, nq, nk = pattern.shape
    toks = check_labels(tokens, nk, "tokens", "{}")
    stored = _stored_values(n_layers * n_heads, nq, nk)
    if stored > max_values and not downsample:
        raise FigureTooLargeError(
            f"attention pattern {list(pattern.shape)} needs {stored:,} values in the page "
            f"(~{stored * 2.7 / 1e6:,.0f} MB), more than max_values={max_values:,} "
            f"(~{max_values * 2.7 / 1e6:,.0f} MB): pass fewer layers or heads (attention[:4], "
            f"attention[layer]), fewer positions (attention[..., -64:, -64:] with tokens[-64:]), "
            "downsample=True to pool positions into blocks, or a larger max_values"
        )
    pattern = pattern.detach().to("cpu", torch.float32)
    lo, hi = float(pattern.min()), float(pattern.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"attention values must be probabilities in [0, 1] (got {lo:.3g} .. {hi:.3g}): pass "
            "the pattern (softmax of the scores), e.g. cache['pattern', layer]"
        )
    if stored > max_values:
        if nq != nk:
            raise ValueError(
                f"downsample=True needs as many query as key positions, got {nq} and {nk}"
            )
        factor = 2
        while (
            _stored_values(n_layers * n_heads, math.ceil(nq / factor), math.ceil(nk / factor))
            > max_values
        ):
            factor += 1
        pattern, toks = _pool_positions(pattern, toks, factor)
        nq, nk = pattern.shape[-2:]
    layers = check_labels(layer_labels, n_layers, "layer_labels", "{}")
    heads = check_labels(head_labels, n_heads, "head_labels", "{}")
    if not (0 <= selected[0] < n_layers and 0 <= selected[1] < n_heads):
        raise ValueError(f"selected={selected} is outside the {n_layers} x {n_heads} heads")
    tri = nq == nk and bool((pattern.triu(1) == 0).all())
    thumbs, tq, tk = _thumbs(pattern)
    cell = max(1, min(22, MATRIX_PX // max(nq, nk)))
    data = {
        "tokens": toks, "layers": layers, "heads": heads, "nq": nq, "nk": nk, "q0": nk - nq,
        "tri": tri, "data": _encode(pattern, tri), "thumbs": thumbs, "tq": tq, "tk": tk,
        "cell": cell, "stops": BLUES, "selected": list(selected),
    }  # fmt: skip
    body, size = _layout(data, title, n_layers, n_heads)
    return Figure(body, kind="attention", title=title or "attention patterns", size=size)


def _layout(
    data: dict[str, Any], title: str, n_layers: int, n_heads: int
) -> tuple[str, tuple[int, int]]:
    toks, nq, nk, cell = data["tokens"], data["nq"], data["nk"], data["cell"]
    n_maps = n_layers * n_heads
    thumb = 40 if n_maps <= 144 else 28 if n_maps <= 600 else 20
    grid = [
        f"<div class='lmv-grid' style='grid-template-columns:28px repeat({n_heads},{thumb}px)'>",
        "<div class='lmv-glabel'>L\\H</div>",
        *(f"<div class='lmv-ghead'>{esc(h)}</div>" for h in data["heads"]),
    ]
    for li, lab in enumerate(data["layers"]):
        grid.append(f"<div class='lmv-glabel'>{esc(lab)}</div>")
        for h in range(n_heads):
            grid.append(
                f"<canvas class='lmv-thumb' data-l='{li}' data-h='{h}' width='{data['tk']}' "
                f"height='{data['tq']}' style='width:{thumb}px;height:{thumb}px' "
                f"data-tip='layer {esc(lab)}, head {esc(data['heads'][h])}'></canvas>"
            )
    grid.append("</div>")
    labels = cell >= 9
    font = min(11, cell - 1)
    chars = max(len(show_token(t, 12)) for t in toks)
    label_px = int(chars * font * 0.68) + 8 if labels else 0
    q0 = data["q0"]
    klabels = "".join(
        f"<div class='lmv-klabel' data-i='{j}' style='width:{cell}px;font-size:{font}px;"
        f"line-height:{cell}px'>{esc(show_token(t, 12))}</div>"
        for j, t in enumerate(toks)
    ) if labels else ""  # fmt: skip
    qlabels = "".join(
        f"<div class='lmv-qlabel' data-i='{i}' style='height:{cell}px;font-size:{font}px;"
        f"line-height:{cell}px'>{esc(show_token(toks[q0 + i], 12))}</div>"
        for i in range(nq)
    ) if labels else ""  # fmt: skip
    matrix = (
        f"<div class='lmv-detail'><div class='lmv-detail-title'></div>"
        f"<div class='lmv-matrix-wrap' style='grid-template-columns:{label_px}px auto;"
        f"grid-template-rows:{label_px}px auto'>"
        f"<div class='lmv-klabels'>{klabels}</div><div class='lmv-qlabels'>{qlabels}</div>"
        f"<div class='lmv-matrix-box' style='width:{nk * cell}px;height:{nq * cell}px'>"
        f"<canvas class='lmv-matrix' width='{nk}' height='{nq}' "
        f"style='width:{nk * cell}px;height:{nq * cell}px'></canvas>"
        f"<div class='lmv-hl-row' style='height:{cell}px'></div>"
        f"<div class='lmv-hl-col' style='width:{cell}px'></div></div></div></div>"
    )
    strip = "".join(
        f"<span class='lmv-tok' data-i='{j}'>{esc(show_token(t))}</span>"
        for j, t in enumerate(toks)
    )
    mode = (
        "<div class='lmv-mode'>Hover a token to colour the text by "
        f"<label><input type='radio' name='{_ID}-mode' value='dest' checked> what it attends to"
        f"</label> <label><input type='radio' name='{_ID}-mode' value='src'> what attends to it"
        "</label> (click a thumbnail to keep its head)</div>"
    )
    heading = f"<div class='lmv-heading'>{esc(title)}</div>" if title else ""
    body = (
        f"<div class='lmv lmv-attn' id='{_ID}' data-kind='attention'>{heading}"
        f"<div class='lmv-attn-body'><div class='lmv-grid-wrap'>{''.join(grid)}</div>{matrix}</div>"
        f"{mode}<div class='lmv-toks'>{strip}</div>"
        f"<script type='application/json' class='lmv-data'>{json_script(data)}</script></div>"
        f"<script>lmscopeViz1.init('{_ID}')</script>"
    )
    grid_w = 28 + n_heads * (thumb + 2)
    grid_h = min(560, 20 + n_layers * (thumb + 2))
    detail_w = label_px + nk * cell + 10
    detail_h = label_px + nq * cell + 30
    width = min(1600, max(grid_w + 24 + detail_w, 600)) + 30
    strip_lines = math.ceil(sum(len(t) + 1 for t in toks) * 8.5 / (width - 40) + 0.5)
    height = max(grid_h, detail_h) + 70 + strip_lines * 24 + (30 if title else 0)
    if grid_w + 24 + detail_w > 1600:  # the detail view wraps below the grid
        height += grid_h
    return body, (width, height)


def attention_patterns(
    tokens: Sequence[str], attention: Float[Any, "*layer head query key"], **kwargs: Any
) -> Figure:
    """`attention_heads` with circuitsvis's `attention_patterns(tokens, attention)` argument order.

    Example:
        >>> viz.attention_patterns(model.to_str_tokens(text), cache["pattern", 0][0])
    """
    return attention_heads(attention, tokens, **kwargs)


def attention_from_cache(
    cache: ActivationCache,
    tokens: Sequence[str] | torch.Tensor,
    *,
    layers: Sequence[int] | None = None,
    batch_index: int = 0,
    **kwargs: Any,
) -> Figure:
    """The attention view of every head (or of `layers`) of one prompt in a cache (`hook_pattern`
    cached, e.g. `names_filter=lambda n: n.endswith("pattern")`). `tokens` are the prompt's str
    tokens or ids; other arguments go to `attention_heads`.

    Example:
        >>> tokens = model.to_tokens("When Mary and John went to the store, John gave a drink to")
        >>> logits, cache = model.run_with_cache(tokens)
        >>> viz.attention_from_cache(cache, tokens, layers=range(4)).save("attn.html")
    """
    model = cache.model
    picked = list(range(model.cfg.n_layers) if layers is None else layers)
    patterns = [cache["pattern", layer] for layer in picked]
    if patterns[0].ndim == 4:  # [batch, head, q, k]
        patterns = [p[batch_index] for p in patterns]
    if isinstance(tokens, torch.Tensor):
        ids = tokens[batch_index] if tokens.ndim == 2 else tokens
        tokens = model.to_str_tokens(ids)
    kwargs.setdefault("layer_labels", [str(layer) for layer in picked])
    return attention_heads(torch.stack(patterns), list(tokens), **kwargs)
