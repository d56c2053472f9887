"""DeepSeek-V2 / V2-Lite (`DeepseekV2ForCausalLM`) and DeepSeek-V3 / R1 (`DeepseekV3ForCausalLM`):
multi-head latent attention (`components.mla.LatentAttention`) and mixtures of experts.

- Attention: queries through a normalised latent of `q_lora_rank` (V2-Lite: a plain `q_proj`),
  keys and values decompressed from a normalised KV latent of `kv_lora_rank` plus one rotary key
  shared by every head; rotary on adjacent pairs (V2 always, V3 with `rope_interleave`); the
  scores' scale `1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)`, times YaRN's `mscale(factor,
  mscale_all_dim)` squared when the rotary is scaled. The KV cache holds the latent.
- MLP: dense in the first `first_k_dense_replace` layers, then `n_routed_experts` experts plus
  `n_shared_experts` always-on (ungated) ones of `moe_intermediate_size` each. V2 routes by softmax
  (`topk_method` "greedy", or "group_limited_greedy": the best `topk_group` of `n_group` groups by
  their best expert) and scales the weights by `routed_scaling_factor`; V3 by sigmoid, a choice
  bias (`e_score_correction_bias`), the best groups by their top two, renormalised
  (`norm_topk_prob`) and scaled. The multi-token-prediction layers are not loaded.
"""

from __future__ import annotations

import math
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import DECODER_KEYS, ROPE_KEYS, Family, WeightMap, rope_settings
from lmscope.loading.pieces import embeddings, experts, gated_mlp, layers, linear, norm, norms


def _is_v3(hf: dict[str, Any]) -> bool:
    archs = hf.get("architectures") or []
    return "DeepseekV3ForCausalLM" in archs or (not archs and hf.get("model_type") == "deepseek_v3")


def _mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    v3 = _is_v3(hf)
    nope, rope_dim = hf["qk_nope_head_dim"], hf["qk_rope_head_dim"]
    rope = rope_settings(hf)
    scaling = rope["rope_scaling"]
    scale = (nope + rope_dim) ** -0.5
    if scaling is not None and scaling.get("mscale_all_dim"):
        scale *= _mscale(scaling["factor"], scaling["mscale_all_dim"]) ** 2
    n_layers, n_heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    first_moe = hf.get("first_k_dense_replace", 3 if v3 else 0)
    if (hf.get("moe_layer_freq") or 1) != 1:
        raise NotImplementedError(
            f"DeepSeek moe_layer_freq={hf['moe_layer_freq']}: lmscope implements experts in every "
            "layer after first_k_dense_replace (moe_layer_freq 1), as transformers does"
        )
    fields: dict[str, Any] = dict(
        d_model=hf["hidden_size"],
        n_layers=n_layers,
        n_heads=n_heads,
        d_head=hf["v_head_dim"],
        n_key_value_heads=n_heads,
        d_mlp=hf["moe_intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=rope["n_ctx"],
        act_fn=hf.get("hidden_act", "silu"),
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        rotary_dim=rope_dim,
        rotary_base=rope["rotary_base"],
        rope_scaling=scaling,
        rotary_adjacent_pairs=bool(hf.get("rope_interleave", True)) if v3 else True,
        attn_scale=1.0 / scale,
        gated_mlp=True,
        final_rms=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        kv_lora_rank=hf["kv_lora_rank"],
        q_lora_rank=hf.get("q_lora_rank"),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope_dim,
        num_experts=hf["n_routed_experts"],
        experts_per_token=hf["num_experts_per_tok"],
        mlp_types=["dense" if layer < first_moe else "moe" for layer in range(n_layers)],
        dense_d_mlp=hf["intermediate_size"],
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 2.5 if v3 else 1.0)),
        shared_expert_gated=False,
    )
    if hf.get("n_shared_experts"):
        fields["shared_expert_d_mlp"] = hf["moe_intermediate_size"] * hf["n_shared_experts"]
    groups = hf.get("n_group")
    if v3:
        fields.update(
            router_scoring="sigmoid",
            router_choice_bias=True,
            norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
            router_groups=groups or 1,
            router_topk_groups=hf.get("topk_group") or 1,
        )
    else:  # transformers' V2 router never renormalises
        method = hf.get("topk_method", "greedy")
        if method not in ("greedy", "group_limited_greedy"):
            raise NotImplementedError(f"DeepSeek-V2 topk_method {method!r} is not supported")
        fields["norm_topk_prob"] = False
        if method == "group_limited_greedy":
            fields.update(
                router_groups=groups,
                router_topk_groups=hf["topk_group"],
                router_group_score="max",
            )
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("attention_bias"))
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    for layer, (ours, h) in enumerate(layers(cfg, "model.layers")):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        a, attn = f"{ours}.attn", f"{h}.self_attn"
        if cfg.q_lora_rank:
            m |= linear(f"{a}.q_a_weight", f"{a}.q_a_bias", f"{attn}.q_a_proj", with_bias=bias)
            m |= norm(f"{a}.q_a_norm", f"{attn}.q_a_layernorm")
            m[f"{a}.q_b_weight"] = f"{attn}.q_b_proj.weight"
        else:
            m[f"{a}.q_weight"] = f"{attn}.q_proj.weight"
        m |= linear(
            f"{a}.kv_a_weight", f"{a}.kv_a_bias", f"{attn}.kv_a_proj_with_mqa", with_bias=bias
        )
        m |= norm(f"{a}.kv_a_norm", f"{attn}.kv_a_layernorm")
        m[f"{a}.kv_b_weight"] = f"{attn}.kv_b_proj.weight"
        m |= linear(f"{a}.o_weight", f"{a}.b_O", f"{attn}.o_proj", with_bias=bias)
        if cfg.mlp_type(layer) == "dense":
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
            continue
        m |= experts(f"{ours}.mlp", f"{h}.mlp.gate", f"{h}.mlp.experts", cfg.num_experts)
        if cfg.router_choice_bias:
            m[f"{ours}.mlp.router_choice_bias"] = f"{h}.mlp.gate.e_score_correction_bias"
        if cfg.shared_expert_d_mlp:
            m |= gated_mlp(f"{ours}.mlp.shared_expert", f"{h}.mlp.shared_experts")
    return m


_KEYS = (
    DECODER_KEYS
    | ROPE_KEYS
    | {
        "attention_bias",
        "first_k_dense_replace",
        "head_dim",  # transformers' alias of qk_rope_head_dim
        "hidden_act",
        "kv_lora_rank",
        "moe_intermediate_size",
        "moe_layer_freq",
        "n_group",
        "n_routed_experts",
        "n_shared_experts",
        "norm_topk_prob",
        "num_experts_per_tok",
        "num_key_value_heads",
        "q_lora_rank",
        "qk_head_dim",
        "qk_nope_head_dim",
        "qk_rope_head_dim",
        "rms_norm_eps",
        "routed_scaling_factor",
        "topk_group",
        "v_head_dim",
    }
)
FAMILIES = [
    Family(
        "deepseek_v2",
        ("DeepseekV2ForCausalLM",),
        config_from_hf,
        weight_map,
        _KEYS | {"mlp_bias", "topk_method"},
    ),
    Family(
        "deepseek_v3",
        ("DeepseekV3ForCausalLM",),
        config_from_hf,
        weight_map,
        _KEYS | {"rope_interleave"},
        frozenset({"num_nextn_predict_layers"}),
        # the multi-token-prediction layer after the last (transformers: model.layers.61)
        unread=(r"model\.layers\.{num_hidden_layers}\.",),
    ),
]
