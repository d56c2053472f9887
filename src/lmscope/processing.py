"""Weight processing with TransformerLens semantics: the model computes the same log-probabilities,
but its weights are easier to read.

- `fold_ln`: move each norm's weight (and bias) into the layer that reads it; norms become
  LNPre / RMSPre. For LayerNorm, reading weights are also centred (their input is centred).
- `center_writing_weights`: remove the mean over d_model from everything that writes to the
  residual stream (only meaningful, and only done, when every reader is a LayerNorm).
- `center_unembed`: remove the mean over the vocabulary from W_U and b_U (softmax ignores it).
- `fold_value_biases`: b_V contributes a constant through W_O (patterns sum to 1): fold it into b_O.
- `refactor_factored_attn_matrices` (off by default): put each head's QK and OV in SVD form.

Every step but the refactoring touches one unit at a time (the embeddings, one block, or the
unembedding with the final norm), so a step runs unit by unit, and a half-precision unit is
processed in float32 and written back once (`staged_params`): the result equals float32
processing followed by one cast, while only one unit is ever held in float32. Loading uses the
same units to read and process a checkpoint block by block (`lmscope.loading.load_weights`).

Example:
    >>> model = HookedTransformer.from_pretrained_no_processing("gpt2")
    >>> process_weights(model, fold_ln=True, center_writing_weights=True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

if TYPE_CHECKING:
    from lmscope.config import HookedTransformerConfig
    from lmscope.model import HookedTransformer

STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


@dataclass(frozen=True)
class Unit:
    """A part of the model that weight processing rewrites on its own: the embeddings, one block,
    or the unembedding with the final norm. `prefixes` are its weights' `named_weights` names."""

    key: str | int
    prefixes: tuple[str, ...]
    modules: tuple[nn.Module, ...]

    def owns(self, name: str) -> bool:
        """Whether the `named_weights` name `name` belongs to this unit."""
        return name.startswith(self.prefixes)


def processing_units(model: HookedTransformer) -> list[Unit]:
    """The embeddings, each block, then the unembedding: every step of `process_weights` touches
    one unit at a time, so the units can be processed (and loaded) one after another.

    Example:
        >>> [unit.key for unit in processing_units(model)]
        ['embed', 0, 1, 'unembed']
    """
    embed = [m for m in ("embed", "pos_embed", "ln_embed") if hasattr(model, m)]
    unembed = [m for m in ("ln_final", "unembed") if hasattr(model, m)]
    units = [Unit("embed", tuple(f"{m}." for m in embed), tuple(getattr(model, m) for m in embed))]
    units += [Unit(i, (f"blocks.{i}.",), (block,)) for i, block in enumerate(model.blocks)]
    units.append(
        Unit("unembed", tuple(f"{m}." for m in unembed), tuple(getattr(model, m) for m in unembed))
    )
    return units


def plan_steps(cfg: HookedTransformerConfig, **requested: bool) -> dict[str, bool]:
    """For each requested step (a `STEPS` name given True), whether it applies to a model of
    `cfg`, decided before any weight changes (the recorded `cfg.processing` entries)."""
    applies = {
        "fold_ln": cfg.norm_placement != "post_residual",
        "center_writing_weights": cfg.normalization_type in ("LN", "LNPre")
        and cfg.norm_placement == "pre",
        "center_unembed": cfg.output_logits_soft_cap <= 0,
        # (attention sinks take a share of each row, so pattern rows no longer sum to 1)
        # (and a value norm acts after the bias; layers that reuse another's values read its b_V)
        "fold_value_biases": cfg.clip_qkv is None
        and not cfg.attn_sinks
        and not cfg.kv_lora_rank
        and not cfg.use_v_norm
        and not cfg.kv_source_layers
        # (an output gate scales b_V's share per token; linear-attention layers have no b_V)
        and not cfg.attn_output_gate
        and "linear" not in cfg.layer_types,
    }
    unknown = set(requested) - set(STEPS)
    if unknown:
        raise TypeError(f"unknown processing steps {sorted(unknown)}; the steps are {STEPS}")
    return {step: applies[step] for step in STEPS if requested.get(step)}


