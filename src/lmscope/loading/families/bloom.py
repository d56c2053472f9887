"""BLOOM: ALiBi position biases (no position embeddings), a LayerNorm right after the token
embedding (`word_embeddings_layernorm` -> `ln_embed`), fused per-head `query_key_value` laid out
[head, (q|k|v), d_head], and the tanh-approximated GELU."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
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
    if hf.get("apply_residual_connection_post_layernorm"):
        raise NotImplementedError(
            "BLOOM with apply_residual_connection_post_layernorm=True (the residual is the "
            "LayerNorm's output) is not supported"
        )
    d_model = hf["hidden_size"]
    n_heads = hf.get("n_head", hf.get("num_attention_heads"))
    return dict(
        d_model=d_model,
        n_layers=hf.get("n_layer", hf.get("num_hidden_layers")),
        n_heads=n_heads,
        d_mlp=4 * d_model,
        d_vocab=hf["vocab_size"],
        # ALiBi has no learned length; BLOOM was trained on 2048 tokens
        n_ctx=hf.get("seq_length") or hf.get("max_position_embeddings") or 2048,
        act_fn="gelu_fast",  # bloom_gelu_forward: x/2 (1 + tanh(0.79788456 x (1 + 0.044715 x^2)))
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="alibi",
        post_embedding_ln=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "transformer.word_embeddings.weight")
    m |= norm("ln_embed", "transformer.word_embeddings_layernorm", bias=True)
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm", bias=True)
        attn = f"{h}.self_attention"
        m |= fused_qkv_per_head(f"{ours}.attn", f"{attn}.query_key_value", cfg.n_heads)
        m |= attention_out(f"{ours}.attn", f"{attn}.dense")
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.dense_h_to_4h", f"{h}.mlp.dense_4h_to_h")
    return m


CONFIG_KEYS = frozenset(
    {
        "apply_residual_connection_post_layernorm",
        "hidden_size",
        "layer_norm_epsilon",
        "max_position_embeddings",
        "n_head",
        "n_layer",
        "num_attention_heads",
        "num_hidden_layers",
        "seq_length",
        "tie_word_embeddings",
        "vocab_size",
    }
)
# slow_but_exact emulates pretraining_tp's sharded matmuls: the same sums in another order.
IGNORED_KEYS = frozenset({"slow_but_exact"})
FAMILY = Family(
    "bloom", ("BloomForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS, IGNORED_KEYS
)
