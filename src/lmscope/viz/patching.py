"""Activation / attribution patching results as heatmaps, straight from `lmscope.patching`:
[layer, pos] (with the prompt's tokens), [layer, head], and the `*_every` stacks as one panel per
activation on a shared colour scale centred on 0."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float

from lmscope.viz._figure import Figure
from lmscope.viz._svg import check_labels, check_size, to_numpy
from lmscope.viz.heatmap import MAX_CELLS, heatmaps

# Panel titles of the *_every stacks, in the order lmscope.patching returns them.
EVERY_TITLES = {
    3: ("resid_pre", "attn_out", "mlp_out"),  # get_act_patch_block_every: [3, layer, pos]
    5: ("output", "query", "key", "value", "pattern"),  # attn_head_all_pos_every: [5, layer, head]
}


def patching_heatmap(
    result: Float[Any, "*panel layer x"],
    tokens: Sequence[str] | None = None,
    *,
    panel_titles: Sequence[str] | None = None,
    title: str = "",
    metric_name: str = "metric",
) -> Figure:
    """Draw a patching result: [layer, pos] with `tokens` labelling the positions, [layer, head]
    without tokens, or a stack [panel, layer, pos|head] as one heatmap per panel (the 3 panels of
    `get_act_patch_block_every` and the 5 of `get_act_patch_attn_head_all_pos_every` are named
    for you). Red is negative, blue positive, white 0, on one scale for all panels.

    Example:
        >>> from lmscope import viz
        >>> grid = torch.randn(4, 6)             # e.g. get_act_patch_resid_pre(...): [layer, pos]
        >>> viz.patching_heatmap(grid, ["<s>", "A", " B", " C", " A", " B"]).save("patch.svg")
    """
    arr = to_numpy(result, "result", (2, 3))
    check_size(arr.size, MAX_CELLS, "the patching result", "slice its layers or positions")
    stack = arr if arr.ndim == 3 else arr[None]
    _, n_layers, n_x = stack.shape
    if tokens is not None:
        toks = check_labels(tokens, n_x, "tokens", "{}")
        cols, xlabel = [f"{tok} ({j})" for j, tok in enumerate(toks)], "position"
    else:
        cols, xlabel = [str(h) for h in range(n_x)], "head"
    if panel_titles is None:
        names = EVERY_TITLES.get(stack.shape[0], ()) if arr.ndim == 3 else ("",)
        if len(names) != stack.shape[0]:
            names = tuple(str(i) for i in range(stack.shape[0]))
    else:
        names = tuple(check_labels(panel_titles, stack.shape[0], "panel_titles", "{}"))
    rows = [str(i) for i in range(n_layers)]
    return heatmaps(
        list(zip(names, stack, strict=True)), rows, cols, kind="patching",
        title=title or f"Patching: {metric_name} per {xlabel}", xlabel=xlabel, ylabel="layer",
        value_name=metric_name, color="diverging",
    )  # fmt: skip
