"""Compiled hooked runs: `run_with_cache(..., compile=True)` and `run_with_hooks(..., compile=True)`.

An eager hooked run on a GPU is launch-bound: every hook point is a Python call and every hooked
value its own kernels. A compiled run traces the forward with its hooks into one graph
(`torch.compile(fullgraph=True)`): a hook is an operation of the graph, so Inductor fuses it with
its neighbours, and a cached activation is an output of the graph, stored once the graph has run.
`compile="reduce-overhead"` also replays the graph as a CUDA graph (one launch per run; the
cached values come out of the graph's memory as one flat copy). The patching sweeps take the same
argument (`lmscope.analysis.patching.generic_activation_patch`).

What a compiled run needs, and what it does when it does not get it:
- Fixed shapes: each new input shape (or `start_at_layer`, `stop_at_layer`, `return_type`) is
  compiled once and reused; the first call of each takes seconds.
- Hooks torch.compile can trace: tensor operations, in place or returning a new tensor, reading
  Python values and tensors from their closure. The same hook function objects must come back
  on later calls for the compiled graph to be reused (a new lambda per call compiles anew; keep
  the hook and change the tensors it reads). A hook torch.compile cannot trace (`print`, I/O,
  other Python it does not model) makes the run fall back to eager, with a one-line
  `CompileFallbackWarning` naming the reason and the hook (such a hook may run once more while
  torch.compile tries it).
- No backward hooks (`incl_bwd`, `bwd_hooks`), no padding attention mask, no KV cache, one
  device: such a run is eager (with the warning).

Values equal the eager run's to float rounding (<= 1e-5 in float32): the compiled graph computes
a hooked norm and attention step by step (its hooks see and may edit every value), where eager
hooked runs pass the fused kernels' output on.

Example:
    >>> logits, cache = model.run_with_cache(tokens, compile=True)   # compiles on the first call
    >>> logits, cache = model.run_with_cache(tokens, compile=True)   # replays the compiled graph
"""

from __future__ import annotations

import math
import re
import threading
import types
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmscope.hooks import _LOCAL, CAPTURE, CacheHook, HookPoint

if TYPE_CHECKING:
    from lmscope.hooks import HookedRootModule

CompileOption = bool | str | dict[str, Any]


class CompileFallbackWarning(UserWarning):
    """A `compile=...` run ran eagerly; the message names the reason."""


class NotCompilable(Exception):
    """Raised by `_compile_inputs` (and here) with the reason a run cannot be compiled."""


def compile_kwargs(option: CompileOption) -> dict[str, Any]:
    """`torch.compile` arguments for a `compile=` value: True (defaults), a mode name
    ("reduce-overhead", "max-autotune", ...) or a dict of torch.compile arguments.

    Example:
        >>> compile_kwargs("reduce-overhead")
        {'fullgraph': True, 'dynamic': False, 'mode': 'reduce-overhead'}
    """
    kwargs: dict[str, Any] = {"fullgraph": True, "dynamic": False}
    if option is True:
        return kwargs
    if isinstance(option, str):
        return {**kwargs, "mode": option}
    if isinstance(option, dict):
        return {**kwargs, **option}
    raise TypeError(
        f"compile must be True, a torch.compile mode name or a dict of torch.compile arguments, "
        f"got {option!r}"
    )


def _key(kwargs: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in kwargs.items()))


def _compiled_forward(root: HookedRootModule, kwargs: dict[str, Any]) -> Any:
    """The model's forward compiled with `kwargs`, made once per model and options; with CUDA
    graphs, `_forward_gathering` (what the hooks captured comes back as one flat tensor).

    torch.compile keeps compiled graphs per code object, up to a recompile limit (8), so every
    model and options get a function of their own (a copy of the code): one model's hook sets
    and shapes never use up another's limit."""
    store = root.__dict__.setdefault("_compiled_forwards", {})
    gathering = _uses_cudagraphs(kwargs)
    key = (_key(kwargs), gathering)
    if key not in store:
        fn = _forward_gathering if gathering else type(root).forward
        own = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        own.__kwdefaults__ = fn.__kwdefaults__
        store[key] = torch.compile(types.MethodType(own, root), **kwargs)
    return store[key]


def _forward_gathering(root: HookedRootModule, *args: Any, **kwargs: Any) -> Any:
    """The forward, then the tensors the hook points captured (`_capture_points`, in order)
    gathered into one flat tensor and their shapes: out of a CUDA graph's memory, which its next
    replay reuses, one copy then serves the whole cache (or, for mixed dtypes, the tensors)."""
    out = root.forward(*args, **kwargs)
    values = [t for point in root._capture_points for t in point._captured]
    for point in root._capture_points:
        point._captured.clear()
    if not values or any(v.dtype != values[0].dtype for v in values):
        return out, None, values
    return out, torch.cat([v.reshape(-1) for v in values]), [v.shape for v in values]


def _ungathered(flat: Tensor | None, shapes_or_values: list[Any]) -> list[Tensor]:
    """The captured tensors back from `_forward_gathering`, copied out of the graph's memory:
    views of one copy of the flat tensor, or (mixed dtypes) one copy each."""
    if flat is None:
        return [v.clone() for v in shapes_or_values]
    sizes = [math.prod(shape) for shape in shapes_or_values]
    parts = flat.clone().split(sizes)
    return [part.view(shape) for part, shape in zip(parts, shapes_or_values, strict=True)]


def _lock(root: HookedRootModule) -> threading.Lock:
    """One compiled run at a time per model: a run's plan lives on the shared hook points."""
    lock = root.__dict__.get("_compile_lock")
    if lock is None:
        lock = root.__dict__.setdefault("_compile_lock", threading.Lock())
    return lock


