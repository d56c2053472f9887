"""BLOOM: ALiBi position biases (no position embeddings), a LayerNorm right after the token
embedding (`word_embeddings_layernorm` -> `ln_embed`), fused per-head `query_key_value` laid out
[head, (q|k|v), d_head], and the tanh-approximated GELU."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, heads_out, transpose
from lmscope.loading.transforms import FusedHeads


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
    nh = cfg.n_heads
    m: WeightMap = {
        "embed.W_E": "transformer.word_embeddings.weight",
        "ln_embed.w": "transformer.word_embeddings_layernorm.weight",
        "ln_embed.b": "transformer.word_embeddings_layernorm.bias",
        "ln_final.w": "transformer.ln_f.weight",
        "ln_final.b": "transformer.ln_f.bias",
        "unembed.W_U": (
            transpose,
            "transformer.word_embeddings.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
    }
    for layer in range(cfg.n_layers):
        h, b = f"transformer.h.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            m[f"{b}{ours}.w"] = f"{h}{theirs}.weight"
            m[f"{b}{ours}.b"] = f"{h}{theirs}.bias"
        for i, name in enumerate("QKV"):
            qkv = f"{h}self_attention.query_key_value."
            m[f"{b}attn.W_{name}"] = (FusedHeads(nh, i), f"{qkv}weight")
            m[f"{b}attn.b_{name}"] = (FusedHeads(nh, i), f"{qkv}bias")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}self_attention.dense.weight")
        m[f"{b}attn.b_O"] = f"{h}self_attention.dense.bias"
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.dense_h_to_4h.weight")
        m[f"{b}mlp.b_in"] = f"{h}mlp.dense_h_to_4h.bias"
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.dense_4h_to_h.weight")
        m[f"{b}mlp.b_out"] = f"{h}mlp.dense_4h_to_h.bias"
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
