"""OLMo 1, OLMo 2 and OLMoE (AllenAI): Llama-like gated SiLU blocks with rotary and GQA.

- OLMo 1 (`OlmoForCausalLM`): non-parametric LayerNorm (no weight, no bias, eps 1e-5), so the
  model loads as "LNPre" with no norm weights at all; optional `clip_qkv` clamps q, k and v.
- OLMo 2 (`Olmo2ForCausalLM`): norm after each sublayer, before it joins the residual
  (`norm_placement="post"`: `ln1_post` / `ln2_post`, no pre-norms) and RMSNorm over all heads'
  queries (and all kv heads' keys) together (`qk_norm_per_head=False`).
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
    heads_bias,
    heads_in,
    heads_out,
    rope_settings,
    transpose,
)


def _common(hf: dict[str, Any]) -> dict[str, Any]:
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    rope = rope_settings(hf)
    return dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=hf.get("hidden_act", "silu"),
        positional_embedding_type="rotary",
        rotary_dim=d_head,  # transformers' OLMo rotates the whole head
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
    nh, nkv = cfg.n_heads, cfg.n_key_value_heads
    m: WeightMap = {
        "embed.W_E": "model.embed_tokens.weight",
        "unembed.W_U": (
            transpose,
            "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
    }
    if cfg.normalization_type == "RMS":
        m["ln_final.w"] = "model.norm.weight"
    for layer in range(cfg.n_layers):
        h, b = f"model.layers.{layer}.", f"blocks.{layer}."
        m[f"{b}attn.W_Q"] = (heads_in(nh), f"{h}self_attn.q_proj.weight")
        m[f"{b}attn.W_K"] = (heads_in(nkv), f"{h}self_attn.k_proj.weight")
        m[f"{b}attn.W_V"] = (heads_in(nkv), f"{h}self_attn.v_proj.weight")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}self_attn.o_proj.weight")
        if hf.get("attention_bias"):
            m[f"{b}attn.b_Q"] = (heads_bias(nh), f"{h}self_attn.q_proj.bias")
            m[f"{b}attn.b_K"] = (heads_bias(nkv), f"{h}self_attn.k_proj.bias")
            m[f"{b}attn.b_V"] = (heads_bias(nkv), f"{h}self_attn.v_proj.bias")
            m[f"{b}attn.b_O"] = f"{h}self_attn.o_proj.bias"
        if cfg.use_qk_norm:
            m[f"{b}attn.q_norm.w"] = f"{h}self_attn.q_norm.weight"
            m[f"{b}attn.k_norm.w"] = f"{h}self_attn.k_norm.weight"
        if cfg.norm_placement == "post":  # OLMo 2
            m[f"{b}ln1_post.w"] = f"{h}post_attention_layernorm.weight"
            m[f"{b}ln2_post.w"] = f"{h}post_feedforward_layernorm.weight"
        elif cfg.normalization_type == "RMS":  # OLMoE
            m[f"{b}ln1.w"] = f"{h}input_layernorm.weight"
            m[f"{b}ln2.w"] = f"{h}post_attention_layernorm.weight"
        if cfg.num_experts:
            m[f"{b}mlp.W_gate"] = (transpose, f"{h}mlp.gate.weight")
            for e in range(cfg.num_experts):
                x, p = f"{b}mlp.experts.{e}.", f"{h}mlp.experts.{e}."
                m[f"{x}W_gate"] = (transpose, f"{p}gate_proj.weight")
                m[f"{x}W_in"] = (transpose, f"{p}up_proj.weight")
                m[f"{x}W_out"] = (transpose, f"{p}down_proj.weight")
        else:
            m[f"{b}mlp.W_gate"] = (transpose, f"{h}mlp.gate_proj.weight")
            m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.up_proj.weight")
            m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.down_proj.weight")
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
        "olmoe",
        ("OlmoeForCausalLM",),
        olmoe_config,
        weight_map,
        _COMMON_KEYS | {"rms_norm_eps", "norm_topk_prob", "num_experts", "num_experts_per_tok"},
    ),
]
