"""Normalisation layers with TransformerLens hooks: `hook_scale` [..., 1] and `hook_normalized`.

LN and RMS hold weights; LNPre and RMSPre are what remains after `fold_ln` moved the weights into
the next layer. With neither hook in use they run as one fused kernel.

In float16/bfloat16 models the statistics, the division and the weights are computed in float32
and the result rounded once to the model's dtype, as nn.LayerNorm, Gemma's and OLMo 2's RMSNorm
and torch's fused kernels do (LlamaRMSNorm rounds before its weight too, so it is a little less
exact). Both hooks see the model's dtype; the float32 values go on unless a hook edits them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.precision import upcast
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint


def _hooked(hook: HookPoint, value: Float[Tensor, "..."], dtype: torch.dtype) -> Tensor:
    """Run `hook` on `value` shown in the activations' `dtype`; return the full-precision `value`
    unless the hook replaced or edited it (then its result, back in `value`'s dtype)."""
    if value.dtype == dtype:
        return hook(value)
    shown = value.to(dtype)
    version = shown._version
    seen = hook(shown)
    return value if seen is shown and seen._version == version else seen.to(value.dtype)


class LayerNorm(nn.Module):
    """LayerNorm: centre, scale to unit RMS, then `w`, `b`. hook_normalized is after `w`, `b`."""

    def __init__(
        self, cfg: HookedTransformerConfig, length: int | None = None, weights: bool = True
    ) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.length = length or cfg.d_model
        self.w = nn.Parameter(torch.ones(self.length, dtype=cfg.dtype)) if weights else None
        self.b = nn.Parameter(torch.zeros(self.length, dtype=cfg.dtype)) if weights else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return F.layer_norm(x, (self.length,), self.w, self.b, self.eps)
        dtype = x.dtype
        x = upcast(x)
        x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        x = x / _hooked(self.hook_scale, scale, dtype)
        if self.w is not None:
            x = x * self.w + self.b
        return self.hook_normalized(x.to(dtype))


class LayerNormPre(LayerNorm):
    """LayerNorm without weights (they were folded into the following layer)."""

    def __init__(self, cfg: HookedTransformerConfig, length: int | None = None) -> None:
        super().__init__(cfg, length, weights=False)


class RMSNorm(nn.Module):
    """RMSNorm: scale to unit RMS, then `w`. As in TransformerLens, hook_normalized is before `w`."""

    def __init__(
        self, cfg: HookedTransformerConfig, length: int | None = None, weights: bool = True
    ) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.length = length or cfg.d_model
        self.w = nn.Parameter(torch.ones(self.length, dtype=cfg.dtype)) if weights else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        if not (self.hook_scale.has_hooks() or self.hook_normalized.has_hooks()):
            return F.rms_norm(x, (self.length,), self.w, self.eps)
        dtype = x.dtype
        x = upcast(x)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        x = _hooked(self.hook_normalized, x / _hooked(self.hook_scale, scale, dtype), dtype)
        return (x * self.w if self.w is not None else x).to(dtype)


class RMSNormPre(RMSNorm):
    """RMSNorm without weights (folded into the following layer)."""

    def __init__(self, cfg: HookedTransformerConfig, length: int | None = None) -> None:
        super().__init__(cfg, length, weights=False)


def make_norm(cfg: HookedTransformerConfig, length: int | None = None) -> nn.Module | None:
    """The norm layer that `cfg.normalization_type` names (None for no normalisation)."""
    kinds = {"LN": LayerNorm, "LNPre": LayerNormPre, "RMS": RMSNorm, "RMSPre": RMSNormPre}
    kind = cfg.normalization_type
    return None if kind is None else kinds[kind](cfg, length)
