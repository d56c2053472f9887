"""Rotary position embeddings (RoPE): frequency tables and their application to q and k.

The model computes `cos, sin` once per forward from each sequence's position ids (so left padding
and KV-cache offsets are just other position ids) and every attention layer reuses them.

Precision follows transformers' `LlamaRotaryEmbedding`: the inverse frequencies stay float32 whatever
the model is cast to, the angles and their cos/sin are computed in float32 (float64 in a float64
model), and the tables are then cast to the activations' dtype, in which q and k are rotated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import HookedTransformerConfig


def rope_inv_freq(
    cfg: HookedTransformerConfig, base: float | None = None, scaling: bool = True
) -> Float[Tensor, " half_rot"]:
    """Inverse frequencies for `cfg.rotary_dim`, with the config's rope scaling (if `scaling`)."""
    base = cfg.rotary_base if base is None else base
    dim = cfg.rotary_dim
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = (cfg.rope_scaling or {}) if scaling else {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    return inv_freq


class Rotary(nn.Module):
    """Holds the inverse frequencies; `forward(positions, dtype)` gives the (cos, sin) tables."""

    def __init__(
        self, cfg: HookedTransformerConfig, base: float | None = None, scaling: bool = True
    ) -> None:
        super().__init__()
        self.adjacent_pairs = cfg.rotary_adjacent_pairs
        self.register_buffer("inv_freq", rope_inv_freq(cfg, base, scaling), persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Rotary:
        """Follow device moves, but keep `inv_freq` float32 through `.to(dtype)`, `.half()`, ...:
        in bfloat16 the frequencies themselves would be off by up to 0.4%."""
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != inv_freq.dtype:
            self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    def forward(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype = torch.float32
    ) -> tuple[Float[Tensor, "batch pos rot"], Float[Tensor, "batch pos rot"]]:
        """cos and sin of every position's angles, computed in float32 (float64 when `dtype` is)
        and returned in `dtype`."""
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        freqs = positions[..., None].to(compute) * self.inv_freq  # [batch, pos, rot/2]
        if self.adjacent_pairs:
            emb = freqs.repeat_interleave(2, dim=-1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos rot"],
    sin: Float[Tensor, "batch pos rot"],
    adjacent_pairs: bool = False,
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first `rot` dims of each head; the rest pass through (partial rotary).

    `adjacent_pairs=False` pairs dim i with i + rot/2 (GPT-NeoX, Llama); True pairs 2i with 2i+1
    (GPT-J).
    """
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    if adjacent_pairs:
        pairs = x_rot.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    else:
        half = rot // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos[:, :, None] + rotated * sin[:, :, None]
    return out if x_pass.shape[-1] == 0 else torch.cat((out, x_pass), dim=-1)
