"""T5 layers built from the decoder's components: attention with relative position buckets (the
first layer of each stack holds the bucket table, every layer adds the same bias), the pre-norm
block with cross-attention in the decoder, and the cross-attention keys/values cache.

Names and hooks are TransformerLens's: `encoder.{l}` / `decoder.{l}` blocks with `ln1`, `attn`,
`ln2`, `mlp` (and in the decoder `cross_attn`, `ln3`), `hook_attn_out`, `hook_cross_attn_out`,
`hook_resid_mid_cross`, ...; `encoder.0.attn.rel_pos_bias` is the bucket table and
`encoder.0.attn.rel_pos_hook` sees the bias [1, head, q_pos, k_pos] of each forward.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.components.attention import Attention, AttentionMask
from lmscope.components.mlp import MLP
from lmscope.components.norm import make_norm
from lmscope.encoders.config import EncoderConfig
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from lmscope.kv_cache import KVCacheEntry


def relative_position_bucket(
    relative_position: Int[Tensor, "q k"], bidirectional: bool, num_buckets: int, max_distance: int
) -> Int[Tensor, "q k"]:
    """T5's bucket of each key offset (key position - query position): exact buckets for small
    offsets, logarithmic ones up to `max_distance`, one bucket beyond; a bidirectional stack
    gives positive offsets their own half of the buckets, a causal one only sees offsets <= 0.

    Example:
        >>> relative_position_bucket(torch.tensor([[0, 1, -1, 200]]), True, 32, 128)
        tensor([[ 0, 17,  1, 31]])
    """
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -relative_position.clamp(max=0)
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(distance.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class T5Attention(Attention):
    """lmscope's attention (same forward, hooks and weight views) plus, in the first layer of a
    stack, T5's relative position table `rel_pos_bias` [buckets, head]. T5 does not scale its
    scores (cfg.use_attn_scale is False) and has no biases (they stay zero)."""

    def __init__(
        self,
        cfg: EncoderConfig,
        layer_idx: int = 0,
        has_relative_attention_bias: bool = False,
        is_decoder: bool = False,
    ) -> None:
        super().__init__(cfg, layer_idx)
        self.is_decoder = is_decoder
        self.has_relative_attention_bias = has_relative_attention_bias
        if has_relative_attention_bias:
            buckets = cfg.relative_attention_num_buckets
            self.rel_pos_bias = nn.Embedding(buckets, cfg.n_heads, dtype=cfg.dtype)
            self.rel_pos_hook = HookPoint()  # [1, head, q_pos, k_pos]

    def compute_relative_attention_bias(
        self,
        query_length: int,
        key_length: int,
        device: torch.device | str | None = None,
        query_start: int = 0,
    ) -> Float[Tensor, "1 head q k"]:
        """The position bias of queries at `query_start`, `query_start` + 1, ... over keys 0 ..
        key_length - 1 (TransformerLens's method; `query_start` serves the KV-cached decoder).

        Example:
            >>> model.encoder[0].attn.compute_relative_attention_bias(5, 5).shape
            torch.Size([1, n_heads, 5, 5])
        """
        if not self.has_relative_attention_bias:
            raise ValueError("only the first layer of a T5 stack holds the relative position table")
        device = device if device is not None else self.rel_pos_bias.weight.device
        cfg = self.cfg
        queries = torch.arange(query_start, query_start + query_length, device=device)[:, None]
        keys = torch.arange(key_length, device=device)[None, :]
        buckets = relative_position_bucket(
            keys - queries,
            bidirectional=not self.is_decoder,
            num_buckets=cfg.relative_attention_num_buckets,
            max_distance=cfg.relative_attention_max_distance,
        )
        bias = self.rel_pos_bias(buckets).permute(2, 0, 1)[None]
        return self.rel_pos_hook(bias)


class CrossAttentionCache:
    """One decoder layer's cross-attention keys and values over the encoder output: computed at
    the first decoding step and reused by every later one (the encoder output does not change).
    Passed to the attention as its `kv_cache`; later steps give it no new positions.

    Example:
        >>> caches = [CrossAttentionCache() for _ in model.decoder]
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def filled(self) -> bool:
        return self.k is not None

    def append(
        self, k: Float[Tensor, "batch head pos d_head"], v: Tensor, start: int
    ) -> tuple[Tensor, Tensor]:
        """Keep the keys and values of the first call; return the kept ones."""
        if k.shape[2]:
            self.k, self.v = k, v
        return self.k, self.v


class T5Block(nn.Module):
    """resid_mid = resid_pre + attn(ln1(resid_pre)); in the decoder resid_mid_cross = resid_mid +
    cross_attn(ln2(resid_mid)) over the encoder output; then resid_post = x + mlp(ln(x)) with
    ln2 (encoder) or ln3 (decoder). TransformerLens's hooks, including `hook_attn_in` (with
    use_attn_in), `hook_q_input` ... (use_split_qkv_input), `hook_mlp_in` (use_hook_mlp_in) and,
    in the decoder with use_attn_in, `hook_cross_attn_in`.
    """

    def __init__(self, cfg: EncoderConfig, block_index: int, is_decoder: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.is_decoder = is_decoder
        self.ln1 = make_norm(cfg)
        self.attn = T5Attention(cfg, block_index, block_index == 0, is_decoder)
        self.ln2 = make_norm(cfg)
        if is_decoder:
            self.cross_attn = T5Attention(cfg, block_index)
            self.ln3 = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model], with use_split_qkv_input
        self.hook_k_input = HookPoint()
        self.hook_v_input = HookPoint()
        self.hook_attn_in = HookPoint()  # [batch, pos, head, d_model], with use_attn_in
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if is_decoder:
            self.hook_cross_attn_in = HookPoint()  # [batch, pos, d_model], with use_attn_in
            self.hook_cross_attn_out = HookPoint()
            self.hook_resid_mid_cross = HookPoint()
        self.hook_mlp_in = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def _attn_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The attention's query, key and value inputs: the residual, or per-head copies."""
        cfg = self.cfg

        def per_head() -> Tensor:
            return einops.repeat(resid_pre, "b p d -> b p h d", h=cfg.n_heads).clone()

        if cfg.use_split_qkv_input:
            return (
                self.hook_q_input(per_head()),
                self.hook_k_input(per_head()),
                self.hook_v_input(per_head()),
            )
        attn_in = self.hook_attn_in(per_head()) if cfg.use_attn_in else resid_pre
        return attn_in, attn_in, attn_in

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        encoder_hidden_states: Float[Tensor, "batch enc_pos d_model"] | None = None,
        cross_mask: AttentionMask | None = None,
        kv_cache: KVCacheEntry | None = None,
        cache_start: int = 0,
        cross_cache: CrossAttentionCache | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        q_in, k_in, v_in = self._attn_inputs(resid_pre)
        if q_in is k_in:
            q_in = k_in = v_in = self.ln1(q_in)
        else:
            q_in, k_in, v_in = self.ln1(q_in), self.ln1(k_in), self.ln1(v_in)
        attn_out = self.attn(q_in, k_in, v_in, mask, kv_cache=kv_cache, cache_start=cache_start)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(attn_out))
        if self.is_decoder:
            if encoder_hidden_states is None or cross_mask is None:
                raise ValueError("a decoder block needs the encoder's output for cross-attention")
            cross_in = self.hook_cross_attn_in(resid_mid.clone()) if cfg.use_attn_in else resid_mid
            enc = encoder_hidden_states
            if cross_cache is not None and cross_cache.filled:
                enc = enc[:, :0]  # keys and values come from the cache
            cross_out = self.cross_attn(self.ln2(cross_in), enc, enc, cross_mask, None, cross_cache)
            resid_mid = self.hook_resid_mid_cross(resid_mid + self.hook_cross_attn_out(cross_out))
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        norm = self.ln3 if self.is_decoder else self.ln2
        mlp_out = self.hook_mlp_out(self.mlp(norm(mlp_in)))
        return self.hook_resid_post(mlp_in + mlp_out)
