"""Hook points: named places in a model where a function can read or replace an activation.

A `HookPoint` is an identity module placed on every activation worth seeing. With no hook attached,
calling it returns its input after one attribute check (no module machinery, no allocation). A
`HookedRootModule` names its hook points after their module path and offers the TransformerLens
verbs: `add_hook`, `reset_hooks`, the `hooks(...)` context manager, `run_with_hooks` and
`run_with_cache`.

Example:
    >>> def kill_head_3(z, hook):
    ...     z[:, :, 3] = 0.0
    >>> logits = model.run_with_hooks("Hello", fwd_hooks=[("blocks.0.attn.hook_z", kill_head_3)])
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

HookFn = Callable[..., Tensor | None]
NameFilter = None | str | Sequence[str] | Callable[[str], bool]
Direction = Literal["fwd", "bwd"]

_LAYER_RE = re.compile(r"blocks\.(\d+)\.")


@dataclass(eq=False)
class HookHandle:
    """A registered hook; `remove()` detaches it. Returned by `HookPoint.add_hook`."""

    hook_point: HookPoint
    fn: HookFn
    dir: Direction
    is_permanent: bool

    def remove(self) -> None:
        hooks = self.hook_point._fwd if self.dir == "fwd" else self.hook_point._bwd
        if self in hooks:
            hooks.remove(self)


class HookPoint(nn.Module):
    """Identity module that calls `fn(activation, hook=self)` for each attached hook.

    A hook may return a tensor to replace the activation (same shape) or None to leave it. A
    backward hook receives the gradient of the activation and may return a replacement.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self._fwd: list[HookHandle] = []
        self._bwd: list[HookHandle] = []

    def __call__(self, x: Tensor) -> Tensor:
        if not self._fwd and not self._bwd:
            return x
        return self._run_hooks(x)

    def forward(self, x: Tensor) -> Tensor:
        return self(x)

    def _run_hooks(self, x: Tensor) -> Tensor:
        for handle in tuple(self._fwd):
            out = handle.fn(x, hook=self)
            if out is not None:
                if not isinstance(out, Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook {getattr(handle.fn, '__name__', handle.fn)!r} on {self.name} "
                        f"returned shape {got}, but the activation has shape {tuple(x.shape)}; "
                        "return a tensor of the same shape, or None after editing in place"
                    )
                x = out
        if self._bwd and x.requires_grad:
            # A fresh view gives the hook a node of its own, so two hook points that see the
            # same tensor object (resid_post of layer l, resid_pre of l+1) each get called once.
            x = x.view_as(x)
            for handle in tuple(self._bwd):
                x.register_hook(_BackwardCall(handle.fn, self))
        return x

    def add_hook(
        self,
        fn: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> HookHandle:
        """Attach `fn(tensor, hook)`; returns a handle whose `remove()` detaches it."""
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        handle = HookHandle(self, fn, dir, is_permanent)
        hooks = self._fwd if dir == "fwd" else self._bwd
        hooks.insert(0, handle) if prepend else hooks.append(handle)
        return handle

    def remove_hooks(
        self, dir: Direction | Literal["both"] = "fwd", including_permanent: bool = False
    ) -> None:
        """Detach this point's hooks in `dir`; permanent ones stay unless asked."""
        dirs = ("fwd", "bwd") if dir == "both" else (dir,)
        for d in dirs:
            hooks = self._fwd if d == "fwd" else self._bwd
            hooks[:] = [h for h in hooks if h.is_permanent and not including_permanent]

    def has_hooks(self) -> bool:
        """True when any forward or backward hook is attached."""
        return bool(self._fwd or self._bwd)

    def layer(self) -> int:
        """The block index in this hook's name (`blocks.3.attn.hook_z` -> 3)."""
        match = _LAYER_RE.match(self.name or "")
        if match is None:
            raise ValueError(f"hook {self.name!r} is not inside a block, so it has no layer")
        return int(match.group(1))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, fwd={len(self._fwd)}, bwd={len(self._bwd)}"


class _BackwardCall:
    """Calls a backward hook as `fn(grad, hook=point)`; its return value replaces the gradient."""

    def __init__(self, fn: HookFn, point: HookPoint) -> None:
        self.fn, self.point = fn, point

    def __call__(self, grad: Tensor) -> Tensor | None:
        out = self.fn(grad, hook=self.point)
        if out is not None and out.shape != grad.shape:
            raise ValueError(
                f"backward hook on {self.point.name} returned shape {tuple(out.shape)}, "
                f"but the gradient has shape {tuple(grad.shape)}"
            )
        return out


def _as_filter(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


class HookedRootModule(nn.Module):
    """Root module that names its hook points and runs models with hooks or caching.

    Subclasses call `setup()` at the end of `__init__` so `hook_dict` maps each hook name (its
    module path) to its HookPoint.
    """

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def setup(self) -> None:
        """Name every HookPoint after its module path and index modules and hooks by name."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name:
                self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    # -- finding hook points ---------------------------------------------------------------
    def hook_points(self) -> list[HookPoint]:
        return list(self.hook_dict.values())

    def _resolve(self, name_or_filter: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name_or_filter):
            return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]
        if name_or_filter in self.hook_dict:
            reason = self._disabled_reason(name_or_filter)
            if reason is not None:
                raise ValueError(reason)
            return [self.hook_dict[name_or_filter]]
        raise KeyError(self._unknown_hook_message(name_or_filter))

    def _disabled_reason(self, name: str) -> str | None:
        """Why the hook point `name` would never fire now (None when it fires)."""
        return None

    def _unknown_hook_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.hook_dict.keys(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return (
            f"no hook point named {name!r} in this model.{hint} "
            "`model.hook_dict.keys()` lists them all; `lmscope.utils.get_act_name` builds names."
        )

    # -- adding and removing ---------------------------------------------------------------
    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> list[HookHandle]:
        """Attach `hook` to the hook point `name`, or to every point whose name passes a filter."""
        return [hp.add_hook(hook, dir, is_permanent, prepend) for hp in self._resolve(name)]

    def add_perma_hook(
        self, name: str | Callable[[str], bool], hook: HookFn, dir: Direction = "fwd"
    ) -> list[HookHandle]:
        """Attach a hook that `reset_hooks()` keeps (unless `including_permanent=True`)."""
        return self.add_hook(name, hook, dir, is_permanent=True)

    def reset_hooks(
        self, including_permanent: bool = False, direction: Direction | Literal["both"] = "both"
    ) -> None:
        """Remove every hook (permanent ones only when asked)."""
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
    ) -> Iterator[HookedRootModule]:
        """Context manager: hooks are attached inside the block and removed on exit, even on error.

        Example:
            >>> with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", steer)]):
            ...     logits = model("Hello")
        """
        handles: list[HookHandle] = []
        try:
            for name, fn in fwd_hooks:
                handles += self.add_hook(name, fn, "fwd")
            for name, fn in bwd_hooks:
                handles += self.add_hook(name, fn, "bwd")
            yield self
        finally:
            if reset_hooks_end:
                for handle in handles:
                    handle.remove()

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        **model_kwargs: Any,
    ) -> Any:
        """Run the forward pass with temporary hooks.

        Backward hooks attach to the autograd graph built during this forward pass, so they fire
        on a later `.backward()` even though the hooks are detached when the call returns (in
        TransformerLens they are already gone by then).
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            return self(*model_args, **model_kwargs)

    def get_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """Hooks that store detached activations (and gradients as `name + '_grad'`) in `cache`.

        Each activation moves to `device` and `dtype` as soon as it is made, so a cache offloaded
        from a GPU never holds more than one activation there. `non_blocking=True` queues those
        copies without waiting (the caller must synchronise before reading the cache, as
        `run_with_cache` does)."""
        cache = {} if cache is None else cache
        keep = _as_filter(names_filter)
        if isinstance(names_filter, str):
            self._resolve(names_filter)  # fail early on a misspelt name
        elif isinstance(names_filter, (list, tuple, set)):
            for name in names_filter:
                self._resolve(name)

        def store(suffix: str) -> HookFn:
            def save(tensor: Tensor, hook: HookPoint) -> None:
                t = tensor.detach()
                if remove_batch_dim:
                    t = t[0]
                if device is not None or dtype is not None:
                    t = t.to(device=device, dtype=dtype, non_blocking=non_blocking)
                cache[hook.name + suffix] = t  # type: ignore[operator]

            return save

        names = [
            name for name in self.hook_dict if keep(name) and self._disabled_reason(name) is None
        ]
        save, save_grad = store(""), store("_grad")
        fwd = [(name, save) for name in names]
        bwd = [(name, save_grad) for name in names] if incl_bwd else []
        return cache, fwd, bwd

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        return_cache_object: bool = True,
        cache_dtype: torch.dtype | None = None,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and return `(output, cache)` of the activations that pass `names_filter`.

        With `incl_bwd=True` the output (a scalar, e.g. `return_type="loss"`) is back-propagated
        and gradients are stored as `name + "_grad"`. `device="cpu"` offloads each activation as
        it is made (GPU memory then holds one at a time; copies overlap the forward), and
        `cache_dtype` (e.g. `torch.bfloat16`) stores the cache in a smaller dtype.

        Example:
            >>> logits, cache = model.run_with_cache("Hello", names_filter=lambda n: "resid" in n)
            >>> cache["resid_post", 3].shape
        """
        offload = device is not None and torch.device(device).type == "cpu"
        non_blocking = offload and any(p.is_cuda for p in self.parameters())
        cache, fwd, bwd = self.get_caching_hooks(
            names_filter,
            incl_bwd,
            device,
            remove_batch_dim,
            dtype=cache_dtype,
            non_blocking=non_blocking,
        )
        with self.hooks(fwd, bwd, reset_hooks_end=reset_hooks_end):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(out, Tensor) or out.numel() != 1:
                    raise ValueError("incl_bwd=True needs a scalar output: pass return_type='loss'")
                out.backward()
        if non_blocking:
            torch.cuda.synchronize()  # the queued device-to-host copies are now complete
        if return_cache_object:
            return out, self._make_cache(cache)
        return out, cache

    def _make_cache(self, cache: dict[str, Tensor]) -> Any:
        """Wrap a raw cache dict; HookedTransformer returns an ActivationCache."""
        return cache
