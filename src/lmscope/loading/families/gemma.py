"""Gemma 1, 2 and 3 (text): (1 + w) RMSNorm, sqrt(d_model)-scaled embeddings, gated GELU-tanh MLP,
a head size independent of d_model / n_heads, MQA/GQA; Gemma 2 adds attention and final-logit
soft-caps, pre+post norms around attention and MLP and alternating sliding-window/global layers;
Gemma 3 adds per-head q/k RMSNorm, a separate rotary base for its sliding layers and rope scaling
on its global layers.

The embedding scale is folded into the weights at load: `W_E = embed_tokens.weight * sqrt(d_model)`
(so `hook_embed` is the scaled embedding, HF's `hidden_states[0]`), computed in float32 from the
stored tensor, as transformers does; a tied `W_U` is the unscaled matrix.

Gemma's norm `x_hat * (1 + w)` keeps the checkpoint's `w` (every norm's `ln.w`, the q/k norms'
too): `cfg.norm_weight_offset = 1.0`, and the RMSNorm computes `1 + w` in float32, as
transformers does (`ln.applied_weight()`; TransformerLens stores `1 + w` in `ln.w` instead).
fold_ln folds `1 + w`.
"""

from __future__ import annotations

import math
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import DECODER_KEYS, ROPE_KEYS, Family, WeightMap, rope_settings
from lmscope.loading.pieces import embeddings, gated_mlp, layers, llama_attention, norm, norms
from lmscope.loading.transforms import Scale

_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def scaled_embedding(scale: float) -> Scale:
    """`embed_tokens.weight * scale` in float32 (Gemma multiplies each embedding by sqrt(d_model))."""
    return Scale(scale)


def _act_fn(hf: dict[str, Any], version: int) -> str:
    if version == 1:
        # GemmaConfig reads `hidden_act` and, like transformers, maps the legacy "gelu" of the
        # official releases to the tanh approximation it always meant.
        act = hf.get("hidden_act") or "gelu_pytorch_tanh"
        return "gelu_pytorch_tanh" if act == "gelu" else act
    return hf.get("hidden_activation") or "gelu_pytorch_tanh"


def _layer_types(hf: dict[str, Any], version: int) -> list[str]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:  # config.json written before layer_types existed: transformers' default
        pattern = 2
        if version == 3:
            pattern = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    unknown = sorted(set(types) - set(_ATTN_TYPES))
    if unknown:
        raise NotImplementedError(f"Gemma layer types {unknown} are not supported by lmscope")
    return [_ATTN_TYPES[t] for t in types]


def _gemma3_rope(hf: dict[str, Any]) -> dict[str, Any]:
    """Global and local rotary settings of Gemma 3 from transformers 5's per-layer-type
    `rope_parameters`, or from the older `rope_theta` / `rope_local_base_freq` / `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:
        full = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 1_000_000.0)}
        local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
    for p in (full, local):
        p.setdefault("rope_type", p.pop("type", "default"))
    full.setdefault("rope_theta", 1_000_000.0)
    local.setdefault("rope_theta", 10_000.0)
    if local["rope_type"] != "default":
        raise NotImplementedError(
            f"Gemma 3 rope scaling {local['rope_type']!r} on the sliding-window layers is not "
            "supported by lmscope (only the global layers' rotary may be scaled)"
        )
    rope = rope_settings(
        {"rope_parameters": full, "max_position_embeddings": hf["max_position_embeddings"]}
    )
    return {
        "rotary_base": rope["rotary_base"],
        "rope_scaling": rope["rope_scaling"],
        "rotary_base_local": float(local["rope_theta"]),
    }


def _opt(hf: dict[str, Any], key: str, default: Any) -> Any:
    """`hf[key]`, or transformers' default when config.json leaves the key out (None stays None)."""
    return hf[key] if key in hf else default


