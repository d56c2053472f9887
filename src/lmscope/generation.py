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
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from lmscope.config import HookedTransformerConfig

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache
    from lmscope.model import HookedTransformer


class KVCacheEntry:
    """One layer's keys and values, [batch, kv_head, capacity, d_head], filled up to the cache's length."""

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
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

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
    ) -> None:
        self.cfg = cfg
        self.batch = batch
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.entries = [
            KVCacheEntry(cfg, batch, capacity, device, dtype) for _ in range(cfg.n_layers)
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
    """Keep the k largest logits of each row; the rest become -inf."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(
    logits: Float[Tensor, "batch d_vocab"], p: float
) -> Float[Tensor, "batch d_vocab"]:
    """Keep the smallest set of most likely tokens whose probability reaches p (nucleus sampling)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop_sorted = (probs.cumsum(-1) - probs) >= p  # the tokens before already reach p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


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
    """One token per row: greedy when `do_sample=False`, else the frequency penalty, temperature,
    top-k and top-p are applied in that order and a token is drawn.

    Example:
        >>> sample_logits(torch.tensor([[0.0, 5.0, 1.0]]), do_sample=False)
        tensor([1])
    """
    if freq_penalty and tokens is not None:
        logits = apply_freq_penalty(logits, tokens, freq_penalty, token_mask)
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 when sampling, got {temperature}; pass do_sample=False for greedy"
        )
    logits = logits / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.float().softmax(dim=-1), 1, generator=generator)[:, 0]


