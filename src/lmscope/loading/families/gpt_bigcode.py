"""GPT-BigCode (SantaCoder, StarCoder): GPT-2-like blocks with learned positions, nn.Linear
weights, and a fused `c_attn`. With `multi_query` (the default) all query heads share one key and
one value head (c_attn rows: [q (d_model) | k (d_head) | v (d_head)]); without it c_attn is laid
out per head as [head, (q|k|v), d_head]."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    Family,
    WeightMap,
    heads_bias,
    heads_in,
    heads_out,
    transpose,
)
from lmscope.loading.families.gpt2 import GPT2_STYLE_KEYS
from lmscope.loading.transforms import FusedHeads, Part, part_of


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
    nh, dh, dm = cfg.n_heads, cfg.d_head, cfg.d_model
    multi_query = hf.get("multi_query", True)
    m: WeightMap = {
        "embed.W_E": "transformer.wte.weight",
        "pos_embed.W_pos": "transformer.wpe.weight",
        "ln_final.w": "transformer.ln_f.weight",
        "ln_final.b": "transformer.ln_f.bias",
        "unembed.W_U": (
            transpose,
            "transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
    }
    spans = {"Q": (0, dm, nh), "K": (dm, dm + dh, 1), "V": (dm + dh, dm + 2 * dh, 1)}
    for layer in range(cfg.n_layers):
        h, b = f"transformer.h.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            m[f"{b}{ours}.w"] = f"{h}{theirs}.weight"
            m[f"{b}{ours}.b"] = f"{h}{theirs}.bias"
        for i, name in enumerate("QKV"):
            if multi_query:
                start, end, n = spans[name]
                rows = Part(0, start, end, dm + 2 * dh)
                m[f"{b}attn.W_{name}"] = (part_of(rows, heads_in(n)), f"{h}attn.c_attn.weight")
                m[f"{b}attn.b_{name}"] = (part_of(rows, heads_bias(n)), f"{h}attn.c_attn.bias")
            else:
                m[f"{b}attn.W_{name}"] = (FusedHeads(nh, i), f"{h}attn.c_attn.weight")
                m[f"{b}attn.b_{name}"] = (FusedHeads(nh, i), f"{h}attn.c_attn.bias")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}attn.c_proj.weight")
        m[f"{b}attn.b_O"] = f"{h}attn.c_proj.bias"
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.c_fc.weight")
        m[f"{b}mlp.b_in"] = f"{h}mlp.c_fc.bias"
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.c_proj.weight")
        m[f"{b}mlp.b_out"] = f"{h}mlp.c_proj.bias"
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
