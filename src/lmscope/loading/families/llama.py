"""Llama 1/2/3/3.1/3.2 (and SmolLM2, TinyLlama) and Mistral: RMSNorm, rotary, GQA, gated SiLU MLP.

Rope scaling "default", "linear" and "llama3" (Llama 3.1/3.2), optional attention and MLP biases
(`attention_bias` also gives o_proj a bias, `mlp_bias` all three MLP projections), an explicit
`head_dim`, and Mistral's sliding window on every layer.

The helpers here (`llama_like_config`, `llama_like_weight_map`, `sliding_window_fields`) are
shared by the other Llama-shaped families (Qwen2/Qwen3 in `qwen.py`, the MoE families in `moe.py`),
which differ only in data: which projections have biases, q/k norms, window rules, experts. Every
weight is stored as the checkpoint stores it, so the weight map is names only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    DECODER_KEYS,
    ROPE_KEYS,
    Family,
    WeightMap,
    rope_settings,
    size_fields,
)
from lmscope.loading.pieces import embeddings, gated_mlp, layers, llama_attention, norm, norms


def sliding_window_fields(
    window: int | None, local_layers: Sequence[bool], n_ctx: int
) -> dict[str, Any]:
    """`window_size` and `attn_types` for a sliding `window` on the layers flagged in
    `local_layers`. A window at least as long as the context changes nothing and is dropped."""
    if not window or window >= n_ctx or not any(local_layers):
        return {"window_size": None, "attn_types": None}
    types = None if all(local_layers) else ["local" if x else "global" for x in local_layers]
    return {"window_size": int(window), "attn_types": types}


def llama_like_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Config fields every Llama-shaped family shares (no sliding window, no MoE, no q/k norm)."""
    sizes = size_fields(hf)
    rope = rope_settings(hf)
    scaling = rope["rope_scaling"]
    return dict(
        **sizes,
        n_ctx=rope["n_ctx"],
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        # transformers' Llama-shaped models rotate the whole head whatever partial_rotary_factor says
        rotary_dim=sizes["d_head"],
        rotary_base=rope["rotary_base"],
        rope_scaling=scaling,
        gated_mlp=True,
        final_rms=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """Llama and Mistral: Mistral's `sliding_window` (if any) applies to every layer."""
    fields = llama_like_config(hf)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", True) else None
    fields.update(sliding_window_fields(window, [True] * fields["n_layers"], fields["n_ctx"]))
    return fields


def llama_like_weight_map(
    cfg: HookedTransformerConfig,
    *,
    qkv_bias: bool = False,
    o_bias: bool = False,
    mlp_bias: bool = False,
    qk_norm: bool = False,
    dense_mlp: bool = True,
) -> WeightMap:
    """Embeddings, norms and attention of a `model.layers.{l}.self_attn` checkpoint, plus (with
    `dense_mlp`) its gate/up/down MLP. MoE families add their experts on top."""
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        m |= llama_attention(
            f"{ours}.attn", f"{h}.self_attn", qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm
        )
        if dense_mlp:
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp", bias=mlp_bias)
    return m


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("attention_bias"))
    return llama_like_weight_map(cfg, qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias")))


# What `llama_like_config` reads; its users add their own keys. The whole head rotates, as in
# transformers' Llama-shaped models, whatever partial_rotary_factor says (with rope scaling,
# where transformers would apply it, `check_config` refuses it).
LLAMA_LIKE_KEYS = (
    DECODER_KEYS
    | {
        "head_dim",
        "hidden_act",
        "num_key_value_heads",
        "original_max_position_embeddings",
        "rms_norm_eps",
    }
    | ROPE_KEYS
)
CONFIG_KEYS = LLAMA_LIKE_KEYS | {
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "use_sliding_window",
}
FAMILY = Family(
    "llama", ("LlamaForCausalLM", "MistralForCausalLM"), config_from_hf, weight_map, CONFIG_KEYS
)
