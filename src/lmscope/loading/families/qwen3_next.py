"""Qwen3-Next (`Qwen3NextForCausalLM`, Qwen3-Next-80B-A3B): Qwen3.5's hybrid (`qwen3_5.py`:
gated delta-net linear attention, output-gated softmax attention with per-head q/k norms and
partial rotary, `1 + w` norms) with a Qwen2-MoE block of experts, read on the same components.

What differs from Qwen3.5 (transformers' `modeling_qwen3_next` against `modeling_qwen3_5`):
- The linear layers fuse their projections per key head (`fix_query_key_value_ordering`):
  `in_proj_qkvz` holds, for each key head, [q (d_key) | k (d_key) | v (r d_value) | z (r d_value)]
  rows, r = value heads per key head, and `in_proj_ba` [b (r) | a (r)]. `FusedGroups` gathers
  them into Qwen3.5's layout (`qkv_weight` [q | k | v], `gate_weight`, `beta_weight`,
  `alpha_weight`), and scatters them back on export.
- The MLP is a mixture of experts when `num_experts` > 0 (Qwen2-MoE's: softmax router, the top
  `num_experts_per_tok`, renormalised when `norm_topk_prob`, a shared expert scaled by
  `sigmoid(x @ W_shared_expert_gate)`), except on the layers `mlp_only_layers` or
  `decoder_sparse_step` make dense (a gated MLP of `intermediate_size`, `cfg.mlp_types`).
- Rotary is plain (no multimodal sections); the text model of Qwen3.5 computes the same.
- The checkpoint's multi-token-prediction head (`mtp.*`) is not part of the causal LM
  (transformers ignores it): the family leaves it unread on purpose (`Family.unread`); any other
  tensor nothing reads is still refused.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.moe import qwen_moe_layers
from lmscope.loading.families.qwen3_5 import (
    HYBRID_KEYS,
    HYBRID_MOE_KEYS,
    linear_attention,
    weight_map,
)
from lmscope.loading.families.qwen3_5 import config_from_hf as hybrid_config
from lmscope.loading.transforms import FusedGroups


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Qwen3.5's hybrid fields, then the experts (defaults: transformers' `Qwen3NextConfig`).

    Example:
        >>> config_from_hf(hf)["num_experts"]
        512
    """
    fields = hybrid_config(hf)
    n_experts = hf.get("num_experts", 512)
    if not n_experts:  # transformers builds experts only when num_experts > 0
        return fields
    fields.update(
        d_mlp=hf.get("moe_intermediate_size", 512),
        num_experts=n_experts,
        experts_per_token=hf.get("num_experts_per_tok", 10),
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        shared_expert_d_mlp=hf.get("shared_expert_intermediate_size", 512),
        **qwen_moe_layers(hf),
    )
    return fields


def fused_linear_attention(cfg: HookedTransformerConfig, ours: str, theirs: str) -> WeightMap:
    """A gated delta-net layer whose input projections are fused per key head
    (`in_proj_qkvz`, `in_proj_ba`); the other tensors as Qwen3.5 names them.

    Example:
        >>> fused_linear_attention(cfg, "blocks.0.linear_attn", "model.layers.0.linear_attn")[
        ...     "blocks.0.linear_attn.beta_weight"][1]
        'model.layers.0.linear_attn.in_proj_ba.weight'
    """
    m = linear_attention(cfg, ours, theirs)
    n_key = cfg.linear_n_key_heads
    r = cfg.linear_n_value_heads // n_key
    qkvz = (cfg.linear_d_key, cfg.linear_d_key, r * cfg.linear_d_value, r * cfg.linear_d_value)
    for mine, source, sizes, parts in (
        ("qkv_weight", "in_proj_qkvz", qkvz, (0, 1, 2)),
        ("gate_weight", "in_proj_qkvz", qkvz, (3,)),
        ("beta_weight", "in_proj_ba", (r, r), (0,)),
        ("alpha_weight", "in_proj_ba", (r, r), (1,)),
    ):
        m[f"{ours}.{mine}"] = (FusedGroups(n_key, sizes, parts), f"{theirs}.{source}.weight")
    return m


FAMILY = Family(
    "qwen3_next",
    ("Qwen3NextForCausalLM",),
    config_from_hf,
    partial(weight_map, linear=fused_linear_attention),
    HYBRID_KEYS | HYBRID_MOE_KEYS | {"decoder_sparse_step", "mlp_only_layers", "norm_topk_prob"},
    unread=(r"mtp\.",),  # the multi-token-prediction head, which transformers ignores too
)
