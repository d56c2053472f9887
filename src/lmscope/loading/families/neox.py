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
    rope_settings,
)
from lmscope.loading.pieces import (
    attention_out,
    embeddings,
    fused_qkv_per_head,
    layers,
    linear_mlp,
    norm,
    norms,
)


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
        n_ctx=rope["n_ctx"],
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
    """`query_key_value` fuses q, k and v per head; `attention_bias=False` drops every
    attention bias (GPTNeoXConfig's option)."""
    bias = hf.get("attention_bias", True)
    m = embeddings(cfg, "gpt_neox.embed_in.weight", "embed_out.weight")
    m |= norm("ln_final", "gpt_neox.final_layer_norm", bias=True)
    for ours, h in layers(cfg, "gpt_neox.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm", bias=True)
        qkv = f"{h}.attention.query_key_value"
        m |= fused_qkv_per_head(f"{ours}.attn", qkv, cfg.n_heads, bias=bias)
        m |= attention_out(f"{ours}.attn", f"{h}.attention.dense", bias=bias)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.dense_h_to_4h", f"{h}.mlp.dense_4h_to_h")
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
