"""StableLM (StableLM-3B-4E1T, StableLM-2-1.6B, StableLM-Zephyr-3B): LayerNorm with bias,
partial rotary (a quarter of each head by default), optional q/k/v biases, gated SiLU MLP, GQA, and
`use_parallel_residual` (attention and MLP both read `input_layernorm`'s output, which is loaded as
both `ln1` and `ln2`; the sequential block normalises the MLP input with
`post_attention_layernorm`).

`qk_layernorm` (StableLM-2-12B: a separate bias-free LayerNorm for each head's queries and keys) is
not supported: lmscope's q/k norm is an RMSNorm shared by all heads, so such configs are refused.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    DECODER_KEYS,
    PARTIAL_ROTARY_KEYS,
    ROPE_KEYS,
    Family,
    WeightMap,
    heads_bias,
    heads_in,
    heads_out,
    rope_settings,
    transpose,
)


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("qk_layernorm"):
        raise NotImplementedError(
            "StableLM with qk_layernorm=True (per-head LayerNorm on queries and keys, each head with "
            "its own weights, as in StableLM-2-12B) is not supported by lmscope"
        )
    n_heads = hf["num_attention_heads"]
    d_head = hf["hidden_size"] // n_heads  # StableLmAttention ignores any head_dim
    rope = rope_settings(hf)
    fraction = (hf.get("rope_parameters") or {}).get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", 0.25)
    )
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
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        positional_embedding_type="rotary",
        rotary_dim=int(d_head * fraction),
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        gated_mlp=True,
        parallel_attn_mlp=bool(hf.get("use_parallel_residual", False)),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh, nkv = cfg.n_heads, cfg.n_key_value_heads
    m: WeightMap = {
        "embed.W_E": "model.embed_tokens.weight",
        "ln_final.w": "model.norm.weight",
        "ln_final.b": "model.norm.bias",
        "unembed.W_U": (
            transpose,
            "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
    }
    mlp_norm = "input_layernorm" if cfg.parallel_attn_mlp else "post_attention_layernorm"
    for layer in range(cfg.n_layers):
        h, b = f"model.layers.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", mlp_norm)):
            m[f"{b}{ours}.w"] = f"{h}{theirs}.weight"
            m[f"{b}{ours}.b"] = f"{h}{theirs}.bias"
        m[f"{b}attn.W_Q"] = (heads_in(nh), f"{h}self_attn.q_proj.weight")
        m[f"{b}attn.W_K"] = (heads_in(nkv), f"{h}self_attn.k_proj.weight")
        m[f"{b}attn.W_V"] = (heads_in(nkv), f"{h}self_attn.v_proj.weight")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}self_attn.o_proj.weight")
        if hf.get("use_qkv_bias"):
            m[f"{b}attn.b_Q"] = (heads_bias(nh), f"{h}self_attn.q_proj.bias")
            m[f"{b}attn.b_K"] = (heads_bias(nkv), f"{h}self_attn.k_proj.bias")
            m[f"{b}attn.b_V"] = (heads_bias(nkv), f"{h}self_attn.v_proj.bias")
        m[f"{b}mlp.W_gate"] = (transpose, f"{h}mlp.gate_proj.weight")
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.up_proj.weight")
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.down_proj.weight")
    return m


CONFIG_KEYS = (
    DECODER_KEYS
    | {
        "hidden_act",
        "layer_norm_eps",
        "num_key_value_heads",
        "qk_layernorm",
        "use_parallel_residual",
        "use_qkv_bias",
    }
    | ROPE_KEYS
    | PARTIAL_ROTARY_KEYS
)
FAMILY = Family("stablelm", ("StableLmForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS)
