"""Normalisation layers with TransformerLens hooks: `hook_scale` [..., 1] and `hook_normalized`.

LN and RMS hold weights; LNPre and RMSPre are what remains after `fold_ln` moved the weights into
the next layer. The output is always the fused kernel's (`F.layer_norm` / `F.rms_norm`): with a
hook in use the scale and normalised values are also computed step by step for the hooks, and
the step-by-step output replaces the fused one only when a hook edits or replaces its value (see
`lmscope.components.exact`), so hooking or caching a norm never changes a bit downstream.

In float16/bfloat16 models the statistics, the division and the weights are computed in float32
and the result rounded once to the model's dtype, as nn.LayerNorm, Gemma's and OLMo 2's RMSNorm
and torch's fused kernels do (LlamaRMSNorm rounds before its weight too, so it is a little less
exact). Both hooks see the model's dtype; after an edit the float32 values go on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.exact import fused_value, needs_grad, untouched, version
from lmscope.components.precision import upcast
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint


def _hooked(
    hook: HookPoint, value: Float[Tensor, "..."], dtype: torch.dtype
) -> tuple[Tensor, bool]:
    """Run `hook` on `value` shown in the activations' `dtype`. Returns the full-precision `value`
    (or the view of it carrying backward hooks) and False, or, when the hook replaced or edited
    it, the result back in `value`'s dtype and True."""
    shown = value if value.dtype == dtype else value.to(dtype)
    before = version(shown)
    seen = hook(shown)
    if not untouched(seen, shown, before):
        return seen.to(value.dtype), True
    return (value if seen is shown else seen.to(value.dtype)), False


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
            return self._fused(x)
        return self.hook_normalized(self._hooked_scale(x))

    def _fused(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return F.layer_norm(x, (self.length,), self.w, self.b, self.eps)

    def _hooked_scale(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The norm with `hook_scale` run on the step-by-step scale: the fused output unless the
        hook edits the scale (autograd, when recording, runs through the step-by-step form)."""
        if not self.hook_scale.has_hooks():
            return self._fused(x)
        grad = needs_grad(x, self.w, self.b)
        dtype = x.dtype
        centred = upcast(x) - upcast(x).mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        scale, edited = _hooked(self.hook_scale, scale, dtype)
        if not (edited or grad):
            return self._fused(x)
        out = centred / scale
        if self.w is not None:
            out = out * self.w + self.b
        out = out.to(dtype)
        return out if edited else fused_value(lambda: self._fused(x), out)


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
            return self._fused(x)
        dtype = x.dtype
        xf = upcast(x)
        scale = (xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        scale, scale_edited = _hooked(self.hook_scale, scale, dtype)
        normalized, edited = _hooked(self.hook_normalized, xf / scale, dtype)
        edited = edited or scale_edited
        grad = needs_grad(x, self.w)
        if not (edited or grad):
            return self._fused(x)
        out = (normalized * self.w if self.w is not None else normalized).to(dtype)
        return out if edited else fused_value(lambda: self._fused(x), out)

    def _fused(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return F.rms_norm(x, (self.length,), self.w, self.eps)


class RMSNormPre(RMSNorm):
    """RMSNorm without weights (folded into the following layer)."""

    def __init__(self, cfg: HookedTransformerConfig, length: int | None = None) -> None:
        super().__init__(cfg, length, weights=False)


def make_norm(cfg: HookedTransformerConfig, length: int | None = None) -> nn.Module | None:
    """The norm layer that `cfg.normalization_type` names (None for no normalisation)."""
    kinds = {"LN": LayerNorm, "LNPre": LayerNormPre, "RMS": RMSNorm, "RMSPre": RMSNormPre}
    kind = cfg.normalization_type
    return None if kind is None else kinds[kind](cfg, length)