def _fold_into(
    norm_w: Tensor, norm_b: Tensor | None, W: Tensor, b: Tensor | None, center: bool
) -> None:
    """Fold `x * norm_w + norm_b` into the reader `x @ W + b` (W: [..., d_model, out])."""
    if norm_b is not None:
        if b is None:
            raise ValueError("cannot fold a norm bias into a reader without a bias (an MoE router)")
        b += einops.einsum(norm_b, W, "dm, ... dm out -> ... out")
    W *= norm_w[:, None]
    if center:
        W -= W.mean(dim=-2, keepdim=True)


def _fold_norm(
    cfg: HookedTransformerConfig,
    owner: nn.Module,
    name: str,
    readers: list[tuple[Tensor, Tensor | None]],
) -> None:
    """Fold the norm `owner.<name>` into its `readers` and replace it by its weightless form."""
    norm = getattr(owner, name)
    if not _has_weights(norm):
        return  # no norm here (post-norm-only blocks), or already weightless
    is_ln = cfg.normalization_type == "LN"
    weight = norm.applied_weight()  # Gemma's `1 + w` in float32, as the norm computes it
    for W, b in readers:
        _fold_into(weight, getattr(norm, "b", None), W, b, center=is_ln)
    _make_weightless(cfg, owner, name)


def _has_weights(norm: nn.Module) -> bool:
    return isinstance(norm, (LayerNorm, RMSNorm)) and norm.w is not None


def _make_weightless(cfg: HookedTransformerConfig, owner: nn.Module, name: str) -> None:
    """Replace the norm `owner.<name>` by its weightless form (it holds no tensors to place)."""
    setattr(owner, name, (LayerNormPre if cfg.normalization_type == "LN" else RMSNormPre)(cfg))


def _block_norms(
    cfg: HookedTransformerConfig, block: nn.Module
) -> list[tuple[str, Callable[[], list[tuple[Tensor, Tensor | None]]]]]:
    """The norms fold_ln folds in `block`, each with its readers' weights (W, b) to fold into."""
    _, attn = block.mixer()  # attention, or a linear-attention layer
    norms = [("ln1", attn.input_weights)]
    if not cfg.attn_only:
        norms.append(("ln2", block.mlp.input_weights))
    if hasattr(block, "moe"):  # experts beside the MLP read their own pre-norm (Gemma 4)
        norms.append(("ln2_moe", block.moe.input_weights))
    return norms


def _center(writers: list[Tensor]) -> None:
    """Remove each writer's mean over d_model (its last dimension), in place."""
    for w in writers:
        w -= w.mean(dim=-1, keepdim=True)


def _folds(cfg: HookedTransformerConfig, steps: dict[str, bool]) -> bool:
    return steps.get("fold_ln", False) and cfg.normalization_type in ("LN", "RMS")


def unit_has_work(model: HookedTransformer, unit: Unit, steps: dict[str, bool]) -> bool:
    """Whether `process_unit` changes anything in `unit` (the embeddings only need work when
    they are centred; a block or the unembedding whenever a step applies)."""
    if unit.key == "embed":
        return bool(steps.get("center_writing_weights"))
    if unit.key == "unembed":
        folds = _folds(model.cfg, steps) and hasattr(model, "ln_final")
        return folds or bool(steps.get("center_unembed"))
    return any(steps.values())


