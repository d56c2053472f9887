"""Feed-forward layers: plain (`W_in`, act, `W_out`) and gated (`act(x W_gate) * (x W_in)`).

Weights are stored as checkpoints store them (nn.Linear layout, gate and up apart), so loading
adopts them without a copy; `W_in`, `W_gate` [d_model, d_mlp], `W_out` [d_mlp, d_model] and the
biases are views.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.activations import ACTIVATIONS as ACTIVATIONS
from lmscope.components.linear import linear
from lmscope.components.norm import LayerNorm
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint


class MLP(nn.Module):
    """`hook_pre` = x W_in + b_in; `hook_post` = act(pre); out = post W_out + b_out.

    Gated (`cfg.gated_mlp`): `hook_pre` = x W_gate + b_gate, `hook_pre_linear` = x W_in + b_in,
    `hook_post` = act(pre) * pre_linear (GPT-OSS, `cfg.swiglu_limit`: act(min(pre, limit)) *
    (clamp(pre_linear, -limit, limit) + 1)). (TransformerLens adds `b_in` after the product; we add
    it where the bias of the up projection belongs, which keeps `fold_ln` exact for gated LN models.)
    """

    def __init__(self, cfg: HookedTransformerConfig, d_mlp: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.gated = cfg.gated_mlp
        self.d_mlp = d_mlp = d_mlp or cfg.d_mlp
        dm = cfg.d_model
        # nn.Linear layout, as checkpoints store them, so loading adopts them without a copy.
        self.in_weight = nn.Parameter(torch.empty(d_mlp, dm, dtype=cfg.dtype))
        self.in_bias = nn.Parameter(torch.zeros(d_mlp, dtype=cfg.dtype))
        if self.gated:
            self.gate_weight = nn.Parameter(torch.empty(d_mlp, dm, dtype=cfg.dtype))
            self.gate_bias = nn.Parameter(torch.zeros(d_mlp, dtype=cfg.dtype))
        self.out_weight = nn.Parameter(torch.empty(dm, d_mlp, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(dm, dtype=cfg.dtype))
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        if self.gated:
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()
        if cfg.act_fn == "solu_ln":
            self.hook_mid = HookPoint()
            self.ln = LayerNorm(cfg, d_mlp)

    # -- weight views --------------------------------------------------------------------------
    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"] | None:
        return self.gate_weight.T if self.gated else None

    @property
    def b_gate(self) -> Float[Tensor, " d_mlp"] | None:
        return self.gate_bias if self.gated else None

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.in_weight.T

    @property
    def b_in(self) -> Float[Tensor, " d_mlp"]:
        return self.in_bias

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.out_weight.T

    def forward(self, x: Float[Tensor, "*tokens d_model"]) -> Float[Tensor, "*tokens d_model"]:
        h = linear(x, self.in_weight, self.in_bias)
        if self.gated:
            gate = linear(x, self.gate_weight, self.gate_bias)
            pre, pre_linear = self.hook_pre(gate), self.hook_pre_linear(h)
            limit = self.cfg.swiglu_limit
            if limit is not None:  # GPT-OSS: both branches clamped, the linear one plus 1
                pre, pre_linear = pre.clamp(max=limit), pre_linear.clamp(-limit, limit) + 1
            post = self.hook_post(self.act(pre) * pre_linear)
        else:
            post = self.act(self.hook_pre(h))
            if self.cfg.act_fn == "solu_ln":
                post = self.ln(self.hook_mid(post))
            post = self.hook_post(post)
        return linear(post, self.out_weight, self.b_out)

    def weights(self) -> dict[str, Tensor]:
        """This layer's weights under their TransformerLens names (views)."""
        names = ["W_in", "b_in", "W_out", "b_out"] + (["W_gate", "b_gate"] if self.gated else [])
        return {name: getattr(self, name) for name in names}

    def output_weights(self) -> list[Tensor]:
        """The weights that write to the residual stream (W_out, b_out), for weight processing."""
        return [self.W_out, self.b_out]

    def input_weights(self) -> list[tuple[Tensor, Tensor | None]]:
        """(W, b) pairs that read this layer's (normalised) input, for weight processing."""
        pairs = [(self.W_in, self.b_in)]
        return pairs + [(self.W_gate, self.b_gate)] if self.gated else pairs
