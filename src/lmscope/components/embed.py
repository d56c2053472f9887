"""Token embedding, learned positional embedding and unembedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.components.linear import linear
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint


class Embed(nn.Module):
    """Token ids -> vectors through `W_E` [d_vocab, d_model]."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    """Learned absolute positions through `W_pos` [n_ctx, d_model], indexed by position ids."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.W_pos)


class Unembed(nn.Module):
    """Residual -> logits: `x @ W_U + b_U`. Stored as `weight` [d_vocab_out, d_model] for speed;
    `W_U` [d_model, d_vocab_out] is a view of it."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.d_vocab_out, cfg.d_model, dtype=cfg.dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab_out"]:
        return self.weight.T

    def forward(
        self, x: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_vocab_out"]:
        return self.hook_out(linear(self.hook_in(x), self.weight, self.b_U))
