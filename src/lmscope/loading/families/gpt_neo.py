"""GPT-Neo: GPT-2-like blocks with alternating global / local (sliding-window) attention layers,
separate q/k/v projections without biases, and no 1/sqrt(d_head) scaling of attention scores."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, heads_in, heads_out, transpose


def _layer_types(hf: dict[str, Any]) -> list[str]:
    """`attention_types` ([[["global", "local"], 12]]) expanded to one type per layer."""
    if hf.get("attention_layers"):
        return list(hf["attention_layers"])
    types = hf.get("attention_types") or [[["global", "local"], hf["num_layers"] // 2]]
    return [kind for pattern, repeat in types for _ in range(repeat) for kind in pattern]


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    d_model = hf["hidden_size"]
    n_layers = hf["num_layers"]
    layer_types = _layer_types(hf)
    if len(layer_types) != n_layers or set(layer_types) - {"global", "local"}:
        raise ValueError(
            f"GPT-Neo attention_types give {layer_types}, not one of 'global'/'local' per layer "
            f"({n_layers} layers)"
        )
    n_ctx = hf["max_position_embeddings"]
    return dict(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=hf["num_heads"],
        d_mlp=hf.get("intermediate_size") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=n_ctx,
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="standard",
        use_attn_scale=False,  # GPT-Neo never divides scores by sqrt(d_head)
        window_size=hf.get("window_size", 256) if "local" in layer_types else None,
        attn_types=layer_types,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh = cfg.n_heads
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
        for name in "QKV":  # q/k/v_proj have no bias
            m[f"{b}attn.W_{name}"] = (heads_in(nh), f"{h}attn.attention.{name.lower()}_proj.weight")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}attn.attention.out_proj.weight")
        m[f"{b}attn.b_O"] = f"{h}attn.attention.out_proj.bias"
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.c_fc.weight")
        m[f"{b}mlp.b_in"] = f"{h}mlp.c_fc.bias"
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.c_proj.weight")
        m[f"{b}mlp.b_out"] = f"{h}mlp.c_proj.bias"
    return m


CONFIG_KEYS = frozenset(
    {
        "activation_function",
        "attention_layers",
        "attention_types",
        "hidden_size",
        "intermediate_size",
        "layer_norm_epsilon",
        "max_position_embeddings",
        "num_heads",
        "num_layers",
        "tie_word_embeddings",
        "vocab_size",
        "window_size",
    }
)
FAMILY = Family("gpt_neo", ("GPTNeoForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS)
