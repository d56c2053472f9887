"""Direct logit attribution figures: per head (layer x head heatmap with the top heads as bars),
per neuron (top-k bars), and `dla_from_cache`, which computes per-component and per-head DLA from
an ActivationCache through its public methods and draws them together."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float

from lmscope.viz._figure import Figure
from lmscope.viz._svg import (
    Panel,
    arrange,
    check_labels,
    figure_from_panel,
    make_scale,
    to_numpy,
    with_title,
)
from lmscope.viz.bars import bars_panel, top_k_indices
from lmscope.viz.heatmap import MAX_CELLS, heatmap_panel

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache


def _head_panels(arr: np.ndarray, top_k: int, value_name: str) -> list[Panel]:
    n_layers, n_heads = arr.shape
    scale = make_scale(arr, "diverging")
    heat = heatmap_panel(
        arr, [str(i) for i in range(n_layers)], [str(h) for h in range(n_heads)], scale=scale,
        title=f"{value_name} per head", xlabel="head", ylabel="layer", value_name=value_name,
    )  # fmt: skip
    flat = arr.reshape(-1)
    keep = top_k_indices(flat, min(top_k, flat.size))
    labels = [f"L{i // n_heads}H{i % n_heads}" for i in keep]
    top = bars_panel(flat[keep], labels, title=f"top {keep.size} heads by |{value_name}|")
    return [heat, top]


def dla_heads(
    values: Float[Any, "layer head"], *, top_k: int = 10, title: str = "", value_name: str = "DLA"
) -> Figure:
    """Per-head values (direct logit attribution, or any [layer, head] score) as a layer x head
    heatmap beside bars of the `top_k` heads of largest magnitude.

    Example:
        >>> from lmscope import viz
        >>> viz.dla_heads(torch.randn(4, 8), top_k=5, title="logit difference per head").save("heads.svg")
    """
    arr = to_numpy(values, "values", (2,))
    if arr.size > MAX_CELLS:
        raise ValueError(f"values has shape {arr.shape}: expected [layer, head]")
    panel = arrange(_head_panels(arr, top_k, value_name), "h", gap=40)
    return figure_from_panel(with_title(panel, title), "dla_heads", title or "DLA per head")


def top_neurons(
    values: Float[Any, "*layer neuron"],
    *,
    k: int = 20,
    title: str = "",
    layer_labels: list[str] | None = None,
) -> Figure:
    """Bars of the `k` neurons of largest |value| from [layer, neuron] (labels "L{l}N{n}") or
    [neuron] values ("N{n}"), e.g. each neuron's direct logit attribution.

    Example:
        >>> from lmscope import viz
        >>> viz.top_neurons(torch.randn(2, 512), k=10, title="neuron DLA").save("neurons.svg")
    """
    arr = to_numpy(values, "values", (1, 2))
    if arr.ndim == 1:
        labels = [f"N{n}" for n in range(arr.size)]
    else:
        layers = check_labels(layer_labels, arr.shape[0], "layer_labels", "L{}")
        labels = [f"{lab}N{n}" for lab in layers for n in range(arr.shape[1])]
    flat = arr.reshape(-1)
    keep = top_k_indices(flat, min(k, flat.size))
    panel = bars_panel(flat[keep], [labels[i] for i in keep], title=title)
    return figure_from_panel(panel, "top_neurons", title or "top neurons")


@torch.no_grad()
def dla_from_cache(
    cache: ActivationCache,
    answer: str | int | torch.Tensor,
    incorrect: str | int | torch.Tensor | None = None,
    *,
    pos: int = -1,
    top_k: int = 10,
    title: str = "",
) -> Figure:
    """Direct logit attribution of the logit of `answer` (minus `incorrect`'s) at position `pos`,
    per component (embeddings, each layer's attention and MLP output) and per head, averaged over
    the batch; needs a full cache (`model.run_with_cache(tokens)`).

    Uses `cache.decompose_resid`, `cache.stack_head_results` and `cache.logit_attrs`; `answer` and
    `incorrect` take what `logit_attrs` takes (a token string, an id, or one id per prompt).

    Example:
        >>> logits, cache = model.run_with_cache("When Mary and John went to the store, John gave a drink to")
        >>> viz.dla_from_cache(cache, " Mary", " John").save("ioi_dla.html")
    """
    parts, part_labels = cache.decompose_resid(pos_slice=pos, return_labels=True)
    heads = cache.stack_head_results(pos_slice=pos)
    comp = cache.logit_attrs(parts, answer, incorrect, pos_slice=pos)
    head = cache.logit_attrs(heads, answer, incorrect, pos_slice=pos)
    batch_dims = tuple(range(1, comp.ndim))
    comp = comp.mean(batch_dims) if batch_dims else comp
    head = head.mean(batch_dims) if batch_dims else head
    head_values = head.float().cpu().numpy().reshape(-1, cache.model.cfg.n_heads)  # [layer, head]
    name = "logit difference" if incorrect is not None else "logit"
    panels = [
        bars_panel(comp.float().cpu().numpy(), part_labels, title=f"DLA per component ({name})")
    ]
    panels += _head_panels(head_values, top_k, "DLA")
    panel = arrange(panels, "h", gap=40)
    fig_title = title or f"Direct logit attribution of the {name}"
    return figure_from_panel(with_title(panel, fig_title), "dla", fig_title)
