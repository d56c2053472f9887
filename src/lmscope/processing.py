"""Weight processing with TransformerLens semantics: the model computes the same log-probabilities,
but its weights are easier to read.

- `fold_ln`: move each norm's weight (and bias) into the layer that reads it; norms become
  LNPre / RMSPre. For LayerNorm, reading weights are also centred (their input is centred).
- `center_writing_weights`: remove the mean over d_model from everything that writes to the
  residual stream (only meaningful, and only done, when every reader is a LayerNorm).
- `center_unembed`: remove the mean over the vocabulary from W_U and b_U (softmax ignores it).
- `fold_value_biases`: b_V contributes a constant through W_O (patterns sum to 1): fold it into b_O.
- `refactor_factored_attn_matrices` (off by default): put each head's QK and OV in SVD form.

Example:
    >>> model = HookedTransformer.from_pretrained_no_processing("gpt2")
    >>> process_weights(model, fold_ln=True, center_writing_weights=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import einops
import torch
from torch import Tensor

from lmscope.components.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer


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


@torch.no_grad()
def fold_layer_norm(model: HookedTransformer) -> bool:
    """Fold every norm's weights into its readers; the norms become LNPre/RMSPre. Returns False
    (and does nothing) for `norm_placement="post_residual"`, whose norms write the residual."""
    cfg = model.cfg
    if cfg.norm_placement == "post_residual":
        return False
    if cfg.normalization_type not in ("LN", "RMS"):
        return True
    is_ln = cfg.normalization_type == "LN"
    pre = LayerNormPre if is_ln else RMSNormPre

    def fold(
        owner: torch.nn.Module, name: str, readers: list[tuple[Tensor, Tensor | None]]
    ) -> None:
        norm = getattr(owner, name)
        if not isinstance(norm, (LayerNorm, RMSNorm)) or norm.w is None:
            return  # no norm here (post-norm-only blocks), or already weightless
        for W, b in readers:
            _fold_into(norm.w, getattr(norm, "b", None), W, b, center=is_ln)
        setattr(owner, name, pre(cfg))

    for block in model.blocks:
        attn = block.attn
        fold(block, "ln1", [(attn.W_Q, attn.b_Q), (attn.W_K, attn.b_K), (attn.W_V, attn.b_V)])
        if not cfg.attn_only:
            fold(block, "ln2", block.mlp.input_weights())
    if hasattr(model, "ln_final"):
        fold(model, "ln_final", [(model.unembed.W_U, model.unembed.b_U)])
    cfg.normalization_type = "LNPre" if is_ln else "RMSPre"
    model.to(model.W_E.device)
    model.setup()
    return True


@torch.no_grad()
def center_writing_weights(model: HookedTransformer) -> bool:
    """Centre W_E, W_pos, W_O, b_O, W_out, b_out over d_model. Returns False (and does nothing)
    when the model does not use LayerNorm, since only a centring norm makes this exact."""
    if model.cfg.normalization_type not in ("LN", "LNPre") or model.cfg.norm_placement != "pre":
        return False
    writers = [model.embed.W_E]
    if hasattr(model, "pos_embed"):
        writers.append(model.pos_embed.W_pos)
    for block in model.blocks:
        writers += [block.attn.W_O, block.attn.b_O]
        if not model.cfg.attn_only:
            writers += [block.mlp.W_out, block.mlp.b_out]
    for w in writers:
        w -= w.mean(dim=-1, keepdim=True)
    return True


@torch.no_grad()
def center_unembed(model: HookedTransformer) -> bool:
    """Subtract the mean over the vocabulary from W_U and b_U (log-probs unchanged). Returns False
    (and does nothing) under an output soft-cap, whose tanh would not ignore the shift."""
    if model.cfg.output_logits_soft_cap > 0:
        return False
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    W_U -= W_U.mean(dim=-1, keepdim=True)
    b_U -= b_U.mean()
    return True


@torch.no_grad()
def fold_value_biases(model: HookedTransformer) -> bool:
    """b_O += sum_h b_V[h] @ W_O[h]; b_V = 0 (exact: each attention pattern row sums to 1).
    Returns False (and does nothing) under `clip_qkv`, which clamps v after its bias."""
    if model.cfg.clip_qkv is not None:
        return False
    groups = model.cfg.n_groups
    for block in model.blocks:
        attn = block.attn
        b_V = attn.b_V.repeat_interleave(groups, dim=0) if groups > 1 else attn.b_V
        attn.b_O += einops.einsum(b_V, attn.W_O, "h dh, h dh dm -> dm")
        attn.b_V.zero_()
    return True


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
        W_K_eff = torch.cat([attn.W_K, attn.b_K[:, None, :]], dim=1)
        Q_new, K_new_T = FactoredMatrix(W_Q_eff, W_K_eff.transpose(-1, -2)).make_even().pair
        K_new = K_new_T.transpose(-1, -2)
        attn.W_Q.copy_(Q_new[:, :-1])
        attn.b_Q.copy_(Q_new[:, -1])
        attn.W_K.copy_(K_new[:, :-1])
        attn.b_K.copy_(K_new[:, -1])

        attn.b_O += einops.einsum(attn.b_V, attn.W_O, "h dh, h dh dm -> dm")
        attn.b_V.zero_()
        U, S, V = FactoredMatrix(attn.W_V.clone(), attn.W_O.clone()).svd()
        root = S.sqrt()[:, None, :]
        attn.W_V.copy_(U * root)
        attn.W_O.copy_((V * root).transpose(-1, -2))
    cfg.processing["refactor_factored_attn_matrices"] = True


_center_writing_weights, _center_unembed, _fold_value_biases, _refactor = (
    center_writing_weights,
    center_unembed,
    fold_value_biases,
    refactor_factored_attn_matrices,
)


def process_weights(
    model: HookedTransformer,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> HookedTransformer:
    """Apply the TransformerLens weight processing steps in their order; records them in cfg."""
    if model.cfg.processing.get("fold_ln") and fold_ln:
        raise ValueError("this model's layer norms are already folded")
    done = {}
    if fold_ln:
        done["fold_ln"] = fold_layer_norm(model)
    if center_writing_weights:
        done["center_writing_weights"] = _center_writing_weights(model)
    if center_unembed:
        done["center_unembed"] = _center_unembed(model)
    if fold_value_biases:
        done["fold_value_biases"] = _fold_value_biases(model)
    if refactor_factored_attn_matrices:
        _refactor(model)
    model.cfg.processing.update(done)
    return model
