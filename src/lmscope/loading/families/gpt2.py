"""GPT-2 (and distilgpt2): learned positions, LayerNorm, GELU, Conv1D weights stored [in, out]."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, heads_bias, transpose
from lmscope.loading.transforms import Part, conv1d_heads_in, conv1d_heads_out, part_of


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
    nh, dm = cfg.n_heads, cfg.d_model

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
    for layer in range(cfg.n_layers):
        h, b = f"transformer.h.{layer}.", f"blocks.{layer}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            m[f"{b}{ours}.w"] = f"{h}{theirs}.weight"
            m[f"{b}{ours}.b"] = f"{h}{theirs}.bias"
        for i, name in enumerate("QKV"):  # c_attn: Conv1D [d_model, (q|k|v) d_model]
            columns, rows = (
                Part(1, i * dm, (i + 1) * dm, 3 * dm),
                Part(0, i * dm, (i + 1) * dm, 3 * dm),
            )
            m[f"{b}attn.W_{name}"] = (conv1d_heads_in(nh, columns), f"{h}attn.c_attn.weight")
            m[f"{b}attn.b_{name}"] = (part_of(rows, heads_bias(nh)), f"{h}attn.c_attn.bias")
        m[f"{b}attn.W_O"] = (conv1d_heads_out(nh), f"{h}attn.c_proj.weight")
        m[f"{b}attn.b_O"] = f"{h}attn.c_proj.bias"
        m[f"{b}mlp.W_in"] = f"{h}mlp.c_fc.weight"
        m[f"{b}mlp.b_in"] = f"{h}mlp.c_fc.bias"
        m[f"{b}mlp.W_out"] = f"{h}mlp.c_proj.weight"
        m[f"{b}mlp.b_out"] = f"{h}mlp.c_proj.bias"
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