def _plan(root: HookedRootModule) -> list[tuple[HookPoint, list[Any]]]:
    """The hook functions that fire in this thread at each hooked point, in order (raises
    NotCompilable for a backward hook)."""
    me = threading.current_thread()
    silenced = _LOCAL.silenced
    planned = []
    for point in root.hook_dict.values():
        if not point._fwd and not point._bwd:
            continue
        if point in silenced:
            planned.append((point, []))
            continue
        if any(h.fires_in(me) for h in point._bwd):
            raise NotCompilable(
                f"a backward hook on {point.name} (incl_bwd or bwd_hooks): torch.compile does not "
                "capture tensor hooks"
            )
        planned.append((point, [h.fn for h in point._fwd if h.fires_in(me)]))
    return planned


def _signature(
    options: dict[str, Any],
    planned: list[tuple[HookPoint, list[Any]]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Any, ...]:
    """What a failed compilation is remembered by: options, hook functions, argument shapes."""

    def describe(value: Any) -> Any:
        if isinstance(value, Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device)
        return repr(value)[:200]

    hooks = tuple(
        (point.name, tuple(None if type(fn) is CacheHook else id(fn) for fn in fns))
        for point, fns in planned
    )
    inputs = tuple(describe(a) for a in args) + tuple(
        (k, describe(v)) for k, v in sorted(kwargs.items())
    )
    return _key(options), hooks, inputs


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _reason(exc: BaseException) -> str:
    """A torch.compile error in one line: its first line, its explanation and the innermost
    frame of the traced code (the hook that could not be traced, usually)."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    text = lines[0] if lines else ""
    explanation = [line for line in lines if line.startswith("Explanation:")]
    if explanation:
        text += " (" + explanation[0].removeprefix("Explanation:").strip() + ")"
    frames = _FRAME.findall(str(exc))
    if frames:
        path, line, name = frames[-1]
        text += f" in {name} at {path.rsplit('/', 1)[-1]}:{line}"
    return f"{type(exc).__name__}: {text}"[:400]


def _uses_cudagraphs(kwargs: dict[str, Any]) -> bool:
    mode = kwargs.get("mode") or ""
    return "reduce-overhead" in mode or ("max-autotune" in mode and "no-cudagraphs" not in mode)


def _cloned(out: Any) -> Any:
    """`out` with its tensors copied out of a CUDA graph's memory (the next replay reuses it)."""
    if isinstance(out, Tensor):
        return out.clone()
    if isinstance(out, tuple):
        return tuple(_cloned(o) for o in out)
    return out


def run_compiled(
    root: HookedRootModule, args: tuple[Any, ...], kwargs: dict[str, Any], option: CompileOption
) -> Any:
    """`root(*args, **kwargs)` under torch.compile with the attached hooks traced into the graph
    (see the module docstring); eager, with a `CompileFallbackWarning`, when it cannot be.

    Example:
        >>> with model.hooks(fwd_hooks=[("blocks.0.attn.hook_z", ablate)]):
        ...     logits = run_compiled(model, (tokens,), {}, True)
    """
    options = compile_kwargs(option)
    try:
        args, kwargs = root._compile_inputs(args, kwargs)
        planned = _plan(root)
    except NotCompilable as exc:
        return _eager(root, args, kwargs, str(exc))
    failures = root.__dict__.setdefault("_compile_failures", {})
    signature = _signature(options, planned, args, kwargs)
    if signature in failures:  # failed before: not traced again (it takes seconds)
        return _eager(root, args, kwargs, failures[signature])
    forward = _compiled_forward(root, options)
    graphs = _uses_cudagraphs(options)
    with _lock(root):
        for point, fns in planned:
            point.__dict__["_plan"] = tuple(CAPTURE if type(fn) is CacheHook else fn for fn in fns)
            point._captured.clear()
        root.__dict__["_capture_points"] = tuple(point for point, _ in planned)
        try:
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
                out, flat, gathered = forward(*args, **kwargs)
                out, values = _cloned(out), _ungathered(flat, gathered)
            else:
                out = forward(*args, **kwargs)
                values = [t for point, _ in planned for t in point._captured]
            captured = _by_point(planned, values)
        except torch._dynamo.exc.TorchDynamoException as exc:
            captured = None
            reason = _reason(exc)
        finally:
            for point, _ in planned:
                point.__dict__.pop("_plan", None)
                point._captured.clear()  # the same list: the compiled code's guards check it
    if captured is None:
        if len(failures) >= 64:
            failures.clear()
        failures[signature] = reason
        return _eager(root, args, kwargs, reason)
    for point, stores, taken in captured:
        for fn, value in zip(stores, taken, strict=True):
            fn.cache[point.name + fn.suffix] = fn.prepare(value, point.name)  # type: ignore[operator]
    return out


def _by_point(
    planned: list[tuple[HookPoint, list[Any]]], values: list[Tensor]
) -> list[tuple[HookPoint, list[CacheHook], list[Tensor]]]:
    """The captured `values` (in plan order) dealt to each point's caching hooks; none when
    torch.compile ran the call eagerly (its recompile limit, say: the hooks stored already)."""
    stores = [(point, [fn for fn in fns if type(fn) is CacheHook]) for point, fns in planned]
    if len(values) != sum(len(s) for _, s in stores):
        return []
    it = iter(values)
    return [(point, s, [next(it) for _ in s]) for point, s in stores]


def _eager(root: HookedRootModule, args: tuple[Any, ...], kwargs: dict[str, Any], why: str) -> Any:
    warnings.warn(f"compile: ran eagerly: {why}", CompileFallbackWarning, stacklevel=5)
    return root(*args, **kwargs)
