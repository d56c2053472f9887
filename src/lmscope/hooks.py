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
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lmscope.memory import tune_malloc
from lmscope.utils import Slice, SliceInput

HookFn = Callable[..., Tensor | None]
NameFilter = None | str | Sequence[str] | Callable[[str], bool]
Direction = Literal["fwd", "bwd"]

_LAYER_RE = re.compile(r"blocks\.(\d+)\.")

# Hook lists are copy-on-write: a change builds a new list under this lock, so a forward pass
# iterating the old list in another thread never sees it change, and no concurrent change is lost.
# Changes write HookPoint.__dict__ directly (nn.Module.__setattr__ costs microseconds a call).
_EDIT_LOCK = threading.Lock()


class _ThreadState(threading.local):
    """Per-thread state: `silenced`, the hook points muted by `silenced()` in this thread."""

    silenced: frozenset[HookPoint] = frozenset()  # a class default: no AttributeError path


_LOCAL = _ThreadState()
_SILENCING = [0]  # how many `silenced()` blocks run, in all threads: while any, no fast path
_current_thread = threading.current_thread
_get_ident = threading.get_ident
_compiling = torch.compiler.is_compiling
_dynamo_compiling = torch.compiler.is_dynamo_compiling  # one call, not two: for the store path


class _StoreAll:
    """A `run_with_cache()` of every enabled hook point in progress (`_ALL`): the hook points
    that carry its `mark` store into `cache` in thread `ident`, without a hook attached to
    them (see `HookedRootModule._store_all`)."""

    __slots__ = ("cache", "ident", "mark", "level", "grad")

    def __init__(self, cache: dict[str, Tensor], ident: int, mark: object, level: int) -> None:
        self.cache, self.ident, self.mark, self.level = cache, ident, mark, level
        # whether an activation may require grad (else none is detached, nor asked)
        self.grad = not torch.is_inference_mode_enabled()


# The store-all run in progress, if any (one at a time in a process; another thread's
# run_with_cache meanwhile attaches its hooks as usual). A hook point reads it only when it has
# no hooks: one global load beside the `_who` check.
_ALL: _StoreAll | None = None
# Bumped whenever hook points lose the mark a model gave them (`setup()`, or another model
# marking them: an SAE's points are also its host model's), so each model re-marks its points.
_MARKS = [0]

# What a hook point's plan holds, in a compiled run, where a caching hook stores the activation: the
# compiled graph returns it, and the run's CacheHook stores it afterwards (see `lmscope.compiled`).
CAPTURE = object()


@dataclass(eq=False, slots=True)
class HookHandle:
    """A registered hook; `remove()` detaches it. Returned by `HookPoint.add_hook`.

    `owner` is the thread a scoped hook fires in (hooks of `run_with_hooks`, `run_with_cache` and
    the `hooks()` context); None for a global hook (`add_hook`), which fires in every thread.
    """

    hook_point: HookPoint
    fn: HookFn
    dir: Direction
    is_permanent: bool
    owner: threading.Thread | None = None
    context_level: int | None = None

    @property
    def user_hook(self) -> HookFn:
        """The hook function (TransformerLens's `LensHandle.user_hook`)."""
        return self.fn

    @property
    def hook(self) -> HookHandle:
        """This handle (TransformerLens code calls `handle.hook.remove()`)."""
        return self

    def remove(self) -> None:
        """Detach this hook (a no-op when it is already detached)."""
        _detach([self])

    def fires_in(self, thread: threading.Thread) -> bool:
        """Whether this hook runs in a forward pass on `thread`."""
        return self.owner is None or self.owner is thread


def _flags(
    fwd: list[HookHandle], bwd: list[HookHandle]
) -> tuple[threading.Thread | bool | None, tuple[Any, Any] | None, bool]:
    """A hook point's per-edit flags, worked out once when its hooks change so that a forward pass
    reads them with one attribute load each (see `HookPoint.fires`, `only_caches`, `__call__`):

    - `_who`: None without hooks; the thread every hook is scoped to; True when every hook is
      global (fires in every thread); False for a mix (each handle is checked).
    - `_store`: (cache, owner thread) when the one hook is a plain forward `CacheHook`, which
      `HookPoint.__call__` runs as a dict store without looking further (else None).
    - `_caching`: no backward hook and every forward hook a `CacheHook`."""
    if len(fwd) + len(bwd) == 1:  # the common case: one hook (run_with_cache's)
        only = fwd[0] if fwd else bwd[0]
        fn, owner = only.fn, only.owner
        caching = fn.__class__ is CacheHook and bool(fwd)
        store = (fn.cache, owner) if caching and fn.plain else None  # type: ignore[union-attr]
        return (True if owner is None else owner), store, caching
    if not fwd and not bwd:
        return None, None, True
    first = (fwd or bwd)[0].owner
    who: threading.Thread | bool = True if first is None else first
    caching = not bwd
    for h in fwd:  # plain loops: this runs for each of incl_bwd's handles
        if h.owner is not first:
            who = False
        if h.fn.__class__ is not CacheHook:
            caching = False
    for h in bwd:
        if h.owner is not first:
            who = False
            break
    return who, None, caching


def _set_hooks(attrs: dict[str, Any], key: str, hooks: list[HookHandle]) -> None:
    """Set a hook point's `key` ("_fwd" or "_bwd") hook list (`attrs`: its `__dict__`) and its
    flags (`_flags`)."""
    attrs[key] = hooks
    attrs["_who"], attrs["_store"], attrs["_caching"] = _flags(attrs["_fwd"], attrs["_bwd"])


