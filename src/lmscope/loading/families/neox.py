"""GPT-NeoX / Pythia: parallel attention + MLP, partial rotary, fused per-head query_key_value."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    DECODER_KEYS,
    PARTIAL_ROTARY_KEYS,
    ROPE_KEYS,
    Family,
    WeightMap,
    heads_out,
    rope_settings,
    transpose,
)
from lmscope.loading.transforms import FusedHeads


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = d_model // n_heads
    rope = rope_settings(hf)
    return dict(
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=hf.get("hidden_act", "gelu"),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        positional_embedding_type="rotary",
        rotary_dim=int(d_head * rope["fraction"]),
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        parallel_attn_mlp=hf.get("use_parallel_residual", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh = cfg.n_heads
    m: WeightMap = {
        "embed.W_E": "gpt_neox.embed_in.weight",
        "ln_final.w": "gpt_neox.final_layer_norm.weight",
        "ln_final.b": "gpt_neox.final_layer_norm.bias",
        "unembed.W_U": (
            transpose,
            "gpt_neox.embed_in.weight" if cfg.tie_word_embeddings else "embed_out.weight",
        ),
    }
    for layer in range(cfg.n_layers):
        h, b = f"gpt_neox.layers.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            m[f"{b}{ours}.w"] = f"{h}{theirs}.weight"
            m[f"{b}{ours}.b"] = f"{h}{theirs}.bias"
        attention_bias = hf.get("attention_bias", True)  # GPTNeoXConfig(attention_bias=False)
        for i, name in enumerate("QKV"):  # query_key_value rows: [head, (q|k|v), d_head]
            m[f"{b}attn.W_{name}"] = (FusedHeads(nh, i), f"{h}attention.query_key_value.weight")
            if attention_bias:
                m[f"{b}attn.b_{name}"] = (FusedHeads(nh, i), f"{h}attention.query_key_value.bias")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}attention.dense.weight")
        if attention_bias:
            m[f"{b}attn.b_O"] = f"{h}attention.dense.bias"
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.dense_h_to_4h.weight")
        m[f"{b}mlp.b_in"] = f"{h}mlp.dense_h_to_4h.bias"
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.dense_4h_to_h.weight")
        m[f"{b}mlp.b_out"] = f"{h}mlp.dense_4h_to_h.bias"
    return m


CONFIG_KEYS = (
    DECODER_KEYS
    | {
        "attention_bias",
        "hidden_act",
        "layer_norm_eps",
        "use_parallel_residual",
    }
    | ROPE_KEYS
    | PARTIAL_ROTARY_KEYS
)
FAMILY = Family("gpt_neox", ("GPTNeoXForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS)
