"""Head detector: score every attention head against a reference attention pattern.

TransformerLens's `detect_head`: the built-in patterns are "previous_token_head" (attend to the
previous token), "duplicate_token_head" (attend to earlier copies of the current token) and
"induction_head" (attend to the token after an earlier copy of the current token); any
[pos, pos] (or [batch, pos, pos]) tensor works as a custom pattern.

Scores (error_measure):
- "mul" (default): the share of each head's attention that falls on the pattern,
  `sum(attention * pattern) / sum(attention)`, in [0, 1] for a 0/1 pattern.
- "abs": `1 - mean over query rows of sum |attention - pattern|`; 1 means identical.

Example:
    >>> scores = detect_head(model, "a b c d a b c d", "induction_head")   # [n_layers, n_heads]
    >>> scores.flatten().topk(3)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from lmscope.cache import ActivationCache
    from lmscope.model import HookedTransformer

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: tuple[str, ...] = ("previous_token_head", "duplicate_token_head", "induction_head")
ErrorMeasure = Literal["abs", "mul"]


def get_previous_token_head_detection_pattern(
    tokens: Int[Tensor, "... pos"],
) -> Float[Tensor, "... pos pos"]:
    """1 where a query attends to the position just before it.

    Example:
        >>> get_previous_token_head_detection_pattern(torch.tensor([5, 6, 7]))
        tensor([[0., 0., 0.],
                [1., 0., 0.],
                [0., 1., 0.]])
    """
    n = tokens.shape[-1]
    pattern = torch.diag_embed(torch.ones(n - 1), offset=-1) if n > 1 else torch.zeros(1, 1)
    return pattern.expand(*tokens.shape[:-1], n, n).clone()


def get_duplicate_token_head_detection_pattern(
    tokens: Int[Tensor, "... pos"],
) -> Float[Tensor, "... pos pos"]:
    """1 where a query attends to an earlier position holding the same token.

    Example:
        >>> get_duplicate_token_head_detection_pattern(torch.tensor([5, 6, 5]))[2]
        tensor([1., 0., 0.])
    """
    tokens = tokens.cpu()
    same = tokens[..., :, None] == tokens[..., None, :]
    return torch.tril(same, diagonal=-1).float()


def get_induction_head_detection_pattern(
    tokens: Int[Tensor, "... pos"],
) -> Float[Tensor, "... pos pos"]:
    """1 where a query attends to the token right after an earlier copy of itself (j with
    tokens[j - 1] == tokens[query], j <= query).

    Example:
        >>> get_induction_head_detection_pattern(torch.tensor([5, 6, 5]))[2]
        tensor([0., 1., 0.])
    """
    duplicate = get_duplicate_token_head_detection_pattern(tokens)
    shifted = torch.zeros_like(duplicate)
    shifted[..., 1:] = duplicate[..., :-1]
    return torch.tril(shifted)


_BUILDERS = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def get_supported_heads() -> tuple[str, ...]:
    """Names of the built-in detection patterns.

    Example:
        >>> get_supported_heads()
        ('previous_token_head', 'duplicate_token_head', 'induction_head')
    """
    return HEAD_NAMES


def compute_head_attention_similarity_score(
    attention_pattern: Float[Tensor, "... q k"],
    detection_pattern: Float[Tensor, "... q k"],
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> Float[Tensor, "..."]:
    """Similarity of attention patterns to a detection pattern over the last two dims (see the
    module docstring for the two measures).

    Example:
        >>> compute_head_attention_similarity_score(torch.eye(3), torch.eye(3))
        tensor(1.)
    """
    attention = attention_pattern.float()
    detection = detection_pattern.to(attention.device, torch.float32)
    if error_measure == "abs":
        if not torch.equal(detection, torch.tril(detection)):
            raise ValueError("the detection pattern must be lower triangular (causal)")
        row_error = (attention - detection).abs().sum(-1)  # [..., q]
        return 1.0 - row_error.mean(-1)
    if error_measure != "mul":
        raise ValueError(f"error_measure must be 'mul' or 'abs', got {error_measure!r}")
    attention = attention.clone()
    if exclude_bos:
        attention[..., 0] = 0
    if exclude_current_token:
        attention = attention * (1 - torch.eye(attention.shape[-1], device=attention.device))
    total = attention.sum((-2, -1))
    return (attention * detection).sum((-2, -1)) / total.clamp(min=1e-12)


def detect_head(
    model: HookedTransformer,
    seq: str | list[str] | Int[Tensor, "batch pos"],
    detection_pattern: HeadName | Float[Tensor, "pos pos"] | Float[Tensor, "batch pos pos"],
    heads: dict[int, list[int]] | list[tuple[int, int]] | None = None,
    cache: ActivationCache | None = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> Float[Tensor, "n_layers n_heads"]:
    """Score every head (or `heads`: {layer: [head, ...]} or [(layer, head), ...]) of `model` on
    `seq` against `detection_pattern`; the mean over sequences, -1 for heads not scored.

    `seq` is a string, a list of strings (each run on its own, so lengths may differ) or token ids
    [batch, pos] (run as one batch). A custom `detection_pattern` must match the sequence length.
    `cache` reuses a cached run of a single sequence.

    Example:
        >>> detect_head(model, "The cat sat. The cat sat.", "induction_head", exclude_bos=True)
    """
    cfg = model.cfg
    if isinstance(detection_pattern, str) and detection_pattern not in _BUILDERS:
        raise ValueError(
            f"unknown head type {detection_pattern!r}; choose one of {HEAD_NAMES} or pass a tensor"
        )
    if isinstance(seq, str):
        batches = [model.to_tokens(seq)]
    elif isinstance(seq, list):
        batches = [model.to_tokens(s) for s in seq]
    else:
        tokens = torch.as_tensor(seq)
        batches = [tokens[None] if tokens.ndim == 1 else tokens]
    if cache is not None and (len(batches) != 1 or batches[0].shape[0] != 1):
        raise ValueError("a cache can only be reused for a single sequence")

    selected = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    if heads is None:
        selected[:] = True
    elif isinstance(heads, dict):
        for layer, hs in heads.items():
            selected[layer, list(hs)] = True
    else:
        for layer, head in heads:
            selected[layer, head] = True
    layers = sorted({int(layer) for layer in selected.nonzero()[:, 0].tolist()})

    total = torch.zeros(cfg.n_layers, cfg.n_heads)
    count = 0
    for tokens in batches:
        if isinstance(detection_pattern, str):
            pattern = _BUILDERS[detection_pattern](tokens.cpu())
        else:
            pattern = torch.as_tensor(detection_pattern, dtype=torch.float32)
            if pattern.shape[-1] != tokens.shape[-1] or pattern.shape[-2] != tokens.shape[-1]:
                raise ValueError(
                    f"the detection pattern is {tuple(pattern.shape)} but the sequence has "
                    f"{tokens.shape[-1]} tokens"
                )
            if pattern.ndim == 2:
                pattern = pattern.expand(tokens.shape[0], *pattern.shape)
        if cache is None:
            names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
            with torch.no_grad():
                _, run_cache = model.run_with_cache(tokens, names_filter=names)
        else:
            run_cache = cache
        for layer in layers:
            attention = run_cache[f"blocks.{layer}.attn.hook_pattern"]
            if attention.ndim == 3:  # a cache without its batch dimension
                attention = attention[None]
            scores = compute_head_attention_similarity_score(
                attention,
                pattern[:, None],
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                error_measure=error_measure,
            )  # [batch, head]
            total[layer] += scores.sum(0).cpu()
        count += tokens.shape[0]
    result = total / count
    return torch.where(selected, result, torch.full_like(result, -1.0))
