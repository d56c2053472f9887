"""OLMo 1, OLMo 2 and OLMoE (AllenAI): Llama-like gated SiLU blocks with rotary and GQA.

- OLMo 1 (`OlmoForCausalLM`): non-parametric LayerNorm (no weight, no bias, eps 1e-5), so the
  model loads as "LNPre" with no norm weights at all; optional `clip_qkv` clamps q, k and v.
- OLMo 2 (`Olmo2ForCausalLM`): norm after each sublayer, before it joins the residual
  (`norm_placement="post"`: `ln1_post` / `ln2_post`, no pre-norms) and RMSNorm over all heads'
  queries (and all kv heads' keys) together (`qk_norm_per_head=False`).
- OLMo 3 (`Olmo3ForCausalLM`): OLMo 2 with a sliding window on three layers in four
  (`layer_types`), whose rotary is never scaled (the global layers' may be: YaRN).
- OLMoE (`OlmoeForCausalLM`): pre-norm RMSNorm blocks, the same all-heads q/k RMSNorm (with
  `clip_qkv` after it) and a mixture of experts: softmax router, top-k, `norm_topk_prob`.
  Expert weights are read per expert (`mlp.experts.{e}.gate_proj` ...), the layout of the hub
  checkpoints and of transformers' `save_pretrained` (transformers fuses them into 3-D tensors only
  in memory).
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    DECODER_KEYS,
    ROPE_KEYS,
    Family,
    WeightMap,
    rope_settings,
    size_fields,
)
from lmscope.loading.families.llama import sliding_window_fields
from lmscope.loading.pieces import (
    embeddings,
    experts,
    gated_mlp,
    layers,
    llama_attention,
    norm,
    norms,
)


def _common(hf: dict[str, Any]) -> dict[str, Any]:
    sizes = size_fields(hf)
    rope = rope_settings(hf)
    return dict(
        **sizes,
        n_ctx=rope["n_ctx"],
        act_fn=hf.get("hidden_act", "silu"),
        positional_embedding_type="rotary",
        rotary_dim=sizes["d_head"],  # transformers' OLMo rotates the whole head
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        gated_mlp=True,
        clip_qkv=hf.get("clip_qkv"),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def olmo_config(hf: dict[str, Any]) -> dict[str, Any]:
    # OlmoLayerNorm: F.layer_norm(x, no weight, no bias, eps=1e-5) whatever the config says.
    return {**_common(hf), "normalization_type": "LNPre", "eps": 1e-5}


def olmo2_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        **_common(hf),
        "normalization_type": "RMS",
        "eps": hf.get("rms_norm_eps", 1e-5),
        "final_rms": True,
        "norm_placement": "post",
        "use_qk_norm": True,
        "qk_norm_per_head": False,
    }


def olmo3_config(hf: dict[str, Any]) -> dict[str, Any]:
    """OLMo 2 with a sliding window on the layers `layer_types` marks (every fourth layer global
    by default); rotary settings per layer type, the sliding layers' unscaled."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 4 else "full_attention" for i in range(n)
    ]
    params = hf.get("rope_parameters") or {}
    nested = "full_attention" in params or "sliding_attention" in params
    full = params.get("full_attention") or {} if nested else params
    local = dict(params.get("sliding_attention") or {}) if nested else {}
    local_kind = local.get("rope_type") or local.get("type") or "default"
    if local_kind != "default":
        raise NotImplementedError(
            f"OLMo 3 rope scaling {local_kind!r} on the sliding-window layers is not supported "
            "by lmscope (only the global layers' rotary may be scaled)"
        )
    rope_hf = {**hf, "rope_parameters": full} if nested else hf
    fields = {**olmo2_config(rope_hf)}
    window_fields = sliding_window_fields(
        hf.get("sliding_window", 4096),
        [t == "sliding_attention" for t in types],
        fields["n_ctx"],
    )
    fields.update(window_fields)
    base = local.get("rope_theta", fields["rotary_base"])
    if window_fields["window_size"] and float(base) != fields["rotary_base"]:
        fields["rotary_base_local"] = float(base)
    elif window_fields["window_size"] and fields["rope_scaling"] is not None:
        fields["rotary_base_local"] = float(base)  # the sliding layers stay unscaled
    return fields


def olmoe_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {
        **_common(hf),
        "normalization_type": "RMS",
        "eps": hf.get("rms_norm_eps", 1e-5),
        "final_rms": True,
        "use_qk_norm": True,
        "qk_norm_per_head": False,
        "num_experts": hf["num_experts"],
        "experts_per_token": hf["num_experts_per_tok"],
        "norm_topk_prob": bool(hf.get("norm_topk_prob", False)),
    }


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """OLMo 1 has no norm weights; OLMo 2 has norms after each sublayer; OLMoE has experts."""
    m = embeddings(cfg, "model.embed_tokens.weight")
    if cfg.normalization_type == "RMS":
        m |= norm("ln_final", "model.norm")
    bias = bool(hf.get("attention_bias"))
    for ours, h in layers(cfg, "model.layers"):
        attn = f"{h}.self_attn"
        m |= llama_attention(
            f"{ours}.attn", attn, qkv_bias=bias, o_bias=bias, qk_norm=cfg.use_qk_norm
        )
        if cfg.norm_placement == "post":  # OLMo 2
            m |= norm(f"{ours}.ln1_post", f"{h}.post_attention_layernorm")
            m |= norm(f"{ours}.ln2_post", f"{h}.post_feedforward_layernorm")
        elif cfg.normalization_type == "RMS":  # OLMoE
            m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        if cfg.num_experts:
            m |= experts(f"{ours}.mlp", f"{h}.mlp.gate", f"{h}.mlp.experts", cfg.num_experts)
        else:
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
    return m


# What `_common` reads; OLMo 1's LayerNorm has a fixed epsilon, the others read rms_norm_eps.
_COMMON_KEYS = (
    DECODER_KEYS
    | {
        "attention_bias",
        "clip_qkv",
        "head_dim",
        "hidden_act",
        "num_key_value_heads",
    }
    | ROPE_KEYS
)
FAMILIES = [
    Family("olmo", ("OlmoForCausalLM",), olmo_config, weight_map, _COMMON_KEYS),
    Family(
        "olmo2", ("Olmo2ForCausalLM",), olmo2_config, weight_map, _COMMON_KEYS | {"rms_norm_eps"}
    ),
    Family(
        "olmo3",
        ("Olmo3ForCausalLM",),
        olmo3_config,
        weight_map,
        _COMMON_KEYS | {"layer_types", "rms_norm_eps", "sliding_window"},
    ),
    Family(
        "olmoe",
        ("OlmoeForCausalLM",),
        olmoe_config,
        weight_map,
        _COMMON_KEYS | {"rms_norm_eps", "norm_topk_prob", "num_experts", "num_experts_per_tok"},
    ),
]
