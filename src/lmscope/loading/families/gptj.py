"""GPT-J: parallel attention + MLP that share one LayerNorm (`ln_1`), partial rotary on adjacent
pairs (dims 2i, 2i+1) of the first `rotary_dim` dims of each head, bias-free q/k/v/out
projections, and an unembedding with a bias."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.gpt2 import GPT2_STYLE_KEYS
from lmscope.loading.pieces import attention, embeddings, layers, linear_mlp, norm, norms


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
    """One LayerNorm feeds both branches: ln1 and ln2 hold the same weights, so each branch
    keeps its own norm hooks and fold_ln folds it into each reader separately."""
    m = embeddings(cfg, "transformer.wte.weight", head_bias="lm_head.bias")
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        m |= norms(ours, f"{h}.ln_1", f"{h}.ln_1", bias=True)
        m |= attention(f"{ours}.attn", *(f"{h}.attn.{p}_proj" for p in "qkv"), f"{h}.attn.out_proj")
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.fc_in", f"{h}.mlp.fc_out")
    return m


CONFIG_KEYS = GPT2_STYLE_KEYS | {"rotary_dim"}
FAMILY = Family("gptj", ("GPTJForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS)
