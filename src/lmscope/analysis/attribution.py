"""Attribution patching: a first-order estimate of activation patching from one backward pass.

Activation patching measures `metric(corrupted run with activation a := a_clean) - metric(corrupted)`
for each activation, one forward pass per index. Attribution patching linearises the metric around
the corrupted run instead:

    effect(a) ≈ (a_clean - a_corrupted) · d metric / d a  |corrupted

summed over the entries the patch would replace. One forward + backward pass on the corrupted input
gives the gradient at every activation at once; the clean activations come from `clean_cache`. The
functions mirror `lmscope.analysis.patching` (same arguments, same index axes, including the
kv-head axis of k/v under grouped-query attention), and their results approximate
`exact_result - metric(corrupted)`. The approximation is good where the metric is close to linear
in the activation (small, distributed patches; the residual stream early on) and worst for large
single patches through saturated softmaxes/LayerNorms: treat it as a fast screen, then confirm the
top entries with exact patching.

Example:
    >>> _, clean_cache = model.run_with_cache(clean_tokens)
    >>> approx = get_attr_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)  # [layer, pos]
    >>> exact = get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lmscope.analysis.patching import (
    BLOCK_EVERY,
    HEAD_ALL_POS_EVERY,
    HEAD_BY_POS_EVERY,
    STANDARD_PATCHES,
    AxisNames,
    MetricFn,
    _check_kv_layout,
    _stack_heads,
    _to_tokens,
)
from lmscope.utils import get_act_name

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache
    from lmscope.model import HookedTransformer

_PATTERN_AXES = {"head": 1, "head_index": 1, "dest_pos": 2, "pos": 2, "src_pos": 3}
_HEAD_VECTOR_AXES = {"pos": 1, "head": 2, "head_index": 2}
_RESID_AXES = {"pos": 1}


def corrupted_activations_and_grads(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    patching_metric: MetricFn,
    hook_names: Sequence[str],
) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
    """One forward + backward pass on the corrupted input: the activations at `hook_names`, the
    gradients of `patching_metric(logits)` with respect to them, and the metric's value.

    The model's parameters get no gradients (they are frozen for the pass and restored after).

    Example:
        >>> acts, grads, value = corrupted_activations_and_grads(model, tokens, metric,
        ...                                                      ["blocks.0.hook_resid_pre"])
    """
    tokens = _to_tokens(model, corrupted_tokens)
    acts: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}

    def save_act(t: Tensor, hook: Any) -> None:
        acts[hook.name] = t.detach()

    def save_grad(g: Tensor, hook: Any) -> None:
        grads[hook.name] = g.detach()

    def make_leaf(t: Tensor, hook: Any) -> Tensor:
        return t.detach().requires_grad_(True)

    # the embeddings become leaves, so the frozen model still builds a graph to the hooks
    # (BERT-family encoders hook their embedding sum after its LayerNorm: hook_full_embed)
    inputs = ("hook_embed", "hook_pos_embed", "hook_full_embed")
    leaves = [(name, make_leaf) for name in inputs if name in model.hook_dict]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            with model.hooks(
                fwd_hooks=[*leaves, *[(name, save_act) for name in hook_names]],
                bwd_hooks=[(name, save_grad) for name in hook_names],
            ):
                value = patching_metric(model(tokens))
                if not isinstance(value, Tensor) or value.numel() != 1:
                    raise ValueError("attribution patching needs a metric that returns a scalar")
                value.backward()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    missing = [name for name in hook_names if name not in grads]
    if missing:
        raise RuntimeError(f"the metric does not depend on {missing[:3]}; no gradient reached them")
    return acts, grads, float(value.detach())


def _reduce(t: Tensor, activation_name: str, axes: Sequence[str]) -> Tensor:
    """Sum `t` over every dim except the named axes (in their order)."""
    if activation_name in ("pattern", "attn_scores"):
        dims = _PATTERN_AXES
    elif t.ndim == 4:
        dims = _HEAD_VECTOR_AXES
    else:
        dims = _RESID_AXES
    unknown = [a for a in axes if a not in dims]
    if unknown:
        raise ValueError(f"axes {unknown} do not apply to {activation_name!r}")
    keep = [dims[a] for a in axes]
    rest = [d for d in range(t.ndim) if d not in keep]
    return t.permute(*keep, *rest).flatten(len(keep)).sum(-1)


@torch.no_grad()
def attribution_patch_many(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    requests: Mapping[str, Sequence[AxisNames]] | Sequence[tuple[str, Sequence[AxisNames]]],
) -> dict[str, Tensor]:
    """Attribution patching for several activations from a single forward + backward pass.

    `requests` maps a result name to `(activation_name, index_axis_names)`; or pass a mapping
    `{activation_name: index_axis_names}`. Returns `{name: tensor indexed like the axes}`.

    Example:
        >>> out = attribution_patch_many(model, corrupted, clean_cache, metric,
        ...                              {"resid_pre": ("layer", "pos"), "z": ("layer", "head")})
    """
    items = list(requests.items()) if isinstance(requests, Mapping) else list(requests)
    if len({act for act, _ in items}) != len(items):
        raise ValueError("request each activation once (results are keyed by activation name)")
    n_layers = model.cfg.n_layers
    names = sorted({get_act_name(act, layer) for act, _ in items for layer in range(n_layers)})
    acts, grads, _ = corrupted_activations_and_grads(
        model, corrupted_tokens, patching_metric, names
    )
    out: dict[str, Tensor] = {}
    for act, axes in items:
        if axes[0] != "layer":
            raise ValueError(f"the first index axis must be 'layer', got {axes}")
        per_layer = []
        for layer in range(n_layers):
            name = get_act_name(act, layer)
            clean = clean_cache[name].to(acts[name].device, acts[name].dtype)
            per_layer.append(_reduce((clean - acts[name]) * grads[name], act, axes[1:]))
        out[act] = torch.stack(per_layer, dim=0).cpu()
    return out


def attribution_patch(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    activation_name: str,
    index_axis_names: Sequence[AxisNames],
) -> Float[Tensor, "..."]:
    """Attribution-patching estimate for one activation over the grid `index_axis_names`
    (first axis "layer"); the counterpart of `generic_activation_patch`.

    Example:
        >>> approx = attribution_patch(model, corrupted, clean_cache, metric, "z", ("layer", "head"))
    """
    return attribution_patch_many(
        model, corrupted_tokens, clean_cache, patching_metric, [(activation_name, index_axis_names)]
    )[activation_name]


def attr_patch(name: str) -> Callable[..., Tensor]:
    """`get_attr_patch_<name>`: `attribution_patch` with the activation and axes of
    `STANDARD_PATCHES[name]` (the table `get_act_patch_<name>` is made from).

    Example:
        >>> approx = attr_patch("resid_pre")(model, corrupted_tokens, clean_cache, metric)
    """
    spec = STANDARD_PATCHES[name]

    def fn(
        model: HookedTransformer,
        corrupted_tokens: Int[Tensor, "batch pos"],
        clean_cache: ActivationCache,
        patching_metric: MetricFn,
    ) -> Tensor:
        return attribution_patch(
            model, corrupted_tokens, clean_cache, patching_metric, spec.activation, spec.axes
        )

    fn.__name__ = fn.__qualname__ = f"get_attr_patch_{name}"
    fn.__doc__ = (
        f"Attribution: {spec.what}.\n\nSignature: (model, corrupted_tokens, clean_cache, "
        f"patching_metric) -> tensor indexed {list(spec.axes)}; approximates the exact patching "
        "result minus metric(corrupted)."
    )
    return fn


get_attr_patch_resid_pre = attr_patch("resid_pre")
get_attr_patch_resid_mid = attr_patch("resid_mid")
get_attr_patch_attn_out = attr_patch("attn_out")
get_attr_patch_mlp_out = attr_patch("mlp_out")
get_attr_patch_attn_head_out_by_pos = attr_patch("attn_head_out_by_pos")
get_attr_patch_attn_head_q_by_pos = attr_patch("attn_head_q_by_pos")
get_attr_patch_attn_head_k_by_pos = attr_patch("attn_head_k_by_pos")
get_attr_patch_attn_head_v_by_pos = attr_patch("attn_head_v_by_pos")
get_attr_patch_attn_head_pattern_by_pos = attr_patch("attn_head_pattern_by_pos")
get_attr_patch_attn_head_pattern_dest_src_pos = attr_patch("attn_head_pattern_dest_src_pos")
get_attr_patch_attn_head_out_all_pos = attr_patch("attn_head_out_all_pos")
get_attr_patch_attn_head_q_all_pos = attr_patch("attn_head_q_all_pos")
get_attr_patch_attn_head_k_all_pos = attr_patch("attn_head_k_all_pos")
get_attr_patch_attn_head_v_all_pos = attr_patch("attn_head_v_all_pos")
get_attr_patch_attn_head_pattern_all_pos = attr_patch("attn_head_pattern_all_pos")


def _attr_stack(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    names: Sequence[str],
) -> list[Tensor]:
    """The standard patches `names`, all from one forward + backward pass, in their order."""
    specs = [STANDARD_PATCHES[n] for n in names]
    requests = [(s.activation, s.axes) for s in specs]  # one activation per stack entry
    out = attribution_patch_many(model, corrupted_tokens, clean_cache, patching_metric, requests)
    return [out[s.activation] for s in specs]


def get_attr_patch_block_every(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
) -> Float[Tensor, "3 layer pos"]:
    """Attribution for resid_pre, attn_out and mlp_out at each [layer, pos], from one backward
    pass: [3, layer, pos] (the layout of `get_act_patch_block_every`).

    Example:
        >>> approx = get_attr_patch_block_every(model, corrupted_tokens, clean_cache, metric)
    """
    args = (model, corrupted_tokens, clean_cache, patching_metric)
    return torch.stack(_attr_stack(*args, BLOCK_EVERY), dim=0)


def get_attr_patch_attn_head_all_pos_every(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    kv_layout: Literal["pad", "repeat"] = "pad",
) -> Float[Tensor, "5 layer head"]:
    """Attribution for each head's output, q, k, v and pattern at all positions, from one backward
    pass: [5, layer, head] (GQA: k/v laid out as in patching, `kv_layout` "pad" or "repeat").

    Example:
        >>> approx = get_attr_patch_attn_head_all_pos_every(model, corrupted, clean_cache, metric)
    """
    _check_kv_layout(kv_layout)
    args = (model, corrupted_tokens, clean_cache, patching_metric)
    parts = _attr_stack(*args, HEAD_ALL_POS_EVERY)
    return _stack_heads(model, parts, 1, kv_layout)


def get_attr_patch_attn_head_by_pos_every(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    kv_layout: Literal["pad", "repeat"] = "pad",
) -> Float[Tensor, "5 layer pos head"]:
    """Attribution for each head's output, q, k, v and pattern row at each position, from one
    backward pass: [5, layer, pos, head] (the layout of `get_act_patch_attn_head_by_pos_every`).

    Example:
        >>> approx = get_attr_patch_attn_head_by_pos_every(model, corrupted, clean_cache, metric)
    """
    _check_kv_layout(kv_layout)
    args = (model, corrupted_tokens, clean_cache, patching_metric)
    *parts, pattern = _attr_stack(*args, HEAD_BY_POS_EVERY)
    by_pos = pattern.permute(0, 2, 1)  # [layer, head, dest_pos] -> [layer, pos, head]
    return _stack_heads(model, [*parts, by_pos], 2, kv_layout)
