"""Generation: `generate` / `generate_stream` with hooks, over a preallocated KV cache.

The sampling and stopping settings of a run are one frozen `GenerationConfig`; `generate` and
`generate_stream` share one parameter list (`_generation_api`), in TransformerLens's positional
order. The KV cache (`lmscope.kv_cache`) holds keys and values in buffers sized for the whole run,
and tracks padding, so left-padded batches keep their padding masked at every step and their
positions counted over real tokens only.

Example:
    >>> model.generate("The capital of France is", max_new_tokens=5, do_sample=False)
    >>> with model.hooks(fwd_hooks=[("blocks.6.hook_resid_post", add_steering_vector)]):
    ...     steered = model.generate("I think that", max_new_tokens=20, seed=0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lmscope.kv_cache import KVCache, KVCacheEntry  # noqa: F401 (importable from here, as before)
from lmscope.sampling import (  # noqa: F401 (importable from here, as before)
    apply_freq_penalty,
    bad_logits_message,
    check_sampling,
    sample_logits,
    sample_tokens,
    top_k_filter,
    top_p_filter,
)
from lmscope.tokens import (
    check_attention_mask,
    check_attention_mask_values,
    input_to_tokens,
    is_text,
    require_tokenizer,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmscope.cache import ActivationCache
    from lmscope.model import HookedTransformer


@dataclass(frozen=True)
class GenerationConfig:
    """The sampling and stopping settings of one generation run, checked when it is made.

    Attributes:
        max_new_tokens: at most this many new tokens per sequence.
        stop_at_eos: stop once every sequence has produced an EOS (`eos_token_id`, an int or a
            sequence of ints, default the tokenizer's).
        do_sample: False for greedy decoding; else sample with `temperature`, `top_k`, `top_p`
            and `freq_penalty` (see `lmscope.sampling.sample_logits`).
        use_past_kv_cache: reuse keys and values (a preallocated `KVCache`) instead of re-running
            the whole sequence each step; both give the same tokens.
        seed: sample reproducibly from a private generator (torch's global state is untouched).

    Example:
        >>> config = GenerationConfig(max_new_tokens=5, do_sample=False)
        >>> dataclasses.replace(config, temperature=0.7, do_sample=True).temperature
        0.7
    """

    max_new_tokens: int = 10
    stop_at_eos: bool = True
    eos_token_id: int | Sequence[int] | None = None  # kept as a tuple
    do_sample: bool = True
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0
    freq_penalty: float = 0.0
    use_past_kv_cache: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.eos_token_id is not None and not isinstance(self.eos_token_id, int):
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        check_sampling(self.do_sample, self.top_k, self.top_p, self.temperature)

    def stop_ids(
        self, get_tokenizer: Callable[[], PreTrainedTokenizerBase | None], d_vocab: int
    ) -> list[int]:
        """The EOS ids to stop at ([] with `stop_at_eos` off; a given `eos_token_id` is checked
        either way). The tokenizer is asked only when no `eos_token_id` is given.

        Example:
            >>> GenerationConfig(eos_token_id=[2, 7]).stop_ids(lambda: None, d_vocab=100)
            [2, 7]
        """
        if not self.stop_at_eos and self.eos_token_id is None:
            return []
        ids = eos_ids(self.eos_token_id, get_tokenizer, d_vocab)
        return ids if self.stop_at_eos else []


def eos_ids(
    eos_token_id: int | Sequence[int] | None,
    get_tokenizer: Callable[[], PreTrainedTokenizerBase | None],
    d_vocab: int,
) -> list[int]:
    """The EOS ids to stop at: `eos_token_id` (an int or a list), else the tokenizer's; with
    neither, a NoTokenizerError as TransformerLens raises (stopping at EOS needs an EOS id).

    Example:
        >>> eos_ids([2, 7], lambda: None, d_vocab=100)
        [2, 7]
    """
    if eos_token_id is None:
        tok = get_tokenizer()
        if tok is None or tok.eos_token_id is None:
            raise NoTokenizerError(
                "Must pass a eos_token_id if stop_at_eos is True and tokenizer is None or has no "
                "eos_token_id: pass eos_token_id=..., or stop_at_eos=False"
            )
        eos_token_id = tok.eos_token_id
    ids = [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    for i in ids:
        if not 0 <= i < d_vocab:
            raise ValueError(f"eos_token_id {i} is outside the vocabulary [0, {d_vocab})")
    return ids


HookList = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]

# -- the shared parameter list ---------------------------------------------------------------------
_P = inspect.Parameter
_INPUT = "str | Sequence[str] | Int[Tensor, 'batch pos'] | Int[Tensor, ' pos']"
_CONFIG_DEFAULTS = {f.name: f.default for f in fields(GenerationConfig)}


def _param(name: str, annotation: str, default: Any = None, keyword: bool = False) -> _P:
    kind = _P.KEYWORD_ONLY if keyword else _P.POSITIONAL_OR_KEYWORD
    default = _CONFIG_DEFAULTS.get(name, default)
    return _P(name, kind, default=default, annotation=annotation)


# TransformerLens 3.9's parameters of both, in its positional order, between `max_new_tokens` (and
# generate_stream's `max_tokens_per_yield`) and each function's own `return_type` and `verbose`.
_SHARED_POSITIONAL = (
    _param("stop_at_eos", "bool"),
    _param("eos_token_id", "int | Sequence[int] | None"),
    _param("do_sample", "bool"),
    _param("top_k", "int | None"),
    _param("top_p", "float | None"),
    _param("temperature", "float"),
    _param("freq_penalty", "float"),
    _param("use_past_kv_cache", "bool"),
    _param("prepend_bos", "bool | None"),
    _param("padding_side", "Literal['left', 'right'] | None"),
)
# lmscope's additions to both, keyword-only.
_SHARED_KEYWORD = (
    _param("seed", "int | None", keyword=True),
    _param("attention_mask", "Int[Tensor, 'batch pos'] | None", keyword=True),
    _param("fwd_hooks", "HookList", default=(), keyword=True),
)
# The positional order after `input, max_new_tokens` (HookedTransformer.generate's facade).
GENERATE_ORDER = (*(p.name for p in _SHARED_POSITIONAL), "return_type", "verbose")


def _generation_api(
    *,
    leading: Sequence[_P] = (),
    return_type: _P,
    verbose: _P,
    trailing: Sequence[_P] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give an implementation `impl(model, input, config, prepend_bos, padding_side, attention_mask,
    fwd_hooks, return_type, verbose, <own>)` the shared public signature: `(model, input,
    max_new_tokens, <leading>, <shared positional>, return_type, verbose, *, <shared keyword>,
    <trailing>)`. The call's sampling and stopping settings become its `GenerationConfig`."""
    params = [
        _P("model", _P.POSITIONAL_OR_KEYWORD, annotation="HookedTransformer"),
        _P("input", _P.POSITIONAL_OR_KEYWORD, default="", annotation=_INPUT),
        _param("max_new_tokens", "int"),
        *leading,
        *_SHARED_POSITIONAL,
        return_type,
        verbose,
        *_SHARED_KEYWORD,
        *trailing,
    ]

    def wrap(impl: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.Signature(params, return_annotation=impl.__annotations__.get("return"))

        def api(*args: Any, **kwargs: Any) -> Any:
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            options = call.arguments
            config = GenerationConfig(**{name: options.pop(name) for name in _CONFIG_DEFAULTS})
            return impl(config=config, **options)

        api.__signature__ = signature  # type: ignore[attr-defined]
        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(api, attr, getattr(impl, attr))
        return api

    return wrap


# -- generation -----------------------------------------------------------------------------------
class _LiveCapture:
    """Hooks that record activations of every generation step and stitch them over positions."""

    _SQUARE = ("hook_attn_scores", "hook_pattern")

    def __init__(self, model: HookedTransformer, names_filter: Any) -> None:
        self.model = model
        self.steps: dict[str, list[Tensor]] = {}
        _, fwd, _ = model.get_caching_hooks(names_filter)
        self.fwd_hooks = [(name, self._hook) for name, _ in fwd]

    def _hook(self, tensor: Tensor, hook: Any) -> None:
        # A copy: a later hook may edit the activation in place.
        self.steps.setdefault(hook.name, []).append(tensor.detach().clone())

    def assemble(self) -> ActivationCache:
        """The cache over all positions; called outside inference mode, so its tensors are normal
        tensors (new ones, built from the inference-mode parts)."""
        cache: dict[str, Tensor] = {}
        for name, parts in self.steps.items():
            if name.endswith(self._SQUARE):  # [batch, head, q, k] with k growing each step
                total = parts[-1].shape[-1]
                fill = float("-inf") if name.endswith("hook_attn_scores") else 0.0
                full = parts[0].new_full((*parts[0].shape[:2], total, total), fill)
                row = 0
                for part in parts:
                    q, k = part.shape[-2:]
                    full[..., row : row + q, :k] = part
                    row += q
                cache[name] = full
            else:  # [batch, pos, ...]
                cache[name] = parts[0].clone() if len(parts) == 1 else torch.cat(parts, dim=1)
        from lmscope.cache import ActivationCache

        return ActivationCache(cache, self.model)


class NoTokenizerError(ValueError, AssertionError):
    """Generation needs a tokenizer it does not have: for text input, or to find the EOS id.

    TransformerLens raises an AssertionError there; this error is both that and a ValueError."""


def _require_tokenizer_for_text(model: HookedTransformer, input: Any) -> None:
    """Refuse text input to a model without a tokenizer (TransformerLens's message, and the fix)."""
    if is_text(input) and model.tokenizer is None:
        raise NoTokenizerError(
            "Must provide a tokenizer if passing a string to the model: this model has none; "
            "pass token ids (model.generate(tokens)), or call model.set_tokenizer(tokenizer)"
        )


def _prompt(
    model: HookedTransformer,
    input: Any,
    prepend_bos: bool | None,
    padding_side: str | None,
    attention_mask: Tensor | None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Prompt tokens and their mask (checked as `forward` checks it); text batches are
    left-padded so every row ends in a real token."""
    _require_tokenizer_for_text(model, input)
    side = "left" if padding_side is None else padding_side
    tokens, mask = input_to_tokens(
        input,
        model.cfg,
        lambda: model.tokenizer,
        model.W_E.device,
        prepend_bos,
        side,
        attention_mask,
    )
    if mask is None:
        mask = torch.ones_like(tokens)
    else:
        mask = check_attention_mask(mask, tuple(tokens.shape), tokens.device)
        check_attention_mask_values(mask)
    if bool((mask[:, -1] == 0).any()):
        raise ValueError(
            "generation needs left padding (every row's last position real); pass padding_side='left'"
        )
    return tokens, mask


def _stop_ids(model: HookedTransformer, prompt_len: int, config: GenerationConfig) -> list[int]:
    """Check that the run fits the model's context; returns the EOS ids to stop at."""
    if prompt_len + config.max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({config.max_new_tokens}) exceeds the "
            f"model's context n_ctx={model.cfg.n_ctx}"
        )
    return config.stop_ids(lambda: model.tokenizer, model.cfg.d_vocab)


def _layer_devices(model: HookedTransformer) -> list[torch.device]:
    """The device of each block, where its KV-cache entry lives."""
    where = model.device_map
    return [where[f"blocks.{layer}"] for layer in range(model.cfg.n_layers)]


def _tail_hook_points(model: HookedTransformer) -> list[Any]:
    """The hook points after the last block (final norm, unembed)."""
    return [
        hp for name, hp in model.hook_dict.items() if name.startswith(("ln_final.", "unembed."))
    ]


def _last_logits(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    kv: KVCache | None,
    tail: list[Any],
) -> Float[Tensor, "batch d_vocab"]:
    """The logits of the last position. With several positions and no hook after the last block,
    the final norm and unembed run on the last position only (as transformers' `logits_to_keep`):
    a prompt's logits over the whole vocabulary are never materialised."""
    if tokens.shape[1] > 1 and not any(hp.has_hooks() for hp in tail):
        n = model.cfg.n_layers
        resid = model(tokens, attention_mask=attention_mask, past_kv_cache=kv, stop_at_layer=n)
        logits = model(resid[:, -1:], start_at_layer=n)[:, -1]
    else:
        logits = model(tokens, attention_mask=attention_mask, past_kv_cache=kv)[:, -1]
    return logits.to(tokens.device)  # from the unembedding's device, if the model is spread


def _invalidates_cache(model: HookedTransformer, cached: int, length: int) -> bool:
    """Whether growing from `cached` to `length` positions switches LongRoPE from its short to
    its long factors, so the cached keys (rotated with the short ones) are recomputed, as
    transformers' Phi-3 generation does."""
    rotary = getattr(model, "rotary", None)
    if rotary is None or getattr(rotary, "kind", None) != "longrope":
        return False
    return 0 < cached <= rotary.context < length


def _step_flags(
    bad_rows: Bool[Tensor, " batch"], finished: Bool[Tensor, " batch"] | None
) -> tuple[bool, bool]:
    """Whether any row had bad logits, and whether every row is finished, in one device sync."""
    if finished is None:
        return bool(bad_rows.any()), False
    bad, done = torch.stack([bad_rows.any(), finished.all()]).tolist()
    return bad, done


def _steps(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"],
    config: GenerationConfig,
    eos_ids: list[int],
    capture: _LiveCapture | None = None,
) -> Iterator[Int[Tensor, " batch"]]:
    """The generation loop: yields each step's new token per sequence.

    It enters no context itself (inference mode, hooks): the caller wraps each `next()`, so
    nothing leaks to the caller's code between steps of a stream.
    """
    batch, prompt_len = tokens.shape
    device = tokens.device
    max_new_tokens = config.max_new_tokens
    total = prompt_len + max_new_tokens
    out = tokens.new_empty(batch, total)  # prompt and new tokens, filled in place
    out[:, :prompt_len] = tokens
    padded = not bool(mask.all())
    full_mask = mask.new_ones(batch, total) if padded else None
    if full_mask is not None:
        full_mask[:, :prompt_len] = mask
    eos = torch.tensor(eos_ids, device=device, dtype=torch.long) if eos_ids else None
    pad_id = eos_ids[0] if eos_ids else 0
    finished = torch.zeros(batch, dtype=torch.bool, device=device) if eos_ids else None
    seed = config.seed
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    kv = None
    if config.use_past_kv_cache:
        blocks = _layer_devices(model)
        kv = KVCache(model.cfg, batch, max(total, 1), device, model.W_E.dtype, blocks)
    pending, pending_mask = tokens, mask if padded else None  # not yet fed through the KV cache
    tail = _tail_hook_points(model)
    length = prompt_len
    for step in range(max_new_tokens):
        seen = full_mask[:, :length] if full_mask is not None else None
        if kv is not None and _invalidates_cache(model, kv.length, length):
            kv = KVCache(model.cfg, batch, max(total, 1), device, model.W_E.dtype, blocks)
            pending, pending_mask = out[:, :length], seen
            if capture is not None:
                capture.steps.clear()  # the rebuilt cache re-runs every position
        if kv is not None:
            logits = _last_logits(model, pending, pending_mask, kv, tail)
        else:
            if capture is not None:
                capture.steps.clear()  # without a KV cache each step re-runs everything
            logits = _last_logits(model, out[:, :length], seen, None, tail)
        next_tokens, bad_rows = sample_tokens(
            logits,
            config.do_sample,
            config.top_k,
            config.top_p,
            config.temperature,
            config.freq_penalty,
            out[:, :length],
            generator,
            seen,
        )
        if finished is not None:
            bad_rows &= ~finished  # a finished row's logits are never used
            next_tokens = next_tokens.masked_fill(finished, pad_id)
            finished |= torch.isin(next_tokens, eos)
        # One device sync per step: the NaN check rides on the EOS check when there is one.
        bad, done = _step_flags(bad_rows, finished)
        if bad:
            raise FloatingPointError(bad_logits_message(bad_rows, config.do_sample, step))
        out[:, length] = next_tokens
        pending, pending_mask = out[:, length : length + 1], None
        length += 1
        yield next_tokens
        if done:
            break
    if capture is not None:
        # Run the last token too (or the prompt, with no new tokens), so the capture covers
        # every position of the output.
        if kv is not None:
            model(pending, attention_mask=pending_mask, past_kv_cache=kv, return_type=None)
        else:
            capture.steps.clear()
            seen = full_mask[:, :length] if full_mask is not None else None
            model(out[:, :length], attention_mask=seen, return_type=None)


class _TextPieces:
    """Turns each step's tokens into each row's new text, decoding incrementally: a piece is the
    growth of the decoded continuation (so multi-byte characters and word-initial spaces come out
    right), empty while a character is incomplete and after the row's EOS."""

    def __init__(
        self, model: HookedTransformer, tokens: Int[Tensor, "batch pos"], eos_ids: list[int]
    ) -> None:
        self.tok = require_tokenizer(model.tokenizer)
        # Each row starts from its last prompt token, so the first piece keeps a leading space
        # that a tokenizer drops at the start of a text (sentencepiece).
        self.ids = [[int(t)] for t in tokens[:, -1].tolist()]
        self.sent = [len(self._decode(ids)) for ids in self.ids]
        self.done = [False] * len(self.ids)
        self.eos = set(eos_ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, clean_up_tokenization_spaces=False)

    def _piece(self, i: int, final: bool) -> str:
        text = self._decode(self.ids[i])
        if text.endswith("\ufffd") and not final:
            return ""  # an incomplete UTF-8 character: wait for its other bytes
        piece, self.sent[i] = text[self.sent[i] :], len(text)
        return piece

    def step(self, new: Int[Tensor, " batch"]) -> list[str]:
        pieces = []
        for i, t in enumerate(new.tolist()):
            if self.done[i]:
                pieces.append("")
                continue
            self.ids[i].append(t)
            self.done[i] = t in self.eos
            pieces.append(self._piece(i, final=self.done[i]))
        return pieces

    def flush(self) -> list[str]:
        return [self._piece(i, final=True) for i in range(len(self.ids))]


def _stream(
    model: HookedTransformer,
    steps: Iterator[Int[Tensor, " batch"]],
    fwd_hooks: HookList,
    pieces: _TextPieces | None,
) -> Iterator[Int[Tensor, " batch"] | list[str]]:
    while True:
        with torch.inference_mode(), model.hooks(fwd_hooks=fwd_hooks):
            new = next(steps, None)
        if new is None:
            break
        yield new.clone() if pieces is None else pieces.step(new)  # clone: a normal tensor
    if pieces is not None:
        rest = pieces.flush()
        if any(rest):
            yield rest


def _chunks(
    stream: Iterator[Int[Tensor, " batch"] | list[str]],
    prompt: Int[Tensor, "batch pos"],
    size: int,
) -> Iterator[Int[Tensor, "batch n"] | list[str]]:
    """TransformerLens's `max_tokens_per_yield`: the steps joined into chunks of `size` tokens
    ([batch, n] tensors; the first starts with the prompt, which counts towards its size), or of
    `size` text pieces per row."""
    held: list[Any] = []
    count = prompt.shape[1]
    for step in stream:
        held.append(step)
        count += 1
        if count >= size:
            yield _join(held, prompt)
            held, count, prompt = [], 0, prompt[:, :0]
    if held:
        yield _join(held, prompt)


def _join(held: list[Any], prompt: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch n"] | list[str]:
    if isinstance(held[0], list):
        return ["".join(row) for row in zip(*held, strict=True)]
    return torch.cat([prompt, torch.stack(held, dim=1)], dim=1)


@_generation_api(
    leading=[_param("max_tokens_per_yield", "int | None")],
    return_type=_param("return_type", "Literal['tokens', 'str']", "tokens"),
    verbose=_param("verbose", "bool", False),
)
def generate_stream(
    model: HookedTransformer,
    input: Any,
    config: GenerationConfig,
    prepend_bos: bool | None,
    padding_side: str | None,
    attention_mask: Int[Tensor, "batch pos"] | None,
    fwd_hooks: HookList,
    return_type: str,
    verbose: bool,
    max_tokens_per_yield: int | None,
) -> Iterator[Int[Tensor, " batch"] | Int[Tensor, "batch n"] | list[str]]:
    """Yield new tokens as they are generated: a [batch] tensor per step, or with
    `return_type="str"` a list with each sequence's new text piece (see `generate` for the other
    arguments; its sampling and stopping settings make a `GenerationConfig`). The arguments are
    checked when it is called, not at the first step.

    `max_tokens_per_yield=N` yields as TransformerLens does instead: [batch, n] chunks of up to N
    tokens, the first one starting with the prompt (which counts towards N); with
    `return_type="str"`, each row's text of up to N steps. `verbose=True` shows a progress bar
    over the steps.

    Text pieces are decoded incrementally: joined, a row's pieces are the decoded continuation.
    A piece is "" while a multi-byte character is incomplete and after the row's EOS; if the
    last step leaves a character incomplete, one more list follows with the rest.

    Inference mode is on and `fwd_hooks` attached only while a step runs, so the caller's code
    between steps runs as usual; the yielded tensors are normal tensors.

    Example:
        >>> for piece in model.generate_stream("Once upon a time", 20, return_type="str"):
        ...     print(piece[0], end="", flush=True)
    """
    if return_type not in ("tokens", "str"):
        raise ValueError(f"return_type must be 'tokens' or 'str', got {return_type!r}")
    tokens, mask = _prompt(model, input, prepend_bos, padding_side, attention_mask)
    eos_ids = _stop_ids(model, tokens.shape[1], config)
    pieces = _TextPieces(model, tokens, eos_ids) if return_type == "str" else None
    if max_tokens_per_yield is not None and (
        not isinstance(max_tokens_per_yield, int) or max_tokens_per_yield < 1
    ):
        raise ValueError(f"max_tokens_per_yield must be an int >= 1, got {max_tokens_per_yield!r}")
    steps = _steps(model, tokens, mask, config, eos_ids)
    if verbose:
        steps = iter(tqdm(steps, total=config.max_new_tokens, desc="generating"))
    stream = _stream(model, steps, fwd_hooks, pieces)
    if max_tokens_per_yield is None:
        return stream
    return _chunks(stream, tokens if pieces is None else tokens[:, :0], max_tokens_per_yield)


@_generation_api(
    return_type=_param("return_type", "Literal['input', 'str', 'tokens']", "input"),
    verbose=_param("verbose", "bool", True),
    trailing=[
        _param("return_cache", "bool", False, keyword=True),
        _param("names_filter", "str | Sequence[str] | Callable[[str], bool] | None", keyword=True),
    ],
)
def generate(
    model: HookedTransformer,
    input: Any,
    config: GenerationConfig,
    prepend_bos: bool | None,
    padding_side: str | None,
    attention_mask: Int[Tensor, "batch pos"] | None,
    fwd_hooks: HookList,
    return_type: str,
    verbose: bool,
    return_cache: bool,
    names_filter: str | Sequence[str] | Callable[[str], bool] | None,
) -> Any:
    """Continue `input` by up to `max_new_tokens` tokens (TransformerLens semantics).

    Args:
        input: a string, a list of strings (left-padded; the padding is masked at every step),
            or token ids [batch, pos] / [pos] with an optional left-padded `attention_mask`.
        max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p, temperature,
            freq_penalty, use_past_kv_cache, seed: the sampling and stopping settings, which
            make the run's `GenerationConfig` (see it for each). Finished sequences are padded
            with the first EOS id; sampling with `seed` uses a private generator (torch's global
            random state is neither used nor changed).
        return_type: "tokens", "str" (the text; each sequence cut after its first EOS, padding
            dropped) or "input" (a string or list of strings for text input, else tokens).
        verbose: show a tqdm progress bar.
        return_cache: also return an ActivationCache over the whole output sequence, recorded
            live from the generation steps (filtered by `names_filter`); it equals
            `run_with_cache` on the output (for padded batches, at the real positions).
        fwd_hooks: (name or filter, hook) pairs applied at every step, as in `run_with_hooks`;
            hooks attached with `model.hooks(...)` around the call apply too. The steps run
            under `torch.inference_mode()` (as in TransformerLens): a hook that keeps an
            activation keeps an inference tensor (`.clone()` it outside to use it with autograd).
            The returned tokens and cache are normal tensors.

    Returns:
        The output, or `(output, cache)` with `return_cache=True`.

    Example:
        >>> model.generate("The capital of France is", max_new_tokens=3, do_sample=False)
        'The capital of France is Paris.'
    """
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
    if isinstance(input, str) and input == "":
        prepend_bos = True  # an empty prompt starts from BOS
    tokens, mask = _prompt(model, input, prepend_bos, padding_side, attention_mask)
    prompt_len = tokens.shape[1]
    eos_ids = _stop_ids(model, prompt_len, config)
    capture = _LiveCapture(model, names_filter) if return_cache else None
    steps = _steps(model, tokens, mask, config, eos_ids, capture)
    hooks = [*fwd_hooks, *(capture.fwd_hooks if capture is not None else [])]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        total = config.max_new_tokens
        new = list(tqdm(steps, total=total, disable=not verbose, desc="generating"))
    # From here on outside inference mode, so what is returned are normal tensors.
    out = torch.cat([tokens, torch.stack(new, dim=1)], dim=1) if new else tokens
    if return_type == "input":
        return_type = "str" if is_text(input) else "tokens"
    if return_type == "tokens":
        result: Any = out
    else:
        keep = torch.cat([mask, torch.ones_like(out[:, prompt_len:])], dim=1).bool()
        if eos_ids and new:  # drop the padding after each row's first EOS
            generated = out[:, prompt_len:]
            is_eos = torch.isin(generated, torch.tensor(eos_ids, device=out.device))
            after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
            keep[:, prompt_len:] &= ~after_eos
        if is_text(input) and (
            model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        ):
            # the BOS lmscope put before the text is not part of it (TransformerLens drops it too)
            keep[torch.arange(len(keep)), mask.argmax(dim=1)] = False
        texts = [model.to_string(row[k]) for row, k in zip(out, keep, strict=True)]
        result = texts[0] if isinstance(input, str) else texts
    return (result, capture.assemble()) if capture is not None else result
