"""Phi-1/1.5/2 and Phi-3 (Phi-3.5, Phi-4-mini).

Phi-1/1.5/2 (`PhiForCausalLM`): parallel attention + MLP that share one LayerNorm
(`input_layernorm`, loaded as both `ln1` and `ln2`), partial rotary, dense q/k/v/dense with biases,
GELU MLP with biases, a final LayerNorm and an `lm_head` with a bias (`b_U`).

Phi-3 (`Phi3ForCausalLM`): a Llama-like sequential RMSNorm block whose q, k and v come fused in
`qkv_proj` ([q | k | v] along the output rows) and whose gated MLP comes fused in `gate_up_proj`
([gate | up]); optional partial rotary and sliding window.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    DECODER_KEYS,
    PARTIAL_ROTARY_KEYS,
    ROPE_KEYS,
    Family,
    WeightMap,
    rope_settings,
    size_fields,
)
from lmscope.loading.pieces import (
    MLP,
    embeddings,
    fused_qkv,
    layers,
    linear_mlp,
    llama_attention,
    norm,
    norms,
)
from lmscope.loading.transforms import Part


def _common(hf: dict[str, Any], default_fraction: float) -> dict[str, Any]:
    sizes = size_fields(hf)
    rope = rope_settings(hf)
    fraction = (hf.get("rope_parameters") or {}).get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", default_fraction)
    )
    return dict(
        **sizes,
        n_ctx=rope["n_ctx"],
        positional_embedding_type="rotary",
        rotary_dim=int(sizes["d_head"] * fraction),
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


# -- Phi-1 / 1.5 / 2 ------------------------------------------------------------------------------
def phi_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf, default_fraction=0.5)  # PhiConfig's default partial_rotary_factor
    fields.update(
        act_fn=hf.get("hidden_act", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        parallel_attn_mlp=True,
    )
    if hf.get("qk_layernorm"):  # a LayerNorm (with bias) over each head's queries and keys
        fields.update(use_qk_norm=True, qk_norm_type="LN")
    return fields


def phi_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "model.embed_tokens.weight", head_bias="lm_head.bias")
    m |= norm("ln_final", "model.final_layernorm", bias=True)
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.input_layernorm", bias=True)
        attn = f"{h}.self_attn"
        m |= llama_attention(f"{ours}.attn", attn, qkv_bias=True, o_bias=True, o_proj="dense")
        if cfg.use_qk_norm:
            m |= norm(f"{ours}.attn.q_norm", f"{attn}.q_layernorm", bias=True)
            m |= norm(f"{ours}.attn.k_norm", f"{attn}.k_layernorm", bias=True)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.fc1", f"{h}.mlp.fc2")
    return m


# -- Phi-3 ------------------------------------------------------------------------------------------
def phi3_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf, default_fraction=1.0)
    scaling = fields["rope_scaling"]
    if scaling is not None and "original_max_position_embeddings" in scaling:
        # Phi3Config's own attribute (default 4096) wins over the rope parameters' value
        scaling["original_max_position_embeddings"] = hf.get(
            "original_max_position_embeddings", 4096
        )
    window = hf.get("sliding_window")
    fields.update(
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-5),
        gated_mlp=True,
        final_rms=True,
        window_size=window if window is not None and window < fields["n_ctx"] else None,
    )
    return fields


def phi3_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Llama's layout with q/k/v fused in `qkv_proj` and gate/up in `gate_up_proj` (row blocks:
    views, adopted without a copy)."""
    nh, nkv, dh, d_mlp = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_mlp
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        qkv = f"{h}.self_attn.qkv_proj"
        m |= fused_qkv(f"{ours}.attn", qkv, (nh * dh, nkv * dh, nkv * dh), bias=False)
        m[f"{ours}.attn.o_weight"] = f"{h}.self_attn.o_proj.weight"
        gate_up = f"{h}.mlp.gate_up_proj.weight"
        for i, role in enumerate(("gate", "in")):  # rows [gate | up]
            m[f"{ours}.mlp.{MLP[role][0]}"] = (
                Part(0, i * d_mlp, (i + 1) * d_mlp, 2 * d_mlp),
                gate_up,
            )
        m[f"{ours}.mlp.out_weight"] = f"{h}.mlp.down_proj.weight"
    return m


# What `_common` reads.
_COMMON_KEYS = (
    DECODER_KEYS
    | {
        "head_dim",
        "hidden_act",
        "num_key_value_heads",
    }
    | ROPE_KEYS
    | PARTIAL_ROTARY_KEYS
)
FAMILIES = [
    Family(
        "phi",
        ("PhiForCausalLM",),
        phi_config,
        phi_weight_map,
        _COMMON_KEYS | {"layer_norm_eps", "qk_layernorm"},
    ),
    Family(
        "phi3",
        ("Phi3ForCausalLM",),
        phi3_config,
        phi3_weight_map,
        _COMMON_KEYS | {"original_max_position_embeddings", "rms_norm_eps", "sliding_window"},
    ),
]
