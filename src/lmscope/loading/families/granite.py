"""IBM Granite (`GraniteForCausalLM`: Granite 3.x dense), Granite MoE (`GraniteMoeForCausalLM`:
Granite 3.0 1B/3B-A800M) and Granite MoE with a shared expert (`GraniteMoeSharedForCausalLM`).

Llama-shaped, with four multipliers, each folded into the weights at load so the model stays a
plain transformer whose hooks mean what they mean elsewhere:
- `embedding_multiplier`: `W_E = embed_tokens.weight * m` (`hook_embed` is the scaled embedding);
- `residual_multiplier`: every sublayer's output is scaled before it joins the residual, so the
  output projections (`W_O`, `b_O`, each expert's `W_out`, the shared expert's) hold `w * m` and
  `hook_attn_out` / `hook_mlp_out` are what is added to the residual;
- `attention_multiplier`: the scores' scale (`attn_scale = 1 / m`);
- `logits_scaling`: the logits are divided by it, so `W_U = lm_head.weight / s` (a tied `W_U` is
  the embedding divided, not multiplied by the embedding multiplier).

Granite MoE routes as `topk_softmax` (the top-k logits, then a softmax over them); its experts are
stored fused, `input_linear.weight` [experts, 2 * d_mlp, d_model] ([gate | up]) and
`output_linear.weight` [experts, d_model, d_mlp], read per expert as views (`Index`).
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.llama import LLAMA_LIKE_KEYS, llama_like_config
from lmscope.loading.pieces import (
    MLP,
    embeddings,
    fused_gated_mlp,
    layers,
    llama_attention,
    norm,
    norms,
)
from lmscope.loading.transforms import Chain, Index, Scale


def granite_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {**llama_like_config(hf), "attn_scale": 1.0 / float(hf.get("attention_multiplier", 1.0))}


def granite_moe_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = granite_config(hf)
    fields.update(
        num_experts=hf.get("num_local_experts", 8),
        experts_per_token=hf.get("num_experts_per_tok", 2),
        router_scoring="topk_softmax",
    )
    return fields


def granite_moe_shared_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = granite_moe_config(hf)
    if hf.get("shared_intermediate_size"):
        fields.update(shared_expert_d_mlp=hf["shared_intermediate_size"], shared_expert_gated=False)
    return fields


def _scaled(factor: float, name: str, *steps: Any) -> Any:
    """`name` (through view `steps`), times `factor` unless it is 1."""
    if factor == 1.0:
        return (Chain(steps), name) if steps else name
    return (Chain((*steps, Scale(factor))), name) if steps else (Scale(factor), name)


_LLAMA_MLP = {"gate": "gate_proj", "in": "up_proj", "out": "down_proj"}


def granite_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    rm = float(hf.get("residual_multiplier", 1.0))
    em = float(hf.get("embedding_multiplier", 1.0))
    ls = float(hf.get("logits_scaling", 1.0))
    bias = bool(hf.get("attention_bias"))
    m = embeddings(cfg, "model.embed_tokens.weight", scale=Scale(em) if em != 1.0 else None)
    m["unembed.weight"] = _scaled(1.0 / ls, m["unembed.weight"])
    m |= norm("ln_final", "model.norm")
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        attn = llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        for key in (f"{ours}.attn.o_weight", f"{ours}.attn.b_O"):
            if key in attn:
                attn[key] = _scaled(rm, attn[key])
        m |= attn
        if not cfg.num_experts:
            mlp_bias = bool(hf.get("mlp_bias"))
            for role in ("gate", "in", "out"):
                weight, bias_name = MLP[role]
                scale = rm if role == "out" else 1.0
                m[f"{ours}.mlp.{weight}"] = _scaled(scale, f"{h}.mlp.{_LLAMA_MLP[role]}.weight")
                if mlp_bias:
                    m[f"{ours}.mlp.{bias_name}"] = _scaled(
                        scale, f"{h}.mlp.{_LLAMA_MLP[role]}.bias"
                    )
            continue
        moe, n, d_mlp = f"{h}.block_sparse_moe", cfg.num_experts, cfg.d_mlp
        m[f"{ours}.mlp.router_weight"] = f"{moe}.router.layer.weight"
        for e in range(n):
            m |= fused_gated_mlp(
                f"{ours}.mlp.experts.{e}",
                f"{moe}.input_linear.weight",
                f"{moe}.output_linear.weight",
                d_mlp,
                Index(e, n),
                out_scale=rm,
            )
        if cfg.shared_expert_d_mlp:
            shared = f"{h}.shared_mlp"
            m |= fused_gated_mlp(
                f"{ours}.mlp.shared_expert",
                f"{shared}.input_linear.weight",
                f"{shared}.output_linear.weight",
                cfg.shared_expert_d_mlp,
                out_scale=rm,
            )
    return m


_KEYS = LLAMA_LIKE_KEYS | {
    "attention_bias",
    "attention_multiplier",
    "embedding_multiplier",
    "logits_scaling",
    "residual_multiplier",
}
FAMILIES = [
    Family(
        "granite",
        ("GraniteForCausalLM",),
        granite_config,
        granite_weight_map,
        _KEYS | {"mlp_bias"},
    ),
    Family(
        "granitemoe",
        ("GraniteMoeForCausalLM",),
        granite_moe_config,
        granite_weight_map,
        _KEYS | {"num_experts_per_tok", "num_local_experts"},
    ),
    Family(
        "granitemoeshared",
        ("GraniteMoeSharedForCausalLM",),
        granite_moe_shared_config,
        granite_weight_map,
        _KEYS | {"num_experts_per_tok", "num_local_experts", "shared_intermediate_size"},
    ),
]