def _attach(handles: list[HookHandle], prepend: bool = False) -> None:
    """Add each handle to its hook point's list, under one lock, in one pass. A handle alone at its
    point (each of run_with_cache's) sets the list and flags directly, the flags worked out once
    per hook function, thread and direction."""
    alone: dict[tuple[Any, Any, str], tuple[Any, Any, bool]] = {}
    with _EDIT_LOCK:
        for handle in handles:
            attrs, key = handle.hook_point.__dict__, "_fwd" if handle.dir == "fwd" else "_bwd"
            who = attrs.get("_who")
            if who is not None:  # hooks here already: the flags change by this one handle
                attrs[key] = [handle, *attrs[key]] if prepend else [*attrs[key], handle]
                if who is not (True if handle.owner is None else handle.owner):
                    attrs["_who"] = False
                attrs["_store"] = None  # a dict store only serves a lone hook
                caching = key == "_fwd" and handle.fn.__class__ is CacheHook
                attrs["_caching"] = attrs["_caching"] and caching
                continue
            lists = ([handle], []) if key == "_fwd" else ([], [handle])
            memo = (handle.fn, handle.owner, key)
            flags = alone.get(memo)
            if flags is None:
                flags = alone[memo] = _flags(*lists)
            attrs[key] = lists[key == "_bwd"]
            attrs["_who"], attrs["_store"], attrs["_caching"] = flags


def _detach(handles: list[HookHandle]) -> None:
    """Remove each handle from its hook point's list (if still there), under one lock."""
    with _EDIT_LOCK:
        for handle in handles:
            attrs, key = handle.hook_point.__dict__, "_fwd" if handle.dir == "fwd" else "_bwd"
            old = attrs[key]
            if len(old) == 1 and old[0] is handle:
                if not attrs["_bwd" if key == "_fwd" else "_fwd"]:  # it was the only hook
                    attrs["_who"] = None  # first: a forward in another thread now skips it
                    attrs[key], attrs["_store"], attrs["_caching"] = [], None, True
                else:
                    _set_hooks(attrs, key, [])
            elif handle in old:
                _set_hooks(attrs, key, [h for h in old if h is not handle])


def _rescope(handles: list[HookHandle], owner: threading.Thread | None) -> None:
    """Give each handle a new `owner` (and its hook point new flags), under one lock."""
    with _EDIT_LOCK:
        for handle in handles:
            handle.owner = owner
            attrs = handle.hook_point.__dict__
            attrs["_who"], attrs["_store"], attrs["_caching"] = _flags(attrs["_fwd"], attrs["_bwd"])


# How many hooks were ever given a context level other than by `hooks()` itself (add_hook's
# `level`). While none were, leaving a context need not search the model for hooks of its level.
_LEVELLED_ELSEWHERE = [0]


class CacheHook:
    """A hook that stores the activation (detached) in `cache` under the hook's name + `suffix`,
    on `device` and in `dtype`, without the batch dim, only `positions`: what `get_caching_hooks`
    returns. A hook point stores a plain one (no move, cast or slice) itself, without calling it,
    so caching every activation costs a dict store per hook point.

    Example:
        >>> cache = {}
        >>> model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", CacheHook(cache))])
        >>> cache["hook_embed"].shape
    """

    __slots__ = (
        "cache",
        "suffix",
        "device",
        "dtype",
        "non_blocking",
        "remove_batch_dim",
        "positions",
        "direct",
        "plain",
    )

    def __init__(
        self,
        cache: dict[str, Tensor],
        suffix: str = "",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
        remove_batch_dim: bool = False,
        positions: Slice | None = None,
    ) -> None:
        self.cache, self.suffix = cache, suffix
        self.device, self.dtype, self.non_blocking = device, dtype, non_blocking
        self.remove_batch_dim = remove_batch_dim
        self.positions = (
            positions if positions is not None and positions.mode != "identity" else None
        )
        self.direct = device is None and dtype is None and not remove_batch_dim
        self.direct = self.direct and self.positions is None  # stores the tensor as it is
        self.plain = self.direct and not suffix

    def __call__(self, tensor: Tensor, hook: HookPoint) -> None:
        self.cache[hook.name + self.suffix] = self.prepare(tensor, hook.name)  # type: ignore[operator]

    def prepare(self, tensor: Tensor, name: str | None) -> Tensor:
        """`tensor` as this hook stores it: detached, batch dim dropped, positions sliced, moved."""
        t = tensor.detach()
        if self.remove_batch_dim:
            t = t[0]
        if self.positions is not None and t.ndim >= -_pos_dim(name):  # type: ignore[arg-type]
            t = self.positions.apply(t, dim=_pos_dim(name))  # type: ignore[arg-type]
        if self.device is not None or self.dtype is not None:
            t = t.to(device=self.device, dtype=self.dtype, non_blocking=self.non_blocking)
        return t


def _any_fires_in(handles: list[HookHandle], thread: threading.Thread) -> bool:
    """Whether any of the handles fires in `thread` (a global one or one scoped to it)."""
    for handle in handles:
        if handle.owner is None or handle.owner is thread:
            return True
    return False


def _fn_name(fn: Any) -> str:
    """A hook function's name for error messages (its repr when it has no `__name__`)."""
    return repr(getattr(fn, "__name__", None) or fn)


def _check_hook_output(out: Any, like: Tensor, point: HookPoint, fn: Any, what: str) -> None:
    """Raise unless a hook's return value can replace `like`: a tensor of its shape, dtype and
    device (`what` is "activation" or "gradient")."""
    kind = "backward hook" if what == "gradient" else "hook"
    where = f"{kind} {_fn_name(fn)} on {point.name}"
    fix = f"return a tensor like the {what} (e.g. out.to(x)), or None after editing it in place"
    if not isinstance(out, Tensor):
        raise TypeError(
            f"{where} returned {type(out).__name__}, but a hook must return None or a tensor "
            f"of the {what}'s shape {tuple(like.shape)}, dtype {like.dtype} and device "
            f"{like.device}; {fix}"
        )
    wrong = [
        f"{field} {got}, but the {what} has {field} {want}"
        for field, got, want in (
            ("shape", tuple(out.shape), tuple(like.shape)),
            ("dtype", out.dtype, like.dtype),
            ("device", out.device, like.device),
        )
        if got != want
    ]
    if wrong:
        raise ValueError(f"{where} returned {'; '.join(wrong)}; {fix}")


