"""What the harvest tests share: a small corpus and the reference a harvest must equal (the
same batches run by hand with run_with_cache)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tests._tiny import TRAINING_TEXT

HOOKS = ["blocks.0.hook_resid_post", "blocks.0.attn.hook_z"]


def corpus(n: int = 120) -> list[str]:
    """`n` short texts (TRAINING_TEXT's sentences, numbered)."""
    return [f"{TRAINING_TEXT[i % len(TRAINING_TEXT)]} {i}" for i in range(n)]


@torch.no_grad()
def by_hand(
    model: Any, tokens: Tensor, hooks: list[str], rows_per_shard: int, batch_size: int
) -> dict[str, Tensor]:
    """Each hook's activations over `tokens`, from run_with_cache on the batches harvest runs
    (batch_size rows at a time, restarting at each shard), concatenated."""
    parts: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for shard in range(0, len(tokens), rows_per_shard):
        end = min(shard + rows_per_shard, len(tokens))
        for lo in range(shard, end, batch_size):
            batch = tokens[lo : min(lo + batch_size, end)].long()
            _, cache = model.run_with_cache(batch, names_filter=hooks)
            for h in hooks:
                parts[h].append(cache[h])
    return {h: torch.cat(p) for h, p in parts.items()}
