"""TransformerLens's `from_pretrained` arguments that lmscope's loader does not name itself:
`first_n_layers`, `checkpoint_index` / `checkpoint_value` / `checkpoint_label`, and the HF keyword
arguments TransformerLens passes on (`torch_dtype`, quantization flags). Each one is turned into
lmscope's own terms here, or refused with the reason, before any weight is read.

Example:
    >>> model = HookedTransformer.from_pretrained("pythia-70m", checkpoint_value=1000,
    ...                                           first_n_layers=2)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from lmscope.loading.pieces import source_names
from lmscope.loading.training_checkpoints import checkpoint_revision

if TYPE_CHECKING:
    from lmscope.config import HookedTransformerConfig
    from lmscope.loading.checkpoint import Checkpoint

_QUANTIZATION_FLAGS = ("load_in_8bit", "load_in_4bit", "quantization_config")


def hf_keyword_arguments(
    kwargs: dict[str, Any], dtype: torch.dtype | str
) -> tuple[dict[str, Any], torch.dtype | str]:
    """The config overrides left in `kwargs` once the HF `from_pretrained` arguments that
    TransformerLens accepts are taken out, and the dtype: `torch_dtype` is an alias of `dtype`
    (TransformerLens lets it win; here two different values are an error), quantization is
    refused (lmscope computes in float weights).

    Example:
        >>> hf_keyword_arguments({"torch_dtype": torch.bfloat16, "n_ctx": 512}, torch.float32)
        ({'n_ctx': 512}, torch.bfloat16)
    """
    rest = dict(kwargs)
    asked = [flag for flag in _QUANTIZATION_FLAGS if rest.get(flag)]
    if asked:
        raise ValueError(
            f"{asked[0]} is not supported: lmscope loads float weights (dequantising GGUF files). "
            "Drop it and pass dtype=torch.bfloat16 (or 'float16') to halve the memory"
        )
    for flag in _QUANTIZATION_FLAGS:
        rest.pop(flag, None)
    if "torch_dtype" in rest:
        torch_dtype = rest.pop("torch_dtype")
        if dtype not in (torch.float32, "float32", torch_dtype):
            raise ValueError(
                f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass only dtype"
            )
        dtype = torch_dtype
    return rest, dtype


def training_checkpoint_revision(
    hub_id: str,
    revision: str | None,
    checkpoint_index: int | None,
    checkpoint_value: int | None,
    checkpoint_label: int | None,
) -> str | None:
    """The hub revision to load: `revision`, or the branch of the training checkpoint that
    `checkpoint_index` or `checkpoint_value` (alias `checkpoint_label`) names.

    Example:
        >>> training_checkpoint_revision("EleutherAI/pythia-70m", None, None, 1000, None)
        'step1000'
    """
    if checkpoint_label is not None:
        if checkpoint_value is not None:
            raise ValueError(
                "pass checkpoint_value or checkpoint_label, not both: they are aliases"
            )
        checkpoint_value = checkpoint_label
    if checkpoint_index is None and checkpoint_value is None:
        return revision
    if revision is not None:
        raise ValueError(
            f"revision={revision!r} and a training checkpoint (checkpoint_index/"
            "checkpoint_value) both choose the revision; pass one of them"
        )
    return checkpoint_revision(hub_id, checkpoint_index, checkpoint_value)[0]


def first_layers(
    family: Any, cfg: HookedTransformerConfig, n_layers: int, checkpoint: Checkpoint
) -> tuple[HookedTransformerConfig, frozenset[str]]:
    """The config of the model's first `n_layers` blocks (embeddings, those blocks, final norm
    and unembedding, as TransformerLens's `first_n_layers` builds it), and the checkpoint
    tensors of the blocks left out, which the load then does not read.

    Example:
        >>> small, unread = first_layers(family, cfg, 2, checkpoint)
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int):
        raise TypeError(f"first_n_layers must be an int, got {type(n_layers).__name__}")
    if not 1 <= n_layers <= cfg.n_layers:
        raise ValueError(
            f"first_n_layers must lie in [1, {cfg.n_layers}] (the model has {cfg.n_layers} "
            f"layers), got {n_layers}"
        )
    attn_types = None if cfg.attn_types is None else list(cfg.attn_types)[:n_layers]
    small = dataclasses.replace(cfg, n_layers=n_layers, attn_types=attn_types)
    kept = family.weight_map(small, checkpoint.hf_config)
    full = family.weight_map(cfg, checkpoint.hf_config)
    left_out = {
        checkpoint.resolve(name)
        for key, source in full.items()
        if key not in kept
        for name in source_names(source)
    }
    return small, frozenset(left_out)