@torch.no_grad()
def process_unit(model: HookedTransformer, unit: Unit, steps: dict[str, bool]) -> None:
    """Apply the `steps` (from `plan_steps`) that touch `unit`, in `process_weights`' order.
    Units are independent: processing them one by one equals processing the whole model.

    Example:
        >>> steps = plan_steps(model.cfg, fold_ln=True, center_unembed=True)
        >>> for unit in processing_units(model):
        ...     process_unit(model, unit, steps)
        >>> finish_processing(model, steps)
    """
    cfg = model.cfg
    if not unit_has_work(model, unit, steps):
        return
    if unit.key == "embed":
        pos = [model.pos_embed.W_pos] if hasattr(model, "pos_embed") else []
        _center([model.embed.W_E, *pos])
    elif unit.key == "unembed":
        if _folds(cfg, steps) and hasattr(model, "ln_final"):
            _fold_norm(cfg, model, "ln_final", [(model.unembed.W_U, model.unembed.b_U)])
        if steps.get("center_unembed"):
            W_U, b_U = model.unembed.W_U, model.unembed.b_U
            W_U -= W_U.mean(dim=-1, keepdim=True)
            b_U -= b_U.mean()
    else:
        _process_block(cfg, model.blocks[unit.key], steps)


def _process_block(cfg: HookedTransformerConfig, block: nn.Module, steps: dict[str, bool]) -> None:
    """fold_ln, centring and value-bias folding of one block."""
    _, attn = block.mixer()  # attention, or a linear-attention layer
    if _folds(cfg, steps):
        for name, readers in _block_norms(cfg, block):
            _fold_norm(cfg, block, name, readers())
    if steps.get("center_writing_weights"):
        mlp = [] if cfg.attn_only else block.mlp.output_weights()
        _center([attn.W_O, attn.b_O, *mlp])
    if steps.get("fold_value_biases"):
        groups = cfg.n_groups
        b_V = attn._b_V.repeat_interleave(groups, dim=0) if groups > 1 else attn._b_V
        attn.b_O += _value_bias_output(b_V, attn.W_O)
        attn._b_V.zero_()


def _value_bias_output(
    b_V: Float[Tensor, "head d_head"], W_O: Float[Tensor, "head d_head d_model"]
) -> Float[Tensor, " d_model"]:
    """sum_h b_V[h] @ W_O[h], as a product summed over the heads rather than a matrix product:
    its rounding does not depend on where W_O lies in memory (BLAS's does, and a loaded W_O may
    be a map of the checkpoint at any offset), so a model processes to the same bits however its
    file is laid out."""
    return (b_V[..., None] * W_O).sum(dim=(0, 1))


def finish_processing(model: HookedTransformer, steps: dict[str, bool]) -> None:
    """After every unit: the config names the weightless norms (they hold no tensors, so no
    device), their hook points join the hook registry, and `cfg.processing` records the
    steps."""
    cfg = model.cfg
    if _folds(cfg, steps):
        cfg.normalization_type = "LNPre" if cfg.normalization_type == "LN" else "RMSPre"
        model.setup()
    cfg.processing.update(steps)


def processed_structure(model: HookedTransformer, steps: dict[str, bool]) -> None:
    """Make `model` look as processing with `steps` leaves it, without touching a weight: the
    norms fold_ln folds become weightless, then `finish_processing`. For loading weights that
    were processed before (`lmscope.loading.processed_cache`): the model's parameters are then
    exactly those of a model processed with `steps`.

    Example:
        >>> processed_structure(model, plan_steps(model.cfg, fold_ln=True))
        >>> model.cfg.normalization_type
        'RMSPre'
    """
    cfg = model.cfg
    if _folds(cfg, steps):
        if hasattr(model, "ln_final") and _has_weights(model.ln_final):
            _make_weightless(cfg, model, "ln_final")
        for block in model.blocks:
            for name, _ in _block_norms(cfg, block):
                if _has_weights(getattr(block, name)):
                    _make_weightless(cfg, block, name)
    finish_processing(model, steps)


Staging = dict[tuple[tuple[int, ...], int, torch.dtype], Tensor]


