"""Mixture-of-experts Llama-shaped decoders: Mixtral, Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B) and
Qwen3-MoE. Attention is as in `llama.py` / `qwen.py`; the MLP is `components.moe.MoE`.

- Router: softmax over `num_experts` in float32, top `experts_per_token`, renormalised to sum to
  one when `norm_topk_prob` (Mixtral always; the Qwen MoEs per their config, default False).
- Qwen2-MoE adds an always-on shared expert scaled by `sigmoid(x @ W_shared_expert_gate)`.
- Checkpoints: `save_pretrained` (transformers 5) writes the hub's per-expert layout, so that is
  what is mapped: Mixtral `block_sparse_moe.experts.{e}.w1/w3/w2` (gate/up/down) and
  `block_sparse_moe.gate`, Qwen `mlp.experts.{e}.gate_proj/up_proj/down_proj` and `mlp.gate`.
- Qwen2/Qwen3-MoE layers made dense by `decoder_sparse_step` / `mlp_only_layers` hold a gated MLP
  of `intermediate_size` (`cfg.mlp_types`, `cfg.dense_d_mlp`).
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
from lmscope.loading.pieces import experts, gated_mlp, layers


def _num_experts(hf: dict[str, Any]) -> int:
    # Qwen3-MoE's config.json names it num_local_experts (transformers' attribute_map alias)
    return int(hf.get("num_experts") or hf.get("num_local_experts") or 0)


def qwen_moe_layers(hf: dict[str, Any]) -> dict[str, Any]:
    """`mlp_types` and `dense_d_mlp` for Qwen MoE layers made dense by `mlp_only_layers` or
    `decoder_sparse_step` (transformers' rule: experts where (layer + 1) % step == 0)."""
    n_layers, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step", 1) or 1
    dense = set(hf.get("mlp_only_layers") or [])
    types = [
        "dense" if layer in dense or (layer + 1) % step else "moe" for layer in range(n_layers)
    ]
    if "dense" not in types:
        return {}
    return {"mlp_types": types, "dense_d_mlp": hf["intermediate_size"]}


def mixtral_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    window = hf.get("sliding_window")  # Mixtral: on every layer when set
    fields.update(sliding_window_fields(window, [True] * fields["n_layers"], fields["n_ctx"]))
    fields.update(
        num_experts=hf["num_local_experts"],
        experts_per_token=hf.get("num_experts_per_tok", 2),
        norm_topk_prob=True,
    )
    return fields


def mixtral_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = llama_like_weight_map(cfg, dense_mlp=False)
    for ours, h in layers(cfg, "model.layers"):
        moe = f"{h}.block_sparse_moe"
        n = cfg.num_experts
        m |= experts(f"{ours}.mlp", f"{moe}.gate", f"{moe}.experts", n, names=("w1", "w3", "w2"))
    return m


def _qwen_moe_config(hf: dict[str, Any], local: list[bool]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    fields.update(sliding_window_fields(window, local, fields["n_ctx"]))
    fields.update(
        d_mlp=hf["moe_intermediate_size"],
        num_experts=_num_experts(hf),
        experts_per_token=hf["num_experts_per_tok"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        **qwen_moe_layers(hf),
    )
    return fields


def qwen2_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    n_layers = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        local = [t == "sliding_attention" for t in hf["layer_types"]]
    else:  # transformers' Qwen2-MoE rule: even layers below max_window_layers
        first = hf.get("max_window_layers", 28)
        local = [layer % 2 == 0 and layer < first for layer in range(n_layers)]
    fields = _qwen_moe_config(hf, local)
    shared = hf.get("shared_expert_intermediate_size")
    if shared:
        fields["shared_expert_d_mlp"] = shared
    return fields


def qwen3_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _qwen_moe_config(hf, [True] * hf["num_hidden_layers"])  # every layer when enabled
    fields.update(use_qk_norm=True, qk_norm_per_head=True)
    return fields


def qwen_experts(m: WeightMap, cfg: HookedTransformerConfig) -> WeightMap:
    """Add the Qwen MoE layers' MLPs to `m`: per-expert `mlp.experts.{e}`, the router
    `mlp.gate`, the shared expert and its gate when `cfg.shared_expert_d_mlp`, and a gated MLP on
    the layers `cfg.mlp_types` makes dense (Qwen2-MoE, Qwen3-MoE, Qwen3.5-MoE).

    Example:
        >>> qwen_experts({}, cfg)["blocks.0.mlp.router_weight"]
        'model.layers.0.mlp.gate.weight'
    """
    for layer, (ours, h) in enumerate(layers(cfg, "model.layers")):
        if cfg.mlp_type(layer) == "dense":
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
            continue
        m |= experts(f"{ours}.mlp", f"{h}.mlp.gate", f"{h}.mlp.experts", cfg.num_experts)
        if cfg.shared_expert_d_mlp:
            m |= gated_mlp(f"{ours}.mlp.shared_expert", f"{h}.mlp.shared_expert")
            m[f"{ours}.mlp.shared_expert_gate"] = f"{h}.mlp.shared_expert_gate.weight"
    return m


def qwen2_moe_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = llama_like_weight_map(cfg, qkv_bias=bool(hf.get("qkv_bias", True)), dense_mlp=False)
    return qwen_experts(m, cfg)


def qwen3_moe_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("attention_bias", False))
    m = llama_like_weight_map(cfg, qkv_bias=bias, o_bias=bias, qk_norm=True, dense_mlp=False)
    return qwen_experts(m, cfg)


_QWEN_MOE_KEYS = LLAMA_LIKE_KEYS | {
    "decoder_sparse_step",
    "mlp_only_layers",
    "moe_intermediate_size",
    "norm_topk_prob",
    "num_experts",
    "num_experts_per_tok",
    "sliding_window",
    "use_sliding_window",
}
FAMILIES = [
    Family(
        "mixtral",
        ("MixtralForCausalLM",),
        mixtral_config,
        mixtral_weight_map,
        LLAMA_LIKE_KEYS | {"num_experts_per_tok", "num_local_experts", "sliding_window"},
    ),
    Family(
        "qwen2_moe",
        ("Qwen2MoeForCausalLM",),
        qwen2_moe_config,
        qwen2_moe_weight_map,
        _QWEN_MOE_KEYS
        | {"layer_types", "max_window_layers", "qkv_bias", "shared_expert_intermediate_size"},
    ),
    Family(
        "qwen3_moe",
        ("Qwen3MoeForCausalLM",),
        qwen3_moe_config,
        qwen3_moe_weight_map,
        _QWEN_MOE_KEYS | {"attention_bias", "num_local_experts"},
    ),
]
