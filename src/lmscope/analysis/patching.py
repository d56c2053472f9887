"""Activation patching with TransformerLens's names: run the corrupted input, replace one activation
by its value from the clean run, and measure a metric of the output, for every index of a grid.

`generic_activation_patch` does the work; the `get_act_patch_*` partials fix the activation, the
setter and the index axes, and return a tensor indexed like those axes ([layer, pos],
[layer, head], [layer, pos, head], ...).

Speed (numbers are identical to TransformerLens's one-forward-per-index loop): every patched run
starts at the patched layer from the cached corrupted residual stream (earlier layers are not
recomputed), and several indices of the same layer share one forward pass, each in its own slice of
the batch (`patches_per_forward`).

Grouped-query attention: `k` and `v` exist per key/value head, so their `head` axis counts
`n_key_value_heads` (patching kv head g changes the keys/values read by query heads
g*n_groups ... (g+1)*n_groups - 1); with `ungroup_grouped_query_attention` on, every query head has
its own k/v and the axis counts `n_heads`. The `*_every` stacks need one head axis: as in
TransformerLens, the k/v results fill its first `n_key_value_heads` entries and the rest are zero
(`kv_layout="pad"`); `kv_layout="repeat"` repeats them over each group instead, so entry [l, h] is
"patch the k/v that query head h reads".

Example:
    >>> _, clean_cache = model.run_with_cache(clean_tokens)
    >>> def metric(logits):                       # logit difference at the last position
    ...     return (logits[:, -1, io] - logits[:, -1, s]).mean()
    >>> grid = get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)  # [layer, pos]
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import einops
import torch
from jaxtyping import Float, Int, Shaped
from torch import Tensor
from tqdm.auto import tqdm

from lmscope.utils import get_act_name

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache
    from lmscope.model import HookedTransformer

AxisNames = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
MetricFn = Callable[[Float[Tensor, "batch pos d_vocab"]], Tensor]
PatchSetter = Callable[[Tensor, Sequence[int], Tensor], Tensor | None]

_KV_ACTIVATIONS = ("k", "v", "rot_k", "k_input", "v_input")


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> Any:
    """A pandas DataFrame of every index combination (last column fastest), as TransformerLens.

    Needs pandas; `index_grid` gives the same rows as a tensor without it.

    Example:
        >>> make_df_from_ranges([2, 3], ["layer", "pos"])      # 6 rows
    """
    import pandas as pd

    return pd.DataFrame(index_grid(column_max_ranges).tolist(), columns=list(column_names))


def index_grid(column_max_ranges: Sequence[int]) -> Int[Tensor, "rows columns"]:
    """Every combination of `range(m)` for each m, last column fastest, as a [rows, columns] tensor.

    Example:
        >>> index_grid([2, 2]).tolist()
        [[0, 0], [0, 1], [1, 0], [1, 1]]
    """
    rows = list(itertools.product(*[range(m) for m in column_max_ranges]))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), len(column_max_ranges))


def _axis_ranges(
    model: HookedTransformer, n_pos: int, activation_name: str, names: Sequence[str]
) -> list[int]:
    cfg = model.cfg
    grouped = activation_name in _KV_ACTIVATIONS and not cfg.ungroup_grouped_query_attention
    n_heads = cfg.n_key_value_heads if grouped else cfg.n_heads
    sizes = {
        "layer": cfg.n_layers,
        "pos": n_pos,
        "src_pos": n_pos,
        "dest_pos": n_pos,
        "head_index": n_heads,
        "head": n_heads,
    }
    unknown = [n for n in names if n not in sizes]
    if unknown:
        raise ValueError(f"unknown index axis names {unknown}; choose from {sorted(sizes)}")
    return [sizes[n] for n in names]


def _rows_of(index_df: Any) -> tuple[list[tuple[int, ...]], list[str] | None]:
    """Index rows from a DataFrame, a [rows, k] tensor or a sequence of sequences."""
    if hasattr(index_df, "itertuples") and hasattr(index_df, "columns"):
        rows = [tuple(int(v) for v in row) for row in index_df.itertuples(index=False)]
        return rows, [str(c) for c in index_df.columns]
    if isinstance(index_df, Tensor):
        return [tuple(int(v) for v in row) for row in index_df.reshape(len(index_df), -1)], None
    return [tuple(int(v) for v in row) for row in index_df], None


def _to_tokens(model: HookedTransformer, tokens: Any) -> Int[Tensor, "batch pos"]:
    if isinstance(tokens, (str, list)):
        tokens = model.to_tokens(tokens)
    tokens = torch.as_tensor(tokens, device=model.W_E.device)
    return tokens[None] if tokens.ndim == 1 else tokens


@torch.no_grad()
def generic_activation_patch(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisNames] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
    patches_per_forward: int | None = None,
    use_start_at_layer: bool = True,
    compile: bool | str | dict[str, Any] = False,
    verbose: bool = True,
) -> Float[Tensor, "..."] | tuple[Float[Tensor, " rows"], Any]:
    """Patch `activation_name` from `clean_cache` into the corrupted run at each index and return
    `patching_metric(patched_logits)` for each.

    Args:
        patch_setter: `fn(corrupted_activation, index, clean_activation)` that writes the clean
            values into the corrupted activation (in place; it may also return a new tensor).
            `index` is one row of the grid, e.g. (layer, pos).
        index_axis_names: e.g. ("layer", "pos"); the result has one dim per name. The first axis
            must be "layer" (it picks the hook's layer).
        index_df: instead of a full grid, explicit rows (a pandas DataFrame whose first column is
            the layer, a [rows, k] tensor or a list of tuples); the result is then flat [rows].
        patches_per_forward: how many indices share one forward pass (default: as many as fit a
            batch of about 32 sequences). The results do not depend on it.
        use_start_at_layer: start each patched run at the patched layer from the cached
            corrupted residual stream (default; exact).
        compile: run the sweep's forwards compiled (`lmscope.compiled`; True, a torch.compile
            mode or a dict of its arguments): every forward is a full one of the same shape,
            the patch a `torch.where` at each layer's hook point, so one graph serves the whole
            sweep. It needs one of this module's setters (it writes the positions the setter
            copies); another setter runs eagerly, with a CompileFallbackWarning.
        verbose: a progress bar over the patches (as TransformerLens's tqdm bar), shown after
            two seconds on a terminal or in a Jupyter kernel; False: never.

    Example:
        >>> grid = generic_activation_patch(model, corrupted, clean_cache, metric,
        ...                                 layer_pos_patch_setter, "resid_pre", ("layer", "pos"))
    """
    corrupted_tokens = _to_tokens(model, corrupted_tokens)
    batch, n_pos = corrupted_tokens.shape
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("pass index_axis_names (e.g. ('layer', 'pos')) or index_df")
        if index_axis_names[0] != "layer":
            raise ValueError(f"the first index axis must be 'layer', got {index_axis_names}")
        ranges = _axis_ranges(model, n_pos, activation_name, index_axis_names)
        rows = [tuple(r) for r in index_grid(ranges).tolist()]
        flat = False
    else:
        rows, _ = _rows_of(index_df)
        ranges, flat = [len(rows)], True

    per_forward = patches_per_forward or max(1, 32 // batch)
    results = torch.zeros(len(rows), dtype=torch.promote_types(model.cfg.dtype, torch.float32))
    by_layer: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_layer.setdefault(row[0], []).append(i)

    if compile and _compiled_sweep(
        model, corrupted_tokens, clean_cache, patching_metric, patch_setter, activation_name,
        rows, per_forward, results, compile,
    ):  # fmt: skip
        by_layer = {}  # done
    starts: dict[int, Tensor] = {}
    if use_start_at_layer and by_layer:
        names = [f"blocks.{layer}.hook_resid_pre" for layer in by_layer]
        _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=names)
        starts = {layer: corrupted_cache[f"blocks.{layer}.hook_resid_pre"] for layer in by_layer}

    bar = tqdm(
        total=sum(len(m) for m in by_layer.values()),
        desc=f"patching {activation_name}",
        unit="patch",
        disable=not (verbose and _interactive()),
        delay=2,
    )
    for layer, members in by_layer.items():
        hook_name = get_act_name(activation_name, layer)
        clean_activation = clean_cache[hook_name]
        for start in range(0, len(members), per_forward):
            chunk = members[start : start + per_forward]

            def hook(
                activation: Tensor,
                hook: Any,
                chunk: list[int] = chunk,
                clean_activation: Tensor = clean_activation,
            ) -> Tensor:
                for j, row_id in enumerate(chunk):
                    view = activation[j * batch : (j + 1) * batch]
                    out = patch_setter(view, rows[row_id], clean_activation)
                    if out is not None and out is not view:
                        view.copy_(out)
                return activation

            with model.hooks(fwd_hooks=[(hook_name, hook)]):
                if use_start_at_layer:
                    resid = starts[layer].repeat(len(chunk), 1, 1)
                    logits = model(resid, start_at_layer=layer)
                else:
                    logits = model(corrupted_tokens.repeat(len(chunk), 1))
            for j, row_id in enumerate(chunk):
                value = patching_metric(logits[j * batch : (j + 1) * batch])
                results[row_id] = float(value)
            bar.update(len(chunk))
    bar.close()
    if flat:
        return (results, index_df) if return_index_df else results
    out = results.reshape(ranges)
    return (out, index_df) if return_index_df else out


def _interactive() -> bool:
    """True on a terminal or in a Jupyter/IPython kernel (whose stderr is not a tty but shows
    progress bars), False in CI logs and redirected output."""
    if sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    ip = shell.get_ipython() if shell is not None else None
    return ip is not None and hasattr(ip, "kernel")


class _WherePatch:
    """The hook of a compiled sweep, at one activation's hook point in every layer: where
    `masks[layer]` is set, the clean activation replaces the corrupted one. The masks change in
    place between forwards, so one compiled graph serves every chunk of the sweep."""

    def __init__(self, layer_of: dict[str, int], masks: Tensor, cleans: Tensor, batch: int):
        self.layer_of, self.masks, self.cleans, self.batch = layer_of, masks, cleans, batch

    def __call__(self, activation: Tensor, hook: Any) -> Tensor:
        layer = self.layer_of[hook.name]
        rows = activation.view(-1, self.batch, *activation.shape[1:])  # [patch, batch, ...]
        return torch.where(self.masks[layer], self.cleans[layer], rows).view_as(activation)


def _compiled_sweep(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    patching_metric: MetricFn,
    patch_setter: PatchSetter,
    activation_name: str,
    rows: list[tuple[int, ...]],
    per_forward: int,
    results: Tensor,
    compile: Any,
) -> bool:
    """`generic_activation_patch`'s forwards compiled (see its `compile`); fills `results` and
    returns True, or returns False (after a warning) for a setter it cannot turn into masks."""
    import warnings

    from lmscope.compiled import CompileFallbackWarning

    if patch_setter not in _MASKABLE_SETTERS:
        warnings.warn(
            f"compile: ran eagerly: {getattr(patch_setter, '__name__', patch_setter)!r} is not "
            "one of lmscope.patching's setters (a compiled sweep writes the positions they copy)",
            CompileFallbackWarning,
            stacklevel=3,
        )
        return False
    batch = corrupted_tokens.shape[0]
    layers = sorted({row[0] for row in rows})
    names = {get_act_name(activation_name, layer): layer for layer in layers}
    cleans = torch.stack([clean_cache[name] for name in names])  # [layer, batch, ...]
    masks = torch.zeros(
        len(layers), per_forward, 1, *cleans.shape[2:], dtype=torch.bool, device=cleans.device
    )
    slot = {layer: i for i, layer in enumerate(layers)}
    ones = torch.ones(1, *cleans.shape[2:], dtype=torch.bool, device=cleans.device)
    patch = _WherePatch(
        {n: slot[n_layer] for n, n_layer in names.items()}, masks, cleans[:, None], batch
    )
    tokens = corrupted_tokens.repeat(per_forward, 1)
    hooks = [(name, patch) for name in names]
    for start in range(0, len(rows), per_forward):
        chunk = range(start, min(start + per_forward, len(rows)))
        masks.zero_()
        for j, row_id in enumerate(chunk):
            view = masks[slot[rows[row_id][0]], j]
            out = patch_setter(view, rows[row_id], ones)
            if out is not None and out is not view:
                view.copy_(out)
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks, compile=compile)
        for j, row_id in enumerate(chunk):
            results[row_id] = float(patching_metric(logits[j * batch : (j + 1) * batch]))
    return True


# -- patch setters (TransformerLens names) --------------------------------------------------------
# (any dtype: a compiled sweep runs them on boolean masks to learn the positions they copy)
def layer_pos_patch_setter(
    corrupted_activation: Shaped[Tensor, "batch pos ..."],
    index: Sequence[int],
    clean_activation: Shaped[Tensor, "batch pos ..."],
) -> Tensor:
    """Patch one position of a [batch, pos, ...] activation; index = (layer, pos).

    Example:
        >>> layer_pos_patch_setter(corrupted_resid, (3, 5), clean_resid)  # position 5
    """
    _, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(
    corrupted_activation: Shaped[Tensor, "batch pos head d"],
    index: Sequence[int],
    clean_activation: Shaped[Tensor, "batch pos head d"],
) -> Tensor:
    """Patch one head at one position of a [batch, pos, head, d] activation; index =
    (layer, pos, head).

    Example:
        >>> layer_pos_head_vector_patch_setter(corrupted_z, (3, 5, 2), clean_z)
    """
    _, pos, head = index
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(
    corrupted_activation: Shaped[Tensor, "batch pos head d"],
    index: Sequence[int],
    clean_activation: Shaped[Tensor, "batch pos head d"],
) -> Tensor:
    """Patch one head at every position of a [batch, pos, head, d] activation; index =
    (layer, head).

    Example:
        >>> layer_head_vector_patch_setter(corrupted_z, (3, 2), clean_z)  # head 2
    """
    _, head = index
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(
    corrupted_activation: Shaped[Tensor, "batch head dest src"],
    index: Sequence[int],
    clean_activation: Shaped[Tensor, "batch head dest src"],
) -> Tensor:
    """Patch one head's whole attention pattern; index = (layer, head).

    Example:
        >>> layer_head_pattern_patch_setter(corrupted_pattern, (3, 2), clean_pattern)
    """
    _, head = index
    corrupted_activation[:, head] = clean_activation[:, head]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(
    corrupted_activation: Shaped[Tensor, "batch head dest src"],
    index: Sequence[int],
    clean_activation: Shaped[Tensor, "batch head dest src"],
) -> Tensor:
    """Patch one head's attention row for one destination; index = (layer, head, dest_pos).

    Example:
        >>> layer_head_pos_pattern_patch_setter(corrupted_pattern, (3, 2, 7), clean_pattern)
    """
    _, head, dest = index
    corrupted_activation[:, head, dest] = clean_activation[:, head, dest]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted_activation: Shaped[Tensor, "batch head dest src"],
    index: Sequence[int],
    clean_activation: Shaped[Tensor, "batch head dest src"],
) -> Tensor:
    """Patch one attention weight; index = (layer, head, dest_pos, src_pos).

    Example:
        >>> layer_head_dest_src_pos_pattern_patch_setter(corrupted, (3, 2, 7, 4), clean)
    """
    _, head, dest, src = index
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


# setters that copy the clean values at their index, which a compiled sweep turns into masks
_MASKABLE_SETTERS = (
    layer_pos_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_head_vector_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_dest_src_pos_pattern_patch_setter,
)


# -- the standard patches ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StandardPatch:
    """One of TransformerLens's standard patches: which activation, over which index grid, with
    which setter. `STANDARD_PATCHES` is the one table of them: `get_act_patch_<name>` here and
    `get_attr_patch_<name>` in `lmscope.analysis.attribution` are both made from it.

    Example:
        >>> STANDARD_PATCHES["attn_head_out_by_pos"].axes
        ('layer', 'pos', 'head')
    """

    name: str
    activation: str
    axes: tuple[AxisNames, ...]
    setter: PatchSetter
    what: str

    @property
    def shape(self) -> str:
        """The result's index axes as the docstrings show them, e.g. "[layer, pos, kv_head]".

        Example:
            >>> STANDARD_PATCHES["attn_head_k_all_pos"].shape
            '[layer, kv_head]'
        """
        kv = self.activation in _KV_ACTIVATIONS
        shown = {"head_index": "head", "head": "kv_head" if kv else "head"}
        return "[" + ", ".join(shown.get(a, a) for a in self.axes) + "]"


_POS: tuple[AxisNames, ...] = ("layer", "pos")
_HEAD_POS: tuple[AxisNames, ...] = ("layer", "pos", "head")
_HEAD: tuple[AxisNames, ...] = ("layer", "head")
STANDARD_PATCHES: dict[str, StandardPatch] = {
    p.name: p
    for p in (
        StandardPatch("resid_pre", "resid_pre", _POS, layer_pos_patch_setter, "resid_pre"),
        StandardPatch("resid_mid", "resid_mid", _POS, layer_pos_patch_setter, "resid_mid"),
        StandardPatch("attn_out", "attn_out", _POS, layer_pos_patch_setter, "attn_out"),
        StandardPatch("mlp_out", "mlp_out", _POS, layer_pos_patch_setter, "mlp_out"),
        StandardPatch(
            "attn_head_out_by_pos", "z", _HEAD_POS, layer_pos_head_vector_patch_setter,
            "each head's output (hook_z) at each position",
        ),
        StandardPatch(
            "attn_head_q_by_pos", "q", _HEAD_POS, layer_pos_head_vector_patch_setter,
            "each head's query at each position",
        ),
        StandardPatch(
            "attn_head_k_by_pos", "k", _HEAD_POS, layer_pos_head_vector_patch_setter,
            "each key/value head's key at each position",
        ),
        StandardPatch(
            "attn_head_v_by_pos", "v", _HEAD_POS, layer_pos_head_vector_patch_setter,
            "each key/value head's value at each position",
        ),
        StandardPatch(
            "attn_head_pattern_by_pos", "pattern", ("layer", "head_index", "dest_pos"),
            layer_head_pos_pattern_patch_setter,
            "each head's attention row for each destination",
        ),
        StandardPatch(
            "attn_head_pattern_dest_src_pos", "pattern",
            ("layer", "head_index", "dest_pos", "src_pos"),
            layer_head_dest_src_pos_pattern_patch_setter, "each single attention weight",
        ),
        StandardPatch(
            "attn_head_out_all_pos", "z", _HEAD, layer_head_vector_patch_setter,
            "each head's output (hook_z) at all positions",
        ),
        StandardPatch(
            "attn_head_q_all_pos", "q", _HEAD, layer_head_vector_patch_setter,
            "each head's queries at all positions",
        ),
        StandardPatch(
            "attn_head_k_all_pos", "k", _HEAD, layer_head_vector_patch_setter,
            "each key/value head's keys at all positions",
        ),
        StandardPatch(
            "attn_head_v_all_pos", "v", _HEAD, layer_head_vector_patch_setter,
            "each key/value head's values at all positions",
        ),
        StandardPatch(
            "attn_head_pattern_all_pos", "pattern", ("layer", "head_index"),
            layer_head_pattern_patch_setter, "each head's whole attention pattern",
        ),
    )
}  # fmt: skip
# the *_every stacks, in their order (shared by patching and attribution)
BLOCK_EVERY = ("resid_pre", "attn_out", "mlp_out")
HEAD_ALL_POS_EVERY = tuple(f"attn_head_{a}_all_pos" for a in ("out", "q", "k", "v", "pattern"))
HEAD_BY_POS_EVERY = tuple(f"attn_head_{a}_by_pos" for a in ("out", "q", "k", "v", "pattern"))


def act_patch(name: str) -> Callable[..., Tensor | tuple[Tensor, Any]]:
    """`get_act_patch_<name>`: `generic_activation_patch` with the activation, setter and axes of
    `STANDARD_PATCHES[name]`.

    Example:
        >>> grid = act_patch("resid_pre")(model, corrupted_tokens, clean_cache, metric)
    """
    spec = STANDARD_PATCHES[name]
    fn = partial(
        generic_activation_patch,
        patch_setter=spec.setter,
        activation_name=spec.activation,
        index_axis_names=spec.axes,
    )
    fn.__doc__ = (
        f"Patch {spec.what}: {spec.shape}.\n\n"
        "Signature: (model, corrupted_tokens, clean_cache, patching_metric) -> tensor indexed "
        f"{list(spec.axes)} (see `generic_activation_patch` for the keyword options)."
    )
    return fn


get_act_patch_resid_pre = act_patch("resid_pre")
get_act_patch_resid_mid = act_patch("resid_mid")
get_act_patch_attn_out = act_patch("attn_out")
get_act_patch_mlp_out = act_patch("mlp_out")
get_act_patch_attn_head_out_by_pos = act_patch("attn_head_out_by_pos")
get_act_patch_attn_head_q_by_pos = act_patch("attn_head_q_by_pos")
get_act_patch_attn_head_k_by_pos = act_patch("attn_head_k_by_pos")
get_act_patch_attn_head_v_by_pos = act_patch("attn_head_v_by_pos")
get_act_patch_attn_head_pattern_by_pos = act_patch("attn_head_pattern_by_pos")
get_act_patch_attn_head_pattern_dest_src_pos = act_patch("attn_head_pattern_dest_src_pos")
get_act_patch_attn_head_out_all_pos = act_patch("attn_head_out_all_pos")
get_act_patch_attn_head_q_all_pos = act_patch("attn_head_q_all_pos")
get_act_patch_attn_head_k_all_pos = act_patch("attn_head_k_all_pos")
get_act_patch_attn_head_v_all_pos = act_patch("attn_head_v_all_pos")
get_act_patch_attn_head_pattern_all_pos = act_patch("attn_head_pattern_all_pos")


def _check_kv_layout(kv_layout: str) -> None:
    if kv_layout not in ("pad", "repeat"):
        raise ValueError(f"kv_layout must be 'pad' or 'repeat', got {kv_layout!r}")


def _kv_to_heads(
    model: HookedTransformer, t: Tensor, head_dim: int, kv_layout: Literal["pad", "repeat"]
) -> Tensor:
    """A k/v result with a kv-head axis on the `n_heads` axis of the `*_every` stacks: zero-padded
    after the kv heads ("pad", TransformerLens's layout) or repeated over each group ("repeat")."""
    missing = model.cfg.n_heads - t.shape[head_dim]
    if missing == 0:
        return t
    if kv_layout == "repeat":
        return t.repeat_interleave(model.cfg.n_heads // t.shape[head_dim], dim=head_dim)
    pad = [0, 0] * (t.ndim - 1 - head_dim) + [0, missing]
    return torch.nn.functional.pad(t, pad)


def _stack_heads(
    model: HookedTransformer,
    parts: Sequence[Tensor],
    head_dim: int,
    kv_layout: Literal["pad", "repeat"],
) -> Tensor:
    """The 5 results (out, q, k, v, pattern) of a head `*_every` stack, k/v put on the `n_heads`
    axis `head_dim` (see `_kv_to_heads`), stacked on a new first dim."""
    out, q, k, v, pattern = parts
    k, v = (_kv_to_heads(model, t, head_dim, kv_layout) for t in (k, v))
    return torch.stack([out, q, k, v, pattern], dim=0)


def get_act_patch_block_every(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    metric: MetricFn,
    **kwargs: Any,
) -> Float[Tensor, "3 layer pos"]:
    """resid_pre, attn_out and mlp_out patched at each [layer, pos], stacked: [3, layer, pos].

    Example:
        >>> every = get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric)
    """
    args = (model, corrupted_tokens, clean_cache, metric)
    return torch.stack([act_patch(name)(*args, **kwargs) for name in BLOCK_EVERY], dim=0)


def get_act_patch_attn_head_all_pos_every(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    metric: MetricFn,
    kv_layout: Literal["pad", "repeat"] = "pad",
    **kwargs: Any,
) -> Float[Tensor, "5 layer head"]:
    """Each head's output, query, key, value and pattern patched at all positions:
    [5, layer, head] (GQA: k/v in the first n_key_value_heads entries, zeros after, as
    TransformerLens; `kv_layout="repeat"` repeats them over each group, see the module docstring).

    Example:
        >>> every = get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric)
    """
    _check_kv_layout(kv_layout)
    args = (model, corrupted_tokens, clean_cache, metric)
    parts = [act_patch(n)(*args, **kwargs) for n in HEAD_ALL_POS_EVERY]
    return _stack_heads(model, parts, 1, kv_layout)


def get_act_patch_attn_head_by_pos_every(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: ActivationCache,
    metric: MetricFn,
    kv_layout: Literal["pad", "repeat"] = "pad",
    **kwargs: Any,
) -> Float[Tensor, "5 layer pos head"]:
    """Each head's output, query, key, value and pattern row patched at each position:
    [5, layer, pos, head] (pattern by destination position; GQA k/v laid out as in
    `get_act_patch_attn_head_all_pos_every`).

    Example:
        >>> every = get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric)
    """
    _check_kv_layout(kv_layout)
    args = (model, corrupted_tokens, clean_cache, metric)
    *parts, pattern = [act_patch(n)(*args, **kwargs) for n in HEAD_BY_POS_EVERY]
    by_pos = einops.rearrange(pattern, "layer head pos -> layer pos head")
    return _stack_heads(model, [*parts, by_pos], 2, kv_layout)
