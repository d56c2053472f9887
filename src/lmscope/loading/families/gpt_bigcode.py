"""GPT-BigCode (SantaCoder, StarCoder): GPT-2-like blocks with learned positions, nn.Linear
weights, and a fused `c_attn`. With `multi_query` (the default) all query heads share one key and
one value head (c_attn rows: [q (d_model) | k (d_head) | v (d_head)]); without it c_attn is laid
out per head as [head, (q|k|v), d_head]."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.gpt2 import GPT2_STYLE_KEYS
from lmscope.loading.pieces import (
    attention_out,
    embeddings,
    fused_qkv,
    fused_qkv_per_head,
    layers,
    linear_mlp,
    norm,
    norms,
)


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("add_cross_attention"):
        raise NotImplementedError("GPT-BigCode with cross-attention is not a decoder-only model")
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    return dict(
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=n_heads,
        n_key_value_heads=1 if hf.get("multi_query", True) else n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=hf["n_positions"],
        act_fn=hf.get("activation_function", "gelu_pytorch_tanh"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="standard",
        use_attn_scale=hf.get("scale_attn_weights", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "transformer.wte.weight", positions="transformer.wpe.weight")
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        m |= norms(ours, f"{h}.ln_1", f"{h}.ln_2", bias=True)
        qkv = f"{h}.attn.c_attn"
        if hf.get("multi_query", True):  # rows [q (d_model) | k (d_head) | v (d_head)]
            m |= fused_qkv(f"{ours}.attn", qkv, (cfg.d_model, cfg.d_head, cfg.d_head))
        else:
            m |= fused_qkv_per_head(f"{ours}.attn", qkv, cfg.n_heads)
        m |= attention_out(f"{ours}.attn", f"{h}.attn.c_proj")
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.c_fc", f"{h}.mlp.c_proj")
    return m


CONFIG_KEYS = GPT2_STYLE_KEYS | {
    "add_cross_attention",
    "multi_query",
    "num_key_value_heads",  # derived by GPTBigCodeConfig from multi_query
    "scale_attn_weights",
}
# Where half-precision softmax upcasts: lmscope's softmax always runs in float32.
IGNORED_KEYS = frozenset({"attention_softmax_in_fp32", "scale_attention_softmax_in_fp32"})
FAMILY = Family(
    "gpt_bigcode",
    ("GPTBigCodeForCausalLM",),
    config_from_hf,
    weight_map,
    CONFIG_KEYS,
    IGNORED_KEYS,
)
