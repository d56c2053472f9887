"""One transformer block: attention and MLP around the residual stream, with block-level hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import einops
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.attention import Attention, AttentionMask
from lmscope.components.mlp import MLP
from lmscope.components.norm import make_norm
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from lmscope.generation import KVCacheEntry


class _Identity(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


class TransformerBlock(nn.Module):
    """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    With `parallel_attn_mlp` both read resid_pre and resid_post = resid_pre + attn_out + mlp_out
    (no resid_mid). With `attn_only` there is no MLP.
    """

    def __init__(self, cfg: HookedTransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.ln1 = make_norm(cfg) or _Identity()
        self.attn = Attention(cfg, layer_idx)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_in = HookPoint()  # [batch, pos, head, d_model], with use_attn_in
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model], with use_split_qkv_input
        self.hook_k_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.ln2 = make_norm(cfg) or _Identity()
            self.mlp = MLP(cfg)
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], with use_hook_mlp_in
            self.hook_mlp_out = HookPoint()
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCacheEntry | None = None,
        cache_start: int = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        if cfg.use_attn_in or cfg.use_split_qkv_input:
            q_in, k_in, v_in = self._per_head_inputs(resid_pre)
            attn_out = self.attn(
                self.ln1(q_in), self.ln1(k_in), self.ln1(v_in), mask, rotary, kv_cache, cache_start
            )
        else:
            x = self.ln1(resid_pre)
            attn_out = self.attn(x, x, x, mask, rotary, kv_cache, cache_start)
        attn_out = self.hook_attn_out(attn_out)
        if cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            mlp_in = self.hook_mlp_in(resid_pre.clone()) if cfg.use_hook_mlp_in else resid_pre
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def _per_head_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Copies of the residual per head, so a hook can edit one head's input alone."""
        cfg = self.cfg

        def repeat(n: int) -> Tensor:
            return einops.repeat(resid_pre, "b p dm -> b p h dm", h=n).clone()

        if cfg.use_split_qkv_input:
            return (
                self.hook_q_input(repeat(cfg.n_heads)),
                self.hook_k_input(repeat(cfg.n_key_value_heads)),
                self.hook_v_input(repeat(cfg.n_key_value_heads)),
            )
        attn_in = self.hook_attn_in(repeat(cfg.n_heads))
        if cfg.n_groups == 1:
            return attn_in, attn_in, attn_in
        kv_in = attn_in[:, :, :: cfg.n_groups]
        return attn_in, kv_in, kv_in
