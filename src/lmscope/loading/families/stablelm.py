"""StableLM (StableLM-3B-4E1T, StableLM-2-1.6B, StableLM-Zephyr-3B): LayerNorm with bias,
partial rotary (a quarter of each head by default), optional q/k/v biases, gated SiLU MLP, GQA, and
`use_parallel_residual` (attention and MLP both read `input_layernorm`'s output, which is loaded as
both `ln1` and `ln2`; the sequential block normalises the MLP input with
`post_attention_layernorm`).

`qk_layernorm` (StableLM-2-12B): a bias-free LayerNorm over each head's queries and keys, each head
with weights of its own (`attn.q_norm.head_w` [n_heads, d_head], stacked from the checkpoint's
`q_layernorm.norms.{h}.weight`).
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
    rope_settings,
)
from lmscope.loading.pieces import embeddings, gated_mlp, layers, llama_attention, norm, norms
from lmscope.loading.transforms import Stack

STACK = Stack()


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    n_heads = hf["num_attention_heads"]
    d_head = hf["hidden_size"] // n_heads  # StableLmAttention ignores any head_dim
    rope = rope_settings(hf)
    fraction = (hf.get("rope_parameters") or {}).get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", 0.25)
    )
    fields = dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=rope["n_ctx"],
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
    if hf.get("qk_layernorm"):  # a bias-free LayerNorm per head, each with its own weights
        fields.update(use_qk_norm=True, qk_norm_type="LN", qk_norm_head_weights=True)
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Llama's layout with LayerNorms (with biases); a parallel block reads `input_layernorm`
    for both branches."""
    m = embeddings(cfg, "model.embed_tokens.weight")
    m |= norm("ln_final", "model.norm", bias=True)
    mlp_norm = "input_layernorm" if cfg.parallel_attn_mlp else "post_attention_layernorm"
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.{mlp_norm}", bias=True)
        qkv_bias = bool(hf.get("use_qkv_bias"))
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=qkv_bias)
        if cfg.use_qk_norm:
            for part, n in (("q", cfg.n_heads), ("k", cfg.n_key_value_heads)):
                heads = [f"{h}.self_attn.{part}_layernorm.norms.{i}.weight" for i in range(n)]
                m[f"{ours}.attn.{part}_norm.head_w"] = (STACK, *heads)
        m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
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
