"""Rotary position embeddings (RoPE): frequency tables and their application to q and k.

The model computes `cos, sin` once per forward from each sequence's position ids (so left padding
and KV-cache offsets are just other position ids) and every attention layer reuses them.

Precision follows transformers' `LlamaRotaryEmbedding`: the inverse frequencies stay float32 whatever
the model is cast to, the angles and their cos/sin are computed in float32 (float64 in a float64
model), and the tables are then cast to the activations' dtype, in which q and k are rotated.

Rope scaling ("linear", "dynamic", "yarn", "longrope", "llama3", "proportional") takes its
frequencies and attention factor from transformers' own rope-init functions
(`transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`, imported on first use), so they are
transformers' numbers by construction rather than a re-derivation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.config import HookedTransformerConfig, LayerConfig

# Types whose frequencies depend on the sequence length (transformers' `dynamic_rope_update`).
_LENGTH_DEPENDENT = ("dynamic", "longrope")


class _RopeConfig:
    """The few attributes transformers' rope-init functions read from a model config."""

    def __init__(self, params: dict[str, Any], head_dim: int, max_positions: int) -> None:
        self.rope_parameters = params
        self.head_dim = head_dim
        self.hidden_size, self.num_attention_heads = head_dim, 1
        self.max_position_embeddings = max_positions

    def standardize_rope_params(self) -> None:
        """Already standard: lmscope's adapters write the parameters in transformers 5's form."""


def rope_parameters(
    cfg: HookedTransformerConfig | LayerConfig,
    base: float | None = None,
    scaling: bool = True,
    seq_len: int | Int[Tensor, ""] | None = None,
) -> tuple[Float[Tensor, " half_rot"], float]:
    """Inverse frequencies for `cfg.rotary_dim` and the factor cos and sin are multiplied by,
    with the config's rope scaling (if `scaling`) at a sequence of `seq_len` positions (what
    "dynamic" and "longrope" depend on). Scaled frequencies come from transformers' own
    rope-init functions (`transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`), never re-derived.

    Example:
        >>> cfg = HookedTransformerConfig(d_model=64, n_layers=1, n_heads=4, d_vocab=10, n_ctx=32,
        ...     positional_embedding_type="rotary", rope_scaling={"rope_type": "linear", "factor": 2.0})
        >>> inv_freq, factor = rope_parameters(cfg)
        >>> inv_freq.shape, factor
        (torch.Size([8]), 1.0)
    """
    base = cfg.rotary_base if base is None else base
    params = dict(cfg.rope_scaling or {}) if scaling else {}
    kind = params.get("rope_type", "default")
    if kind == "default":
        dim = cfg.rotary_dim
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if kind not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"rope_scaling rope_type {kind!r} is not implemented by transformers")
    params["rope_theta"] = base
    max_positions = params.pop("max_position_embeddings", cfg.n_ctx)
    if kind == "proportional":  # frequencies over the whole head, the unrotated part zero
        head_dim = cfg.d_head
    else:  # the rotated dimensions, which transformers derives as head_dim * fraction
        head_dim, params["partial_rotary_factor"] = cfg.rotary_dim, 1.0
    config = _RopeConfig(params, head_dim, max_positions)
    inv_freq, factor = ROPE_INIT_FUNCTIONS[kind](config, None, seq_len=seq_len)
    return inv_freq.float(), float(factor)


def rope_inv_freq(
    cfg: HookedTransformerConfig, base: float | None = None, scaling: bool = True
) -> Float[Tensor, " half_rot"]:
    """Inverse frequencies for `cfg.rotary_dim`, with the config's rope scaling (if `scaling`)."""
    return rope_parameters(cfg, base, scaling)[0]


class Rotary(nn.Module):
    """Holds the inverse frequencies; `forward(positions, dtype)` gives the (cos, sin) tables.

    "dynamic" and "longrope" scaling depend on the sequence's length, max(positions) + 1, as in
    transformers' `dynamic_rope_update`: dynamic NTK recomputes the frequencies beyond the
    pretraining context, LongRoPE switches from its short to its long factors there. Each forward
    uses its own length (a fresh transformers model's numbers; transformers also remembers the
    longest length seen). With a KV cache, the cached keys keep the rotation of the step that
    wrote them, as in transformers, so past that context a cached run is not an uncached one.
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig | LayerConfig,
        base: float | None = None,
        scaling: bool = True,
    ) -> None:
        super().__init__()
        self.cfg, self.base, self.scaling = cfg, base, scaling
        self.adjacent_pairs = cfg.rotary_adjacent_pairs
        params = (cfg.rope_scaling or {}) if scaling else {}
        self.kind = params.get("rope_type", "default")
        inv_freq, self.attention_factor = rope_parameters(cfg, base, scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        if self.kind == "dynamic":
            self.context = int(params.get("max_position_embeddings", cfg.n_ctx))
        elif self.kind == "longrope":
            self.context = int(params["original_max_position_embeddings"])
            long, _ = rope_parameters(cfg, base, scaling, seq_len=self.context + 1)
            self.register_buffer("long_inv_freq", long, persistent=False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Rotary:
        """Follow device moves, but keep the frequencies float32 through `.to(dtype)`, `.half()`,
        ...: in bfloat16 the frequencies themselves would be off by up to 0.4%."""
        kept = {name: buf for name, buf in self._buffers.items() if buf is not None}
        super()._apply(fn, recurse)
        for name, buf in kept.items():
            if self._buffers[name].dtype != buf.dtype:
                self._buffers[name] = buf.to(self._buffers[name].device)
        return self

    def _inv_freq(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, " half_rot"]:
        """The frequencies for a sequence reaching max(positions) + 1 tokens."""
        if self.kind not in _LENGTH_DEPENDENT:
            return self.inv_freq
        seq_len = positions.max() + 1
        if not bool(seq_len > self.context):
            return self.inv_freq
        if self.kind == "longrope":
            return self.long_inv_freq
        inv_freq, _ = rope_parameters(self.cfg, self.base, self.scaling, seq_len=seq_len)
        return inv_freq.to(self.inv_freq.device)

    def forward(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype = torch.float32
    ) -> tuple[Float[Tensor, "batch pos rot"], Float[Tensor, "batch pos rot"]]:
        """cos and sin of every position's angles (times the scaling's attention factor),
        computed in float32 (float64 when `dtype` is) and returned in `dtype`."""
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        freqs = positions[..., None].to(compute) * self._inv_freq(positions)  # [batch, pos, rot/2]
        if self.adjacent_pairs:
            emb = freqs.repeat_interleave(2, dim=-1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


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
