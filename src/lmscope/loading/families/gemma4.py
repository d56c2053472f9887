"""Gemma 4 (text, `Gemma4ForCausalLM`): Gemma 3's pre+post-norm blocks, sliding/global layers and
per-head q/k norms, with these differences, each a switch on the shared components:

- plain RMSNorm weights (`x_hat * w`, not Gemma 1-3's `1 + w`), and attention scores unscaled
  (`use_attn_scale=False`: the q/k norms set the scale);
- a weightless RMSNorm over each value head (`use_v_norm`, `attn.v_norm`);
- global layers with their own head size and key/value heads (`d_head_global`,
  `n_key_value_heads_global`; transformers' `per_layer_config`, or `global_head_dim` /
  `num_global_key_value_heads`), rotated by "proportional" rope (frequencies over the whole
  head, the unrotated part zero), and with `attention_k_eq_v` values that are the keys'
  projection (`v_from_k_global`);
- the last `num_kv_shared_layers` layers reuse the keys and values of the last earlier layer of
  their type (`kv_source_layers`), and with `use_double_wide_mlp` have MLPs twice as wide
  (`d_mlp_layers`);
- per-layer embeddings (`hidden_size_per_layer_input`: `per_layer_embed`, `blocks.{l}.per_layer`)
  and a learned scalar on each block's output (`layer_scalar`);
- with `enable_moe_block` (Gemma 4 26B-A4B), routed experts beside each dense MLP
  (`moe_beside_mlp`: `blocks.{l}.moe`, its own pre-norm `ln2_moe`, the two branches post-normed by
  `ln2_mlp_post` / `ln2_moe_post`, summed, then `ln2_post`): a softmax router over a weightless
  RMSNorm of resid_mid times a learned scale and d_model ** -0.5 (`router_input_norm`), top-k
  renormalised, times a learned per-expert scale (`router_per_expert_scale`); the experts are
  stored fused, `experts.gate_up_proj` [experts, 2 d_expert, d_model] ([gate | up] rows) and
  `experts.down_proj` [experts, d_model, d_expert], read per expert as views.

The embeddings' constant scales (sqrt(d_model), sqrt(hidden_size_per_layer_input)) are folded
into the stored tables at load, in float32, as for Gemma 1-3. Bidirectional attention is
refused, naming the attribute.
"""

from __future__ import annotations

import math
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import DECODER_KEYS, Family, WeightMap, rope_settings
from lmscope.loading.families.gemma import scaled_embedding
from lmscope.loading.pieces import (
    embeddings,
    fused_gated_mlp,
    gated_mlp,
    layers,
    llama_attention,
    norm,
    norms,
)
from lmscope.loading.transforms import Index

_ATTN_TYPES = {"sliding_attention": "local", "full_attention": "global"}


def _refuse(hf: dict[str, Any]) -> None:
    if hf.get("use_bidirectional_attention"):
        raise NotImplementedError(
            f"Gemma 4 config attribute use_bidirectional_attention="
            f"{hf['use_bidirectional_attention']!r} is not supported: lmscope runs causal "
            "decoders only"
        )


def _layer_types(hf: dict[str, Any]) -> list[str]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 6 else "full_attention" for i in range(n)
    ]
    unknown = sorted(set(types) - set(_ATTN_TYPES))
    if unknown or len(types) != n:
        raise NotImplementedError(
            f"Gemma 4 config attribute layer_types: {unknown or types} is not one of "
            f"{sorted(_ATTN_TYPES)} per layer ({n} layers)"
        )
    types = list(types)
    types[-1] = "full_attention"  # transformers forces the last layer to be global
    return types


def _global_sizes(hf: dict[str, Any], types: list[str]) -> tuple[int, int | None]:
    """(head size, key/value heads or None) of the global layers."""
    per_layer = hf.get("per_layer_config")
    if per_layer is None:
        kv = hf.get("num_global_key_value_heads") if hf.get("attention_k_eq_v", False) else None
        return hf.get("global_head_dim", 512), kv
    overrides = {int(i): dict(v) for i, v in per_layer.items()}
    global_layers = {i for i, t in enumerate(types) if t == "full_attention"}
    distinct = {tuple(sorted(v.items())) for v in overrides.values()}
    if set(overrides) != global_layers or len(distinct) != 1:
        raise NotImplementedError(
            f"Gemma 4 config attribute per_layer_config={per_layer!r}: lmscope supports the one "
            "override of head_dim / num_key_value_heads that transformers writes for every "
            "full_attention layer"
        )
    sizes = overrides[min(overrides)]
    unknown = sorted(set(sizes) - {"head_dim", "num_key_value_heads"})
    if unknown:
        raise NotImplementedError(
            f"Gemma 4 config attribute per_layer_config overrides {unknown}, which lmscope does "
            "not support per layer"
        )
    return sizes.get("head_dim", hf.get("head_dim", 256)), sizes.get("num_key_value_heads")


