"""GLM (GLM-4-9B-0414's predecessor `GlmForCausalLM`), GLM-4 (`Glm4ForCausalLM`, GLM-4-9B-0414,
GLM-Z1) and GLM-4.5 / 4.6 (`Glm4MoeForCausalLM`): Llama-shaped decoders.

- GLM and GLM-4: q/k/v biases (`attention_bias`, none on o_proj), the gated MLP fused in
  `gate_up_proj` ([gate | up] rows), partial rotary (half of each head by default) on adjacent
  pairs of dimensions (GPT-J's layout). GLM-4 adds a norm after attention and after the MLP,
  before each joins the residual (`norm_placement="pre_and_post"`: `ln1_post` is
  `post_self_attn_layernorm`, `ln2_post` is `post_mlp_layernorm`).
- GLM-4.5 (MoE): partial rotary on the two halves (Llama's layout), optional q/k RMSNorm per head
  (`use_qk_norm`), dense MLPs in the first `first_k_dense_replace` layers, then experts routed
  DeepSeek-V3's way: sigmoid scores, a per-expert bias that only steers the choice
  (`e_score_correction_bias` -> `router_choice_bias`), the best `topk_group` of `n_group` groups,
  renormalised weights times `routed_scaling_factor`, and ungated shared experts of
  `n_shared_experts * moe_intermediate_size`. Its multi-token-prediction layers
  (`num_nextn_predict_layers`) are not part of the causal LM's forward and are not loaded.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    PARTIAL_ROTARY_KEYS,
    Family,
    WeightMap,
)
from lmscope.loading.families.llama import LLAMA_LIKE_KEYS, llama_like_config
from lmscope.loading.pieces import (
    MLP,
    embeddings,
    experts,
    gated_mlp,
    layers,
    llama_attention,
    norm,
    norms,
)
from lmscope.loading.transforms import Part


def _partial_rotary(hf: dict[str, Any], fields: dict[str, Any]) -> None:
    """GLM's partial rotary: `partial_rotary_factor` (default one half) of each head."""
    params = hf.get("rope_parameters") or {}
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5))
    fields["rotary_dim"] = int(fields["d_head"] * fraction)


def glm_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    _partial_rotary(hf, fields)
    fields["rotary_adjacent_pairs"] = True
    if hf.get("architectures", [None])[0] == "Glm4ForCausalLM" or hf.get("model_type") == "glm4":
        fields["norm_placement"] = "pre_and_post"
    return fields


def glm4_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    _partial_rotary(hf, fields)
    n_layers, first_moe = fields["n_layers"], hf.get("first_k_dense_replace", 1)
    n_experts = hf.get("n_routed_experts") or hf["num_local_experts"]
    fields.update(
        d_mlp=hf["moe_intermediate_size"],
        num_experts=n_experts,
        experts_per_token=hf["num_experts_per_tok"],
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        mlp_types=["dense" if layer < first_moe else "moe" for layer in range(n_layers)],
        dense_d_mlp=hf["intermediate_size"],
        router_scoring="sigmoid",
        router_choice_bias=True,
        router_groups=hf.get("n_group", 1),
        router_topk_groups=hf.get("topk_group", 1),
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        shared_expert_gated=False,
    )
    if hf.get("n_shared_experts", 1):
        fields["shared_expert_d_mlp"] = hf["moe_intermediate_size"] * hf.get("n_shared_experts", 1)
    if hf.get("use_qk_norm"):
        fields.update(use_qk_norm=True, qk_norm_per_head=True)
    return fields


def fused_gated_mlp(ours: str, theirs: str, d_mlp: int) -> WeightMap:
    """A gated MLP whose gate and up projections are fused in `gate_up_proj` ([gate | up] rows,
    Phi-3 and GLM) and its `down_proj` (row blocks: views).

    Example:
        >>> fused_gated_mlp("blocks.0.mlp", "model.layers.0.mlp", 96)["blocks.0.mlp.in_weight"]
        (Part(dim=0, start=96, stop=192, size=192), 'model.layers.0.mlp.gate_up_proj.weight')
    """
    m: WeightMap = {}
    for i, role in enumerate(("gate", "in")):
        part = Part(0, i * d_mlp, (i + 1) * d_mlp, 2 * d_mlp)
        m[f"{ours}.{MLP[role][0]}"] = (part, f"{theirs}.gate_up_proj.weight")
    m[f"{ours}.{MLP['out'][0]}"] = f"{theirs}.down_proj.weight"
    return m


def glm_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    bias = bool(hf.get("attention_bias", True))
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        if cfg.norm_placement == "pre_and_post":  # GLM-4
            m |= norm(f"{ours}.ln1_post", f"{h}.post_self_attn_layernorm")
            m |= norm(f"{ours}.ln2_post", f"{h}.post_mlp_layernorm")
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias)
        m |= fused_gated_mlp(f"{ours}.mlp", f"{h}.mlp", cfg.d_mlp)
    return m


def glm4_moe_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    bias = bool(hf.get("attention_bias", False))
    for layer, (ours, h) in enumerate(layers(cfg, "model.layers")):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        m |= llama_attention(
            f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, qk_norm=cfg.use_qk_norm
        )
        if cfg.mlp_type(layer) == "dense":
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
            continue
        m |= experts(f"{ours}.mlp", f"{h}.mlp.gate", f"{h}.mlp.experts", cfg.num_experts)
        m[f"{ours}.mlp.router_choice_bias"] = f"{h}.mlp.gate.e_score_correction_bias"
        if cfg.shared_expert_d_mlp:
            m |= gated_mlp(f"{ours}.mlp.shared_expert", f"{h}.mlp.shared_experts")
    return m


_GLM_KEYS = LLAMA_LIKE_KEYS | PARTIAL_ROTARY_KEYS | {"attention_bias"}
FAMILIES = [
    Family("glm", ("GlmForCausalLM",), glm_config, glm_weight_map, _GLM_KEYS),
    Family("glm4", ("Glm4ForCausalLM",), glm_config, glm_weight_map, _GLM_KEYS),
    Family(
        "glm4_moe",
        ("Glm4MoeForCausalLM",),
        glm4_moe_config,
        glm4_moe_weight_map,
        _GLM_KEYS
        | {
            "first_k_dense_replace",
            "moe_intermediate_size",
            "n_group",
            "n_routed_experts",
            "n_shared_experts",
            "norm_topk_prob",
            "num_experts_per_tok",
            "num_local_experts",
            "routed_scaling_factor",
            "topk_group",
            "use_qk_norm",
        },
        frozenset({"num_nextn_predict_layers"}),
        # the multi-token-prediction layer after the last (transformers: layers 92 and 46)
        unread=(r"model\.layers\.{num_hidden_layers}\.",),
    ),
]
