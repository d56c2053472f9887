"""Norms on queries and keys, after their projection and before rotary (`attn.q_norm`,
`attn.k_norm`), with the hooks every lmscope norm has (`hook_scale`, `hook_normalized`).

`cfg.qk_norm_type` picks the norm: "RMS" (Qwen3, Gemma 3, OLMo 2), "LN" (a LayerNorm with a bias:
Phi, Persimmon), "RMSPre" (no weights at all: Llama 4's L2 norm). `cfg.qk_norm_per_head`
normalises each head's d_head (else all heads' values together, OLMo 2), and
`cfg.qk_norm_head_weights` gives every head weights of its own, [n_heads, d_head] (StableLM-2-12B,
Cohere), applied after the (weightless) norm, so there `hook_normalized` is before the weights.

Example:
    >>> norm = make_qk_norm(cfg, cfg.n_heads)    # an RMSNorm over d_head (Qwen3)
    >>> norm(q).shape                             # q [batch, pos, head, d_head]
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from lmscope.config import HookedTransformerConfig, LayerConfig

_NORMS: dict[str, type[nn.Module]] = {
    "LN": LayerNorm,
    "LNPre": LayerNormPre,
    "RMS": RMSNorm,
    "RMSPre": RMSNormPre,
}


class _HeadWeights:
    """Weights (and biases) of shape [n_heads, d_head] after a weightless norm over d_head."""

    head_w: nn.Parameter
    head_b: nn.Parameter | None

    def _make_weights(self, cfg: HookedTransformerConfig, n_heads: int, bias: bool) -> None:
        shape = (n_heads, cfg.d_head)
        self.head_w = nn.Parameter(torch.ones(shape, dtype=cfg.dtype))
        self.head_b = nn.Parameter(torch.zeros(shape, dtype=cfg.dtype)) if bias else None

    def _weigh(self, normalized: Float[Tensor, "... head d_head"]) -> Tensor:
        out = normalized * self.head_w
        return out if self.head_b is None else out + self.head_b


class HeadLayerNorm(_HeadWeights, LayerNormPre):
    """A LayerNorm over each head's d_head with weights (and, with `bias`, biases) per head."""

    def __init__(self, cfg: HookedTransformerConfig, n_heads: int, bias: bool = False) -> None:
        LayerNormPre.__init__(self, cfg, cfg.d_head)
        self._make_weights(cfg, n_heads, bias)

    def forward(self, x: Float[Tensor, "... head d_head"]) -> Float[Tensor, "... head d_head"]:
        return self._weigh(LayerNormPre.forward(self, x))


class HeadRMSNorm(_HeadWeights, RMSNormPre):
    """An RMSNorm over each head's d_head with weights per head."""

    def __init__(self, cfg: HookedTransformerConfig, n_heads: int, bias: bool = False) -> None:
        RMSNormPre.__init__(self, cfg, cfg.d_head)
        self._make_weights(cfg, n_heads, bias)

    def forward(self, x: Float[Tensor, "... head d_head"]) -> Float[Tensor, "... head d_head"]:
        return self._weigh(RMSNormPre.forward(self, x))


def make_qk_norm(cfg: HookedTransformerConfig | LayerConfig, n_heads: int) -> nn.Module:
    """The norm for queries (`n_heads` = cfg.n_heads) or keys (cfg.n_key_value_heads).

    Example:
        >>> make_qk_norm(cfg, cfg.n_key_value_heads)   # RMSNorm over d_head, by default
    """
    kind = cfg.qk_norm_type
    if cfg.qk_norm_head_weights:
        if not cfg.qk_norm_per_head or kind not in ("LN", "RMS"):
            raise ValueError("qk_norm_head_weights needs qk_norm_per_head and an LN or RMS norm")
        head_norm = HeadLayerNorm if kind == "LN" else HeadRMSNorm
        return head_norm(cfg, n_heads)
    return _NORMS[kind](cfg, cfg.d_head if cfg.qk_norm_per_head else n_heads * cfg.d_head)