def _kv_sources(hf: dict[str, Any], types: list[str]) -> list[int | None] | None:
    """transformers' `kv_sharing_modes`: the last num_kv_shared_layers layers reuse the keys and
    values of the last earlier layer of their type."""
    shared = hf.get("num_kv_shared_layers", 0) or 0
    if not shared:
        return None
    first = len(types) - shared
    sources: list[int | None] = [None] * len(types)
    for layer in range(max(first, 0), len(types)):
        earlier = [i for i in range(first) if types[i] == types[layer]]
        if not earlier:
            raise ValueError(
                f"Gemma 4 config attribute num_kv_shared_layers={shared}: layer {layer} "
                f"({types[layer]}) has no earlier layer of its type to share keys and values with"
            )
        sources[layer] = earlier[-1]
    return sources


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    params = hf.get("rope_parameters") or {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        "full_attention": {
            "rope_type": "proportional",
            "partial_rotary_factor": 0.25,
            "rope_theta": 1_000_000.0,
        },
    }
    full, local = dict(params["full_attention"]), dict(params["sliding_attention"])
    if local.get("rope_type", "default") != "default" or "partial_rotary_factor" in local:
        raise NotImplementedError(
            f"Gemma 4 config attribute rope_parameters['sliding_attention']={local!r}: lmscope "
            "supports the default rotary on the sliding-window layers"
        )
    kind = full.get("rope_type", "default")
    if kind != "proportional" and full.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError(
            f"Gemma 4 config attribute rope_parameters['full_attention']={full!r}: a partial "
            "rotary other than 'proportional' on the global layers is not supported"
        )
    rope = rope_settings(
        {"rope_parameters": full, "max_position_embeddings": hf["max_position_embeddings"]}
    )
    scaling = rope["rope_scaling"]
    if kind == "proportional":  # its fraction sets which frequencies are zero
        scaling = {**scaling, "partial_rotary_factor": full.get("partial_rotary_factor", 1.0)}
    return {
        "rotary_base": rope["rotary_base"],
        "rope_scaling": scaling,
        "rotary_base_local": float(local.get("rope_theta", 10_000.0)),
    }


