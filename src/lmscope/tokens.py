"""Input normalisation shared by the models: token ids, attention masks and padding sides are
checked once here, with errors that name the problem and the fix.

Example:
    >>> tokens = check_token_ids([[3, 1, 4]], d_vocab=100, device=torch.device("cpu"))
    >>> mask = check_attention_mask([[1, 1, 0]], tuple(tokens.shape), tokens.device)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmscope.config import HookedTransformerConfig


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


def real_positions(
    key_mask: Int[Tensor, "batch key"], n_new: int, check: bool = True
) -> tuple[Int[Tensor, "batch new"], Int[Tensor, "batch key"] | None]:
    """The positions of the last `n_new` keys counted over real tokens only (so a left-padded row
    numbers its tokens as an unpadded one does), and `key_mask`, or None when every key is real.
    `check` validates the mask's values (`check_attention_mask_values`); either way one sync.

    Example:
        >>> positions, mask = real_positions(torch.tensor([[0, 1, 1]]), 3)
        >>> positions.tolist(), mask is None
        ([[0, 0, 1]], False)
    """
    positions = (key_mask.cumsum(-1) - 1).clamp(min=0)[:, key_mask.shape[1] - n_new :]
    full = check_attention_mask_values(key_mask) if check else bool(key_mask.all())
    return positions, None if full else key_mask


def is_text(input: Any) -> bool:
    """Whether `input` is text (a string or a non-empty list of strings), not token ids.

    Example:
        >>> is_text(["a", "b"]), is_text(torch.tensor([1, 2]))
        (True, False)
    """
    return isinstance(input, str) or (
        isinstance(input, (list, tuple)) and bool(input) and isinstance(input[0], str)
    )


def require_tokenizer(tokenizer: PreTrainedTokenizerBase | None) -> PreTrainedTokenizerBase:
    """`tokenizer`, or a ValueError that says how to give the model one.

    Example:
        >>> require_tokenizer(model.tokenizer).decode([42])
    """
    if tokenizer is None:
        raise ValueError(
            "this model has no tokenizer: pass token ids, or call model.set_tokenizer(tok)"
        )
    return tokenizer


def _check_no_empty_rows(ids: list[list[int]], single: bool) -> None:
    """Raise if a tokenized text has no tokens (an empty string without BOS), naming which."""
    empty = [i for i, seq in enumerate(ids) if not seq]
    if not empty:
        return
    fix = "pass some text, or prepend_bos=True to start it from BOS"
    if single:
        raise ValueError(
            f"input is empty (0 tokens: the text is empty and no BOS is prepended); {fix}"
        )
    raise ValueError(
        f"input string {empty[0]} of the list is empty (0 tokens: no text and no BOS; empty "
        f"strings at {empty}); every string needs a token: {fix}, or drop it"
    )


def tokenize(
    tokenizer: PreTrainedTokenizerBase,
    text: str | Sequence[str],
    prepend_bos: bool,
    padding_side: str,
    device: torch.device,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]:
    """Token ids of `text` on `device` and their attention mask (None when nothing was padded):
    BOS put first once when `prepend_bos` (the tokenizer's own special tokens are off), a list
    padded on `padding_side` with the tokenizer's pad id (else 0).

    Example:
        >>> tokens, mask = tokenize(model.tokenizer, ["Hi", "Hello there"], True, "left", "cpu")
        >>> mask[0].tolist()[:2]
        [0, 0]
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError("input is an empty list of strings; pass at least one string")
    check_padding_side(padding_side)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ValueError(
                "prepend_bos=True, but this tokenizer has no BOS token; pass prepend_bos=False"
            )
        ids = [[tokenizer.bos_token_id, *seq] for seq in ids]
    _check_no_empty_rows(ids, isinstance(text, str))
    length = max(len(seq) for seq in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.full((len(ids), length), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.long)
    for i, seq in enumerate(ids):
        span = slice(length - len(seq), length) if padding_side == "left" else slice(0, len(seq))
        tokens[i, span] = torch.tensor(seq, dtype=torch.long)
        mask[i, span] = 1
    return tokens.to(device), (None if bool(mask.all()) else mask.to(device))


def text_defaults(
    cfg: HookedTransformerConfig, prepend_bos: bool | None, padding_side: str | None
) -> tuple[bool, str]:
    """`prepend_bos` and `padding_side` for tokenizing text, each defaulting to the config's
    (`default_prepend_bos`, `default_padding_side`), checked.

    Example:
        >>> text_defaults(model.cfg, None, "left")
        (True, 'left')
    """
    prepend_bos = cfg.default_prepend_bos if prepend_bos is None else prepend_bos
    if padding_side is None:
        padding_side = cfg.default_padding_side
        check_padding_side(padding_side, "model.cfg.default_padding_side")
    check_padding_side(padding_side)
    return prepend_bos, padding_side


def input_to_tokens(
    input: Any,
    cfg: HookedTransformerConfig,
    get_tokenizer: Callable[[], PreTrainedTokenizerBase | None],
    device: torch.device,
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
    attention_mask: Any = None,
) -> tuple[Int[Tensor, "batch pos"], Any]:
    """A model's input as token ids [batch, pos] on `device`, with its attention mask: the
    caller's `attention_mask` if given (checked later, against the tokens' shape), else the
    padding of tokenized text (None when nothing is padded). Text is tokenized with the config's
    defaults for BOS and padding side; token ids are checked (`check_token_ids`).
    `get_tokenizer` is called for text only, so token ids never load a lazily loaded tokenizer.

    Example:
        >>> tokens, mask = input_to_tokens(["a cat", "a"], model.cfg, lambda: model.tokenizer, "cpu")
    """
    if padding_side is not None:
        check_padding_side(padding_side)
    if isinstance(input, str) or (
        isinstance(input, (list, tuple)) and (not input or isinstance(input[0], str))
    ):
        tokenizer = require_tokenizer(get_tokenizer())
        bos, side = text_defaults(cfg, prepend_bos, padding_side)
        tokens, mask = tokenize(tokenizer, input, bos, side, device)
        return tokens, mask if attention_mask is None else attention_mask
    return check_token_ids(input, cfg.d_vocab, device), attention_mask