def staging_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype weights of `dtype` are processed in: float32 for half precision and float32,
    float64 for float64.

    Example:
        >>> staging_dtype(torch.bfloat16)
        torch.float32
    """
    return torch.promote_types(dtype, torch.float32)


class StagedParams:
    """The parameters `staged_params` gave working memory, and which of them the body wrote."""

    def __init__(self) -> None:
        self.params: list[tuple[nn.Parameter, Tensor]] = []  # (parameter, its own memory)
        self._versions: dict[int, int] | None = None
        self._skip: set[int] = set()

    def mark(self) -> None:
        """Remember the parameters' versions: `unwritten` reports those not written after this."""
        self._versions = {id(p): p._version for p, _ in self.params}

    def unwritten(self) -> list[nn.Parameter]:
        """The parameters no in-place operation wrote since `mark`. They get their own memory
        back unfilled (not copied from the working memory): the caller fills them."""
        assert self._versions is not None, "mark() first"
        found = [p for p, _ in self.params if p._version == self._versions[id(p)]]
        self._skip = {id(p) for p in found}
        return found


@contextmanager
def staged_params(
    modules: tuple[nn.Module, ...],
    staging: Staging,
    fill: bool = True,
    every: bool = False,
) -> Iterator[StagedParams]:
    """Give the half-precision parameters of `modules` (with `every`, all their parameters)
    working memory in float32 (float64 for float64 ones) for the body, then write them back in
    their own dtype (one rounding) into their own memory. `staging` keeps the working buffers for
    the next unit of the same shapes, so processing a half-precision model holds one unit in
    float32, never the model. With `fill=False` only vectors (biases, norm weights) start from
    their values and matrices start uninitialised, for the body to fill (a checkpoint load reads
    every matrix).

    Example:
        >>> with staged_params((model.blocks[0],), {}):
        ...     model.blocks[0].attn.W_Q.dtype  # torch.float32 inside, bfloat16 after
    """
    staged = StagedParams()
    params = {id(p): p for m in modules for p in m.parameters()}
    seen: dict[tuple[int, ...], int] = {}
    for param in params.values():
        shape, dtype = tuple(param.shape), staging_dtype(param.dtype)
        if not (every or param.dtype != dtype):
            continue
        key = (shape, seen.setdefault(shape, 0), dtype)
        seen[shape] += 1
        buffer = staging.get(key)
        if buffer is None or buffer.device != param.device:
            buffer = staging[key] = torch.empty(shape, dtype=dtype, device=param.device)
        if fill or param.ndim <= 1:
            buffer.copy_(param.data)
        staged.params.append((param, param.data))
        param.data = buffer
    try:
        yield staged
    finally:
        with torch.no_grad():
            for param, own in staged.params:
                if id(param) not in staged._skip:
                    own.copy_(param.data)
                param.data = own


def _run(model: HookedTransformer, **requested: bool) -> dict[str, bool]:
    """Plan the requested steps, apply them unit by unit in float32, and record them."""
    steps = plan_steps(model.cfg, **requested)
    staging: Staging = {}
    for unit in processing_units(model):
        with staged_params(unit.modules, staging):
            process_unit(model, unit, steps)
    finish_processing(model, steps)
    return steps


def fold_layer_norm(model: HookedTransformer) -> bool:
    """Fold every norm's weights into its readers; the norms become LNPre/RMSPre. Returns False
    (and does nothing) for `norm_placement="post_residual"`, whose norms write the residual."""
    return _run(model, fold_ln=True)["fold_ln"]


def center_writing_weights(model: HookedTransformer) -> bool:
    """Centre W_E, W_pos, W_O, b_O, W_out, b_out over d_model. Returns False (and does nothing)
    when the model does not use LayerNorm, since only a centring norm makes this exact."""
    return _run(model, center_writing_weights=True)["center_writing_weights"]


def center_unembed(model: HookedTransformer) -> bool:
    """Subtract the mean over the vocabulary from W_U and b_U (log-probs unchanged). Returns False
    (and does nothing) under an output soft-cap, whose tanh would not ignore the shift."""
    return _run(model, center_unembed=True)["center_unembed"]


