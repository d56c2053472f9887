"""Cohere Command R / R+ (`CohereForCausalLM`) and Command R7B / A (`Cohere2ForCausalLM`).

Parallel blocks: attention and the gated SiLU MLP both read `input_layernorm`'s output (loaded as
`ln1` and `ln2`), a LayerNorm without bias (Cohere's, computed in float32); rotary on adjacent
pairs of dimensions; tied embeddings; the logits times `logit_scale`, folded into the unembedding
(`W_U = embed_tokens.weight * logit_scale`), so `logits = resid @ W_U` as everywhere else.

- Command R+ (`use_qk_norm`): a bias-free LayerNorm over each head's queries and keys, each head
  with weights of its own (`attn.q_norm.head_w` [n_heads, d_head]).
- Cohere 2: sliding-window layers (`layer_types`, else three in four) that rotate q and k, and
  global layers without positions (NoPE).
"""

from __future__ import annotations

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
from lmscope.loading.families.llama import sliding_window_fields
from lmscope.loading.pieces import embeddings, gated_mlp, layers, llama_attention, norm, norms
from lmscope.loading.transforms import Scale


def _common(hf: dict[str, Any]) -> dict[str, Any]:
    sizes = size_fields(hf)
    rope = rope_settings(hf)
    fields: dict[str, Any] = dict(
        **sizes,
        n_ctx=rope["n_ctx"],
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        positional_embedding_type="rotary",
        rotary_dim=sizes["d_head"],
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        rotary_adjacent_pairs=True,
        gated_mlp=True,
        parallel_attn_mlp=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )
    return fields


def cohere_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf)
    if hf.get("use_qk_norm"):
        fields.update(use_qk_norm=True, qk_norm_type="LN", qk_norm_head_weights=True)
    return fields


def cohere2_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf)
    n = fields["n_layers"]
    pattern = hf.get("sliding_window_pattern", 4)
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)
    ]
    local = [t == "sliding_attention" for t in types]
    fields.update(sliding_window_fields(hf.get("sliding_window", 4096), local, fields["n_ctx"]))
    fields["rotary_layers"] = local  # the global layers have no positions
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "model.embed_tokens.weight")
    scale = float(hf.get("logit_scale", 0.0625))
    if scale != 1.0:
        m["unembed.weight"] = (Scale(scale), m["unembed.weight"])
    m |= norm("ln_final", "model.norm")
    bias = bool(hf.get("attention_bias"))
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.input_layernorm")
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        if cfg.use_qk_norm:
            for part in ("q", "k"):
                m[f"{ours}.attn.{part}_norm.head_w"] = f"{h}.self_attn.{part}_norm.weight"
        m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
    return m


_KEYS = (
    DECODER_KEYS
    | ROPE_KEYS
    | {
        "attention_bias",
        "head_dim",
        "hidden_act",
        "layer_norm_eps",
        "logit_scale",
        "num_key_value_heads",
    }
)
FAMILIES = [
    Family("cohere", ("CohereForCausalLM",), cohere_config, weight_map, _KEYS | {"use_qk_norm"}),
    Family(
        "cohere2",
        ("Cohere2ForCausalLM",),
        cohere2_config,
        weight_map,
        _KEYS | {"layer_types", "sliding_window", "sliding_window_pattern"},
    ),
]
