"""One transformer block: attention and MLP around the residual stream, with block-level hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.attention import Attention, AttentionMask
from lmscope.components.linear_attention import LinearAttention
from lmscope.components.mla import LatentAttention
from lmscope.components.mlp import MLP
from lmscope.components.moe import MoE
from lmscope.components.norm import make_norm
from lmscope.components.per_layer import PerLayerInput
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from lmscope.kv_cache import KVCacheEntry


class Identity(nn.Module):
    """Stands in for a norm the architecture does not have."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class TransformerBlock(nn.Module):
    """resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    Switches on the same block: `parallel_attn_mlp` (both read resid_pre; no resid_mid),
    `attn_only` (no MLP), `norm_placement` "pre_and_post" (ln1_post / ln2_post normalise each
    output before it joins the residual, Gemma 2/3) or "post" (only those, OLMo 2) or
    "post_residual" (ln1 / ln2 normalise the residual after each add, OPT-350m), and
    `num_experts` (the MLP is a mixture of experts; `cfg.mlp_types` may keep some layers dense).
    `attn_type` is "global" or "local". Gemma 4 adds its per-layer input after the MLP
    (`per_layer`, `hook_per_layer_out`, with `cfg.d_per_layer_input`) and multiplies the block's
    output by a learned `layer_scalar` (`cfg.layer_scalars`) before `hook_resid_post`. With
    `cfg.moe_beside_mlp` (Gemma 4 26B-A4B) routed experts (`moe`) run beside the dense MLP: the
    MLP reads ln2, the experts their own pre-norm `ln2_moe` (routed on the un-normed resid_mid),
    each branch is post-normed (`ln2_mlp_post`, `ln2_moe_post`; hooks `hook_dense_out`,
    `hook_moe_out`), and ln2_post normalises their sum into `hook_mlp_out`.
    """

    def __init__(self, cfg: HookedTransformerConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.attn_type = cfg.layer_types[layer_idx]
        # NoPE layers (cfg.rotary_layers) attend without rotating q and k
        self.uses_rotary = cfg.rotary_layers is None or bool(cfg.rotary_layers[layer_idx])
        pre = cfg.norm_placement in ("pre", "pre_and_post", "post_residual")
        post = cfg.norm_placement in ("post", "pre_and_post")
        self.ln1 = (make_norm(cfg) if pre else None) or Identity()
        if self.attn_type == "linear":  # a gated delta-net layer (Qwen3.5), no softmax attention
            self.linear_attn = LinearAttention(cfg, layer_idx)
        else:
            attn_cls = LatentAttention if cfg.kv_lora_rank else Attention
            self.attn = attn_cls(cfg.for_layer(layer_idx), layer_idx)
        if post:
            self.ln1_post = make_norm(cfg) or Identity()
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_in = HookPoint()  # [batch, pos, head, d_model], with use_attn_in
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model], with use_split_qkv_input
        self.hook_k_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.ln2 = (make_norm(cfg) if pre else None) or Identity()
            if cfg.mlp_type(layer_idx) == "moe" and not cfg.moe_beside_mlp:
                self.mlp = MoE(cfg)
            elif cfg.d_mlp_layers is not None:  # Gemma 4's double-wide MLPs
                self.mlp = MLP(cfg, cfg.d_mlp_layers[layer_idx])
            else:  # a dense layer of a model with experts has its own size
                self.mlp = MLP(cfg, cfg.dense_d_mlp if cfg.num_experts else None)
            if post:
                self.ln2_post = make_norm(cfg) or Identity()
            if cfg.moe_beside_mlp:  # Gemma 4 26B-A4B: experts beside the dense MLP
                self.moe = MoE(cfg)
                self.ln2_moe = make_norm(cfg) or Identity()
                self.ln2_mlp_post = make_norm(cfg) or Identity()
                self.ln2_moe_post = make_norm(cfg) or Identity()
                self.hook_dense_out = HookPoint()  # [batch, pos, d_model], after ln2_mlp_post
                self.hook_moe_out = HookPoint()  # [batch, pos, d_model], after ln2_moe_post
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], with use_hook_mlp_in
            self.hook_mlp_out = HookPoint()
            if not cfg.parallel_attn_mlp:
                self.hook_resid_mid = HookPoint()
        if cfg.d_per_layer_input:
            self.per_layer = PerLayerInput(cfg)
            self.hook_per_layer_out = HookPoint()  # [batch, pos, d_model]
        if cfg.layer_scalars:
            self.layer_scalar = nn.Parameter(torch.ones(1, dtype=cfg.dtype))
        self.gemma4 = bool(cfg.layer_scalars or cfg.d_per_layer_input or cfg.kv_source_layers)
        self.hook_resid_post = HookPoint()

    def forward(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCacheEntry | None = None,
        cache_start: int = 0,
        shared_kv: dict[int, tuple[Tensor, Tensor]] | None = None,
        per_layer_input: Float[Tensor, "batch pos d_ple"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        if self.gemma4:
            return self._forward_gemma4(
                resid_pre, mask, rotary, kv_cache, cache_start, shared_kv, per_layer_input
            )
        resid_pre = self.hook_resid_pre(resid_pre)
        if not self.uses_rotary:
            rotary = None
        if cfg.norm_placement == "post_residual":
            return self._forward_post_residual(resid_pre, mask, rotary, kv_cache, cache_start)
        if self.attn_type == "linear":  # (no per-head inputs: its heads are not attention's)
            attn_out = self.linear_attn(self.ln1(resid_pre), mask, kv_cache, cache_start)
        elif cfg.use_attn_in or cfg.use_split_qkv_input:
            q_in, k_in, v_in = self._per_head_inputs(resid_pre)
            attn_out = self.attn(
                self.ln1(q_in), self.ln1(k_in), self.ln1(v_in), mask, rotary, kv_cache, cache_start
            )
        else:
            x = self.ln1(resid_pre)
            attn_out = self.attn(x, x, x, mask, rotary, kv_cache, cache_start)
        if hasattr(self, "ln1_post"):
            attn_out = self.ln1_post(attn_out)
        attn_out = self.hook_attn_out(attn_out)
        if cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            mlp_in = self.hook_mlp_in(resid_pre.clone()) if cfg.use_hook_mlp_in else resid_pre
            mlp_out = self.hook_mlp_out(self._mlp(mlp_in))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self._mlp(mlp_in))
        return self.hook_resid_post(resid_mid + mlp_out)

    def _forward_post_residual(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None,
        kv_cache: KVCacheEntry | None,
        cache_start: int,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Post-LN (OPT-350m): attention and MLP read the residual itself and each norm follows
        its residual add, so resid_mid = ln1(resid_pre + attn_out) and resid_post =
        ln2(resid_mid + mlp_out); the norms' hooks fire on those sums."""
        cfg = self.cfg
        if cfg.use_attn_in or cfg.use_split_qkv_input:
            q_in, k_in, v_in = self._per_head_inputs(resid_pre)
        else:
            q_in = k_in = v_in = resid_pre
        attn_out = self.attn(q_in, k_in, v_in, mask, rotary, kv_cache, cache_start)
        attn_out = self.hook_attn_out(attn_out)
        resid_mid = self.hook_resid_mid(self.ln1(resid_pre + attn_out))
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(mlp_in))
        return self.hook_resid_post(self.ln2(resid_mid + mlp_out))

    def _forward_gemma4(
        self,
        resid_pre: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None,
        kv_cache: KVCacheEntry | None,
        cache_start: int,
        shared_kv: dict[int, tuple[Tensor, Tensor]] | None,
        per_layer_input: Tensor | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """A pre+post-norm block whose attention may share keys and values across layers,
        followed by the per-layer input and the layer scalar."""
        resid_pre = self.hook_resid_pre(resid_pre)
        if self.cfg.use_attn_in or self.cfg.use_split_qkv_input:
            q_in, k_in, v_in = self._per_head_inputs(resid_pre)
            q_in, k_in, v_in = self.ln1(q_in), self.ln1(k_in), self.ln1(v_in)
        else:
            q_in = k_in = v_in = self.ln1(resid_pre)
        attn_out = self.attn(q_in, k_in, v_in, mask, rotary, kv_cache, cache_start, shared_kv)
        attn_out = self.hook_attn_out(self.ln1_post(attn_out))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        resid = resid_mid + self.hook_mlp_out(self._mlp(mlp_in))
        if per_layer_input is not None:
            resid = resid + self.hook_per_layer_out(self.per_layer(resid, per_layer_input))
        if hasattr(self, "layer_scalar"):
            resid = resid * self.layer_scalar
        return self.hook_resid_post(resid)

    def mixer(self) -> tuple[str, nn.Module]:
        """The token mixer's name and module: ("attn", attention), or ("linear_attn", the
        gated delta-net layer) on a linear-attention layer.

        Example:
            >>> name, module = model.blocks[0].mixer()
        """
        if self.attn_type == "linear":
            return "linear_attn", self.linear_attn
        return "attn", self.attn

    def _mlp(self, mlp_in: Tensor) -> Tensor:
        out = self.mlp(self.ln2(mlp_in))
        if hasattr(self, "moe"):  # the two branches, each post-normed, summed
            dense = self.hook_dense_out(self.ln2_mlp_post(out))
            experts = self.moe(self.ln2_moe(mlp_in), router_in=mlp_in)
            out = dense + self.hook_moe_out(self.ln2_moe_post(experts))
        return self.ln2_post(out) if hasattr(self, "ln2_post") else out

    def _per_head_inputs(self, resid_pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Copies of the residual per head, so a hook can edit one head's input alone."""
        cfg = self.attn.cfg  # (a layer's own key/value heads, Gemma 4's global layers)

        def repeat(n: int) -> Tensor:
            return einops.repeat(resid_pre, "b p dm -> b p h dm", h=n).clone()

        # with ungroup_grouped_query_attention, keys and values get one input per query head
        n_kv = cfg.n_heads if cfg.ungroup_grouped_query_attention else cfg.n_key_value_heads
        if cfg.use_split_qkv_input:
            return (
                self.hook_q_input(repeat(cfg.n_heads)),
                self.hook_k_input(repeat(n_kv)),
                self.hook_v_input(repeat(n_kv)),
            )
        attn_in = self.hook_attn_in(repeat(cfg.n_heads))
        if n_kv == cfg.n_heads:
            return attn_in, attn_in, attn_in
        kv_in = attn_in[:, :, :: cfg.n_groups]
        return attn_in, kv_in, kv_in
