"""Qwen2 / Qwen2.5 and Qwen3: Llama-shaped decoders.

- Qwen2: q/k/v projections have biases, o_proj has none; the MLP has none.
- Qwen3: an RMSNorm over each head's d_head on q and k after the projection, before rotary
  (`attn.q_norm` / `attn.k_norm`, with hooks `hook_scale` / `hook_normalized`); `attention_bias`
  gives q/k/v *and* o biases; `head_dim` is explicit (not d_model / n_heads).
- Both: an optional sliding window (`use_sliding_window`) on the layers that `layer_types` marks
  "sliding_attention"; configs without `layer_types` follow transformers' rule, sliding from
  layer `max_window_layers` on.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.llama import (
    LLAMA_LIKE_KEYS,
    llama_like_config,
    llama_like_weight_map,
    sliding_window_fields,
)


def qwen_local_layers(hf: dict[str, Any], n_layers: int) -> list[bool]:
    """Which layers use the sliding window (Qwen2/Qwen3 rule of transformers)."""
    if not hf.get("use_sliding_window", False):
        return [False] * n_layers
    if hf.get("layer_types"):
        return [t == "sliding_attention" for t in hf["layer_types"]]
    first = hf.get("max_window_layers", 28)
    return [layer >= first for layer in range(n_layers)]


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    local = qwen_local_layers(hf, fields["n_layers"])
    fields.update(sliding_window_fields(window, local, fields["n_ctx"]))
    if _is_qwen3(hf):
        fields.update(use_qk_norm=True, qk_norm_per_head=True)
    return fields


def _is_qwen3(hf: dict[str, Any]) -> bool:
    archs = hf.get("architectures") or []
    return "Qwen3ForCausalLM" in archs or (not archs and hf.get("model_type") == "qwen3")


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    if _is_qwen3(hf):
        bias = bool(hf.get("attention_bias", False))
        return llama_like_weight_map(cfg, qkv_bias=bias, o_bias=bias, qk_norm=True)
    return llama_like_weight_map(cfg, qkv_bias=True)  # Qwen2: q/k/v biases, none on o_proj


# The sliding-window rule of `qwen_local_layers`.
WINDOW_KEYS = frozenset(
    {"layer_types", "max_window_layers", "sliding_window", "use_sliding_window"}
)
FAMILIES = [
    Family(
        "qwen2", ("Qwen2ForCausalLM",), config_from_hf, weight_map, LLAMA_LIKE_KEYS | WINDOW_KEYS
    ),
    Family(
        "qwen3",
        ("Qwen3ForCausalLM",),
        config_from_hf,
        weight_map,
        LLAMA_LIKE_KEYS | WINDOW_KEYS | {"attention_bias"},
    ),
]