def fold_value_biases(model: HookedTransformer) -> bool:
    """b_O += sum_h b_V[h] @ W_O[h]; b_V = 0 (exact: each attention pattern row sums to 1).
    Returns False (and does nothing) under `clip_qkv`, which clamps v after its bias, and with
    attention sinks, whose rows sum to less than 1."""
    return _run(model, fold_value_biases=True)["fold_value_biases"]


@torch.no_grad()
def refactor_factored_attn_matrices(model: HookedTransformer) -> None:
    """Put each head's QK and OV circuits in SVD form, keeping every logit (TransformerLens's
    `refactor_factored_attn_matrices`).

    QK: with the biases appended as an extra input row, `[W_Q; b_Q] [W_K; b_K]^T = U S V^T` and the
    new factors are `U sqrt(S)` and `V sqrt(S)`, so queries and keys live in the circuit's singular
    basis. OV: `b_V W_O` is folded into `b_O` (patterns sum to one), `b_V = 0`, and
    `W_V W_O = U S V^T` gives `W_V = U sqrt(S)`, `W_O = sqrt(S) V^T`.

    Not possible (and refused) with rotary positions (the QK form depends on the positions),
    grouped-query attention (heads share W_K and W_V, so each head's basis cannot be chosen alone),
    q/k norms or clip_qkv (they act in the basis the refactoring changes).

    Example:
        >>> model = HookedTransformer.from_pretrained("gpt2", refactor_factored_attn_matrices=True)
    """
    from lmscope.factored_matrix import FactoredMatrix

    cfg = model.cfg
    if cfg.positional_embedding_type == "rotary":
        raise ValueError(
            "refactor_factored_attn_matrices needs learned (not rotary) positions: with rotary "
            "embeddings a head's QK form depends on the query and key positions"
        )
    if cfg.n_groups > 1:
        raise ValueError(
            "refactor_factored_attn_matrices cannot refactor grouped-query attention: query heads "
            "share W_K and W_V, so no head's basis can be changed alone"
        )
    if cfg.use_qk_norm or cfg.clip_qkv is not None:
        raise ValueError(
            "refactor_factored_attn_matrices cannot refactor a model with q/k norms or clip_qkv: "
            "they act on q, k (and v) in the basis the refactoring would change"
        )
    for block in model.blocks:
        attn = block.attn
        W_Q_eff = torch.cat([attn.W_Q, attn.b_Q[:, None, :]], dim=1)  # [head, d_model + 1, d_head]
        W_K_eff = torch.cat([attn._W_K, attn._b_K[:, None, :]], dim=1)
        Q_new, K_new_T = FactoredMatrix(W_Q_eff, W_K_eff.transpose(-1, -2)).make_even().pair
        K_new = K_new_T.transpose(-1, -2)
        attn.W_Q.copy_(Q_new[:, :-1])
        attn.b_Q.copy_(Q_new[:, -1])
        attn._W_K.copy_(K_new[:, :-1])
        attn._b_K.copy_(K_new[:, -1])

        attn.b_O += _value_bias_output(attn._b_V, attn.W_O)
        attn._b_V.zero_()
        U, S, V = FactoredMatrix(attn._W_V.clone(), attn.W_O.clone()).svd()
        root = S.sqrt()[:, None, :]
        attn._W_V.copy_(U * root)
        attn.W_O.copy_((V * root).transpose(-1, -2))
    cfg.processing["refactor_factored_attn_matrices"] = True


_refactor = refactor_factored_attn_matrices


def process_weights(
    model: HookedTransformer,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> HookedTransformer:
    """Apply the TransformerLens weight processing steps in their order, one unit (embeddings,
    block, unembedding) at a time; records them in cfg."""
    if model.cfg.processing.get("fold_ln") and fold_ln:
        raise ValueError("this model's layer norms are already folded")
    _run(
        model,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    if refactor_factored_attn_matrices:
        _refactor(model)
    return model
