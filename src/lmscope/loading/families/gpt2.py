"""GPT-2 (and distilgpt2): learned positions, LayerNorm, GELU, Conv1D weights stored [in, out]."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.pieces import (
    attention_out,
    embeddings,
    fused_qkv,
    layers,
    linear_mlp,
    norm,
    norms,
)


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError(
            "GPT-2 checkpoints with scale_attn_by_inverse_layer_idx/reorder_and_upcast_attn are not supported"
        )
    d_model = hf["n_embd"]
    return dict(
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=hf["n_positions"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="standard",
        use_attn_scale=hf.get("scale_attn_weights", True),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Every projection is a Conv1D ([in, out]); q, k and v are column blocks of one `c_attn`."""
    m = embeddings(cfg, "transformer.wte.weight", positions="transformer.wpe.weight")
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        m |= norms(ours, f"{h}.ln_1", f"{h}.ln_2", bias=True)
        m |= fused_qkv(f"{ours}.attn", f"{h}.attn.c_attn", (cfg.d_model,) * 3, conv1d=True)
        m |= attention_out(f"{ours}.attn", f"{h}.attn.c_proj", conv1d=True)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.c_fc", f"{h}.mlp.c_proj", conv1d=True)
    return m


# Sizes of GPT-2-style configs (GPT-J, CodeGen and GPT-BigCode name them alike).
GPT2_STYLE_KEYS = frozenset(
    {
        "activation_function",
        "layer_norm_epsilon",
        "n_embd",
        "n_head",
        "n_inner",
        "n_layer",
        "n_positions",
        "tie_word_embeddings",
        "vocab_size",
    }
)
CONFIG_KEYS = GPT2_STYLE_KEYS | {
    "reorder_and_upcast_attn",
    "scale_attn_by_inverse_layer_idx",
    "scale_attn_weights",
}
FAMILY = Family("gpt2", ("GPT2LMHeadModel", "GPT2Model"), config_from_hf, weight_map, CONFIG_KEYS)
