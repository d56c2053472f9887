"""GPT-J: parallel attention + MLP that share one LayerNorm (`ln_1`), partial rotary on adjacent
pairs (dims 2i, 2i+1) of the first `rotary_dim` dims of each head, bias-free q/k/v/out
projections, and an unembedding with a bias."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, heads_in, heads_out, transpose
from lmscope.loading.families.gpt2 import GPT2_STYLE_KEYS


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    d_head = d_model // n_heads
    return dict(
        d_model=d_model,
        n_layers=hf["n_layer"],
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=hf["n_positions"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="rotary",
        rotary_dim=hf.get("rotary_dim") or d_head,
        rotary_base=10000.0,  # fixed in GPT-J's sinusoid table
        rotary_adjacent_pairs=True,
        parallel_attn_mlp=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh = cfg.n_heads
    m: WeightMap = {
        "embed.W_E": "transformer.wte.weight",
        "ln_final.w": "transformer.ln_f.weight",
        "ln_final.b": "transformer.ln_f.bias",
        "unembed.W_U": (
            transpose,
            "transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
        "unembed.b_U": "lm_head.bias",
    }
    for layer in range(cfg.n_layers):
        h, b = f"transformer.h.{layer}.", f"blocks.{layer}."
        # One LayerNorm feeds both branches: ln1 and ln2 hold the same weights, so each branch
        # keeps its own norm hooks and fold_ln folds it into each reader separately.
        for ours in ("ln1", "ln2"):
            m[f"{b}{ours}.w"] = f"{h}ln_1.weight"
            m[f"{b}{ours}.b"] = f"{h}ln_1.bias"
        for name in "QKV":
            m[f"{b}attn.W_{name}"] = (heads_in(nh), f"{h}attn.{name.lower()}_proj.weight")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}attn.out_proj.weight")
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.fc_in.weight")
        m[f"{b}mlp.b_in"] = f"{h}mlp.fc_in.bias"
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.fc_out.weight")
        m[f"{b}mlp.b_out"] = f"{h}mlp.fc_out.bias"
    return m


CONFIG_KEYS = GPT2_STYLE_KEYS | {"rotary_dim"}
FAMILY = Family("gptj", ("GPTJForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS)
