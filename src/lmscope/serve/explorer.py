"""What `lmscope serve` computes, without any web code: each panel's figure (from `lmscope.viz`)
and the values behind it, for one model fixed at start.

Every request's fields are validated here (`RequestError`: a 4xx with a message); hooked runs are
serialised by one lock, and at most `max_pending` requests may wait for it (`BusyError`: 503).
A prompt's run (`run_with_cache`) and each panel's result are kept in small LRU caches, so
switching panels or re-drawing one does not recompute.
"""

from __future__ import annotations

import functools
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int

from lmscope import viz
from lmscope.analysis import patching
from lmscope.cache import ActivationCache
from lmscope.model import HookedTransformer


class RequestError(ValueError):
    """A request the explorer will not run: the message says which field is wrong and why."""

    status = 400


class BusyError(RuntimeError):
    """Too many requests are already waiting for the model: try again shortly."""

    status = 503


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (the CLI and `lmscope.serve` take them as options)."""

    max_prompt_tokens: int = 128  # also capped by the model's context
    max_prompt_chars: int = 2000
    max_patch_tokens: int = 24  # patching runs layers x positions forwards
    max_k: int = 20
    max_new_tokens: int = 40
    max_pending: int = 8  # requests waiting for (or holding) the model lock
    cached_runs: int = 4  # prompts whose full cache is kept (~50 MB each for 32 tokens of SmolLM2)


@dataclass
class Run:
    """One prompt's cached forward: tokens [1, pos], their strings, logits and the full cache."""

    tokens: Int[torch.Tensor, "1 pos"]
    str_tokens: list[str]
    logits: Float[torch.Tensor, "1 pos vocab"]
    cache: ActivationCache


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        raise RequestError(f"missing field {name!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        want = {int: "an integer", float: "a number", str: "a string"}[kind]
        raise RequestError(f"{name!r} must be {want}, got {json.dumps(value)[:40]}")
    return value


def _int_in(body: dict[str, Any], name: str, low: int, high: int, default: Any = None) -> int:
    value = _field(body, name, int, default)
    if not low <= value <= high:
        raise RequestError(f"{name!r} is {value}; it must be between {low} and {high}")
    return value


def _held(method: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run a panel method with the model held (validation too: the tokenizer is not
    thread-safe)."""

    @functools.wraps(method)
    def held(self: Explorer, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        with self._slot():
            return method(self, body)

    return held


class Explorer:
    """The explorer's computations over one model (fixed for the explorer's life).

    Each public method takes a request body (a dict decoded from JSON) and returns a JSON-able
    dict: `html` (the panel's `lmscope.viz` figure as a fragment, when it has one) and the values
    shown, which the browser tests compare with the Python API.

    Example:
        >>> ex = Explorer(HookedTransformer.from_pretrained("smollm2-135m"))
        >>> ex.tokens({"prompt": "The capital of France is", "k": 3})["top"][-1][0]["token"]
        ' Paris'
    """

    def __init__(self, model: HookedTransformer, limits: Limits | None = None) -> None:
        self.model = model
        self.limits = limits or Limits()
        self._lock = threading.Lock()  # one hooked run at a time
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._runs = _LRU(self.limits.cached_runs)
        self._panels = _LRU(32)

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """Hold the model: wait in a queue of at most `max_pending`, else BusyError."""
        with self._pending_lock:
            if self._pending >= self.limits.max_pending:
                raise BusyError(
                    f"busy: {self._pending} requests are already waiting for the model; retry shortly"
                )
            self._pending += 1
        try:
            with self._lock, torch.inference_mode():
                yield
        finally:
            with self._pending_lock:
                self._pending -= 1

    # --- validation -------------------------------------------------------------------------

    def _prompt(self, body: dict[str, Any], name: str = "prompt", cap: int | None = None) -> str:
        text = _field(body, name, str)
        if not text.strip():
            raise RequestError(f"{name!r} is empty; type some text")
        if len(text) > self.limits.max_prompt_chars:
            raise RequestError(
                f"{name!r} has {len(text)} characters, more than the limit of "
                f"{self.limits.max_prompt_chars}; shorten it"
            )
        limit = min(cap or self.limits.max_prompt_tokens, self.model.cfg.n_ctx)
        n = self.model.to_tokens(text).shape[1]
        if n > limit:
            raise RequestError(
                f"{name!r} is {n} tokens, more than the limit of {limit}; shorten it"
            )
        return text

    def _token(self, body: dict[str, Any], name: str) -> int:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < self.model.cfg.d_vocab:
                raise RequestError(f"{name!r} token id {value} is outside the vocabulary")
            return value
        text = _field(body, name, str)
        try:
            return self.model.to_single_token(text)
        except ValueError as err:
            raise RequestError(f"{name!r}: {err}; give a single token (e.g. ' Paris')") from err

    def _layer(self, body: dict[str, Any], default: int | None = None) -> int:
        return _int_in(body, "layer", 0, self.model.cfg.n_layers - 1, default)

    def _head(self, body: dict[str, Any]) -> int:
        return _int_in(body, "head", 0, self.model.cfg.n_heads - 1, 0)

    def _k(self, body: dict[str, Any]) -> int:
        return _int_in(body, "k", 1, self.limits.max_k, 5)

    # --- the cached run ---------------------------------------------------------------------

    def run(self, prompt: str) -> Run:
        """The prompt's forward with every activation cached (kept for the last few prompts).
        Call with the slot held."""

        def make() -> Run:
            tokens = self.model.to_tokens(prompt)
            logits, cache = self.model.run_with_cache(tokens)
            return Run(tokens, self.model.to_str_tokens(tokens[0]), logits, cache)

        return self._runs.get_or(prompt, make)

    def _panel(self, key: tuple[Any, ...], make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return self._panels.get_or(key, make)

    # --- panels -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The model's name and sizes, and the limits (for the page's inputs)."""
        cfg = self.model.cfg
        return {
            "model": cfg.model_name, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "n_ctx": cfg.n_ctx, "limits": self.limits.__dict__,
        }  # fmt: skip

    @_held
    def tokens(self, body: dict[str, Any]) -> dict[str, Any]:
        """The prompt's tokens, each with the model's top-`k` next tokens and probabilities."""
        prompt, k = self._prompt(body), self._k(body)

        def make() -> dict[str, Any]:
            run = self.run(prompt)
            top = run.logits[0].float().softmax(-1).topk(k)
            rows = [
                [{"token": self.model.to_string(int(i)), "prob": float(p)} for p, i in zip(ps, ids, strict=True)]
                for ps, ids in zip(top.values, top.indices, strict=True)
            ]  # fmt: skip
            return {"tokens": run.str_tokens, "top": rows}

        return self._panel(("tokens", prompt, k), make)

    @_held
    def lens(self, body: dict[str, Any]) -> dict[str, Any]:
        """The logit lens (`viz.logit_lens_from_cache`) of `target` (default: the prediction)."""
        prompt, k = self._prompt(body), self._k(body)
        target = self._token(body, "target") if body.get("target") not in (None, "") else None
        kind = body.get("kind", "prob")
        if kind not in ("prob", "rank", "logit"):
            raise RequestError(f"'kind' is {kind!r}; it must be 'prob', 'rank' or 'logit'")

        def make() -> dict[str, Any]:
            run = self.run(prompt)
            fig = viz.logit_lens_from_cache(
                run.cache, run.str_tokens, target, kind=kind, k=k, verbose=False
            )
            return {"html": fig.fragment()}

        return self._panel(("lens", prompt, k, target, kind), make)

    @_held
    def attention(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every head's attention pattern (`viz.attention_from_cache`), `layer`/`head` selected."""
        prompt, layer, head = self._prompt(body), self._layer(body, 0), self._head(body)

        def make() -> dict[str, Any]:
            run = self.run(prompt)
            fig = viz.attention_from_cache(run.cache, run.str_tokens, selected=(layer, head))
            return {"html": fig.fragment()}

        return self._panel(("attention", prompt, layer, head), make)

    @_held
    def dla(self, body: dict[str, Any]) -> dict[str, Any]:
        """Direct logit attribution of `answer`'s logit at the last position: per component and
        head (`viz.dla_from_cache`) and per neuron (`viz.top_neurons`)."""
        prompt, answer = self._prompt(body), self._token(body, "answer")

        def make() -> dict[str, Any]:
            run = self.run(prompt)
            figs = [viz.dla_from_cache(run.cache, answer)]
            neurons = self.neuron_dla(run, answer)
            if neurons is not None:
                title = f"DLA of {self.model.to_string(answer)!r} per neuron"
                figs.append(viz.top_neurons(neurons, k=20, title=title))
            return {"html": "".join(f.fragment() for f in figs)}

        return self._panel(("dla", prompt, answer), make)

    @_held
    def patch(self, body: dict[str, Any]) -> dict[str, Any]:
        """Activation patching from the clean into the corrupted prompt, metric the logit
        difference `answer` - `wrong` at the last position: resid_pre by [layer, pos] and each
        head's output by [layer, head] (`viz.patching_heatmap`)."""
        cap = self.limits.max_patch_tokens
        clean = self._prompt(body, "clean", cap)
        corrupted = self._prompt(body, "corrupted", cap)
        answer, wrong = self._token(body, "answer"), self._token(body, "wrong")
        n_clean = self.model.to_tokens(clean).shape[1]
        n_corrupted = self.model.to_tokens(corrupted).shape[1]
        if n_clean != n_corrupted:
            raise RequestError(
                f"'clean' is {n_clean} tokens and 'corrupted' {n_corrupted}; patching needs "
                "prompts of the same length"
            )

        def make() -> dict[str, Any]:
            run = self.run(clean)
            corrupted_tokens = self.model.to_tokens(corrupted)

            def metric(logits: torch.Tensor) -> torch.Tensor:
                return logits[0, -1, answer] - logits[0, -1, wrong]

            args = (self.model, corrupted_tokens, run.cache, metric)
            by_pos = patching.get_act_patch_resid_pre(*args, verbose=False).float().cpu()
            by_head = patching.get_act_patch_attn_head_out_all_pos(*args, verbose=False)
            by_head = by_head.float().cpu()
            name = (
                f"logit({self.model.to_string(answer)!r}) - logit({self.model.to_string(wrong)!r})"
            )
            figs = [
                viz.patching_heatmap(by_pos, run.str_tokens, metric_name=name,
                                     title="Patching resid_pre by layer and position"),
                viz.patching_heatmap(by_head, metric_name=name,
                                     title="Patching each head's output (all positions)"),
            ]  # fmt: skip
            return {
                "html": "".join(f.fragment() for f in figs),
                "resid_pre": by_pos.tolist(), "heads": by_head.tolist(),
            }  # fmt: skip

        return self._panel(("patch", clean, corrupted, answer, wrong), make)

    @_held
    def steer(self, body: dict[str, Any]) -> dict[str, Any]:
        """Generate greedily from `prompt` with `coef` x (resid_pre(`positive`) -
        resid_pre(`negative`)) at the last position added to `layer`'s residual stream."""
        prompt = self._prompt(body)
        positive, negative = self._prompt(body, "positive"), self._prompt(body, "negative")
        layer = self._layer(body)
        coef = _field(body, "coef", float)
        if not math.isfinite(coef) or abs(coef) > 100:
            raise RequestError(f"'coef' is {coef}; it must be a number between -100 and 100")
        n_new = _int_in(body, "max_new_tokens", 1, self.limits.max_new_tokens, 20)

        def make() -> dict[str, Any]:
            direction = self.steering_direction(positive, negative, layer)

            def add(resid: torch.Tensor, hook: Any) -> torch.Tensor:
                return resid + coef * direction.to(resid.dtype)

            name = f"blocks.{layer}.hook_resid_pre"
            with self.model.hooks(fwd_hooks=[(name, add)]):
                text = self.model.generate(
                    prompt, max_new_tokens=n_new, do_sample=False, verbose=False
                )
            return {
                "text": text,
                "completion": text[len(prompt) :] if text.startswith(prompt) else text,
            }

        return self._panel(("steer", prompt, positive, negative, layer, coef, n_new), make)

    def neuron_dla(self, run: Run, answer: int) -> Float[torch.Tensor, "layer d_mlp"] | None:
        """Each MLP neuron's direct logit attribution to `answer` at the last position (None for
        models without dense MLPs). `logit_attrs` is linear in the residual (the cached final-norm
        scale divides it), so the attribution of each basis direction, g [d_model], gives every
        neuron's at once: post * (W_out @ g)."""
        cfg = self.model.cfg
        if cfg.attn_only or getattr(cfg, "num_experts", None):
            return None
        eye = torch.eye(
            cfg.d_model, dtype=run.cache["post", 0].dtype, device=self.model.W_out.device
        )
        g = run.cache.logit_attrs(eye[:, None], answer, pos_slice=-1)[:, 0]  # [d_model]
        post = torch.stack([run.cache["post", i][0, -1] for i in range(cfg.n_layers)])
        return (post * (self.model.W_out @ g.to(post.dtype))).float().cpu()

    def steering_direction(self, positive: str, negative: str, layer: int) -> torch.Tensor:
        """resid_pre of `layer` at the last position: `positive`'s minus `negative`'s [d_model]."""
        name = f"blocks.{layer}.hook_resid_pre"
        acts = []
        for text in (positive, negative):
            _, cache = self.model.run_with_cache(text, names_filter=[name])
            acts.append(cache[name][0, -1])
        return acts[0] - acts[1]
