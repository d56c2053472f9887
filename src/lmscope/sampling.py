"""Sampling one token per row from logits: frequency penalty, temperature, top-k and top-p
(nucleus) filters, greedy argmax, and the checks that refuse NaN logits.

Example:
    >>> sample_logits(torch.tensor([[0.0, 5.0, 1.0]]), do_sample=False)
    tensor([1])
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


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


def check_sampling(
    do_sample: bool, top_k: int | None, top_p: float | None, temperature: float
) -> None:
    """Raise if the sampling settings are out of range (nothing to check for greedy decoding).

    Example:
        >>> check_sampling(True, top_k=0, top_p=None, temperature=1.0)
        Traceback (most recent call last):
        ValueError: top_k must be >= 1, got 0
    """
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
    check_sampling(do_sample, top_k, top_p, temperature)
    next_tokens, bad_rows = sample_tokens(
        logits, do_sample, top_k, top_p, temperature, freq_penalty, tokens, generator, token_mask
    )
    if bool(bad_rows.any()):
        raise FloatingPointError(bad_logits_message(bad_rows, do_sample, step=None))
    return next_tokens


def sample_tokens(
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
    assert); the caller must raise when any row is bad.

    Example:
        >>> logits = torch.tensor([[0.0, 5.0]])
        >>> tokens, bad = sample_tokens(logits, False, None, None, 1.0, 0.0, None, None, None)
        >>> tokens.tolist(), bad.tolist()
        ([1], [False])
    """
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


def bad_logits_message(bad_rows: Bool[Tensor, " batch"], do_sample: bool, step: int | None) -> str:
    """What went wrong with the logits of `bad_rows`, and what usually causes it.

    Example:
        >>> bad_logits_message(torch.tensor([False, True]), do_sample=False, step=3)[:40]
        'generation step 3: NaN logits, so no tok'
    """
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
