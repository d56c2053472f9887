"""Tiny random HookedTransformers for the analysis tests (built from a config; no HF needed).

Weights are redrawn so attention is peaked and every bias and norm weight is non-trivial.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.processing import process_weights

VARIANTS: dict[str, dict[str, Any]] = {
    # LayerNorm, learned positions, GELU
    "ln": dict(normalization_type="LN", act_fn="gelu_new"),
    # Llama-style: RMSNorm, rotary, gated SiLU MLP, grouped-query attention (2 kv heads for 4)
    "rms_gqa": dict(
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        act_fn="silu",
        n_key_value_heads=2,
    ),
    # NeoX-style parallel attention + MLP with rotary
    "parallel": dict(
        normalization_type="LN",
        positional_embedding_type="rotary",
        parallel_attn_mlp=True,
        act_fn="gelu",
    ),
}


@torch.no_grad()
def randomise(model: HookedTransformer, seed: int = 0, std: float = 0.25) -> None:
    """Matrices N(0, std), biases N(0, 0.1), norm weights 1 + N(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        if p.ndim >= 2:
            p.copy_(std * noise)
        elif name.endswith(".w"):
            p.copy_(1.0 + 0.2 * noise)
        else:
            p.copy_(0.1 * noise)


def make_model(
    variant: str = "ln",
    processed: bool = True,
    seed: int = 0,
    d_vocab: int = 61,
    **overrides: Any,
) -> HookedTransformer:
    """A 3-layer, d_model 32, 4-head model of the given variant (fold_ln etc. when `processed`)."""
    fields: dict[str, Any] = dict(
        d_model=32, n_layers=3, n_heads=4, d_vocab=d_vocab, n_ctx=32, seed=seed
    )
    fields.update(VARIANTS[variant])
    fields.update(overrides)
    model = HookedTransformer(HookedTransformerConfig(**fields))
    randomise(model, seed)
    if processed:
        process_weights(model)
    return model.eval()


def random_tokens(batch: int, pos: int, d_vocab: int = 61, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, d_vocab, (batch, pos), generator=gen)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(t: torch.Tensor) -> torch.Tensor:
        t = t.flatten().double()
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(t), dtype=torch.float64)
        for v in t.unique():  # average tied ranks
            tied = t == v
            if tied.sum() > 1:
                r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: tiny models gain nothing from threads, and on a shared, busy
    machine OpenMP's spinning threads make them 10-40x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
