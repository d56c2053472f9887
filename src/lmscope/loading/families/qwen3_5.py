"""Qwen3.5 text (`Qwen3_5ForCausalLM`): a hybrid of gated delta-net linear attention and gated
softmax attention.

- Layers: `layer_types` marks each "linear_attention" (a gated delta-net layer,
  `blocks.{l}.linear_attn`, `lmscope.components.linear_attention`) or "full_attention" (by
  default every fourth layer); config `attn_types` "linear" / "global".
- Full attention: Qwen3's per-head q/k RMSNorms, partial rotary (`partial_rotary_factor`, 1/4
  of each head by default; the text model's multimodal rotary gives every axis the text position,
  which is ordinary rotary), and an output gate: `q_proj` holds each head's query and gate rows
  ([head, (q | gate), d_head]), and z is multiplied by sigmoid(gate) before `o_proj`
  (`attn_output_gate`, `attn.hook_gate`).
- Every RMSNorm outside the linear layers computes `x_hat * (1 + w)`: the checkpoint's `w` with
  `cfg.norm_weight_offset = 1.0` (`1 + w` in float32, as transformers computes it); the linear
  layers' gated norm uses its weight as it is.
- The KV cache holds each linear layer's convolution inputs and recurrent state.
- Qwen3.5-MoE (`Qwen3_5MoeForCausalLM`): the same layers with Qwen2-MoE's block on every layer
  (`lmscope.components.moe`): a softmax router over `num_experts`, the top `num_experts_per_tok`
  renormalised to sum to one, and a shared expert scaled by `sigmoid(x @ W_shared_expert_gate)`;
  experts per expert as `save_pretrained` writes them (`mlp.experts.{e}.gate_proj/up_proj/down_proj`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, rope_settings
from lmscope.loading.families.llama import LLAMA_LIKE_KEYS, llama_like_config
from lmscope.loading.families.moe import qwen_experts
from lmscope.loading.pieces import embeddings, gated_mlp, layers, norm, norms
from lmscope.loading.transforms import FusedHeads

_KINDS = {"linear_attention": "linear", "full_attention": "global"}


def _layer_types(hf: dict[str, Any]) -> list[str]:
    n = hf["num_hidden_layers"]
    interval = hf.get("full_attention_interval", 4)
    types = hf.get("layer_types") or [
        "linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)
    ]
    unknown = sorted(set(types) - set(_KINDS))
    if unknown:
        raise NotImplementedError(
            f"config attribute layer_types holds {unknown}, which lmscope has no layer for "
            f"(it implements {sorted(_KINDS)})"
        )
    return [_KINDS[t] for t in types]


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    # transformers' Qwen3-Next / Qwen3.5 configs default partial_rotary_factor to 1/4
    fraction = rope_settings({"partial_rotary_factor": 0.25, **hf})["fraction"]
    fields.update(
        rotary_dim=int(fields["d_head"] * fraction),
        use_qk_norm=True,
        qk_norm_per_head=True,
        norm_weight_offset=1.0,  # x_hat * (1 + w), except the linear layers' gated norm
        attn_output_gate=True,
        attn_types=_layer_types(hf),
        linear_n_key_heads=hf.get("linear_num_key_heads", 16),
        linear_n_value_heads=hf.get("linear_num_value_heads", 32),
        linear_d_key=hf.get("linear_key_head_dim", 128),
        linear_d_value=hf.get("linear_value_head_dim", 128),
        linear_conv_size=hf.get("linear_conv_kernel_dim", 4),
    )
    return fields


def moe_config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    d_expert = hf.get("moe_intermediate_size", 512)
    fields = config_from_hf({"intermediate_size": d_expert, **hf})  # the MoE config has none
    fields.update(
        d_mlp=d_expert,
        num_experts=hf.get("num_experts", 256),
        experts_per_token=hf.get("num_experts_per_tok", 8),
        norm_topk_prob=True,  # transformers' Qwen3.5-MoE router always renormalises
        shared_expert_d_mlp=hf.get("shared_expert_intermediate_size", 512),
    )
    return fields


def linear_attention(cfg: HookedTransformerConfig, ours: str, theirs: str) -> WeightMap:
    """A gated delta-net layer, every tensor as the checkpoint stores it (Qwen3.5).

    Example:
        >>> linear_attention(cfg, "blocks.0.linear_attn", "model.layers.0.linear_attn")[
        ...     "blocks.0.linear_attn.qkv_weight"]
        'model.layers.0.linear_attn.in_proj_qkv.weight'
    """
    names = {
        "qkv_weight": "in_proj_qkv.weight",
        "gate_weight": "in_proj_z.weight",
        "beta_weight": "in_proj_b.weight",
        "alpha_weight": "in_proj_a.weight",
        "conv_weight": "conv1d.weight",
        "A_log": "A_log",
        "dt_bias": "dt_bias",
        "norm.w": "norm.weight",
        "o_weight": "out_proj.weight",
    }
    return {f"{ours}.{mine}": f"{theirs}.{name}" for mine, name in names.items()}


def _gated_attention(cfg: HookedTransformerConfig, ours: str, theirs: str, bias: bool) -> WeightMap:
    """Attention whose `q_proj` interleaves each head's query and output-gate rows."""
    m: WeightMap = {}
    params = ("weight", "bias") if bias else ("weight",)
    for part, (w, b) in enumerate((("q_weight", "q_bias"), ("gate_weight", "gate_bias"))):
        fused = FusedHeads(cfg.n_heads, part, n_parts=2)
        for param, mine in zip(params, (w, b), strict=False):
            m[f"{ours}.{mine}"] = (fused, f"{theirs}.q_proj.{param}")
    for part, (w, b) in {"k": ("k_weight", "k_bias"), "v": ("v_weight", "v_bias")}.items():
        m[f"{ours}.{w}"] = f"{theirs}.{part}_proj.weight"
        if bias:
            m[f"{ours}.{b}"] = f"{theirs}.{part}_proj.bias"
    m[f"{ours}.o_weight"] = f"{theirs}.o_proj.weight"
    if bias:
        m[f"{ours}.b_O"] = f"{theirs}.o_proj.bias"
    m |= norm(f"{ours}.q_norm", f"{theirs}.q_norm")
    return m | norm(f"{ours}.k_norm", f"{theirs}.k_norm")


