"""Input normalisation shared by the models: token ids, attention masks and padding sides are
checked once here, with errors that name the problem and the fix.

Example:
    >>> tokens = check_token_ids([[3, 1, 4]], d_vocab=100, device=torch.device("cpu"))
    >>> mask = check_attention_mask([[1, 1, 0]], tuple(tokens.shape), tokens.device)
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor


def check_padding_side(padding_side: Any, source: str = "padding_side") -> None:
    """Raise unless `padding_side` is exactly "left" or "right" (`source` names the setting)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"{source} must be 'left' or 'right', got {padding_side!r}")


def check_attention_mask(mask: Any, shape: tuple[int, int], device: torch.device) -> Tensor:
    """`mask` as a long tensor on `device`, after checking that it is integer or bool and has the
    tokens' [batch, pos] `shape` (no device sync; `check_attention_mask_values` checks values)."""
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"attention_mask must be a tensor of 1s (real tokens) and 0s (padding), got "
                f"{type(mask).__name__}"
            ) from err
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise ValueError(
            f"attention_mask must hold integers or bools (1 = real token, 0 = padding), got "
            f"{mask.dtype}; pass mask.long() (an additive 0/-inf mask is (mask == 0).long())"
        )
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"attention_mask has shape {tuple(mask.shape)}, but the tokens have shape "
            f"{tuple(shape)}: it needs one entry per token, [batch, pos] (it is not broadcast)"
        )
    return mask.to(device=device, dtype=torch.long)


def check_attention_mask_values(mask: Int[Tensor, "batch pos"]) -> bool:
    """Whether a long attention mask is all 1s; raises if it holds values other than 0 and 1 or
    a row with no real token. One device sync, as the plain `mask.all()` it replaces."""
    stats = torch.cat([mask.amin().view(1), mask.amax(-1)]).tolist()
    low, row_max = stats[0], stats[1:]
    if low < 0 or max(row_max) > 1:
        raise ValueError(
            f"attention_mask must be 1 for real tokens and 0 for padding, but it holds values "
            f"from {low} to {max(row_max)}"
        )
    empty = [i for i, high in enumerate(row_max) if high == 0]
    if empty:
        raise ValueError(
            f"attention_mask row {empty[0]} is all 0 (rows {empty} have no real token); every "
            "row needs at least one real token: drop the empty rows"
        )
    return low == 1


def check_token_ids(input: Any, d_vocab: int, device: torch.device) -> Int[Tensor, "batch pos"]:
    """Token ids as a [batch, pos] integer tensor on `device`, after checking their shape, dtype
    and range [0, d_vocab) (one device sync, for the range).

    Example:
        >>> check_token_ids(torch.tensor([5, 7]), 100, torch.device("cpu")).shape
        torch.Size([1, 2])
    """

    tokens = torch.as_tensor(input, device=device)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.dtype == torch.bool:
        raise ValueError(
            "token input is a bool tensor (a mask?), not token ids; pass integer ids, or "
            "tokens.long() if these really are ids 0 and 1"
        )
    if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype.is_complex:
        raise ValueError(
            f"token input must be integer ids of shape [batch, pos] or [pos], got {tuple(tokens.shape)} "
            f"{tokens.dtype}; to feed a residual stream use start_at_layer"
        )
    if tokens.shape[0] == 0:
        raise ValueError(
            f"input is an empty batch (0 sequences, shape {tuple(tokens.shape)}); pass at "
            "least one sequence"
        )
    if tokens.shape[1] == 0:
        raise ValueError("input is empty (0 tokens); pass some text or token ids")
    if tokens.dtype not in (torch.long, torch.int32):
        tokens = tokens.long()  # uint8, int8, int16: ids all the same; embedding wants int/long
    low, high = torch.stack([tokens.min(), tokens.max()]).tolist()  # one sync
    if low < 0 or high >= d_vocab:
        raise ValueError(f"token ids must lie in [0, {d_vocab}); got ids from {low} to {high}")
    return tokens
