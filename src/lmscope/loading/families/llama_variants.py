"""Llama-shaped decoders that differ from Llama in a few switches, each named in its reader.

- SmolLM3 (`SmolLM3ForCausalLM`): NoPE layers (`no_rope_layers[l] == 0`: no rotary; every
  fourth layer by default) and an optional sliding window on layers `layer_types` marks.
- Ministral (`MinistralForCausalLM`): Mistral with the window on the layers `layer_types` marks.
- Helium (`HeliumForCausalLM`, Kyutai): rotary on adjacent pairs, q/k/v biases without an o bias.
- Seed-OSS (`SeedOssForCausalLM`): q/k/v biases (`attention_bias`) and an o bias of its own
  (`attention_out_bias`).
- Arcee (`ArceeForCausalLM`, AFM-4.5B): a plain (ungated) MLP, squared ReLU by default.
- ERNIE 4.5 (`Ernie4_5ForCausalLM`): rotary on adjacent pairs, every projection biased with
  `use_bias`.
- EXAONE 4 (`Exaone4ForCausalLM`): norms after attention and after the MLP only
  (`norm_placement="post"`, as OLMo 2), q/k RMSNorm per head, sliding-window layers from
  `layer_types` (or `sliding_window_pattern`), and with a window the global layers are NoPE.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.families.llama import (
    LLAMA_LIKE_KEYS,
    llama_like_config,
    sliding_window_fields,
)
from lmscope.loading.pieces import (
    embeddings,
    gated_mlp,
    layers,
    linear_mlp,
    llama_attention,
    norm,
    norms,
)


def _name(hf: dict[str, Any]) -> str:
    return (hf.get("architectures") or [None])[0] or hf.get("model_type", "")


def _windows(hf: dict[str, Any], fields: dict[str, Any], default: list[bool]) -> None:
    """A sliding window on the layers `layer_types` marks "sliding_attention" (else `default`)."""
    types = hf.get("layer_types")
    local = [t == "sliding_attention" for t in types] if types else default
    fields.update(sliding_window_fields(hf.get("sliding_window"), local, fields["n_ctx"]))


# -- SmolLM3 -----------------------------------------------------------------------------------------
def smollm3_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    n = fields["n_layers"]
    interval = hf.get("no_rope_layer_interval", 4)
    rope = hf.get("no_rope_layers") or [int((layer + 1) % interval != 0) for layer in range(n)]
    fields["rotary_layers"] = [bool(r) for r in rope]
    windowed = hf.get("use_sliding_window", False) and hf.get("sliding_window") is not None
    if windowed:  # transformers' rule without layer_types: the NoPE layers slide
        _windows(hf, fields, [not r for r in rope])
    return fields


# -- Ministral -----------------------------------------------------------------------------------------
def ministral_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    _windows(hf, fields, [hf.get("sliding_window") is not None] * fields["n_layers"])
    return fields


# -- Helium, Seed-OSS, Arcee, ERNIE 4.5 --------------------------------------------------------------
def adjacent_pairs_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Helium and ERNIE 4.5: Llama with rotary on adjacent pairs of dimensions."""
    return {**llama_like_config(hf), "rotary_adjacent_pairs": True}


def arcee_config(hf: dict[str, Any]) -> dict[str, Any]:
    return {**llama_like_config(hf), "act_fn": hf.get("hidden_act", "relu2"), "gated_mlp": False}


# -- EXAONE 4 ------------------------------------------------------------------------------------------
def exaone4_layer_types(hf: dict[str, Any]) -> list[str]:
    """transformers' rule: `layer_types`, else every `sliding_window_pattern`-th layer global (an
    int, or a string such as "LLLG"), with no window all global."""
    n = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    pattern = hf.get("sliding_window_pattern", 4)
    if hf.get("sliding_window") is None or not pattern:
        return ["full_attention"] * n
    if isinstance(pattern, str):
        kinds = {"L": "sliding_attention", "G": "full_attention"}
        return [kinds[pattern[i % len(pattern)]] for i in range(n)]
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]


def exaone4_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = llama_like_config(hf)
    types = exaone4_layer_types(hf)
    local = [t == "sliding_attention" for t in types]
    fields.update(sliding_window_fields(hf.get("sliding_window"), local, fields["n_ctx"]))
    fields.update(norm_placement="post", use_qk_norm=True, qk_norm_per_head=True)
    if hf.get("sliding_window") is not None:  # with a window only the sliding layers rotate
        fields["rotary_layers"] = local
    return fields


# -- weight maps ---------------------------------------------------------------------------------------
def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Llama's layout with each family's biases, Arcee's plain MLP and EXAONE 4's post-norms."""
    name = _name(hf)
    bias = bool(hf.get("attention_bias") or hf.get("use_bias"))
    o_bias = {
        "HeliumForCausalLM": False,
        "SeedOssForCausalLM": bool(hf.get("attention_out_bias")),
    }.get(name, bias)
    mlp_bias = bool(hf.get("mlp_bias") or hf.get("use_bias"))
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
    for ours, h in layers(cfg, "model.layers"):
        if cfg.norm_placement == "post":
            m |= norm(f"{ours}.ln1_post", f"{h}.post_attention_layernorm")
            m |= norm(f"{ours}.ln2_post", f"{h}.post_feedforward_layernorm")
        else:
            m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
        m |= llama_attention(
            f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=o_bias, qk_norm=cfg.use_qk_norm
        )
        if cfg.gated_mlp:
            m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp", bias=mlp_bias)
        else:
            m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.up_proj", f"{h}.mlp.down_proj", bias=mlp_bias)
    return m


_WINDOW_KEYS = frozenset({"layer_types", "sliding_window"})
FAMILIES = [
    Family(
        "smollm3",
        ("SmolLM3ForCausalLM",),
        smollm3_config,
        weight_map,
        LLAMA_LIKE_KEYS
        | _WINDOW_KEYS
        | {
            "attention_bias",
            "mlp_bias",
            "no_rope_layer_interval",
            "no_rope_layers",
            "use_sliding_window",
        },
    ),
    Family(
        "ministral",
        ("MinistralForCausalLM",),
        ministral_config,
        weight_map,
        LLAMA_LIKE_KEYS | _WINDOW_KEYS,
    ),
    Family(
        "helium",
        ("HeliumForCausalLM",),
        adjacent_pairs_config,
        weight_map,
        LLAMA_LIKE_KEYS | {"attention_bias", "mlp_bias"},
    ),
    Family(
        "seed_oss",
        ("SeedOssForCausalLM",),
        llama_like_config,
        weight_map,
        LLAMA_LIKE_KEYS | {"attention_bias", "attention_out_bias", "mlp_bias"},
    ),
    Family(
        "arcee",
        ("ArceeForCausalLM",),
        arcee_config,
        weight_map,
        LLAMA_LIKE_KEYS | {"attention_bias", "mlp_bias"},
    ),
    Family(
        "ernie4_5",
        ("Ernie4_5ForCausalLM",),
        adjacent_pairs_config,
        weight_map,
        LLAMA_LIKE_KEYS | {"use_bias"},
    ),
    Family(
        "exaone4",
        ("Exaone4ForCausalLM",),
        exaone4_config,
        weight_map,
        LLAMA_LIKE_KEYS | _WINDOW_KEYS | {"sliding_window_pattern"},
    ),
]