LinearAttentionMap = Callable[[HookedTransformerConfig, str, str], WeightMap]


def weight_map(
    cfg: HookedTransformerConfig,
    hf: dict[str, Any],
    linear: LinearAttentionMap = linear_attention,
) -> WeightMap:
    """The hybrid's weights; `linear` maps one linear-attention layer (Qwen3-Next passes its
    fused projections' map)."""
    bias = bool(hf.get("attention_bias"))
    m = embeddings(cfg, "model.embed_tokens.weight")
    m |= norm("ln_final", "model.norm")
    for layer, (ours, h) in enumerate(layers(cfg, "model.layers")):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        if cfg.layer_types[layer] == "linear":
            m |= linear(cfg, f"{ours}.linear_attn", f"{h}.linear_attn")
        else:
            m |= _gated_attention(cfg, f"{ours}.attn", f"{h}.self_attn", bias)
        if not cfg.num_experts:
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
    return qwen_experts(m, cfg) if cfg.num_experts else m


HYBRID_KEYS = LLAMA_LIKE_KEYS | {
    "attention_bias",
    "full_attention_interval",
    "layer_types",
    "linear_conv_kernel_dim",
    "linear_key_head_dim",
    "linear_num_key_heads",
    "linear_num_value_heads",
    "linear_value_head_dim",
    "partial_rotary_factor",
}
HYBRID_MOE_KEYS = {
    "moe_intermediate_size",
    "num_experts",
    "num_experts_per_tok",
    "shared_expert_intermediate_size",
}
MTP_HEAD = (r"mtp\.",)  # the multi-token-prediction head: transformers ignores it too
FAMILIES = [
    Family(
        "qwen3_5_text",
        ("Qwen3_5ForCausalLM",),
        config_from_hf,
        weight_map,
        HYBRID_KEYS,
        unread=MTP_HEAD,
    ),
    Family(
        "qwen3_5_moe_text",
        ("Qwen3_5MoeForCausalLM",),
        moe_config_from_hf,
        weight_map,
        HYBRID_KEYS | HYBRID_MOE_KEYS,
        unread=MTP_HEAD,
    ),
]
