"""Weight processing for encoders, where it keeps every output the model computes.

BERT-family encoders are post-LN: a LayerNorm's output *is* the residual stream (the next block
and the skip connection read it), so its weights cannot be folded into one reader, and
`fold_ln` is refused. What stays exact: centring what writes into a sum that a LayerNorm reads
(the embeddings, W_O and b_O, W_out and b_out), centring the unembedding (softmax ignores a
constant) and folding b_V into b_O (each pattern row sums to 1, padding or not).

T5 is pre-RMSNorm: `fold_ln` folds ln1 into the attention's W_Q / W_K / W_V, the decoder's ln2
into the cross-attention's W_Q, the MLP norms into W_in (and W_gate), `encoder_final_ln` into
every cross-attention's W_K / W_V and `decoder_final_ln` into W_U. Centring is not exact under
RMSNorm, and T5 has no biases to fold.

Example:
    >>> process_encoder_weights(bert)                         # centring + value biases
    >>> process_encoder_decoder_weights(t5, fold_ln=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import einops
import torch

from lmscope.processing import _center, _fold_norm

if TYPE_CHECKING:
    from lmscope.encoders.encoder import HookedEncoder
    from lmscope.encoders.encoder_decoder import HookedEncoderDecoder


@torch.no_grad()
def process_encoder_weights(
    model: HookedEncoder,
    fold_ln: bool = False,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> None:
    """Process a HookedEncoder's weights in place (see the module docstring); every output the
    model returns is unchanged, while hook_attn_out, hook_resid_mid, hook_mlp_out and
    hook_resid_post (sums that a LayerNorm reads) lose their mean over d_model.

    Example:
        >>> process_encoder_weights(model, center_writing_weights=True, fold_value_biases=True)
    """
    if fold_ln:
        raise ValueError(
            "fold_ln=True: a BERT-family encoder is post-LN (each LayerNorm's output is the "
            "residual stream that the next block and the skip connection read), so its weights "
            "cannot be folded into one reader; pass fold_ln=False (TransformerLens does not fold "
            "them either)"
        )
    if fold_value_biases:
        for block in model.blocks:
            attn = block.attn
            attn.b_O += einops.einsum(attn._b_V, attn.W_O, "h dh, h dh dm -> dm")
            attn._b_V.zero_()
    if center_writing_weights:
        embed = model.embed
        types = [embed.token_type_embed.W_token_type] if hasattr(embed, "token_type_embed") else []
        _center([embed.embed.W_E, embed.pos_embed.W_pos, *types])
        for block in model.blocks:
            _center([block.attn.W_O, block.attn.b_O, block.mlp.W_out, block.mlp.b_out])
    if center_unembed and hasattr(model, "unembed"):
        W_U, b_U = model.unembed.W_U, model.unembed.b_U
        W_U -= W_U.mean(dim=-1, keepdim=True)
        b_U -= b_U.mean()
    model.cfg.processing.update(
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed and hasattr(model, "unembed"),
        fold_value_biases=fold_value_biases,
    )


@torch.no_grad()
def process_encoder_decoder_weights(
    model: HookedEncoderDecoder,
    fold_ln: bool = True,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
) -> None:
    """Fold a HookedEncoderDecoder's RMSNorm weights into their readers, in place; the norms
    become RMSNormPre and the logits are unchanged. Centring is refused (not exact under
    RMSNorm); value biases are zero in T5, so there is nothing to fold.

    Example:
        >>> process_encoder_decoder_weights(model, fold_ln=True)
    """
    if center_writing_weights or center_unembed:
        raise ValueError(
            "centring is exact only when a LayerNorm reads the residual stream; T5 uses "
            "RMSNorm, which does not remove the mean: pass center_writing_weights=False, "
            "center_unembed=False"
        )
    cfg = model.cfg
    if not fold_ln or cfg.normalization_type == "RMSPre":
        return
    for stack in (model.encoder, model.decoder):
        for block in stack:
            attn = block.attn
            _fold_norm(cfg, block, "ln1", [(attn.W_Q, None), (attn._W_K, None), (attn._W_V, None)])
            if block.is_decoder:
                _fold_norm(cfg, block, "ln2", [(block.cross_attn.W_Q, None)])
                _fold_norm(cfg, block, "ln3", block.mlp.input_weights())
            else:
                _fold_norm(cfg, block, "ln2", block.mlp.input_weights())
    crosses = [(b.cross_attn._W_K, None) for b in model.decoder]
    crosses += [(b.cross_attn._W_V, None) for b in model.decoder]
    _fold_norm(cfg, model, "encoder_final_ln", crosses)
    _fold_norm(cfg, model, "decoder_final_ln", [(model.unembed.W_U, None)])
    cfg.normalization_type = "RMSPre"
    model.to(model.W_E.device)
    model.setup()
    cfg.processing.update(fold_ln=True)
