"""Hooked forward paths that give the unhooked path's numbers, bit for bit.

A fused kernel (`F.layer_norm`, `F.rms_norm`, `scaled_dot_product_attention`) and its step-by-step
form round differently. If hooking `hook_scale` or `hook_pattern` switched the whole computation to
the step-by-step form, every later activation would depend on which points are hooked, and a cache
of a few names would differ from the same names in a full cache (by ~1e-7). So a hooked norm or
attention computes the step-by-step values only to show them to the hooks, and passes on the fused
result unless a hook changed something. When autograd is recording, the output carries the fused
numbers and the step-by-step gradient (`fused_value`), so backward hooks on the hooked
intermediates still fire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class _FusedValue(torch.autograd.Function):
    """Forward: `compute()` (run without autograd); backward: the gradient goes to `path`."""

    @staticmethod
    def forward(ctx: object, compute: Callable[[], Tensor], path: Tensor) -> Tensor:
        return compute()

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an operation on these tensors now."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fused_value(compute: Callable[[], Tensor], path: Tensor) -> Tensor:
    """`compute()`'s numbers with `path`'s gradient (`path` must equal them up to rounding).

    Example:
        >>> out = fused_value(lambda: F.layer_norm(x, (d,), w, b), step_by_step)
    """
    if not needs_grad(path):
        return compute()
    return _FusedValue.apply(compute, path)


def version(t: Tensor) -> int | Tensor:
    """What `untouched` compares against: `t`'s in-place edit counter, or for an inference-mode
    tensor (which has none) a copy of it."""
    return t.clone() if t.is_inference() else t._version


def untouched(seen: Tensor, shown: Tensor, before: int | Tensor) -> bool:
    """Whether a hook point returned `shown` (itself, or the view that carries backward hooks)
    without editing it; `before` is `version(shown)` taken before the hooks ran."""
    same = seen is shown or (
        seen.data_ptr() == shown.data_ptr()
        and seen.shape == shown.shape
        and seen.stride() == shown.stride()
    )
    if not same:
        return False
    if isinstance(before, Tensor):
        return torch.equal(seen, before)
    return seen._version == before


class HookValues:
    """Context in which a component computes the values it shows its hooks (a norm's scale,
    attention scores and pattern). Under inference mode they are made as normal tensors without
    autograd recording, so `version` reads their in-place edit counter instead of copying them
    (an inference tensor has no counter). With `detached=True` autograd does not record them
    either way: for values that only caching hooks see (they store them detached).

    Example:
        >>> with HookValues():
        ...     scale = rstd.reciprocal()     # a normal tensor even under torch.inference_mode()
    """

    __slots__ = ("_guard", "_detached", "_grad")

    def __init__(self, detached: bool = False) -> None:
        self._guard: Any = None
        self._detached, self._grad = detached, False

    def __enter__(self) -> HookValues:
        if torch.is_inference_mode_enabled():
            # the guard torch.inference_mode(False) holds; it also enables autograd, so switch
            # that off (deleting the guard restores both)
            self._guard = torch._C._InferenceMode(False)
            torch._C._set_grad_enabled(False)
        elif self._detached and torch.is_grad_enabled():
            self._grad = True
            torch._C._set_grad_enabled(False)
        return self

    def __exit__(self, *exc: object) -> None:
        self._guard = None
        if self._grad:
            self._grad = False
            torch._C._set_grad_enabled(True)