def _check_dir(value: Any, arg: str, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming the allowed values unless `value` is one of them."""
    if value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        raise ValueError(f"{arg} must be {choices}, got {value!r}")


def _levels_match(handle: HookHandle, level: int | None) -> bool:
    """Whether `handle` belongs to context level `level` (None: every level)."""
    return level is None or handle.context_level == level


class HookPoint(nn.Module):
    """Identity module that calls `fn(activation, hook=self)` for each attached hook.

    A hook may return a tensor to replace the activation (same shape, dtype and device) or None to
    leave it. A backward hook receives the gradient of the activation and may return a
    replacement. A scoped hook (see `HookHandle.owner`) fires only in its own thread. `ctx` is a
    dict hooks may keep state in (`clear_context()` empties it), as in TransformerLens.
    """

    _plan: tuple[Any, ...] = ()  # a compiled run's hooks here (see `_run_plan`)
    # flags `_flags` works out whenever the hooks change
    _who: threading.Thread | bool | None = None
    _store: tuple[dict[str, Tensor], threading.Thread | None] | None = None
    _caching: bool = True
    # the mark of the model whose store-all runs store here (None: no store-all run does)
    _mark: object | None = None

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None
        self._fwd: list[HookHandle]
        self._bwd: list[HookHandle]
        self._captured: list[Tensor]
        self.ctx: dict[Any, Any]
        # Plain attributes, set past nn.Module.__setattr__ (its checks cost ~3 us each, and a
        # model has a thousand hook points). The flags say: no hooks yet.
        self.__dict__.update(
            name=None, _fwd=[], _bwd=[], _captured=[], ctx={}, _who=None, _store=None,
            _caching=True, _mark=None,
        )  # fmt: skip

    def __call__(self, x: Tensor) -> Tensor:
        if self._who is None:  # no hooks
            run = _ALL
            if run is None or run.mark is not self._mark:
                return x
            # a run_with_cache() of every point: a dict store in its thread (torch.compile
            # traces none: it sees `_dynamo_compiling()` first, which it knows, not
            # `_get_ident()`; a store-all run never runs under another tracer)
            if not _dynamo_compiling() and run.ident == _get_ident():
                if _SILENCING[0]:
                    return self._run_hooks(x)
                stored = x.detach() if run.grad and x.requires_grad else x
                run.cache[self.name] = stored  # type: ignore[index]
            return x
        store = self._store
        if store is not None and _ALL is None and not _SILENCING[0] and not _compiling():
            # The one hook is a plain CacheHook (what run_with_cache attaches): a dict store.
            cache, owner = store
            if owner is None or owner is _current_thread():
                cache[self.name] = x.detach() if x.requires_grad else x  # type: ignore[index]
            return x
        return self._run_hooks(x)

    def forward(self, x: Tensor) -> Tensor:
        return self(x)

    @property
    def fwd_hooks(self) -> list[HookHandle]:
        """The forward hooks' handles, in calling order (a snapshot)."""
        return list(self._fwd)

    @property
    def bwd_hooks(self) -> list[HookHandle]:
        """The backward hooks' handles (a snapshot)."""
        return list(self._bwd)

    def _run_hooks(self, x: Tensor) -> Tensor:
        """Run the hooks in order: a scoped one only in its owner's thread, a plain CacheHook as
        a dict store (no call; the activation itself when autograd does not track it, since
        `detach()` would share its memory anyway)."""
        if _compiling():
            return self._run_plan(x)
        if _LOCAL.silenced and self in _LOCAL.silenced:
            return x
        me = _current_thread()
        for handle in self._fwd:  # copy-on-write: never changes while it is iterated
            owner = handle.owner
            if owner is not None and owner is not me:
                continue
            fn = handle.fn
            if fn.__class__ is CacheHook and fn.plain:  # a dict store, without a call
                fn.cache[self.name] = x.detach() if x.requires_grad else x  # type: ignore[index]
                continue
            x = self._call(fn, x)
        run = _ALL
        if run is not None and run.mark is self._mark and run.ident == _get_ident():
            run.cache[self.name] = x.detach() if x.requires_grad else x  # type: ignore[index]
        bwd = [h for h in self._bwd if h.owner is None or h.owner is me] if self._bwd else ()
        if bwd and x.requires_grad:
            # A fresh view gives the hook a node of its own, so two hook points that see the
            # same tensor object (resid_post of layer l, resid_pre of l+1) each get called once.
            x = x.view_as(x)
            for handle in bwd:
                x.register_hook(_BackwardCall(handle.fn, self))
        return x

    def _is_silenced(self) -> bool:
        """Whether `silenced()` mutes this point in the calling thread."""
        return self in _LOCAL.silenced

    def _run_plan(self, x: Tensor) -> Tensor:
        """The hooks of a compiled run, traced into its graph: `_plan` (set by
        `lmscope.compiled` before the run, from the hooks that fire in its thread) in order;
        a caching hook's value becomes an output of the graph (`_captured`)."""
        for fn in self._plan:
            if fn is CAPTURE:
                self._captured.append(x.detach())
                continue
            x = self._call(fn, x)
        return x

    def _call(self, fn: HookFn, x: Tensor) -> Tensor:
        """Run hook `fn` on `x`; what it returns (a tensor like `x`, checked) replaces `x`."""
        out = fn(x, hook=self)
        if out is None:
            return x
        if out is not x:
            _check_hook_output(out, x, self, fn, "activation")
        return out

    def only_caches(self) -> bool:
        """Whether every hook that fires here in the calling thread is a forward `CacheHook`:
        it stores the value detached, so no gradient through this point can be seen (a hooked
        component then need not build the step-by-step autograd graph of its value).

        Example:
            >>> model.blocks[0].attn.hook_pattern.only_caches()
        """
        who = self._who
        if who is None:
            return True
        if who is True:  # every hook is global
            return self._caching
        if who is not False:  # every hook is scoped to thread `who`
            return self._caching or who is not _current_thread()
        me = _current_thread()
        if any(h.owner is None or h.owner is me for h in self._bwd):
            return False
        return all(type(h.fn) is CacheHook for h in self._fwd if h.owner is None or h.owner is me)

    def only_stores(self) -> bool:
        """Whether this point passes its input on untouched whatever it is: no hook, or one
        plain `CacheHook` (a dict store). A component then need not guard the values it shows
        here against edits (no edit detection, no autograd-free copies).

        Example:
            >>> model.blocks[0].ln1.hook_scale.only_stores()
        """
        return self._who is None or self._store is not None

    def fires(self) -> bool:
        """Whether a hook (forward or backward) fires here in the calling thread: what a component
        asks before it computes values only its hooks need (in a compiled run: whether the run's
        plan has a hook here).

        Example:
            >>> if attn.hook_pattern.fires(): ...   # materialise the pattern
        """
        who = self._who
        if who is None:
            run = _ALL
            return run is not None and run.mark is self._mark and self._stored_by(run)
        if _compiling():
            return bool(self._plan)
        if _SILENCING[0] and self in _LOCAL.silenced:
            return False
        if who is True:
            return True
        if who is False and self.has_hooks():
            return True
        if who is _current_thread():
            return True
        run = _ALL
        return run is not None and run.mark is self._mark and run.ident == _get_ident()

    def _stored_by(self, run: _StoreAll) -> bool:
        """Whether store-all run `run` (whose mark this point carries) stores here in the
        calling thread."""
        if _dynamo_compiling() or run.ident != _get_ident():  # (as `__call__` checks)
            return False
        return not (_SILENCING[0] and self in _LOCAL.silenced)

    def _edit(self, dir: Direction, change: Callable[[list[HookHandle]], list[HookHandle]]) -> None:
        """Replace the `dir` hook list by `change(old)`, atomically across threads."""
        attr = "_fwd" if dir == "fwd" else "_bwd"
        with _EDIT_LOCK:
            _set_hooks(self.__dict__, attr, change(self.__dict__[attr]))

    def add_hook(
        self,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
        *,
        thread_scoped: bool = False,
    ) -> HookHandle:
        """Attach `hook(tensor, hook=point)`; returns a handle whose `remove()` detaches it.

        Arguments as TransformerLens's: `dir` "fwd" or "bwd"; `is_permanent` hooks survive
        `reset_hooks()`; `level` is the `hooks()` context level the hook belongs to (removed
        with it); `prepend` runs it before the hooks already attached. With `thread_scoped=True`
        the hook fires only in forward passes run by the calling thread (what `run_with_hooks`,
        `run_with_cache` and `hooks()` use); otherwise in every thread.

        Example:
            >>> handle = model.blocks[0].hook_resid_pre.add_hook(lambda x, hook: x * 0)
            >>> handle.remove()
        """
        _check_dir(dir, "dir", ("fwd", "bwd"))
        if not callable(hook):
            raise TypeError(
                f"a hook must be a function fn(tensor, hook), got {type(hook).__name__} "
                f"for {self.name}"
            )
        owner = threading.current_thread() if thread_scoped else None
        handle = HookHandle(self, hook, dir, is_permanent, owner, level)
        if level is not None:
            _LEVELLED_ELSEWHERE[0] += 1
        _attach([handle], prepend)
        return handle

    def add_perma_hook(self, hook: HookFn, dir: Direction = "fwd") -> HookHandle:
        """Attach a hook that `reset_hooks()` keeps (unless `including_permanent=True`)."""
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(
        self,
        dir: Direction | Literal["both"] = "fwd",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Detach this point's hooks in `dir` ("fwd", "bwd" or "both"), as TransformerLens:
        permanent ones stay unless `including_permanent`; with `level`, only the hooks of that
        `hooks()` context level go (`including_permanent=True` removes every hook).

        Hooks scoped to another live thread (its `run_with_hooks` in progress) are left alone.
        """
        _check_dir(dir, "dir", ("fwd", "bwd", "both"))
        me = threading.current_thread()

        def keep(h: HookHandle) -> bool:
            if h.owner is not None and h.owner is not me and h.owner.is_alive():
                return True
            if including_permanent:
                return False
            return h.is_permanent or not _levels_match(h, level)

        for d in ("fwd", "bwd") if dir == "both" else (dir,):
            if all(keep(h) for h in (self._fwd if d == "fwd" else self._bwd)):
                continue  # nothing to remove: no lock, no new list
            self._edit(d, lambda hooks: [h for h in hooks if keep(h)])

    def has_hooks(
        self,
        dir: Direction | Literal["both"] = "both",
        including_permanent: bool = True,
        level: int | None = None,
    ) -> bool:
        """Whether a hook in `dir` would fire in the calling thread (permanent ones counted
        unless `including_permanent=False`; with `level`, only hooks of that context level)."""
        if dir != "both":
            _check_dir(dir, "dir", ("fwd", "bwd", "both"))
        run = _ALL
        if (
            run is not None
            and run.mark is self._mark
            and dir != "bwd"
            and (level is None or level == run.level)
            and self._stored_by(run)
        ):  # a run_with_cache() of every point stores here (a forward hook of its level)
            return True
        who = self._who
        if who is None:
            return False
        if _SILENCING[0] and self._is_silenced():
            return False
        me = _current_thread()
        if dir == "both" and including_permanent and level is None:
            if who is not False:  # every hook global (True) or scoped to one thread
                return who is True or who is me
            return _any_fires_in(self._fwd, me) or _any_fires_in(self._bwd, me)
        lists = {"fwd": (self._fwd,), "bwd": (self._bwd,), "both": (self._fwd, self._bwd)}[dir]
        return any(
            h.fires_in(me)
            and (including_permanent or not h.is_permanent)
            and _levels_match(h, level)
            for handles in lists
            for h in handles
        )

    def clear_context(self) -> None:
        """Empty `ctx`, the dict hooks keep state in."""
        self.ctx = {}

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
        fn = self.fn
        if fn.__class__ is CacheHook and fn.direct:  # a dict store, without a call
            fn.cache[self.point.name + fn.suffix] = grad.detach()  # type: ignore[operator]
            return None
        out = fn(grad, hook=self.point)
        if out is not None and out is not grad:
            _check_hook_output(out, grad, self.point, self.fn, "gradient")
        return out


@contextmanager
def silenced(points: Sequence[HookPoint]) -> Iterator[None]:
    """Run code in which `points` fire no hooks, in the calling thread only (other threads'
    forward passes still run their hooks there)."""
    before = _LOCAL.silenced
    _LOCAL.silenced = before | frozenset(points)
    with _EDIT_LOCK:
        _SILENCING[0] += 1
    try:
        yield
    finally:
        _LOCAL.silenced = before
        with _EDIT_LOCK:
            _SILENCING[0] -= 1


def _hook_pairs(hooks: Any, arg: str) -> list[tuple[Any, HookFn]]:
    """Check `fwd_hooks` / `bwd_hooks`: a list of `(name or filter, fn)` pairs."""
    bare = isinstance(hooks, tuple) and len(hooks) == 2 and callable(hooks[1])
    if bare and (isinstance(hooks[0], str) or callable(hooks[0])):
        name = repr(hooks[0]) if isinstance(hooks[0], str) else _fn_name(hooks[0])
        raise TypeError(
            f"{arg} must be a list of (name, fn) pairs, got a bare (name, fn) tuple "
            f"({name}, {_fn_name(hooks[1])}); wrap it in a list: {arg}=[(name, fn)]"
        )
    if isinstance(hooks, (str, bytes, dict)) or not isinstance(hooks, Iterable):
        raise TypeError(
            f"{arg} must be a list of (name, fn) pairs, got {type(hooks).__name__}; "
            f"pass {arg}=[(name, fn), ...]"
        )
    pairs = []
    for i, entry in enumerate(hooks):
        ok = isinstance(entry, (tuple, list)) and len(entry) == 2
        if not ok or not (isinstance(entry[0], str) or callable(entry[0])):
            raise TypeError(
                f"{arg}[{i}] must be a (name or name filter, fn) pair, got {entry!r}; "
                f"pass {arg}=[(name, fn), ...]"
            )
        if not callable(entry[1]):
            raise TypeError(
                f"{arg}[{i}] for {entry[0]!r}: the hook must be a function fn(tensor, hook), "
                f"got {type(entry[1]).__name__}"
            )
        pairs.append((entry[0], entry[1]))
    return pairs


class HookNotEnabledError(ValueError, AssertionError):
    """A hook added by name to a flag-gated hook point whose flag is off (it would never fire).

    TransformerLens raises an AssertionError there; this error is both that and a ValueError."""


def _as_filter(names: NameFilter) -> Callable[[str], bool]:
    """A name predicate from `names_filter`: None (all), a name, a list of names or a function."""
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    if not isinstance(names, (list, tuple, set, frozenset)) or not all(
        isinstance(n, str) for n in names
    ):
        raise ValueError(
            f"names_filter must be a string, list of strings, or function, got "
            f"{type(names).__name__}"
        )
    wanted = set(names)
    return lambda name: name in wanted


_PER_HEAD_SUFFIXES = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_z",
    "hook_result",
    "hook_rot_q",
    "hook_rot_k",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
    "hook_attn_in",
)


def _pos_dim(name: str) -> int:
    """Where the position axis of activation `name` is, counted from the end: -3 for per-head
    activations ([..., pos, head, d]), -2 otherwise (scores and patterns: the query position)."""
    return -3 if name.endswith(_PER_HEAD_SUFFIXES) else -2


class HookedRootModule(nn.Module):
    """Root module that names its hook points and runs models with hooks or caching.

    Subclasses call `setup()` at the end of `__init__` so `hook_dict` maps each hook name (its
    module path) to its HookPoint. The API is TransformerLens's (`add_hook`, `reset_hooks`,
    `hooks()` and its context levels, `run_with_hooks`, `run_with_cache`, ...), with hooks added
    by `hooks()`, `run_with_hooks` and `run_with_cache` scoped to the calling thread.
    """

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]
    is_caching: bool = False

    def setup(self) -> None:
        """Name every HookPoint after its module path and index modules and hooks by name."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name:
                self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                # plain attributes (see HookPoint.__init__); `_store_all` marks the points again
                module.__dict__.update(name=name, _mark=None)
                self.hook_dict[name] = module
        self.__dict__.pop("_enabled_names_memo", None)
        _MARKS[0] += 1

    def _hook_gate_key(self) -> Any:
        """What `_disabled_reason` depends on (e.g. config flags), so the enabled hook names are
        worked out once per state; None when unknown (worked out on every call). Subclasses that
        override `_disabled_reason` override this too."""
        same = type(self)._disabled_reason is HookedRootModule._disabled_reason
        return () if same else None

    def _enabled_names(self) -> list[str]:
        """The names of the hook points that fire now (all but flag-gated ones whose flag is
        off), in module order; remembered per `_hook_gate_key()` (do not mutate)."""
        key = self._hook_gate_key()
        memo = self.__dict__.get("_enabled_names_memo")
        if key is not None and memo is not None and memo[0] == key and memo[1] is self.hook_dict:
            return memo[2]
        names = [name for name in self.hook_dict if self._disabled_reason(name) is None]
        if key is not None:
            self.__dict__["_enabled_names_memo"] = (key, self.hook_dict, names)
        return names

    def _marked(self) -> object:
        """The mark this model's enabled hook points carry for its store-all runs (`_ALL`),
        marking them first when the enabled names changed or points lost their mark (`_MARKS`);
        flag-gated points whose flag is off, and points outside `hook_dict`, carry none."""
        names = self._enabled_names()
        attrs = self.__dict__
        mark = attrs.get("_store_mark")
        if mark is None:
            mark = attrs["_store_mark"] = object()
        marked = attrs.get("_marked_for")
        if marked is None or marked[0] is not names or marked[1] != _MARKS[0]:
            enabled = set(names)
            for name, point in self.hook_dict.items():
                old = point.__dict__.get("_mark")
                if old is not None and old is not mark:  # another model's mark: it re-marks
                    _MARKS[0] += 1
                point.__dict__["_mark"] = mark if name in enabled else None
            attrs["_marked_for"] = (names, _MARKS[0])
        return mark

    def _store_all(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        clear_contexts: bool,
    ) -> tuple[Any, dict[str, Tensor]] | None:
        """`run_with_cache()` of every enabled hook point without attaching a hook: while the
        forward runs, `_ALL` makes the points of this model store into a fresh cache in the
        calling thread (each a dict store; none of 200+ handles made, attached and detached).
        Returns (output, cache), or None when another thread's store-all run holds `_ALL`
        (the caller then attaches hooks as usual)."""
        global _ALL
        level = self.context_level + 1
        with _EDIT_LOCK:  # (marking under the lock: no two threads mark at once)
            if _ALL is not None:
                return None
            run = _ALL = _StoreAll({}, _get_ident(), self._marked(), level)
        try:
            self.__dict__["is_caching"] = True
            self.context_level = level
            out = self(*args, **kwargs)
        finally:
            _ALL = None
            self._exit_level([], level, True, clear_contexts)
        return out, run.cache

    @property
    def context_level(self) -> int:
        """How many `hooks()` contexts the calling thread is inside (TransformerLens's
        `context_level`; each thread counts its own)."""
        return self.__dict__.get("_context_levels", {}).get(threading.get_ident(), 0)

    @context_level.setter
    def context_level(self, value: int) -> None:
        levels = self.__dict__.setdefault("_context_levels", {})
        if value:
            levels[threading.get_ident()] = value
        else:
            levels.pop(threading.get_ident(), None)

    def hook_points(self) -> list[HookPoint]:
        """Every HookPoint of the model, in module order."""
        return list(self.hook_dict.values())

    def _resolve(self, name_or_filter: str | Callable[[str], bool]) -> list[HookPoint]:
        if callable(name_or_filter):
            return [hp for name, hp in self.hook_dict.items() if name_or_filter(name)]
        if name_or_filter in self.hook_dict:
            reason = self._disabled_reason(name_or_filter)
            if reason is not None:
                raise HookNotEnabledError(reason)
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

    def check_hooks_to_add(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Refuse a hook before it is added: a HookNotEnabledError when the point is gated by a
        flag that is off (override to add checks, as in TransformerLens)."""
        reason = self._disabled_reason(hook_point_name)
        if reason is not None:
            raise HookNotEnabledError(reason)

    def check_and_add_hook(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
        *,
        thread_scoped: bool = False,
    ) -> HookHandle:
        """Run `check_hooks_to_add`, then attach the hook to `hook_point`."""
        _check_dir(dir, "dir", ("fwd", "bwd"))
        self.check_hooks_to_add(hook_point, hook_point_name, hook, dir, is_permanent, prepend)
        return hook_point.add_hook(
            hook, dir, is_permanent, level, prepend, thread_scoped=thread_scoped
        )

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: Direction = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
        *,
        thread_scoped: bool = False,
    ) -> list[HookHandle]:
        """Attach `hook` to the hook point `name`, or to every point whose name passes a filter
        (each checked by `check_hooks_to_add`, as TransformerLens does).

        The hook is global (it fires in every thread) unless `thread_scoped=True`.

        Example:
            >>> [handle] = model.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)
        """
        _check_dir(dir, "dir", ("fwd", "bwd"))
        if isinstance(name, str):
            points = [(name, hp) for hp in self._resolve(name)]
        elif callable(name):
            points = [(n, hp) for n, hp in self.hook_dict.items() if name(n)]
        else:
            raise TypeError(f"name must be a hook name or a filter function, got {name!r}")
        for point_name, hp in points:  # every point checked before any hook is attached
            self.check_hooks_to_add(hp, point_name, hook, dir, is_permanent, prepend)
        return [
            hp.add_hook(hook, dir, is_permanent, level, prepend, thread_scoped=thread_scoped)
            for _, hp in points
        ]

    def add_perma_hook(
        self, name: str | Callable[[str], bool], hook: HookFn, dir: Direction = "fwd"
    ) -> list[HookHandle]:
        """Attach a hook that `reset_hooks()` keeps (unless `including_permanent=True`)."""
        return self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(
        self,
        direction: Direction | Literal["both"] = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """`remove_hooks(direction, including_permanent, level)` on every hook point."""
        _check_dir(direction, "direction", ("fwd", "bwd", "both"))
        for hp in self.hook_dict.values():
            if hp._fwd or hp._bwd:
                hp.remove_hooks(direction, including_permanent, level)

    def clear_contexts(self) -> None:
        """Empty every hook point's `ctx`."""
        for hp in self.hook_dict.values():
            hp.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Direction | Literal["both"] = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks, as TransformerLens: every non-permanent one (permanent ones too with
        `including_permanent`), in `direction` ("fwd", "bwd" or "both"), of one `hooks()`
        context `level` if given; `clear_contexts` empties the hook points' `ctx` first. Hooks
        scoped to another thread whose hooked run is still in progress are never removed.

        Example:
            >>> model.reset_hooks(including_permanent=True)
        """
        _check_dir(direction, "direction", ("fwd", "bwd", "both"))
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level)
        self.is_caching = False

    def list_hooks(
        self,
        name_filter: NameFilter = None,
        dir: Direction | Literal["both"] = "both",
        including_permanent: bool = True,
    ) -> dict[str, list[HookHandle]]:
        """The attached hooks' handles by hook name (points without hooks left out).

        Example:
            >>> model.list_hooks(dir="fwd")       # {'blocks.0.hook_resid_pre': [HookHandle(...)]}
        """
        _check_dir(dir, "dir", ("fwd", "bwd", "both"))
        keep = _as_filter(name_filter)
        out = {}
        for name, hp in self.hook_dict.items():
            if not keep(name):
                continue
            handles = [*(hp._fwd if dir != "bwd" else ()), *(hp._bwd if dir != "fwd" else ())]
            handles = [h for h in handles if including_permanent or not h.is_permanent]
            if handles:
                out[name] = handles
        return out

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedRootModule]:
        """Context manager: hooks are attached inside the block and removed on exit, even on error.

        As in TransformerLens, the block is one `context_level` deeper, its hooks belong to that
        level and on exit `reset_hooks(clear_contexts, level=...)` removes the level's hooks. The
        hooks fire only in forward passes run by the thread that entered the block, so other
        threads using the model meanwhile are unaffected. With `reset_hooks_end=False` they stay
        after the block as global hooks, like `add_hook`'s.

        Example:
            >>> with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", steer)]):
            ...     logits = model("Hello")
        """
        me = _current_thread()
        level = self.context_level + 1
        handles = [
            HookHandle(point, fn, dir, False, me, level)  # type: ignore[arg-type]
            for pairs, dir in (
                (_hook_pairs(fwd_hooks, "fwd_hooks"), "fwd"),
                (_hook_pairs(bwd_hooks, "bwd_hooks"), "bwd"),
            )
            for name, fn in pairs
            for point in self._resolve(name)
        ]  # every name resolved before any hook is attached
        self._enter_level(handles, level)
        try:
            yield self
        finally:
            self._exit_level(handles, level, reset_hooks_end, clear_contexts)

    def _enter_level(self, handles: list[HookHandle], level: int) -> None:
        """Enter `hooks()` context `level` with `handles` (scoped to the calling thread)."""
        self.context_level = level
        _attach(handles)

    def _exit_level(
        self, handles: list[HookHandle], level: int, reset_hooks_end: bool, clear_contexts: bool
    ) -> None:
        """Leave context `level`: detach `handles` and the level's other hooks (or, without
        `reset_hooks_end`, keep them as global hooks)."""
        try:
            if reset_hooks_end:
                _detach(handles)
                if _LEVELLED_ELSEWHERE[0]:  # hooks of this level may remain: remove them too
                    self.reset_hooks(clear_contexts, including_permanent=False, level=level)
                else:  # what reset_hooks does when the level's only hooks were `handles`
                    if clear_contexts:
                        self.clear_contexts()
                    self.__dict__["is_caching"] = False
            else:
                _rescope(handles, None)
        finally:
            self.context_level = level - 1

    def _forward(self, args: tuple[Any, ...], kwargs: dict[str, Any], compile: Any) -> Any:
        """`self(*args, **kwargs)`, compiled with the hooks in its graph when `compile` asks
        (see `lmscope.compiled.run_compiled`)."""
        if not compile:
            return self(*args, **kwargs)
        from lmscope.compiled import run_compiled

        return run_compiled(self, args, kwargs, compile)

    def _compile_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The forward's arguments as a compiled run takes them (checked and converted eagerly);
        raise `lmscope.compiled.NotCompilable` naming what a compiled run cannot take."""
        return args, kwargs

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        compile: bool | str | dict[str, Any] = False,
        **model_kwargs: Any,
    ) -> Any:
        """Run the forward pass with temporary hooks.

        Backward hooks attach to the autograd graph built during this forward pass, so they fire
        on a later `.backward()` even though the hooks are detached when the call returns (in
        TransformerLens they are already gone by then).

        `compile=True` runs the forward under `torch.compile` with the hooks traced into its
        graph (a torch.compile mode name or a dict of torch.compile arguments choose how; see
        `lmscope.compiled`); a hook that cannot be traced runs the call eagerly, with a warning.

        Example:
            >>> model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate)])
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self._forward(model_args, model_kwargs, compile)

    def add_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Add global hooks that fill `cache` on every later forward pass (until
        `reset_hooks()`); returns the cache. `run_with_cache` is usually what you want.

        Example:
            >>> cache = model.add_caching_hooks("blocks.0.hook_resid_post")
            >>> _ = model("Hello"); model.reset_hooks()
        """
        cache, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim, cache
        )
        for hooks, dir in ((fwd, "fwd"), (bwd, "bwd")):
            for name, fn in hooks:
                self.hook_dict[name].add_hook(fn, dir)  # type: ignore[arg-type]
        return cache

    def cache_all(
        self,
        cache: dict[str, Tensor] | None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> dict[str, Tensor]:
        """Deprecated in TransformerLens: `add_caching_hooks()` of every hook point."""
        warnings.warn(
            "cache_all is deprecated, use add_caching_hooks or run_with_cache",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(
        self,
        cache: dict[str, Tensor] | None,
        names: Callable[[str], bool],
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> dict[str, Tensor]:
        """Deprecated in TransformerLens: `add_caching_hooks(names)`."""
        warnings.warn(
            "cache_some is deprecated, use add_caching_hooks or run_with_cache",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)

    def _caching_names(self, names_filter: NameFilter) -> list[str]:
        """The enabled hook names that pass `names_filter`, in module order; a misspelt or
        flag-gated name in it raises (do not mutate the result)."""
        if isinstance(names_filter, str):
            self._resolve(names_filter)  # fail early on a misspelt name
        elif isinstance(names_filter, (list, tuple, set)):
            for name in names_filter:
                self._resolve(name)
        enabled = self._enabled_names()
        if names_filter is None:
            return enabled
        keep = _as_filter(names_filter)
        return [name for name in enabled if keep(name)]

    def get_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
        pos_slice: Slice | SliceInput = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFn]], list[tuple[str, HookFn]]]:
        """Hooks that store detached activations (and gradients as `name + '_grad'`) in `cache`.

        Each activation moves to `device` and `dtype` as soon as it is made, so a cache offloaded
        from a GPU never holds more than one activation there. `non_blocking=True` queues those
        copies without waiting (the caller must synchronise before reading the cache, as
        `run_with_cache` does). `pos_slice` keeps only those positions (a `Slice` or what makes
        one), on the position axis of each activation, as TransformerLens. The hooks are
        `CacheHook`s, which hook points store without a call.

        Example:
            >>> cache, fwd, bwd = model.get_caching_hooks(lambda name: "resid" in name)
        """
        cache = {} if cache is None else cache
        positions = Slice.unwrap(pos_slice)
        names = self._caching_names(names_filter)
        self.__dict__["is_caching"] = True
        options = (device, dtype, non_blocking, remove_batch_dim, positions)
        save = CacheHook(cache, "", *options)
        fwd: list[tuple[str, HookFn]] = [(name, save) for name in names]
        bwd: list[tuple[str, HookFn]] = []
        if incl_bwd:
            save_grad = CacheHook(cache, "_grad", *options)
            bwd = [(name, save_grad) for name in names]
        return cache, fwd, bwd

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NameFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Slice | SliceInput = None,
        return_cache_object: bool = True,
        cache_dtype: torch.dtype | None = None,
        compile: bool | str | dict[str, Any] = False,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and return `(output, cache)` of the activations that pass `names_filter`.

        With `incl_bwd=True` the output (a scalar, e.g. `return_type="loss"`) is back-propagated
        and gradients are stored as `name + "_grad"`. `device="cpu"` offloads each activation as
        it is made (GPU memory then holds one at a time; copies overlap the forward), and
        `cache_dtype` (e.g. `torch.bfloat16`) stores the cache in a smaller dtype. `pos_slice`
        keeps only some positions (`pos_slice=-1`: the last), as TransformerLens. `compile=True`
        runs the forward under `torch.compile`, the cached activations returned by its graph
        (see `run_with_hooks` and `lmscope.compiled`). Caching every point as it is (none of
        those options) attaches no hooks: the points store while the forward runs in this
        thread (`_store_all`), so `list_hooks()` inside the run shows no caching hooks.

        Example:
            >>> logits, cache = model.run_with_cache("Hello", names_filter=lambda n: "resid" in n)
            >>> cache["resid_post", 3].shape
        """
        tune_malloc()  # once: freed caches are kept for the next run (lmscope.memory)
        if (
            names_filter is None
            and reset_hooks_end
            and not (incl_bwd or compile or remove_batch_dim)
            and device is None
            and pos_slice is None
            and cache_dtype is None
        ):  # every point, stored as it is: no hooks attached (`_store_all`)
            done = self._store_all(model_args, model_kwargs, clear_contexts)
            if done is not None:
                out, cache = done
                return (out, self._make_cache(cache)) if return_cache_object else (out, cache)
        offload = device is not None and torch.device(device).type == "cpu"
        gpus = {p.device for p in self.parameters() if p.is_cuda} if offload else set()
        cache, fwd, bwd = self.get_caching_hooks(
            names_filter,
            incl_bwd,
            device,
            remove_batch_dim,
            pos_slice=pos_slice,
            dtype=cache_dtype,
            non_blocking=bool(gpus),
        )
        me, level, points = _current_thread(), self.context_level + 1, self.hook_dict
        handles = [HookHandle(points[name], fn, "fwd", False, me, level) for name, fn in fwd]
        handles += [HookHandle(points[name], fn, "bwd", False, me, level) for name, fn in bwd]
        self._enter_level(handles, level)
        try:
            out = self._forward(model_args, model_kwargs, compile)
            if incl_bwd:
                if not isinstance(out, Tensor) or out.numel() != 1:
                    raise ValueError("incl_bwd=True needs a scalar output: pass return_type='loss'")
                out.backward()
        finally:
            self._exit_level(handles, level, reset_hooks_end, clear_contexts)
        for gpu in gpus:  # every GPU a spread model runs on has queued copies
            torch.cuda.synchronize(gpu)  # the device-to-host copies are now complete
        if return_cache_object:
            return out, self._make_cache(cache)
        return out, cache

    def _make_cache(self, cache: dict[str, Tensor]) -> Any:
        """Wrap a raw cache dict; HookedTransformer returns an ActivationCache."""
        return cache