def _config(hf: dict[str, Any], version: int) -> dict[str, Any]:
    if hf.get("use_bidirectional_attention"):
        raise NotImplementedError(
            "Gemma with use_bidirectional_attention=True (an encoder, e.g. EmbeddingGemma) is not "
            "supported by lmscope, which runs causal decoders only"
        )
    n_heads = hf["num_attention_heads"]
    d_head = _opt(hf, "head_dim", 256) or hf["hidden_size"] // n_heads
    fields: dict[str, Any] = dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=_act_fn(hf, version),
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        norm_weight_offset=1.0,  # x_hat * (1 + w)
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        gated_mlp=True,
        final_rms=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )
    if version == 1:
        rope = rope_settings(hf)
        fields.update(rotary_base=rope["rotary_base"], rope_scaling=rope["rope_scaling"])
        return fields
    types = _layer_types(hf, version)
    window = _opt(hf, "sliding_window", 4096)
    if "local" in types and not window:
        types = ["global"] * len(types)  # no window: the "sliding" layers see everything
    fields.update(
        attn_types=types,
        window_size=window if "local" in types else None,
        attn_scale=float(_opt(hf, "query_pre_attn_scalar", 256)) ** 0.5,
        norm_placement="pre_and_post",
        output_logits_soft_cap=float(
            _opt(hf, "final_logit_softcapping", 30.0 if version == 2 else None) or -1.0
        ),
    )
    if version == 2:
        rope = rope_settings(hf)
        fields.update(
            rotary_base=rope["rotary_base"],
            rope_scaling=rope["rope_scaling"],
            attn_scores_soft_cap=float(_opt(hf, "attn_logit_softcapping", 50.0) or -1.0),
        )
    else:
        # Gemma 3 configs may carry attn_logit_softcapping, but transformers' Gemma 3 attention
        # never applies it; neither does lmscope.
        fields.update(_gemma3_rope(hf), use_qk_norm=True, qk_norm_per_head=True)
    return fields


def gemma_config(hf: dict[str, Any]) -> dict[str, Any]:
    return _config(hf, 1)


def gemma2_config(hf: dict[str, Any]) -> dict[str, Any]:
    return _config(hf, 2)


def gemma3_config(hf: dict[str, Any]) -> dict[str, Any]:
    return _config(hf, 3)


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Llama's layout (every norm's `w` as it is: the norms add the 1), the embedding scaled, and
    Gemma 2/3's extra norms after attention and after the MLP."""
    post = cfg.norm_placement == "pre_and_post"  # Gemma 2 and 3
    embed = scaled_embedding(math.sqrt(cfg.d_model))
    m = embeddings(cfg, "model.embed_tokens.weight", scale=embed)
    m |= norm("ln_final", "model.norm")
    for ours, h in layers(cfg, "model.layers"):
        if post:
            m |= norms(ours, f"{h}.input_layernorm", f"{h}.pre_feedforward_layernorm")
            m |= norm(f"{ours}.ln1_post", f"{h}.post_attention_layernorm")
            m |= norm(f"{ours}.ln2_post", f"{h}.post_feedforward_layernorm")
        else:
            m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        bias = bool(hf.get("attention_bias"))
        m |= llama_attention(
            f"{ours}.attn",
            f"{h}.self_attn",
            qkv_bias=bias,
            o_bias=bias,
            qk_norm=cfg.use_qk_norm,
        )
        m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
    return m


# What `_config` and `weight_map` read for every version; Gemma 2 and 3 add theirs.
_COMMON_KEYS = DECODER_KEYS | {
    "attention_bias",
    "head_dim",
    "num_key_value_heads",
    "rms_norm_eps",
    "use_bidirectional_attention",
}
_V2_KEYS = _COMMON_KEYS | {
    "final_logit_softcapping",
    "hidden_activation",
    "layer_types",
    "query_pre_attn_scalar",
    "sliding_window",
}
FAMILIES = [
    Family(
        "gemma",
        ("GemmaForCausalLM",),
        gemma_config,
        weight_map,
        _COMMON_KEYS | {"hidden_act"} | ROPE_KEYS,
    ),
    Family(
        "gemma2",
        ("Gemma2ForCausalLM",),
        gemma2_config,
        weight_map,
        _V2_KEYS | {"attn_logit_softcapping"} | ROPE_KEYS,
    ),
    # Gemma 3 has no attention soft-cap (transformers ignores attn_logit_softcapping): a config
    # that sets one is refused. Its rotary settings are per layer type (`_gemma3_rope`).
    Family(
        "gemma3_text",
        ("Gemma3ForCausalLM",),
        gemma3_config,
        weight_map,
        _V2_KEYS
        | {
            "_sliding_window_pattern",
            "rope_local_base_freq",
            "rope_parameters",
            "rope_scaling",
            "rope_theta",
            "sliding_window_pattern",
        },
    ),
]
