"""Phi-3.5-MoE (`PhimoeForCausalLM`): Mixtral's layout with LayerNorms (with bias, `rms_norm_eps`
as their epsilon), q/k/v/o biases (`attention_bias`), an `lm_head` bias (`lm_head_bias`), a
sliding window on every layer when set, and the SparseMixer router: the best expert weighted by
a softmax over the experts within a relative `2 * router_jitter_noise` of it, then the best of
the rest weighted likewise (top 2, not renormalised).

transformers' PhiMoE computes its LongRoPE frequencies with the short factors at every length
and switches only the cos/sin scale (`short_mscale` / `long_mscale`), which is not what
transformers' LongRoPE does elsewhere; lmscope refuses scaled rotary here rather than pick one.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.llama import LLAMA_LIKE_KEYS, llama_like_config, sliding_window_fields
from lmscope.loading.pieces import embeddings, experts, layers, llama_attention, norm, norms


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    if fields["rope_scaling"] is not None:
        raise NotImplementedError(
            f"PhiMoE rope scaling {fields['rope_scaling']['rope_type']!r} is not supported by "
            "lmscope: transformers' PhiMoE keeps the short LongRoPE factors at every length and "
            "switches only the cos/sin scale, unlike its LongRoPE elsewhere"
        )
    window = hf.get("sliding_window")
    fields.update(sliding_window_fields(window, [True] * fields["n_layers"], fields["n_ctx"]))
    fields.update(
        normalization_type="LN",
        final_rms=False,
        eps=hf.get("rms_norm_eps", 1e-5),
        num_experts=hf.get("num_local_experts", 16),
        experts_per_token=hf.get("num_experts_per_tok", 2),
        router_scoring="sparsemixer",
        norm_topk_prob=False,
        router_jitter_eps=float(hf.get("router_jitter_noise", 0.01)),
    )
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("attention_bias"))
    head_bias = "lm_head.bias" if hf.get("lm_head_bias") else None
    m = embeddings(cfg, "model.embed_tokens.weight", head_bias=head_bias)
    m |= norm("ln_final", "model.norm", bias=True)
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm", bias=True)
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        moe = f"{h}.block_sparse_moe"
        m |= experts(
            f"{ours}.mlp",
            f"{moe}.gate",
            f"{moe}.experts",
            cfg.num_experts,
            names=("w1", "w3", "w2"),
        )
    return m


FAMILY = Family(
    "phimoe",
    ("PhimoeForCausalLM",),
    config_from_hf,
    weight_map,
    LLAMA_LIKE_KEYS
    | {
        "attention_bias",
        "lm_head_bias",
        "num_experts_per_tok",
        "num_local_experts",
        "router_jitter_noise",
        "sliding_window",
    },
    frozenset({"input_jitter_noise"}),  # training only
)
