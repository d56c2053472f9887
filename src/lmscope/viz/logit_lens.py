"""Logit lens figures: a target token's probability, rank or logit after each layer at each
position (layer x position heatmap), beside the top-k tokens the lens predicts after each layer."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from lmscope.viz._figure import Figure
from lmscope.viz._svg import (
    BLUES,
    Scale,
    arrange,
    check_labels,
    check_size,
    figure_from_panel,
    fmt,
    make_scale,
    to_numpy,
    with_title,
)
from lmscope.viz.heatmap import MAX_CELLS, heatmap_panel

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache

LensKind = Literal["prob", "rank", "logit"]
LENS_CHUNK = 1 << 24  # logits computed at once by logit_lens_from_cache (64 MB in float32)


def logit_lens(
    values: Float[Any, "layer pos"],
    tokens: Sequence[str],
    *,
    layer_labels: Sequence[str] | None = None,
    kind: LensKind = "prob",
    target: str = "",
    top_tokens: Sequence[Sequence[str]] | None = None,
    top_probs: Float[Any, "layer k"] | None = None,
    top_pos: int = -1,
    title: str = "",
) -> Figure:
    """A logit lens: `values` [layer, pos] of the `target` token's probability, rank or logit
    (`kind`) after each layer, with `tokens` on the position axis; and, when `top_tokens` (k
    strings per layer) and `top_probs` [layer, k] are given, the lens's top-k tokens at position
    `top_pos` after each layer. Ranks are coloured on a log scale (rank 0 darkest).

    `logit_lens_from_cache` computes all of it from a cache.

    Example:
        >>> from lmscope import viz
        >>> probs = torch.rand(3, 4)                       # [layer, pos]
        >>> viz.logit_lens(probs, ["The", " cat", " sat", " on"], target=" mat").save("lens.svg")
    """
    arr = to_numpy(values, "values", (2,))
    check_size(arr.size, MAX_CELLS, "the logit lens", "slice its layers or positions")
    n_layers, n_pos = arr.shape
    toks = check_labels(tokens, n_pos, "tokens", "{}")
    layers = check_labels(layer_labels, n_layers, "layer_labels", "{}")
    what = {"prob": "probability", "rank": "rank", "logit": "logit"}.get(kind)
    if what is None:
        raise ValueError(f"kind must be 'prob', 'rank' or 'logit', got {kind!r}")
    target_s = f" of {target!r}" if target else ""
    tips = [
        [
            f"after {layers[i]}, position {j} {toks[j]!r}: {what}{target_s} {fmt(arr[i, j])}"
            for j in range(n_pos)
        ]
        for i in range(n_layers)
    ]
    cols = [f"{tok} ({j})" for j, tok in enumerate(toks)]
    if kind == "rank":  # log scale, rank 0 darkest
        colour = -np.log10(arr + 1)
        scale = Scale(BLUES, float(min(colour.min(), -1.0)), 0.0)
        bar_label = "-log10(rank + 1)"
    else:
        colour = arr
        scale = make_scale(
            arr, "sequential" if kind == "prob" else "auto", 0.0 if kind == "prob" else None
        )
        bar_label = what
    panels = [
        heatmap_panel(
            colour, layers, cols, scale=scale, title=f"{what}{target_s} after each layer",
            xlabel="position", ylabel="layer", tips=tips, colorbar_label=bar_label,
        )
    ]  # fmt: skip
    if top_tokens is not None or top_probs is not None:
        panels.append(_top_k_panel(top_tokens, top_probs, layers, top_pos))
    fig_title = title or f"Logit lens{target_s}"
    return figure_from_panel(
        with_title(arrange(panels, "h", 36), fig_title), "logit_lens", fig_title
    )


def _top_k_panel(
    top_tokens: Sequence[Sequence[str]] | None,
    top_probs: Any,
    layers: list[str],
    top_pos: int,
) -> Any:
    if top_tokens is None or top_probs is None:
        raise ValueError("pass both top_tokens and top_probs (or neither)")
    probs = to_numpy(top_probs, "top_probs", (2,))
    texts = [[str(t) for t in row] for row in top_tokens]
    if probs.shape[0] != len(layers) or any(len(r) != probs.shape[1] for r in texts):
        raise ValueError(
            f"top_tokens ({len(texts)} rows) and top_probs {tuple(probs.shape)} must both be "
            f"[layer, k] with {len(layers)} layers"
        )
    k = probs.shape[1]
    tips = [
        [f"after {layers[i]}: #{r + 1} {texts[i][r]!r} p={fmt(probs[i, r])}" for r in range(k)]
        for i in range(len(layers))
    ]
    return heatmap_panel(
        probs, layers, [f"#{r + 1}" for r in range(k)], scale=Scale(BLUES, 0.0, 1.0),
        title=f"top {k} tokens at position {top_pos}", xlabel="rank", cell_text=texts, tips=tips,
        colorbar_label="probability",
    )  # fmt: skip


@torch.no_grad()
def logit_lens_from_cache(
    cache: ActivationCache,
    tokens: Sequence[str] | torch.Tensor,
    target: str | int | None = None,
    *,
    kind: LensKind = "prob",
    k: int = 5,
    pos: int = -1,
    batch_index: int = 0,
    title: str = "",
    verbose: bool = True,
) -> Figure:
    """The logit lens of one prompt from its cache: the residual stream before each layer and
    after the last (`cache.accumulated_resid(apply_ln=True)`, so every entry goes through the
    final norm), unembedded; `target`'s probability / rank / logit at every position, and the
    top-`k` tokens at position `pos`. `target` is a token string or id; None takes the model's
    own prediction at `pos`. `tokens` are the prompt's str tokens or ids (for the labels).

    Needs the residual stream in the cache (`names_filter=lambda n: "resid" in n` is enough).
    The unembedding dominates the time ([layer * pos, d_model] x [d_model, vocab]: ~0.4 s for 15
    tokens of SmolLM2 on 2 cores; several layers share one product, at most 2**24 logits at
    once); past two seconds a progress bar shows (`verbose=False`: never).

    Example:
        >>> tokens = model.to_tokens("The capital of France is")
        >>> logits, cache = model.run_with_cache(tokens)
        >>> viz.logit_lens_from_cache(cache, tokens, " Paris").save("lens.html")
    """
    model = cache.model
    resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    if resid.ndim == 4:  # [layer, batch, pos, d_model]
        resid = resid[:, batch_index]
    if isinstance(tokens, torch.Tensor):
        ids = tokens[batch_index] if tokens.ndim == 2 else tokens
        tokens = model.to_str_tokens(ids)
    W_U = model.W_U.detach()
    b_U = getattr(model, "b_U", None)
    n_pos = resid.shape[1]
    values = torch.zeros(len(labels), n_pos)
    top_probs = torch.zeros(len(labels), k)
    top_ids: list[list[int]] = []
    if target is None:
        final = resid[-1, pos].to(W_U.dtype) @ W_U
        target = int(final.argmax())
    target_id = model.to_single_token(target) if isinstance(target, str) else int(target)
    shown = verbose and sys.stderr.isatty()
    # Several layers share one [layers * pos, d_model] x [d_model, d_vocab] product (a product of
    # few rows re-reads all of W_U for little work: 2.3x slower for 32 tokens of SmolLM2), with at
    # most LENS_CHUNK logits at a time, never the whole [layer, pos, d_vocab].
    per_chunk = max(1, LENS_CHUNK // (n_pos * W_U.shape[-1]))
    bar = tqdm(total=len(labels), desc="logit lens", unit="layer", disable=not shown, delay=2)
    for start in range(0, len(labels), per_chunk):
        block = resid[start : start + per_chunk].to(W_U.dtype)  # [layers, pos, d_model]
        chunk_logits = (block.reshape(-1, block.shape[-1]) @ W_U).float()
        chunk_logits = chunk_logits.reshape(block.shape[0], n_pos, -1)
        if b_U is not None:
            chunk_logits += b_U.detach().float()
        for offset, logits in enumerate(chunk_logits):
            i = start + offset
            chosen = logits[:, target_id]
            if kind == "prob":
                values[i] = (chosen - logits.logsumexp(-1)).exp().cpu()
            elif kind == "rank":
                values[i] = (logits > chosen[:, None]).sum(-1).float().cpu()
            else:
                values[i] = chosen.cpu()
            top = logits[pos].softmax(-1).topk(k)
            top_probs[i] = top.values.cpu()
            top_ids.append(top.indices.tolist())
        bar.update(block.shape[0])
    bar.close()
    top_tokens = [[model.to_string(t) for t in row] for row in top_ids]
    return logit_lens(
        values, list(tokens), layer_labels=labels, kind=kind, target=model.to_string(target_id),
        top_tokens=top_tokens, top_probs=top_probs, top_pos=pos if pos >= 0 else n_pos + pos,
        title=title,
    )  # fmt: skip
