"""BERT-family layers built from the decoder's components: the embedding with token types and its
LayerNorm, the post-LN block, and the MLM, pooler and next-sentence heads.

Names and hooks are TransformerLens's (`embed.hook_embed`, `embed.hook_pos_embed`,
`embed.hook_token_type_embed`, `blocks.{l}.hook_normalized_resid_post`, `pooler.hook_pooler_out`,
`nsp_head.hook_nsp_out`); attention, norms, MLP and unembedding are `lmscope.components`' own,
the attention bidirectional through its mask (`AttentionMask.build(causal=False)`).

Storage follows the checkpoints (nn.Linear layout), so loading adopts tensors without copying
them; TransformerLens's `W` [d_model, d_out] of each head is a view of it.
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.components.attention import Attention, AttentionMask
from lmscope.components.embed import Embed, PosEmbed
from lmscope.components.linear import linear
from lmscope.components.mlp import ACTIVATIONS, MLP
from lmscope.components.norm import LayerNorm
from lmscope.encoders.config import EncoderConfig
from lmscope.hooks import HookPoint


class TokenTypeEmbed(nn.Module):
    """Segment (token type) ids -> vectors through `W_token_type` [n_token_types, d_model]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.W_token_type = nn.Parameter(
            torch.empty(cfg.n_token_types, cfg.d_model, dtype=cfg.dtype)
        )

    def forward(self, token_type_ids: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d"]:
        return F.embedding(token_type_ids, self.W_token_type)


class BertEmbed(nn.Module):
    """ln(W_E[token] + W_pos[position] + W_token_type[type]); DistilBERT has no token types."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        if cfg.n_token_types:
            self.token_type_embed = TokenTypeEmbed(cfg)
            self.hook_token_type_embed = HookPoint()  # [batch, pos, d_model]
        self.ln = LayerNorm(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        positions: Int[Tensor, "batch pos"],
        token_type_ids: Int[Tensor, "batch pos"] | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(positions))
        if hasattr(self, "token_type_embed"):
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(tokens)
            resid = resid + self.hook_token_type_embed(self.token_type_embed(token_type_ids))
        return self.ln(resid)


class BertBlock(nn.Module):
    """Post-LN block: resid_mid = resid_pre + attn(resid_pre); normalized = ln1(resid_mid);
    resid_post = normalized + mlp(normalized); the block's output is ln2(resid_post)
    (`hook_normalized_resid_post`), which the next block reads as its resid_pre.

    As in TransformerLens, `hook_resid_post` is the sum before ln2, and with
    `use_split_qkv_input` each head reads its own copy of resid_pre (`hook_q_input`, ...).
    """

    def __init__(self, cfg: EncoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn = Attention(cfg, layer_idx)
        self.ln1 = LayerNorm(cfg)
        self.mlp = MLP(cfg)
        self.ln2 = LayerNorm(cfg)
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model], with use_split_qkv_input
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], with use_hook_mlp_in
        self.hook_mlp_out = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()
        self.hook_normalized_resid_post = HookPoint()

    def forward(
        self, resid_pre: Float[Tensor, "batch pos d_model"], mask: AttentionMask
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        q_in = k_in = v_in = resid_pre
        if cfg.use_split_qkv_input:
            q_in, k_in, v_in = (
                hook(einops.repeat(resid_pre, "b p d -> b p h d", h=cfg.n_heads).clone())
                for hook in (self.hook_q_input, self.hook_k_input, self.hook_v_input)
            )
        attn_out = self.hook_attn_out(self.attn(q_in, k_in, v_in, mask))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        normalized_resid_mid = self.ln1(mlp_in)
        mlp_out = self.hook_mlp_out(self.mlp(normalized_resid_mid))
        resid_post = self.hook_resid_post(normalized_resid_mid + mlp_out)
        return self.hook_normalized_resid_post(self.ln2(resid_post))


class _Dense(nn.Module):
    """A dense layer stored as nn.Linear ([d_out, d_in] `weight`, `b`), with TransformerLens's
    `W` [d_in, d_out] as a view."""

    def __init__(self, cfg: EncoderConfig, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(d_out, dtype=cfg.dtype))

    @property
    def W(self) -> Float[Tensor, "d_in d_out"]:
        return self.weight.T

    def dense(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_out"]:
        return linear(x, self.weight, self.b)


class BertMLMHead(_Dense):
    """The masked-LM transform before the unembedding: ln(act(x W + b))."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg, cfg.d_model, cfg.d_model)
        self.act = ACTIVATIONS[cfg.mlm_act_fn]
        self.ln = LayerNorm(cfg)

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d"]:
        return self.ln(self.act(self.dense(resid)))


class BertPooler(_Dense):
    """tanh(resid[:, 0] W + b): the first ([CLS]) token's vector, `hook_pooler_out` [batch, d]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg, cfg.d_model, cfg.d_model)
        self.hook_pooler_out = HookPoint()

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch d_model"]:
        return self.hook_pooler_out(torch.tanh(self.dense(resid[:, 0])))


class BertNSPHead(_Dense):
    """Next-sentence logits from the pooled vector: x W + b, `hook_nsp_out` [batch, 2]."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__(cfg, cfg.d_model, 2)
        self.hook_nsp_out = HookPoint()

    def forward(self, pooled: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch 2"]:
        return self.hook_nsp_out(self.dense(pooled))
