"""Normalisation layers with TransformerLens hooks: `hook_scale` [..., 1] and `hook_normalized`.

LN and RMS hold weights; LNPre and RMSPre are what remains after `fold_ln` moved the weights into
the next layer. The output is always the fused kernel's (`F.layer_norm` / `F.rms_norm`), so
hooking or caching a norm never changes a bit downstream. With a hook in use the hooks' values
come from the same kernels where they can: LayerNorm's `hook_normalized` is the fused output, its
scale is `1 / rstd` of the same `native_layer_norm` call, and RMSNorm's normalised values and
scale come from one `_fused_rms_norm` call (on the CPU that op is the composite F.rms_norm runs,
and the output is its normalised values times `w`, F.rms_norm's own last op). A value a hook
edits or replaces is then used step by step (see `lmscope.components.exact`). When autograd
records and a hook other than a cache's could see gradients (or in float16/bfloat16), the hooks'
values are computed step by step, so gradients reach them.

In float16/bfloat16 models the statistics, the division and the weights are computed in float32
and the result rounded once to the model's dtype, as nn.LayerNorm, Gemma's and OLMo 2's RMSNorm
and torch's fused kernels do (LlamaRMSNorm rounds before its weight too, so it is a little less
exact). Both hooks see the model's dtype; after an edit the float32 values go on.

An RMSNorm with `weight_offset` (`cfg.norm_weight_offset`, 1.0 for Gemma 1-3 and Qwen3.5) keeps
the checkpoint's `w` in the model's dtype and multiplies by `w + weight_offset` computed in float32
in half-precision models, as transformers' `1.0 + self.weight.float()` does (rounding `1 + w` to
bfloat16 as one weight roughly doubles the error). `applied_weight()` is that multiplier.

In a compiled run (`lmscope.compiled`) a hooked norm is traced step by step, hooks included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.exact import HookValues, fused_value, needs_grad, untouched, version
from lmscope.components.precision import HALF_DTYPES, upcast
from lmscope.config import HookedTransformerConfig, LayerConfig
from lmscope.hooks import HookPoint

_compiling = torch.compiler.is_compiling

# Devices where `_fused_rms_norm` has no kernel (the hooked RMSNorm then computes its statistics).
_NO_FUSED_RMS: set[str] = set()

# Whether F.rms_norm on the CPU is the composite that `_rms_stats` runs (torch has no CPU kernel
# of `_fused_rms_norm`): a hooked RMSNorm then weights the statistics it showed its hooks, the
# same bits as running the norm again.
_CPU_RMS_COMPOSITE = not torch._C._dispatch_has_kernel_for_dispatch_key(
    "aten::_fused_rms_norm", "CPU"
)


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


def _by_kernels(x: Tensor) -> bool:
    """Whether a hooked norm takes its hooks' values from the fused kernels (no autograd
    recording, full precision, not traced by torch.compile)."""
    return x.dtype not in HALF_DTYPES and not _compiling()


def _needs_step_by_step(norm: nn.Module, *tensors: Tensor | None) -> bool:
    """Whether autograd records the norm and a hook could see a gradient through its hooked
    values (not when caching hooks alone fire: they store the values detached)."""
    return needs_grad(*tensors) and not (
        norm.hook_scale.only_caches() and norm.hook_normalized.only_caches()
    )


def _rms_stats(x: Tensor, length: int, eps: float) -> tuple[Tensor, Tensor]:
    """(x / rms, 1 / rms) by `_fused_rms_norm`: one fused kernel on accelerators, and on the CPU
    the composite F.rms_norm runs there (the same ops in one call from Python: ~1 us less than
    calling them one by one); the statistics in four ops where the op is missing."""
    if x.device.type not in _NO_FUSED_RMS:
        try:
            return torch._fused_rms_norm(x, [length], None, eps)  # type: ignore[attr-defined]
        except (AttributeError, NotImplementedError, RuntimeError):
            _NO_FUSED_RMS.add(x.device.type)
    rstd = x.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
    return x * rstd, rstd


class LayerNorm(nn.Module):
    """LayerNorm: centre, scale to unit RMS, then `w`, `b`. hook_normalized is after `w`, `b`."""

    def applied_weight(self) -> Float[Tensor, " d"] | None:
        """The weight the norm multiplies by: `w` (None when weightless).

        Example:
            >>> LayerNorm(cfg).applied_weight().shape == (cfg.d_model,)
            True
        """
        return self.w

    def __init__(
        self,
        cfg: HookedTransformerConfig | LayerConfig,
        length: int | None = None,
        weights: bool = True,
    ) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.length = length or cfg.d_model
        self.w = nn.Parameter(torch.ones(self.length, dtype=cfg.dtype)) if weights else None
        self.b = nn.Parameter(torch.zeros(self.length, dtype=cfg.dtype)) if weights else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        scale = self.hook_scale  # (read once: a module attribute costs ~0.4 us to look up)
        if not scale.fires():
            return self.hook_normalized(self._fused(x))
        if _compiling():
            return self.hook_normalized(self._traced(x))
        if x.dtype not in HALF_DTYPES:
            if scale.only_stores():
                # stored as it is (no edit to look for, no gradient to see): 1 / rstd of the
                # kernel whose output goes on (autograd records that output as usual)
                out, _, rstd = torch.native_layer_norm(x, (self.length,), self.w, self.b, self.eps)
                scale((rstd.detach() if rstd.requires_grad else rstd).reciprocal())
                return self.hook_normalized(out)
            if not _needs_step_by_step(self, x, self.w, self.b):
                return self.hook_normalized(self._scale_by_kernel(x))
        return self.hook_normalized(self._hooked_scale(x))

    def _fused(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        return F.layer_norm(x, (self.length,), self.w, self.b, self.eps)

    def _affine(self, normalized: Tensor) -> Tensor:
        return normalized * self.w + self.b if self.w is not None else normalized

    def _scale_by_kernel(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The fused output, `hook_scale` shown `1 / rstd` of the same kernel call; step by step
        only when the hook edits the scale."""
        out, mean, rstd = torch.native_layer_norm(x, (self.length,), self.w, self.b, self.eps)
        with HookValues(detached=True):
            scale = rstd.reciprocal()
        scale, edited = _hooked(self.hook_scale, scale, x.dtype)
        return self._affine((x - mean) / scale) if edited else out

    def _hooked_scale(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The norm with `hook_scale` run on the step-by-step scale: the fused output unless the
        hook edits the scale (autograd, when recording, runs through the step-by-step form)."""
        grad = needs_grad(x, self.w, self.b)
        dtype = x.dtype
        centred = upcast(x) - upcast(x).mean(-1, keepdim=True)
        with HookValues():
            scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        scale, edited = _hooked(self.hook_scale, scale, dtype)
        if not (edited or grad):
            return self._fused(x)
        out = self._affine(centred / scale).to(dtype)
        return out if edited else fused_value(lambda: self._fused(x), out)

    def _traced(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """Step by step with the hook in line, for torch.compile (no edit detection)."""
        dtype = x.dtype
        centred = upcast(x) - upcast(x).mean(-1, keepdim=True)
        scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        scale = self.hook_scale(scale.to(dtype)).to(scale.dtype)
        return self._affine(centred / scale).to(dtype)


class LayerNormPre(LayerNorm):
    """LayerNorm without weights (they were folded into the following layer)."""

    def __init__(
        self, cfg: HookedTransformerConfig | LayerConfig, length: int | None = None
    ) -> None:
        super().__init__(cfg, length, weights=False)


class RMSNorm(nn.Module):
    """RMSNorm: scale to unit RMS, then `w + weight_offset` (`weight_offset`: `cfg.norm_weight_offset`
    unless given; 0 for most models, 1 for Gemma's `1 + w`). As in TransformerLens,
    hook_normalized is before the weight."""

    def __init__(
        self,
        cfg: HookedTransformerConfig | LayerConfig,
        length: int | None = None,
        weights: bool = True,
        weight_offset: float | None = None,
    ) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.length = length or cfg.d_model
        offset = cfg.norm_weight_offset if weight_offset is None else weight_offset
        self.weight_offset = float(offset)
        identity = torch.full((self.length,), 1.0 - self.weight_offset, dtype=cfg.dtype)
        self.w = nn.Parameter(identity) if weights else None
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        scale, normalized = self.hook_scale, self.hook_normalized  # (read once, see LayerNorm)
        scale_fires = scale.fires()
        if not (scale_fires or normalized.fires()):
            return self._fused(x)
        if _compiling():
            return self._traced(x)
        if x.dtype not in HALF_DTYPES and scale.only_stores() and normalized.only_stores():
            # stored as they are: no edit to look for, no gradient to see
            if not torch.is_grad_enabled():
                return self._stored(x, scale if scale_fires else None, normalized)
            torch._C._set_grad_enabled(False)  # the stored values: not recorded
            try:
                self._show(x, scale if scale_fires else None, normalized)
            finally:
                torch._C._set_grad_enabled(True)
            return self._fused(x)
        if _by_kernels(x) and not _needs_step_by_step(self, x, self.w):
            with HookValues(detached=True):
                stats = _rms_stats(x, self.length, self.eps)
            return self._by_kernels(x, *stats)
        dtype = x.dtype
        xf = upcast(x)
        with HookValues():
            scale = (xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        scale, scale_edited = _hooked(self.hook_scale, scale, dtype)
        with HookValues():
            normalized = xf / scale
        normalized, edited = _hooked(self.hook_normalized, normalized, dtype)
        edited = edited or scale_edited
        grad = needs_grad(x, self.w)
        if not (edited or grad):
            return self._fused(x)
        out = self._weighted(normalized).to(dtype)
        return out if edited else fused_value(lambda: self._fused(x), out)

    def applied_weight(self) -> Float[Tensor, " d"] | None:
        """The weight the norm multiplies by: `w + weight_offset` (in float32 when `w` is float16
        or bfloat16, as transformers computes Gemma's `1 + w`), `w` itself without an offset,
        None when weightless.

        Example:
            >>> norm = RMSNorm(cfg, weight_offset=1.0)   # Gemma: w starts at 0
            >>> norm.applied_weight().unique().tolist()
            [1.0]
        """
        if self.w is None or not self.weight_offset:
            return self.w
        return upcast(self.w) + self.weight_offset

    def _fused(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        if self.w is None or not self.weight_offset:
            return F.rms_norm(x, (self.length,), self.w, self.eps)
        weight = self.applied_weight()
        return F.rms_norm(upcast(x), (self.length,), weight, self.eps).to(x.dtype)

    def _weighted(self, normalized: Tensor) -> Tensor:
        weight = self.applied_weight()
        return normalized * weight if weight is not None else normalized

    def _by_kernels(
        self, x: Float[Tensor, "... d"], normalized: Tensor, rstd: Tensor
    ) -> Float[Tensor, "... d"]:
        """The fused output; the hooks see the fused kernel's normalised values and `1 / rstd`,
        and a value they edit is used step by step. On the CPU (`_CPU_RMS_COMPOSITE`), without
        autograd recording, the output is the shown values times `w`: F.rms_norm's own ops on
        the same statistics, so the same bits without a second pass."""
        edited = False
        if self.hook_scale.fires():
            with HookValues(detached=True):
                scale = rstd.reciprocal()
            scale, edited = _hooked(self.hook_scale, scale, x.dtype)
            if edited:
                normalized = x / scale
        if self.hook_normalized.fires():
            normalized, edited_here = _hooked(self.hook_normalized, normalized, x.dtype)
            edited = edited or edited_here
        if edited or (_CPU_RMS_COMPOSITE and x.device.type == "cpu" and not needs_grad(x, self.w)):
            return self._weighted(normalized)
        return self._fused(x)

    def _stored(
        self,
        x: Float[Tensor, "... d"],
        scale_hook: HookPoint | None,
        normalized_hook: HookPoint,
    ) -> Float[Tensor, "... d"]:
        """`_by_kernels` when the hooks only store what they see and nothing records gradients:
        the same values, shown without edit detection (`scale_hook` None: it does not fire)."""
        normalized = self._show(x, scale_hook, normalized_hook)
        if _CPU_RMS_COMPOSITE and x.is_cpu:
            return self._weighted(normalized)
        return self._fused(x)

    def _show(
        self,
        x: Float[Tensor, "... d"],
        scale_hook: HookPoint | None,
        normalized_hook: HookPoint,
    ) -> Float[Tensor, "... d"]:
        """Show hooks that only store the fused kernel's `1 / rstd` and normalised values;
        returns the normalised values."""
        normalized, rstd = _rms_stats(x, self.length, self.eps)
        if scale_hook is not None:
            scale_hook(rstd.reciprocal())
        normalized_hook(normalized)
        return normalized

    def _traced(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """Step by step with the hooks in line, for torch.compile (no edit detection)."""
        dtype = x.dtype
        xf = upcast(x)
        scale = (xf.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        scale = self.hook_scale(scale.to(dtype)).to(scale.dtype)
        normalized = self.hook_normalized((xf / scale).to(dtype)).to(xf.dtype)
        return self._weighted(normalized).to(dtype)


class RMSNormPre(RMSNorm):
    """RMSNorm without weights (folded into the following layer)."""

    def __init__(
        self, cfg: HookedTransformerConfig | LayerConfig, length: int | None = None
    ) -> None:
        super().__init__(cfg, length, weights=False)


def make_norm(
    cfg: HookedTransformerConfig | LayerConfig, length: int | None = None
) -> nn.Module | None:
    """The norm layer that `cfg.normalization_type` names (None for no normalisation)."""
    kinds = {"LN": LayerNorm, "LNPre": LayerNormPre, "RMS": RMSNorm, "RMSPre": RMSNormPre}
    kind = cfg.normalization_type
    return None if kind is None else kinds[kind](cfg, length)