# -- generation -----------------------------------------------------------------------------------
def _eos_ids(model: HookedTransformer, eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        tok = model.tokenizer
        if tok is None or tok.eos_token_id is None:
            return []
        eos_token_id = tok.eos_token_id
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
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
        self.steps.setdefault(hook.name, []).append(tensor.detach().clone())

    def assemble(self) -> ActivationCache:
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
            else:
                cache[name] = torch.cat(parts, dim=1)
        return self.model._make_cache(cache)


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
    """Prompt tokens and their mask; text batches are left-padded so every row ends in a real token."""
    if _is_text(input):
        tokens, mask = model._tokenize(input, prepend_bos, padding_side or "left")
    else:
        tokens, mask = model._input_to_tokens(input, None, None, attention_mask)
    mask = torch.ones_like(tokens) if mask is None else mask.to(tokens.device).long()
    if bool((mask[:, -1] == 0).any()):
        raise ValueError(
            "generation needs left padding (every row's last position real); pass padding_side='left'"
        )
    return tokens, mask


def _steps(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    stop_at_eos: bool,
    eos_token_id: int | Sequence[int] | None,
    do_sample: bool,
    top_k: int | None,
    top_p: float | None,
    temperature: float,
    freq_penalty: float,
    use_past_kv_cache: bool,
    seed: int | None,
    capture: _LiveCapture | None = None,
) -> Iterator[Int[Tensor, " batch"]]:
    """The generation loop: yields each step's new token per sequence."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 when sampling, got {temperature}; pass do_sample=False for greedy"
        )
    batch, prompt_len = tokens.shape
    if prompt_len + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's context "
            f"n_ctx={model.cfg.n_ctx}"
        )
    eos_ids = _eos_ids(model, eos_token_id) if stop_at_eos else []
    eos = torch.tensor(eos_ids, device=tokens.device, dtype=torch.long)
    pad_id = eos_ids[0] if eos_ids else 0
    generator = (
        torch.Generator(device=tokens.device).manual_seed(seed) if seed is not None else None
    )
    kv = None
    if use_past_kv_cache:
        kv = KVCache(
            model.cfg, batch, prompt_len + max_new_tokens + 1, tokens.device, model.W_E.dtype
        )
    finished = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    step_input, step_mask = tokens, mask
    with torch.no_grad(), model.hooks(fwd_hooks=capture.fwd_hooks if capture is not None else []):
        for _ in range(max_new_tokens):
            if kv is not None:
                logits = model(step_input, attention_mask=step_mask, past_kv_cache=kv)
            else:
                if capture is not None:
                    capture.steps.clear()  # without a KV cache each step re-runs everything
                logits = model(tokens, attention_mask=None if bool(mask.all()) else mask)
            next_tokens = sample_logits(
                logits[:, -1],
                do_sample,
                top_k,
                top_p,
                temperature,
                freq_penalty,
                tokens,
                generator,
                mask,
            )
            if eos_ids:
                next_tokens = torch.where(
                    finished, torch.full_like(next_tokens, pad_id), next_tokens
                )
                finished |= torch.isin(next_tokens, eos)
            step_input, step_mask = next_tokens[:, None], torch.ones_like(next_tokens[:, None])
            tokens = torch.cat([tokens, step_input], dim=1)
            mask = torch.cat([mask, step_mask], dim=1)
            yield next_tokens
            if eos_ids and bool(finished.all()):
                break
        if capture is not None and max_new_tokens > 0:
            # Run the last token too, so the capture covers every position of the output.
            if kv is not None:
                model(step_input, attention_mask=step_mask, past_kv_cache=kv, return_type=None)
            else:
                capture.steps.clear()
                model(tokens, attention_mask=None if bool(mask.all()) else mask, return_type=None)


def generate_stream(
    model: HookedTransformer,
    input: str | Sequence[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
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
    seed: int | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    return_type: Literal["tokens", "str"] = "tokens",
) -> Iterator[Int[Tensor, " batch"] | list[str]]:
    """Yield new tokens as they are generated: a [batch] tensor per step, or with
    `return_type="str"` each sequence's new text piece (see `generate` for the other arguments).

    Example:
        >>> for piece in model.generate_stream("Once upon a time", 20, return_type="str"):
        ...     print(piece[0], end="", flush=True)
    """
    tokens, mask = _prompt(model, input, prepend_bos, padding_side, attention_mask)
    steps = _steps(
        model, tokens, mask, max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p,
        temperature, freq_penalty, use_past_kv_cache, seed,
    )  # fmt: skip
    for new in steps:
        yield [model.to_string([int(t)]) for t in new] if return_type == "str" else new


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
) -> Any:
    """Continue `input` by up to `max_new_tokens` tokens (TransformerLens semantics).

    Hooks attached with `model.hooks(...)` apply at every step. With `return_cache=True` it returns
    `(output, cache)`: an ActivationCache over the whole output sequence, recorded live from the
    generation steps (filtered by `names_filter`) and equal to `run_with_cache` on the output.
    Lists of strings are left-padded and their padding is masked at every step. Sequences that
    reach EOS are padded with EOS until all have finished (`stop_at_eos`).

    Example:
        >>> model.generate("The capital of France is", max_new_tokens=3, do_sample=False)
        'The capital of France is Paris.'
    """
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens', got {return_type!r}")
    if isinstance(input, str) and input == "":
        prepend_bos = True  # an empty prompt starts from BOS
    tokens, mask = _prompt(model, input, prepend_bos, padding_side, attention_mask)
    capture = _LiveCapture(model, names_filter) if return_cache else None
    steps = _steps(
        model, tokens, mask, max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p,
        temperature, freq_penalty, use_past_kv_cache, seed, capture,
    )  # fmt: skip
    new = list(tqdm(steps, total=max_new_tokens, disable=not verbose, desc="generating"))
    out = torch.cat([tokens, torch.stack(new, dim=1)], dim=1) if new else tokens
    if return_type == "input":
        return_type = "str" if _is_text(input) else "tokens"
    if return_type == "tokens":
        result: Any = out
    else:
        keep = torch.cat([mask, torch.ones_like(out[:, tokens.shape[1] :])], dim=1).bool()
        if stop_at_eos and new:  # drop the padding after each row's first EOS
            eos_ids = _eos_ids(model, eos_token_id)
            generated = out[:, tokens.shape[1] :]
            is_eos = torch.isin(
                generated, torch.tensor(eos_ids, dtype=torch.long, device=out.device)
            )
            after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0
            keep[:, tokens.shape[1] :] &= ~after_eos
        texts = [model.to_string(row[k]) for row, k in zip(out, keep, strict=True)]
        result = texts[0] if isinstance(input, str) else texts
    return (result, capture.assemble()) if capture is not None else result
