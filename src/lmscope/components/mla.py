"""Multi-head latent attention (MLA, DeepSeek-V2/V3): keys and values decompressed per head from
a small shared latent, which is what the KV cache stores.

Per position (the DeepSeek-V2 paper's names; `cfg.kv_lora_rank` turns it on):
- queries: `q = x W_Q`, or with `cfg.q_lora_rank` through a normalised latent
  `c_q = RMSNorm(x W_DQ)` (`hook_q_latent` [batch, pos, q_lora_rank]), `q = c_q [W_UQ | W_QR]`;
  each head's query is `[q_nope | q_rope]` (`qk_nope_head_dim + qk_rope_head_dim`);
- the KV latent `c_kv = RMSNorm(x W_DKV)` (`hook_kv_latent` [batch, pos, kv_lora_rank]) and one
  rotary key shared by every head, `k_rope = x W_KR` (`hook_k_rope` [batch, pos, 1, rope]);
- keys `[c_kv W_UK[h] | k_rope]` and values `c_kv W_UV[h]` per head.

Hooks in TransformerLens's style: `hook_q` / `hook_rot_q` [batch, pos, head, qk_head],
`hook_k` / `hook_rot_k` [batch, pos, head, qk_head] (rotary acts on the last
`qk_rope_head_dim` dimensions), `hook_v` [batch, pos, head, v_head], `hook_attn_scores`,
`hook_pattern`, `hook_z` [batch, pos, head, v_head] (`cfg.d_head` is `v_head_dim`).

The KV cache holds the latent and the rotated shared key (`KVCacheEntry.k` [batch, 1, pos,
kv_lora_rank], `.v` [batch, 1, pos, rope]); each call decompresses keys and values for every
position it attends to, as transformers does. `hook_k`, `hook_rot_k` and `hook_v` show this call's
positions, and an edit there acts in this call; the cached positions are decompressed again from
the latent, so edit `hook_kv_latent` to change what later steps see.

Weights are stored as the checkpoint stores them (`q_a_weight`, `q_b_weight` or `q_weight`,
`kv_a_weight` [kv_lora_rank + rope, d_model], `kv_b_weight` [head * (nope + v), kv_lora_rank],
`o_weight`); `W_DQ`, `W_UQ`, `W_QR`, `W_DKV`, `W_KR`, `W_UK`, `W_UV` and `W_O` are views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.attention import Attention, AttentionMask
from lmscope.components.linear import linear
from lmscope.components.norm import RMSNorm
from lmscope.components.rotary import apply_rotary
from lmscope.config import HookedTransformerConfig, LayerConfig
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from lmscope.kv_cache import KVCacheEntry


class LatentAttention(Attention):
    """Multi-head latent attention; shares the score, pattern and mixing code of `Attention`."""

    def __init__(self, cfg: HookedTransformerConfig | LayerConfig, layer_idx: int = 0) -> None:
        nn.Module.__init__(self)
        self.cfg, self.layer_idx = cfg, layer_idx
        nh, dm, dt = cfg.n_heads, cfg.d_model, cfg.dtype
        self.nope, self.rope, self.dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.d_head
        qk, r = self.nope + self.rope, cfg.kv_lora_rank
        if cfg.q_lora_rank:
            self.q_a_weight = nn.Parameter(torch.empty(cfg.q_lora_rank, dm, dtype=dt))
            self.q_a_bias = nn.Parameter(torch.zeros(cfg.q_lora_rank, dtype=dt))
            self.q_a_norm = RMSNorm(cfg, cfg.q_lora_rank)
            self.q_b_weight = nn.Parameter(torch.empty(nh * qk, cfg.q_lora_rank, dtype=dt))
            self.hook_q_latent = HookPoint()  # [batch, pos, q_lora_rank]
        else:
            self.q_weight = nn.Parameter(torch.empty(nh * qk, dm, dtype=dt))
        self.kv_a_weight = nn.Parameter(torch.empty(r + self.rope, dm, dtype=dt))
        self.kv_a_bias = nn.Parameter(torch.zeros(r + self.rope, dtype=dt))
        self.kv_a_norm = RMSNorm(cfg, r)
        self.kv_b_weight = nn.Parameter(torch.empty(nh * (self.nope + self.dv), r, dtype=dt))
        self.o_weight = nn.Parameter(torch.empty(dm, nh * self.dv, dtype=dt))
        self.b_O = nn.Parameter(torch.zeros(dm, dtype=dt))
        self.hook_kv_latent = HookPoint()  # [batch, pos, kv_lora_rank]
        self.hook_k_rope = HookPoint()  # [batch, pos, 1, qk_rope_head_dim], before rotary
        self.hook_q = HookPoint()  # [batch, pos, head, qk_head]
        self.hook_k = HookPoint()  # [batch, pos, head, qk_head]
        self.hook_v = HookPoint()  # [batch, pos, head, v_head]
        self.hook_rot_q = HookPoint()
        self.hook_rot_k = HookPoint()
        self.hook_z = HookPoint()  # [batch, pos, head, v_head]
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_result = HookPoint()

    def __getattr__(self, name: str) -> Tensor | nn.Module:
        """nn.Module's lookup, except that a property raising AttributeError (W_K, ...) keeps its
        own message instead of nn.Module's generic one."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            prop = getattr(type(self), name, None)
            if isinstance(prop, property) and prop.fget is not None:
                prop.fget(self)
            raise

    # -- weight views (the DeepSeek-V2 paper's names) --------------------------------------------
    def _per_head(self, w: Tensor, start: int, stop: int, rows: int) -> Tensor:
        """Rows `start:stop` of each head's `rows` in `w` [head * rows, in] as [head, in, stop - start]."""
        return w.view(self.cfg.n_heads, rows, -1)[:, start:stop].transpose(1, 2)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model qk_head"]:
        if self.cfg.q_lora_rank:
            raise AttributeError(
                "this attention computes queries through a latent (q_lora_rank): there is no "
                "single W_Q; use W_DQ, W_UQ and W_QR"
            )
        return self._per_head(self.q_weight, 0, self.nope + self.rope, self.nope + self.rope)

    @property
    def b_Q(self) -> Tensor:
        raise AttributeError("multi-head latent attention has no query bias b_Q")

    def _no_kv(self, name: str) -> Tensor:
        raise AttributeError(
            f"multi-head latent attention has no {name}: keys and values are decompressed from a "
            "normalised latent; use W_DKV, W_KR, W_UK and W_UV"
        )

    W_K = property(lambda self: self._no_kv("W_K"))
    W_V = property(lambda self: self._no_kv("W_V"))
    _W_K = property(lambda self: self._no_kv("W_K"))
    _W_V = property(lambda self: self._no_kv("W_V"))
    b_K = property(lambda self: self._no_kv("b_K"))
    b_V = property(lambda self: self._no_kv("b_V"))
    _b_K = property(lambda self: self._no_kv("b_K"))
    _b_V = property(lambda self: self._no_kv("b_V"))

    @property
    def W_DQ(self) -> Float[Tensor, "d_model q_lora_rank"]:
        return self.q_a_weight.T

    @property
    def W_UQ(self) -> Float[Tensor, "head q_lora_rank qk_nope"]:
        return self._per_head(self.q_b_weight, 0, self.nope, self.nope + self.rope)

    @property
    def W_QR(self) -> Float[Tensor, "head q_lora_rank qk_rope"]:
        qk = self.nope + self.rope
        return self._per_head(self.q_b_weight, self.nope, qk, qk)

    @property
    def W_DKV(self) -> Float[Tensor, "d_model kv_lora_rank"]:
        return self.kv_a_weight[: self.cfg.kv_lora_rank].T

    @property
    def W_KR(self) -> Float[Tensor, "d_model qk_rope"]:
        return self.kv_a_weight[self.cfg.kv_lora_rank :].T

    @property
    def W_UK(self) -> Float[Tensor, "head kv_lora_rank qk_nope"]:
        return self._per_head(self.kv_b_weight, 0, self.nope, self.nope + self.dv)

    @property
    def W_UV(self) -> Float[Tensor, "head kv_lora_rank v_head"]:
        return self._per_head(self.kv_b_weight, self.nope, self.nope + self.dv, self.nope + self.dv)

    def weights(self) -> dict[str, Tensor]:
        """This layer's weights under their names (views of the storage)."""
        names = ["W_DKV", "W_KR", "W_UK", "W_UV", "W_O", "b_O"]
        names += ["W_DQ", "W_UQ", "W_QR"] if self.cfg.q_lora_rank else ["W_Q"]
        views = {name: getattr(self, name) for name in names}
        views["b_DKV"] = self.kv_a_bias
        if self.cfg.q_lora_rank:
            views["b_DQ"] = self.q_a_bias
        return views

    def input_weights(self) -> list[tuple[Tensor, Tensor | None]]:
        """(W, b) pairs that read the block's normalised input, for weight processing."""
        kv = (self.kv_a_weight.T, self.kv_a_bias)
        if self.cfg.q_lora_rank:
            return [(self.q_a_weight.T, self.q_a_bias), kv]
        return [(self.q_weight.T, None), kv]

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        query_input: Float[Tensor, "batch pos d_model"],
        key_input: Float[Tensor, "batch pos d_model"],
        value_input: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCacheEntry | None = None,
        cache_start: int = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        if query_input.ndim != 3:
            raise NotImplementedError(
                "multi-head latent attention reads one residual stream: per-head inputs "
                "(use_split_qkv_input / use_attn_in) are not supported"
            )
        x = query_input
        b, p = x.shape[:2]
        nh, nope, rope = cfg.n_heads, self.nope, self.rope
        if cfg.q_lora_rank:
            latent = self.q_a_norm(linear(x, self.q_a_weight, self.q_a_bias))
            q = linear(self.hook_q_latent(latent), self.q_b_weight, None)
        else:
            q = linear(x, self.q_weight, None)
        q = self.hook_q(q.view(b, p, nh, nope + rope))
        compressed = linear(x, self.kv_a_weight, self.kv_a_bias)
        kv_latent = self.hook_kv_latent(self.kv_a_norm(compressed[..., : cfg.kv_lora_rank]))
        k_rope = self.hook_k_rope(compressed[..., cfg.kv_lora_rank :].view(b, p, 1, rope))
        if rotary is not None:
            cos, sin = rotary
            q_rope = apply_rotary(q[..., nope:], cos, sin, cfg.rotary_adjacent_pairs)
            q = torch.cat((q[..., :nope], q_rope), dim=-1)
            k_rope_rot = apply_rotary(k_rope, cos, sin, cfg.rotary_adjacent_pairs)
        else:
            k_rope_rot = k_rope
        q = self.hook_rot_q(q)

        # every attended position's latent and rotated shared key: [batch, pos, ...]
        latents, k_ropes = kv_latent, k_rope_rot
        if kv_cache is not None:
            latents, k_ropes = kv_cache.append(
                kv_latent[:, None], k_rope_rot.transpose(1, 2), cache_start
            )
            latents, k_ropes = latents[:, 0], k_ropes.transpose(1, 2)
        kv = linear(latents, self.kv_b_weight, None).unflatten(-1, (nh, nope + self.dv))
        k_nope, v = kv[..., :nope], kv[..., nope:]
        old = k_nope.shape[1] - p  # cached positions before this call's
        # this call's positions pass the key and value hooks (pre-rotary keys first)
        k = self.hook_k(torch.cat((k_nope[:, old:], k_rope.expand(-1, -1, nh, -1)), dim=-1))
        if rotary is not None:
            rotated = apply_rotary(k[..., nope:], cos, sin, cfg.rotary_adjacent_pairs)
            k = torch.cat((k[..., :nope], rotated), dim=-1)
        k, v_new = self.hook_rot_k(k), self.hook_v(v[:, old:])
        if old:
            cached = torch.cat((k_nope[:, :old], k_ropes[:, :old].expand(-1, -1, nh, -1)), -1)
            k, v = torch.cat((cached, k), dim=1), torch.cat((v[:, :old], v_new), dim=1)
        else:
            v = v_new

        return self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask)
