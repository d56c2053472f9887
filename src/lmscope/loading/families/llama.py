"""Llama 1/2/3 (and SmolLM2, TinyLlama, Mistral): RMSNorm, rotary, GQA, gated SiLU MLP."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    Family,
    WeightMap,
    heads_bias,
    heads_in,
    heads_out,
    rope_settings,
    transpose,
)


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    rope = rope_settings(hf)
    n_ctx = hf["max_position_embeddings"]
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    return dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=n_ctx,
        window_size=window if window is not None and window < n_ctx else None,
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        # transformers' Llama/Mistral rotate the whole head whatever partial_rotary_factor says
        rotary_dim=d_head,
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        gated_mlp=True,
        final_rms=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh, nkv = cfg.n_heads, cfg.n_key_value_heads
    m: WeightMap = {
        "embed.W_E": "model.embed_tokens.weight",
        "ln_final.w": "model.norm.weight",
        "unembed.W_U": (
            transpose,
            "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
    }
    for layer in range(cfg.n_layers):
        h, b = f"model.layers.{layer}.", f"blocks.{layer}."
        m[f"{b}ln1.w"] = f"{h}input_layernorm.weight"
        m[f"{b}ln2.w"] = f"{h}post_attention_layernorm.weight"
        m[f"{b}attn.W_Q"] = (heads_in(nh), f"{h}self_attn.q_proj.weight")
        m[f"{b}attn.W_K"] = (heads_in(nkv), f"{h}self_attn.k_proj.weight")
        m[f"{b}attn.W_V"] = (heads_in(nkv), f"{h}self_attn.v_proj.weight")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}self_attn.o_proj.weight")
        m[f"{b}mlp.W_gate"] = (transpose, f"{h}mlp.gate_proj.weight")
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.up_proj.weight")
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.down_proj.weight")
        if hf.get("attention_bias"):
            m[f"{b}attn.b_Q"] = (heads_bias(nh), f"{h}self_attn.q_proj.bias")
            m[f"{b}attn.b_K"] = (heads_bias(nkv), f"{h}self_attn.k_proj.bias")
            m[f"{b}attn.b_V"] = (heads_bias(nkv), f"{h}self_attn.v_proj.bias")
            m[f"{b}attn.b_O"] = f"{h}self_attn.o_proj.bias"
        if hf.get("mlp_bias"):
            m[f"{b}mlp.b_gate"] = f"{h}mlp.gate_proj.bias"
            m[f"{b}mlp.b_in"] = f"{h}mlp.up_proj.bias"
            m[f"{b}mlp.b_out"] = f"{h}mlp.down_proj.bias"
    return m


FAMILY = Family("llama", ("LlamaForCausalLM", "MistralForCausalLM"), config_from_hf, weight_map)
