"""OpenAI GPT-OSS (`GptOssForCausalLM`: gpt-oss-20b, gpt-oss-120b).

- Attention: q/k/v/o biases, GQA, sliding-window layers alternating with global ones
  (`layer_types`), YaRN rotary, and attention sinks: a learned logit per head
  (`self_attn.sinks` -> `attn.sinks`) joins every softmax as one more key whose value is zero, so
  each pattern row sums to less than 1; the sink's share is `attn.hook_sink_pattern`
  [batch, head, q_pos]. Models with sinks always take the explicit attention path.
- MLP: a mixture of experts with biases everywhere; the router (with its bias) takes the top-k
  logits and softmaxes over them. Each expert is a clamped SwiGLU: `quick_gelu(min(gate, limit)) *
  (clamp(up, -limit, limit) + 1)` (`cfg.swiglu_limit`; `swiglu_alpha` must be 1.702). The
  checkpoint stores the experts fused, `gate_up_proj` [experts, d_model, 2 d_mlp] with gate and
  up interleaved column by column and `down_proj` [experts, d_mlp, d_model], read per expert as
  views (`Index`, `Strided`, `Transpose`).
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.llama import LLAMA_LIKE_KEYS, llama_like_config, sliding_window_fields
from lmscope.loading.pieces import TRANSPOSE, embeddings, layers, llama_attention, norm, norms
from lmscope.loading.transforms import Chain, Index, Strided

SWIGLU_ALPHA = 1.702  # quick_gelu's constant


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    alpha = hf.get("swiglu_alpha", SWIGLU_ALPHA)
    if alpha != SWIGLU_ALPHA:
        raise NotImplementedError(
            f"GPT-OSS swiglu_alpha={alpha!r}: lmscope implements the released value "
            f"{SWIGLU_ALPHA} (quick_gelu) only"
        )
    fields = llama_like_config(hf)
    n = fields["n_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)
    ]
    local = [t == "sliding_attention" for t in types]
    fields.update(sliding_window_fields(hf.get("sliding_window", 128), local, fields["n_ctx"]))
    fields.update(
        act_fn="quick_gelu",
        swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
        attn_sinks=True,
        num_experts=hf.get("num_local_experts", 128),
        experts_per_token=hf.get("num_experts_per_tok", 4),
        router_scoring="topk_softmax",
        router_bias=True,
    )
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("attention_bias", True))
    n, d_mlp = cfg.num_experts, cfg.d_mlp
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        m[f"{ours}.attn.sinks"] = f"{h}.self_attn.sinks"
        mlp = f"{h}.mlp"
        m[f"{ours}.mlp.router_weight"] = f"{mlp}.router.weight"
        m[f"{ours}.mlp.router_bias"] = f"{mlp}.router.bias"
        for e in range(n):
            ex = f"{ours}.mlp.experts.{e}"
            for start, (weight, bias_name) in enumerate(
                (("gate_weight", "gate_bias"), ("in_weight", "in_bias"))
            ):
                columns = Strided(1, start, 2, 2 * d_mlp)
                m[f"{ex}.{weight}"] = (
                    Chain((Index(e, n), columns, TRANSPOSE)),
                    f"{mlp}.experts.gate_up_proj",
                )
                entries = Strided(0, start, 2, 2 * d_mlp)
                m[f"{ex}.{bias_name}"] = (
                    Chain((Index(e, n), entries)),
                    f"{mlp}.experts.gate_up_proj_bias",
                )
            m[f"{ex}.out_weight"] = (Chain((Index(e, n), TRANSPOSE)), f"{mlp}.experts.down_proj")
            m[f"{ex}.b_out"] = (Index(e, n), f"{mlp}.experts.down_proj_bias")
    return m


FAMILY = Family(
    "gpt_oss",
    ("GptOssForCausalLM",),
    config_from_hf,
    weight_map,
    LLAMA_LIKE_KEYS
    | {
        "attention_bias",
        "layer_types",
        "num_experts_per_tok",
        "num_local_experts",
        "sliding_window",
        "swiglu_alpha",
        "swiglu_limit",
    },
)
