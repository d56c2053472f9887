"""MosaicML MPT (`MptForCausalLM`: MPT-7B, MPT-30B): ALiBi (with `alibi_bias_max` 8 its slopes are
BLOOM's, for any number of heads), q/k/v fused in `Wqkv` as row blocks `[q | k | v]`, optional
`clip_qkv`, LayerNorms without bias, a plain GELU MLP of 4 * d_model, no biases anywhere, tied
embeddings. The attention settings live in the nested `attn_config`; what transformers' port does
not implement (`qk_ln`, `prefix_lm`, another `alibi_bias_max`, learned positions instead of
ALiBi, `logit_scale`, biases) is refused.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.pieces import (
    attention_out,
    embeddings,
    fused_qkv,
    layers,
    linear_mlp,
    norm,
    norms,
)

# attn_config entries and the values lmscope (and transformers' MptAttention) implement
_ATTN_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "alibi": (True,),
    "alibi_bias_max": (8,),
    "qk_ln": (False, None),
    "prefix_lm": (False, None),
    "attn_uses_sequence_id": (False, None),
}


def _refuse(key: str, value: Any) -> NotImplementedError:
    return NotImplementedError(
        f"MPT config {key}={value!r} is not supported by lmscope (transformers' MPT does not "
        "implement it either), so it refuses the checkpoint rather than load another model"
    )


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    attn = hf.get("attn_config") or {}
    for key, neutral in _ATTN_NEUTRAL.items():
        if key in attn and attn[key] not in neutral:
            raise _refuse(f"attn_config.{key}", attn[key])
    for key, neutral in {
        "no_bias": (True,),
        "logit_scale": (None,),
        "expansion_ratio": (4,),
    }.items():
        if key in hf and hf[key] not in neutral:
            raise _refuse(key, hf[key])
    d_model, n_heads = hf["d_model"], hf["n_heads"]
    fields: dict[str, Any] = dict(
        d_model=d_model,
        n_layers=hf["n_layers"],
        n_heads=n_heads,
        d_mlp=4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=hf.get("max_seq_len", 2048),
        act_fn="gelu",
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="alibi",
        clip_qkv=attn.get("clip_qkv"),
        tie_word_embeddings=True,
    )
    if attn.get("softmax_scale"):
        fields["attn_scale"] = 1.0 / attn["softmax_scale"]
    return fields


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "transformer.wte.weight") | norm("ln_final", "transformer.norm_f")
    d = cfg.d_model
    for ours, h in layers(cfg, "transformer.blocks"):
        m |= norms(ours, f"{h}.norm_1", f"{h}.norm_2")
        m |= fused_qkv(f"{ours}.attn", f"{h}.attn.Wqkv", (d, d, d), bias=False)
        m |= attention_out(f"{ours}.attn", f"{h}.attn.out_proj", bias=False)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.ffn.up_proj", f"{h}.ffn.down_proj", bias=False)
    return m


FAMILY = Family(
    "mpt",
    ("MptForCausalLM",),
    config_from_hf,
    weight_map,
    frozenset(
        {
            "attn_config",
            "d_model",
            "expansion_ratio",
            "layer_norm_epsilon",
            "logit_scale",
            "max_seq_len",
            "n_heads",
            "n_layers",
            "no_bias",
            "tie_word_embeddings",
            "vocab_size",
        }
    ),
    # settings of the original training code that change nothing transformers computes
    frozenset({"embedding_fraction", "init_device", "learned_pos_emb", "norm_type"}),
)