def _experts(hf: dict[str, Any]) -> dict[str, Any]:
    """The mixture of experts beside each MLP (`enable_moe_block`, Gemma 4 26B-A4B): `d_mlp` is
    each expert's width and `dense_d_mlp` the MLP's."""
    if not hf.get("enable_moe_block"):
        return {"d_mlp": hf["intermediate_size"]}
    missing = [
        k for k in ("num_experts", "top_k_experts", "moe_intermediate_size") if not hf.get(k)
    ]
    if missing:
        raise ValueError(
            f"Gemma 4 config has enable_moe_block=True but no {', '.join(missing)}: the mixture "
            "of experts needs its number of experts, experts per token and expert width"
        )
    return dict(
        d_mlp=hf["moe_intermediate_size"],
        dense_d_mlp=hf["intermediate_size"],
        num_experts=hf["num_experts"],
        experts_per_token=hf["top_k_experts"],
        moe_beside_mlp=True,
        router_input_norm=True,
        router_per_expert_scale=True,
    )


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    _refuse(hf)
    types = _layer_types(hf)
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim", 256)
    d_head_global, kv_global = _global_sizes(hf, types)
    sources = _kv_sources(hf, types)
    d_mlp = hf["intermediate_size"]  # the dense MLP's (each expert's: _experts)
    d_mlp_layers = None
    if sources is not None and hf.get("use_double_wide_mlp", False):
        d_mlp_layers = [d_mlp * (2 if s is not None else 1) for s in sources]
    d_ple = hf.get("hidden_size_per_layer_input", 256) or None
    window = hf.get("sliding_window", 512)
    return dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        **_experts(hf),
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=hf.get("hidden_activation") or "gelu_pytorch_tanh",
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        gated_mlp=True,
        final_rms=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        attn_types=[_ATTN_TYPES[t] for t in types],
        window_size=window if "sliding_attention" in types else None,
        use_attn_scale=False,
        norm_placement="pre_and_post",
        output_logits_soft_cap=float(hf.get("final_logit_softcapping") or -1.0),
        use_qk_norm=True,
        qk_norm_per_head=True,
        use_v_norm=True,
        d_head_global=d_head_global,
        n_key_value_heads_global=kv_global,
        v_from_k_global=bool(hf.get("attention_k_eq_v", False)),
        kv_source_layers=sources,
        d_mlp_layers=d_mlp_layers,
        d_per_layer_input=d_ple,
        d_vocab_per_layer_input=hf.get("vocab_size_per_layer_input", hf["vocab_size"])
        if d_ple
        else None,
        layer_scalars=True,
        **_rope(hf),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Gemma 3's layout with plain norm weights, less the key/value projections of layers that
    reuse another's (and the value projection where values are the keys'), plus the per-layer
    embeddings and each layer's scalar."""
    m = embeddings(cfg, "model.embed_tokens.weight", scale=scaled_embedding(math.sqrt(cfg.d_model)))
    m |= norm("ln_final", "model.norm")
    if cfg.d_per_layer_input:
        ple = scaled_embedding(math.sqrt(cfg.d_per_layer_input))
        m["per_layer_embed.W_E"] = (ple, "model.embed_tokens_per_layer.weight")
        m["per_layer_embed.proj_weight"] = "model.per_layer_model_projection.weight"
        m |= norm("per_layer_embed.ln", "model.per_layer_projection_norm")
    bias = bool(hf.get("attention_bias"))
    for (ours, h), layer in zip(layers(cfg, "model.layers"), range(cfg.n_layers), strict=True):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.pre_feedforward_layernorm")
        m |= norm(f"{ours}.ln1_post", f"{h}.post_attention_layernorm")
        m |= norm(f"{ours}.ln2_post", f"{h}.post_feedforward_layernorm")
        attn = llama_attention(
            f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias, qk_norm=True
        )
        shared = cfg.kv_source_layers is not None and cfg.kv_source_layers[layer] is not None
        v_from_k = cfg.v_from_k_global and cfg.layer_types[layer] == "global"
        dropped = ("k_", "v_", "k_norm") if shared else ("v_",) if v_from_k else ()
        m |= {k: v for k, v in attn.items() if not k[len(ours) + 6 :].startswith(dropped)}
        m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp")
        if cfg.moe_beside_mlp:
            m |= _moe(cfg, ours, h)
        m[f"{ours}.layer_scalar"] = f"{h}.layer_scalar"
        if cfg.d_per_layer_input:
            m[f"{ours}.per_layer.gate_weight"] = f"{h}.per_layer_input_gate.weight"
            m[f"{ours}.per_layer.out_weight"] = f"{h}.per_layer_projection.weight"
            m |= norm(f"{ours}.per_layer.ln", f"{h}.post_per_layer_input_norm")
    return m


def _moe(cfg: HookedTransformerConfig, ours: str, h: str) -> WeightMap:
    """The experts beside layer `h`'s MLP: the router (`router.proj`, `router.scale`,
    `router.per_expert_scale`), the fused experts and the three extra norms."""
    n, x = cfg.num_experts, f"{ours}.moe"
    m: WeightMap = {
        f"{x}.router_weight": f"{h}.router.proj.weight",
        f"{x}.router_scale": f"{h}.router.scale",
        f"{x}.per_expert_scale": f"{h}.router.per_expert_scale",
    }
    for e in range(n):
        gate_up, down = f"{h}.experts.gate_up_proj", f"{h}.experts.down_proj"
        m |= fused_gated_mlp(f"{x}.experts.{e}", gate_up, down, cfg.d_mlp, Index(e, n))
    m |= norm(f"{ours}.ln2_moe", f"{h}.pre_feedforward_layernorm_2")
    m |= norm(f"{ours}.ln2_mlp_post", f"{h}.post_feedforward_layernorm_1")
    return m | norm(f"{ours}.ln2_moe_post", f"{h}.post_feedforward_layernorm_2")


FAMILY = Family(
    "gemma4_text",
    ("Gemma4ForCausalLM",),
    config_from_hf,
    weight_map,
    DECODER_KEYS
    | {
        "attention_bias",
        "attention_k_eq_v",
        "enable_moe_block",
        "final_logit_softcapping",
        "global_head_dim",
        "head_dim",
        "hidden_activation",
        "hidden_size_per_layer_input",
        "layer_types",
        "moe_intermediate_size",
        "num_experts",
        "num_global_key_value_heads",
        "num_key_value_heads",
        "num_kv_shared_layers",
        "per_layer_config",
        "rms_norm_eps",
        "rope_parameters",
        "sliding_window",
        "top_k_experts",
        "use_bidirectional_attention",
        "use_double_wide_mlp",
        "vocab_size_per_layer_input",
    },
)
