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

from collections.abc import Callable
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
Reader = Callable[[dict[str, Any]], bool]


def _key(name: str | None) -> Reader:
    """Reads the boolean config key `name` (no key: False)."""
    return (lambda hf: bool(hf.get(name))) if name else (lambda hf: False)


def biased_weight_map(
    qkv: Reader, o: Reader, mlp: Reader
) -> Callable[[HookedTransformerConfig, dict[str, Any]], WeightMap]:
    """Llama's layout (Arcee's plain MLP, EXAONE 4's post-norms) with the biases each family's
    readers find: `qkv`, `o` and `mlp` read the config keys that switch them on."""

    def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
        qkv_bias, o_bias, mlp_bias = qkv(hf), o(hf), mlp(hf)
        m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm")
        for ours, h in layers(cfg, "model.layers"):
            if cfg.norm_placement == "post":
                m |= norm(f"{ours}.ln1_post", f"{h}.post_attention_layernorm")
                m |= norm(f"{ours}.ln2_post", f"{h}.post_feedforward_layernorm")
            else:
                m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm")
            m |= llama_attention(
                f"{ours}.attn",
                f"{h}.self_attn",
                qkv_bias=qkv_bias,
                o_bias=o_bias,
                qk_norm=cfg.use_qk_norm,
            )
            if cfg.gated_mlp:
                m |= gated_mlp(f"{ours}.mlp", f"{h}.mlp", bias=mlp_bias)
            else:
                up, down = f"{h}.mlp.up_proj", f"{h}.mlp.down_proj"
                m |= linear_mlp(f"{ours}.mlp", up, down, bias=mlp_bias)
        return m

    return weight_map


_ATTN, _MLP, _NONE = _key("attention_bias"), _key("mlp_bias"), _key(None)
_USE = _key("use_bias")

_WINDOW_KEYS = frozenset({"layer_types", "sliding_window"})
FAMILIES = [
    Family(
        "smollm3",
        ("SmolLM3ForCausalLM",),
        smollm3_config,
        biased_weight_map(_ATTN, _ATTN, _MLP),
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
        biased_weight_map(_NONE, _NONE, _NONE),
        LLAMA_LIKE_KEYS | _WINDOW_KEYS,
    ),
    Family(
        "helium",
        ("HeliumForCausalLM",),
        adjacent_pairs_config,
        biased_weight_map(_ATTN, _NONE, _MLP),
        LLAMA_LIKE_KEYS | {"attention_bias", "mlp_bias"},
    ),
    Family(
        "seed_oss",
        ("SeedOssForCausalLM",),
        llama_like_config,
        biased_weight_map(_ATTN, _key("attention_out_bias"), _MLP),
        LLAMA_LIKE_KEYS | {"attention_bias", "attention_out_bias", "mlp_bias"},
    ),
    Family(
        "arcee",
        ("ArceeForCausalLM",),
        arcee_config,
        biased_weight_map(_ATTN, _ATTN, _MLP),
        LLAMA_LIKE_KEYS | {"attention_bias", "mlp_bias"},
    ),
    Family(
        "ernie4_5",
        ("Ernie4_5ForCausalLM",),
        adjacent_pairs_config,
        biased_weight_map(_USE, _USE, _USE),
        LLAMA_LIKE_KEYS | {"use_bias"},
    ),
    Family(
        "exaone4",
        ("Exaone4ForCausalLM",),
        exaone4_config,
        biased_weight_map(_NONE, _NONE, _NONE),
        LLAMA_LIKE_KEYS | _WINDOW_KEYS | {"sliding_window_pattern"},
    ),
]
