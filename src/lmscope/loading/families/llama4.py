"""Llama 4 text (`Llama4ForCausalLM`: the language model of Llama 4 Scout / Maverick, saved alone).

- Attention: rotary on adjacent pairs on three layers in four (`no_rope_layers[l] == 1`); those
  layers attend in chunks of `attention_chunk_size` tokens (`attn_types` "chunked": a query sees
  the keys of its own chunk, counting real tokens) and, with `use_qk_norm`, normalise q and k
  after rotary by a weightless L2 (RMS) norm (`qk_norm_after_rotary`). The other layers have no
  positions (NoPE) and attend globally, and with `attn_temperature_tuning` their queries are
  scaled by `log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1`, `pos` counting from the
  sequence's first position, padding included, as transformers does.
- MLP: mixtures of experts on the layers `moe_layers` names (every `interleave_moe_layer_step`-th
  by default), dense gated MLPs of `intermediate_size_mlp` elsewhere. The router takes the top
  `num_experts_per_tok` logits, weights them by a sigmoid and scales each chosen expert's *input*
  by its weight (`expert_weights_on_input`); an always-on shared expert is added. The experts are
  stored fused, `gate_up_proj` [experts, d_model, 2 d_mlp] ([gate | up] columns) and `down_proj`
  [experts, d_mlp, d_model], read per expert as views.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.llama import LLAMA_LIKE_KEYS, llama_like_config
from lmscope.loading.pieces import (
    MLP,
    TRANSPOSE,
    embeddings,
    gated_mlp,
    layers,
    llama_attention,
    norm,
    norms,
)
from lmscope.loading.transforms import Chain, Index, Part


def _rope_layers(hf: dict[str, Any]) -> list[bool]:
    n, interval = hf["num_hidden_layers"], hf.get("no_rope_layer_interval", 4)
    rope = hf.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
    return [bool(r) for r in rope]


def _moe_layers(hf: dict[str, Any]) -> list[int]:
    if hf.get("moe_layers") is not None:
        return list(hf["moe_layers"])
    step, n = hf.get("interleave_moe_layer_step", 1), hf["num_hidden_layers"]
    return list(range(step - 1, n, step))


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    rope = _rope_layers(hf)
    chunk = hf.get("attention_chunk_size", 8192)
    types = hf.get("layer_types") or [
        "chunked_attention" if r and chunk is not None else "full_attention" for r in rope
    ]
    kinds = {"chunked_attention": "chunked", "full_attention": "global"}
    unknown = sorted(set(types) - set(kinds))
    if unknown:
        raise NotImplementedError(f"Llama 4 layer types {unknown} are not supported by lmscope")
    attn_types = [kinds[t] for t in types]
    if "chunked" in attn_types and chunk >= fields["n_ctx"]:
        attn_types = ["global"] * len(attn_types)  # chunks as long as the context change nothing
    moe = set(_moe_layers(hf))
    n = fields["n_layers"]
    fields.update(
        rotary_adjacent_pairs=True,
        rotary_layers=rope,
        attn_types=attn_types if "chunked" in attn_types else None,
        attention_chunk_size=chunk if "chunked" in attn_types else None,
        num_experts=hf.get("num_local_experts", 16),
        experts_per_token=hf.get("num_experts_per_tok", 1),
        router_scoring="sigmoid",
        norm_topk_prob=False,
        expert_weights_on_input=True,
        shared_expert_d_mlp=hf["intermediate_size"],
        shared_expert_gated=False,
        mlp_types=["moe" if layer in moe else "dense" for layer in range(n)],
        dense_d_mlp=hf.get("intermediate_size_mlp", 16384),
    )
    if hf.get("use_qk_norm", True):
        fields.update(use_qk_norm=True, qk_norm_type="RMSPre", qk_norm_after_rotary=True)
    if hf.get("attn_temperature_tuning", True):
        fields.update(
            attn_temperature_scale=float(hf.get("attn_scale", 0.1)),
            attn_temperature_floor=float(hf.get("floor_scale", 8192)),
        )
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("attention_bias"))
    n, d_mlp = cfg.num_experts, cfg.d_mlp
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    for layer, (ours, h) in enumerate(layers(cfg, "model.layers")):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        ff = f"{h}.feed_forward"
        if cfg.mlp_type(layer) == "dense":
            m |= gated_mlp(f"{ours}.mlp", ff)
            continue
        m[f"{ours}.mlp.router_weight"] = f"{ff}.router.weight"
        for e in range(n):
            ex = f"{ours}.mlp.experts.{e}"
            for i, role in enumerate(("gate", "in")):  # [gate | up] columns
                cols = Part(1, i * d_mlp, (i + 1) * d_mlp, 2 * d_mlp)
                m[f"{ex}.{MLP[role][0]}"] = (
                    Chain((Index(e, n), cols, TRANSPOSE)),
                    f"{ff}.experts.gate_up_proj",
                )
            m[f"{ex}.out_weight"] = (Chain((Index(e, n), TRANSPOSE)), f"{ff}.experts.down_proj")
        m |= gated_mlp(f"{ours}.mlp.shared_expert", f"{ff}.shared_expert")
    return m


FAMILY = Family(
    "llama4_text",
    ("Llama4ForCausalLM",),
    config_from_hf,
    weight_map,
    LLAMA_LIKE_KEYS
    | {
        "attention_bias",
        "attention_chunk_size",
        "attn_scale",
        "attn_temperature_tuning",
        "floor_scale",
        "interleave_moe_layer_step",
        "intermediate_size_mlp",
        "layer_types",
        "moe_layers",
        "no_rope_layer_interval",
        "no_rope_layers",
        "num_experts_per_tok",
        "num_local_experts",
        "use_qk_norm",
    },
)
