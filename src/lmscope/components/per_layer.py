"""Per-layer embeddings (Gemma 4's "PLE"): a second, narrow embedding for every layer, read by
each block after its MLP.

`PerLayerEmbed` (the model's `per_layer_embed`) makes, for each token, one vector of
`d_per_layer_input` per layer from two parts: the token's row of its own embedding table
(`hook_token`, the table stored times sqrt(d_per_layer_input), as the embedding is) and a
projection of the token's (scaled) embedding, divided by sqrt(d_model) and RMS-normalised over
each layer's slice (`hook_context`); their sum divided by sqrt(2) is `hook_per_layer_inputs`
[batch, pos, n_layers, d_per_layer_input].

`PerLayerInput` (`blocks.{l}.per_layer`) writes its layer's slice into the residual stream:
`hook_in` = the slice, `hook_gate` = act(resid @ W_gate), `hook_post` = gate * slice, and the
output `post @ W_out` is RMS-normalised (`ln`) before the block adds it (`hook_per_layer_out`).

Example:
    >>> model.per_layer_embed(tokens, model.embed(tokens)).shape
    torch.Size([1, 5, 35, 256])
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.components.linear import linear
from lmscope.components.mlp import ACTIVATIONS
from lmscope.components.norm import RMSNorm
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint


class PerLayerEmbed(nn.Module):
    """Every layer's per-layer input for each token (see the module docstring).

    `W_E` [d_vocab_per_layer_input, n_layers * d_per_layer_input] (stored scaled) and
    `proj_weight` [n_layers * d_per_layer_input, d_model] (nn.Linear layout)."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, n = cfg.d_per_layer_input, cfg.n_layers
        vocab = cfg.d_vocab_per_layer_input or cfg.d_vocab
        self.W_E = nn.Parameter(torch.empty(vocab, n * d, dtype=cfg.dtype))
        self.proj_weight = nn.Parameter(torch.empty(n * d, cfg.d_model, dtype=cfg.dtype))
        self.ln = RMSNorm(cfg, d)
        self.hook_token = HookPoint()  # [batch, pos, n_layers, d_per_layer_input]
        self.hook_context = HookPoint()  # [batch, pos, n_layers, d_per_layer_input]
        self.hook_per_layer_inputs = HookPoint()  # [batch, pos, n_layers, d_per_layer_input]

    def forward(
        self, tokens: Int[Tensor, "batch pos"], embed: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos n_layers d_ple"]:
        """The per-layer inputs of `tokens`, whose embeddings (`hook_embed`) are `embed`."""
        cfg = self.cfg
        shape = (*tokens.shape, cfg.n_layers, cfg.d_per_layer_input)
        token = self.hook_token(self.W_E[tokens].view(shape))
        context = linear(embed, self.proj_weight, None) * cfg.d_model**-0.5
        context = self.hook_context(self.ln(context.view(shape)))
        return self.hook_per_layer_inputs((context + token) * 2.0**-0.5)


class PerLayerInput(nn.Module):
    """One block's read of its per-layer input (see the module docstring). `gate_weight`
    [d_per_layer_input, d_model] and `out_weight` [d_model, d_per_layer_input] in nn.Linear
    layout; `W_gate` [d_model, d_ple] and `W_out` [d_ple, d_model] are views."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        d = cfg.d_per_layer_input
        self.gate_weight = nn.Parameter(torch.empty(d, cfg.d_model, dtype=cfg.dtype))
        self.out_weight = nn.Parameter(torch.empty(cfg.d_model, d, dtype=cfg.dtype))
        self.ln = RMSNorm(cfg)
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_in = HookPoint()  # [batch, pos, d_per_layer_input]
        self.hook_gate = HookPoint()  # [batch, pos, d_per_layer_input]
        self.hook_post = HookPoint()  # [batch, pos, d_per_layer_input]

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_ple"]:
        return self.gate_weight.T

    @property
    def W_out(self) -> Float[Tensor, "d_ple d_model"]:
        return self.out_weight.T

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        per_layer_input: Float[Tensor, "batch pos d_ple"],
    ) -> Float[Tensor, "batch pos d_model"]:
        """What the block adds to `resid` from its slice `per_layer_input`."""
        x = self.hook_in(per_layer_input.to(resid.device))
        gate = self.hook_gate(self.act(linear(resid, self.gate_weight, None)))
        post = self.hook_post(gate * x)
        return self.ln(linear(post, self.out_weight, None))


def per_layer_embedding_scale(cfg: HookedTransformerConfig) -> float:
    """sqrt(d_per_layer_input): the factor Gemma 4 multiplies its per-layer table's rows by."""
    return math.sqrt(cfg.d_per_layer_input)
