"""GPT-Neo: GPT-2-like blocks with alternating global / local (sliding-window) attention layers,
separate q/k/v projections without biases, and no 1/sqrt(d_head) scaling of attention scores."""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.pieces import attention, embeddings, layers, linear_mlp, norm, norms


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
    """q/k/v projections without biases, an output projection with one."""
    m = embeddings(cfg, "transformer.wte.weight", positions="transformer.wpe.weight")
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        m |= norms(ours, f"{h}.ln_1", f"{h}.ln_2", bias=True)
        a = f"{h}.attn.attention"
        qkv = (f"{a}.{p}_proj" for p in "qkv")
        m |= attention(f"{ours}.attn", *qkv, f"{a}.out_proj", o_bias=True)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.c_fc", f"{h}.mlp.c_proj")
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
