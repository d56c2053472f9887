"""Generation: a preallocated KV cache, sampling, and `generate` / `generate_stream` with hooks.

The cache holds keys and values in buffers sized for the whole run, so each step writes its new
positions in place (no `torch.cat` growth). Padding is tracked in the cache, so left-padded batches
keep their padding masked at every step and their positions counted over real tokens only.

Example:
    >>> model.generate("The capital of France is", max_new_tokens=5, do_sample=False)
    >>> with model.hooks(fwd_hooks=[("blocks.6.hook_resid_post", add_steering_vector)]):
    ...     steered = model.generate("I think that", max_new_tokens=20, seed=0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lmscope.config import HookedTransformerConfig

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache
    from lmscope.model import HookedTransformer


class KVCacheEntry:
    """One layer's keys and values, [batch, kv_head, capacity, d_head], filled up to the cache's
    length (latent attention: its KV latent [batch, 1, capacity, kv_lora_rank] and shared rotary
    key [batch, 1, capacity, qk_rope_head_dim])."""

    def __init__(
        self,
        cfg: HookedTransformerConfig,
        batch: int,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        n_heads = cfg.n_heads if cfg.ungroup_grouped_query_attention else cfg.n_key_value_heads
        shape = (batch, n_heads, capacity, cfg.d_head)
        k_shape = v_shape = shape
        if cfg.kv_lora_rank:  # latent attention caches its latent and its shared rotary key
            k_shape = (batch, 1, capacity, cfg.kv_lora_rank)
            v_shape = (batch, 1, capacity, cfg.qk_rope_head_dim)
        self.k = torch.zeros(k_shape, device=device, dtype=dtype)
        self.v = torch.zeros(v_shape, device=device, dtype=dtype)

    def append(
        self,
        k: Float[Tensor, "batch kv_head pos d_head"],
        v: Float[Tensor, "batch kv_head pos d_head"],
        start: int,
    ) -> tuple[Tensor, Tensor]:
        """Write the new positions at `start` and return views of everything up to them."""
        end = start + k.shape[2]
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]

    def grow(self, capacity: int) -> None:
        pad = capacity - self.k.shape[2]
        self.k = torch.nn.functional.pad(self.k, (0, 0, 0, pad))
        self.v = torch.nn.functional.pad(self.v, (0, 0, 0, pad))


class KVCache:
    """Keys and values of every layer for the positions seen so far, plus their padding mask.

    Pass it to `model(tokens, past_kv_cache=cache)` step by step: each call attends to everything
    cached and appends its own positions (unless `frozen`). Capacity grows by doubling when a
    call needs more; `generate` sizes it exactly, so it never grows there.

    Example:
        >>> cache = KVCache.init_cache(model.cfg, model.W_E.device, batch_size=1)
        >>> logits = model(prompt_tokens, past_kv_cache=cache)
        >>> logits = model(next_token, past_kv_cache=cache)   # attends to the prompt too
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig,
        batch: int,
        capacity: int,
        device: torch.device | str,
        dtype: torch.dtype,
        layer_devices: Sequence[torch.device] | None = None,
    ) -> None:
        self.cfg = cfg
        self.batch = batch
        device = torch.device(device) if device is not None else torch.device("cpu")
        # A model spread over devices keeps each layer's entry on that layer's device.
        layer_devices = layer_devices or [device] * cfg.n_layers
        # (imported here: lmscope.utils imports this module before the components exist)
        from lmscope.components.linear_attention import RecurrentState

        self.entries = [
            RecurrentState()  # a linear-attention layer keeps a state, not keys and values
            if cfg.layer_types[layer] == "linear"
            # (each layer's own head size and key/value heads: Gemma 4's global layers differ)
            else KVCacheEntry(cfg.for_layer(layer), batch, capacity, layer_device, dtype)
            for layer, layer_device in enumerate(layer_devices)
        ]
        self.mask = torch.zeros(batch, capacity, dtype=torch.long, device=device)  # 1 = real token
        self.length = 0
        self.frozen = False

    @classmethod
    def init_cache(
        cls,
        cfg: HookedTransformerConfig,
        device: torch.device | str | None = None,
        batch_size: int = 1,
        capacity: int = 256,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache for `batch_size` sequences, room for `capacity` positions (TransformerLens name)."""
        return cls(cfg, batch_size, min(capacity, cfg.n_ctx), device or "cpu", dtype or cfg.dtype)

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def reserve(self, batch: int, end: int) -> None:
        """Make room for positions up to `end`, checking the batch size and the context length."""
        if batch != self.batch:
            raise ValueError(
                f"this KV cache holds {self.batch} sequences, but the input has {batch}"
            )
        if end > self.cfg.n_ctx:
            raise ValueError(
                f"the KV cache would hold {end} positions, more than the model's context n_ctx={self.cfg.n_ctx}"
            )
        if end > self.capacity:
            capacity = min(max(end, 2 * self.capacity), self.cfg.n_ctx)
            for entry in self.entries:
                entry.grow(capacity)
            self.mask = torch.nn.functional.pad(self.mask, (0, capacity - self.capacity))

    def freeze(self) -> None:
        """Later calls read the cache but do not advance it (e.g. to score several continuations)."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False


# -- sampling -------------------------------------------------------------------------------------
def apply_freq_penalty(
    logits: Float[Tensor, "batch d_vocab"],
    tokens: Int[Tensor, "batch pos"],
    freq_penalty: float,
    token_mask: Int[Tensor, "batch pos"] | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """Subtract `freq_penalty` times each token's count in `tokens` (padding, mask 0, not counted)."""
    weights = (
        torch.ones_like(tokens, dtype=logits.dtype)
        if token_mask is None
        else token_mask.to(logits.dtype)
    )
    counts = torch.zeros_like(logits).scatter_add_(-1, tokens, weights)
    return logits - freq_penalty * counts


def top_k_filter(logits: Float[Tensor, "batch d_vocab"], k: int) -> Float[Tensor, "batch d_vocab"]:
    """Keep the k largest logits of each row; the rest become -inf. Logits tied with the k-th
    largest are all kept (as in transformers' `TopKLogitsWarper`)."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(
    logits: Float[Tensor, "batch d_vocab"], p: float
) -> Float[Tensor, "batch d_vocab"]:
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus sampling).

    A token is kept when the tokens more likely than it hold less than p, so the token that
    crosses p is kept too (with p = 0.7 and probabilities 0.4, 0.25, 0.2, ... three are kept).
    The most likely token is always kept; ties are ordered by token id; p >= 1 keeps every token.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    probs = sorted_logits.float().softmax(-1)
    before = torch.cat([torch.zeros_like(probs[..., :1]), probs.cumsum(-1)[..., :-1]], dim=-1)
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _check_sampling(
    do_sample: bool, top_k: int | None, top_p: float | None, temperature: float
) -> None:
    if not do_sample:
        return
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 when sampling, got {temperature}; pass do_sample=False for greedy"
        )
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_logits(
    logits: Float[Tensor, "batch d_vocab"],
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: Int[Tensor, "batch pos"] | None = None,
    generator: torch.Generator | None = None,
    token_mask: Int[Tensor, "batch pos"] | None = None,
) -> Int[Tensor, " batch"]:
    """One token per row. The frequency penalty (counts over `tokens`, padding excluded by
    `token_mask`) comes first; then greedy takes the argmax, while sampling divides by the
    temperature, keeps the top-k, then the top-p of what remains, and draws from the softmax
    (with `generator` if given, else torch's global generator).

    NaN logits (or, when sampling, logits that give no valid distribution: NaN, +inf, or every
    token at -inf) raise FloatingPointError instead of yielding an arbitrary token.

    Example:
        >>> sample_logits(torch.tensor([[0.0, 5.0, 1.0]]), do_sample=False)
        tensor([1])
    """
    _check_sampling(do_sample, top_k, top_p, temperature)
    next_tokens, bad_rows = _sample(
        logits, do_sample, top_k, top_p, temperature, freq_penalty, tokens, generator, token_mask
    )
    if bool(bad_rows.any()):
        raise FloatingPointError(_bad_logits_message(bad_rows, do_sample, step=None))
    return next_tokens


def _sample(
    logits: Float[Tensor, "batch d_vocab"],
    do_sample: bool,
    top_k: int | None,
    top_p: float | None,
    temperature: float,
    freq_penalty: float,
    tokens: Int[Tensor, "batch pos"] | None,
    generator: torch.Generator | None,
    token_mask: Int[Tensor, "batch pos"] | None,
) -> tuple[Int[Tensor, " batch"], Bool[Tensor, " batch"]]:
    """`sample_logits` without a device sync: the tokens [batch] and which rows had no valid
    logits [batch] (NaN logits; when sampling, NaN probabilities). Bad rows draw from a uniform
    distribution instead, so `torch.multinomial` never sees NaN (on CUDA that is a device-side
    assert); the caller must raise when any row is bad."""
    if freq_penalty and tokens is not None:
        logits = apply_freq_penalty(logits, tokens, freq_penalty, token_mask)
    if not do_sample:
        return logits.argmax(dim=-1), logits.isnan().any(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.float().softmax(dim=-1)
    bad_rows = probs.isnan().any(dim=-1)  # NaN or +inf logits, or every logit -inf
    probs = probs.masked_fill(bad_rows[:, None], 1.0)
    return torch.multinomial(probs, 1, generator=generator)[:, 0], bad_rows


def _bad_logits_message(bad_rows: Bool[Tensor, " batch"], do_sample: bool, step: int | None) -> str:
    """What went wrong with the logits of `bad_rows`, and what usually causes it."""
    rows = bad_rows.nonzero().flatten().tolist()
    where = f"generation step {step}: " if step is not None else ""
    what = (
        "NaN or +inf logits (or every logit -inf), so no probabilities to sample from"
        if do_sample
        else "NaN logits, so no token to choose"
    )
    return (
        f"{where}{what} in batch row(s) {rows} of {bad_rows.numel()}. Usually a hook writes NaN "
        "or inf into an activation, or the model's dtype overflows (float16: load in bfloat16 or "
        "float32); run the step with run_with_cache and check where the NaNs start"
    )


# -- generation -----------------------------------------------------------------------------------
HookList = Sequence[tuple[str | Callable[[str], bool], Callable[..., Any]]]


def _eos_ids(model: HookedTransformer, eos_token_id: int | Sequence[int] | None) -> list[int]:
    """The EOS ids to stop at: `eos_token_id` (an int or a list), else the tokenizer's; with
    neither, a NoTokenizerError as TransformerLens raises (stopping at EOS needs an EOS id)."""
    if eos_token_id is None:
        tok = model.tokenizer
        if tok is None or tok.eos_token_id is None:
            raise NoTokenizerError(
                "Must pass a eos_token_id if stop_at_eos is True and tokenizer is None or has no "
                "eos_token_id: pass eos_token_id=..., or stop_at_eos=False"
            )
        eos_token_id = tok.eos_token_id
    ids = [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(i) for i in eos_token_id]
    for i in ids:
        if not 0 <= i < model.cfg.d_vocab:
            raise ValueError(f"eos_token_id {i} is outside the vocabulary [0, {model.cfg.d_vocab})")
    return ids


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
        return self.model._make_cache(cache)


class NoTokenizerError(ValueError, AssertionError):
    """Generation needs a tokenizer it does not have: for text input, or to find the EOS id.

    TransformerLens raises an AssertionError there; this error is both that and a ValueError."""


def _require_tokenizer_for_text(model: HookedTransformer, input: Any) -> None:
    """Refuse text input to a model without a tokenizer (TransformerLens's message, and the fix)."""
    if _is_text(input) and model.tokenizer is None:
        raise NoTokenizerError(
            "Must provide a tokenizer if passing a string to the model: this model has none; "
            "pass token ids (model.generate(tokens)), or call model.set_tokenizer(tokenizer)"
        )


def _is_text(input: Any) -> bool:
    return isinstance(input, str) or (
        isinstance(input, (list, tuple)) and bool(input) and isinstance(input[0], str)
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
    from lmscope.model import check_attention_mask, check_attention_mask_values

    _require_tokenizer_for_text(model, input)
    side = "left" if padding_side is None else padding_side
    tokens, mask = model._input_to_tokens(input, prepend_bos, side, attention_mask)
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


def _validate(
    model: HookedTransformer,
    prompt_len: int,
    max_new_tokens: int,
    do_sample: bool,
    top_k: int | None,
    top_p: float | None,
    temperature: float,
    stop_at_eos: bool,
    eos_token_id: int | Sequence[int] | None,
) -> list[int]:
    """Check the arguments before any work; returns the EOS ids to stop at."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if prompt_len + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
            f"n_ctx={model.cfg.n_ctx}"
        )
    _check_sampling(do_sample, top_k, top_p, temperature)
    eos_ids = _eos_ids(model, eos_token_id) if stop_at_eos or eos_token_id is not None else []
    return eos_ids if stop_at_eos else []


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
    max_new_tokens: int,
    eos_ids: list[int],
    do_sample: bool,
    top_k: int | None,
    top_p: float | None,
    temperature: float,
    freq_penalty: float,
    use_past_kv_cache: bool,
    seed: int | None,
    capture: _LiveCapture | None = None,
) -> Iterator[Int[Tensor, " batch"]]:
    """The generation loop: yields each step's new token per sequence.

    It enters no context itself (inference mode, hooks): the caller wraps each `next()`, so
    nothing leaks to the caller's code between steps of a stream.
    """
    batch, prompt_len = tokens.shape
    device = tokens.device
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
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    kv = None
    if use_past_kv_cache:
        placement = model._placement
        blocks = placement.blocks if placement is not None else None
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
        next_tokens, bad_rows = _sample(
            logits, do_sample, top_k, top_p, temperature, freq_penalty,
            out[:, :length], generator, seen,
        )  # fmt: skip
        if finished is not None:
            bad_rows &= ~finished  # a finished row's logits are never used
            next_tokens = next_tokens.masked_fill(finished, pad_id)
            finished |= torch.isin(next_tokens, eos)
        # One device sync per step: the NaN check rides on the EOS check when there is one.
        bad, done = _step_flags(bad_rows, finished)
        if bad:
            raise FloatingPointError(_bad_logits_message(bad_rows, do_sample, step))
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
        self.tok = model._require_tokenizer()
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


def generate_stream(
    model: HookedTransformer,
    input: str | Sequence[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] = "",
    max_new_tokens: int = 10,
    max_tokens_per_yield: int | None = None,
    stop_at_eos: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] | None = None,
    seed: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    return_type: Literal["tokens", "str"] = "tokens",
    fwd_hooks: HookList = (),
    verbose: bool = False,
) -> Iterator[Int[Tensor, " batch"] | Int[Tensor, "batch n"] | list[str]]:
    """Yield new tokens as they are generated: a [batch] tensor per step, or with
    `return_type="str"` a list with each sequence's new text piece (see `generate` for the other
    arguments). The arguments are checked when it is called, not at the first step.

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
    eos_ids = _validate(
        model, tokens.shape[1], max_new_tokens, do_sample, top_k, top_p, temperature,
        stop_at_eos, eos_token_id,
    )  # fmt: skip
    pieces = _TextPieces(model, tokens, eos_ids) if return_type == "str" else None
    if max_tokens_per_yield is not None and (
        not isinstance(max_tokens_per_yield, int) or max_tokens_per_yield < 1
    ):
        raise ValueError(f"max_tokens_per_yield must be an int >= 1, got {max_tokens_per_yield!r}")
    steps = _steps(
        model, tokens, mask, max_new_tokens, eos_ids, do_sample, top_k, top_p, temperature,
        freq_penalty, use_past_kv_cache, seed,
    )  # fmt: skip
    if verbose:
        steps = iter(tqdm(steps, total=max_new_tokens, desc="generating"))
    stream = _stream(model, steps, fwd_hooks, pieces)
    if max_tokens_per_yield is None:
        return stream
    return _chunks(stream, tokens if pieces is None else tokens[:, :0], max_tokens_per_yield)


def generate(
    model: HookedTransformer,
    input: str | Sequence[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"] = "",
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: int | Sequence[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] | None = None,
    return_type: Literal["input", "str", "tokens"] = "input",
    verbose: bool = True,
    seed: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    return_cache: bool = False,
    names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
    fwd_hooks: HookList = (),
) -> Any:
    """Continue `input` by up to `max_new_tokens` tokens (TransformerLens semantics).

    Args:
        input: a string, a list of strings (left-padded; the padding is masked at every step),
            or token ids [batch, pos] / [pos] with an optional left-padded `attention_mask`.
        stop_at_eos: stop once every sequence has produced an EOS (`eos_token_id`, an int or a
            list, default the tokenizer's); finished sequences are padded with the first EOS id.
        do_sample: False for greedy decoding; else sample with `temperature`, `top_k`, `top_p`
            and `freq_penalty` (see `sample_logits`), reproducibly with `seed` (a private
            generator: torch's global random state is neither used nor changed).
        use_past_kv_cache: reuse keys and values (a preallocated `KVCache`) instead of re-running
            the whole sequence each step; both give the same tokens.
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
    eos_ids = _validate(
        model, prompt_len, max_new_tokens, do_sample, top_k, top_p, temperature, stop_at_eos,
        eos_token_id,
    )  # fmt: skip
    capture = _LiveCapture(model, names_filter) if return_cache else None
    steps = _steps(
        model, tokens, mask, max_new_tokens, eos_ids, do_sample, top_k, top_p, temperature,
        freq_penalty, use_past_kv_cache, seed, capture,
    )  # fmt: skip
    hooks = [*fwd_hooks, *(capture.fwd_hooks if capture is not None else [])]
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        new = list(tqdm(steps, total=max_new_tokens, disable=not verbose, desc="generating"))
    # From here on outside inference mode, so what is returned are normal tensors.
    out = torch.cat([tokens, torch.stack(new, dim=1)], dim=1) if new else tokens
    if return_type == "input":
        return_type = "str" if _is_text(input) else "tokens"
    if return_type == "tokens":
        result: Any = out
    else:
        keep = torch.cat([mask, torch.ones_like(out[:, prompt_len:])], dim=1).bool()
        if eos_ids and new:  # drop the padding after each row's first EOS
            generated = out[:, prompt_len:]
            is_eos = torch.isin(generated, torch.tensor(eos_ids, device=out.device))
            after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
            keep[:, prompt_len:] &= ~after_eos
        if _is_text(input) and (
            model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        ):
            # the BOS lmscope put before the text is not part of it (TransformerLens drops it too)
            keep[torch.arange(len(keep)), mask.argmax(dim=1)] = False
        texts = [model.to_string(row[k]) for row, k in zip(out, keep, strict=True)]
        result = texts[0] if isinstance(input, str) else texts
    return (result, capture.assemble()) if capture is not None else result
