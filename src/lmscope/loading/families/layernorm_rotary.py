"""Rotary decoders with LayerNorms (bias and all): StarCoder2, Nemotron and Persimmon / Fuyu's
language model.

- StarCoder2 (`Starcoder2ForCausalLM`): LayerNorm (`norm_epsilon`), every projection biased with
  `use_bias`, a plain GELU-tanh MLP `c_fc` / `c_proj`, GQA, an optional sliding window on every
  layer.
- Nemotron (`NemotronForCausalLM`, Nemotron-3/4, Minitron): LayerNorm1P, which applies
  `1 + weight` (loaded as an ordinary weight, `PlusOne`: transformers rounds `weight + 1` to the
  model's dtype too) and a bias; partial rotary (half of each
  head by default); a plain squared-ReLU MLP `up_proj` / `down_proj`.
- Persimmon (`PersimmonForCausalLM`): q, k and v fused per head in `query_key_value` (rows
  [head, (q|k|v), d_head], as GPT-NeoX), a LayerNorm with bias over each head's queries and keys
  (`qk_layernorm`), partial rotary (half), a squared-ReLU MLP `dense_h_to_4h` / `dense_4h_to_h`.
"""

from __future__ import annotations

from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import (
    DECODER_KEYS,
    PARTIAL_ROTARY_KEYS,
    ROPE_KEYS,
    Family,
    WeightMap,
    rope_settings,
)
from lmscope.loading.pieces import (
    attention_out,
    embeddings,
    fused_qkv_per_head,
    layers,
    linear_mlp,
    llama_attention,
    norm,
    norms,
)
from lmscope.loading.transforms import PlusOne

# LayerNorm1P's `1 + weight`, rounded to the model's dtype as transformers does
plus_one = PlusOne()


def _common(hf: dict[str, Any], fraction: float, eps_key: str) -> dict[str, Any]:
    n_heads = hf["num_attention_heads"]
    d_head = hf.get("head_dim") or hf["hidden_size"] // n_heads
    rope = rope_settings(hf)
    params = hf.get("rope_parameters") or {}
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", fraction))
    return dict(
        d_model=hf["hidden_size"],
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        n_ctx=rope["n_ctx"],
        normalization_type="LN",
        eps=hf.get(eps_key, 1e-5),
        positional_embedding_type="rotary",
        rotary_dim=int(d_head * fraction),
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
    )


def starcoder2_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf, 1.0, "norm_epsilon")
    fields["n_key_value_heads"] = hf.get("num_key_value_heads") or fields["n_heads"]
    window = hf.get("sliding_window")
    fields.update(
        act_fn=hf.get("hidden_act", "gelu_pytorch_tanh"),
        window_size=window if window and window < fields["n_ctx"] else None,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )
    return fields


def nemotron_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf, 0.5, "norm_eps")
    fields["n_key_value_heads"] = hf.get("num_key_value_heads") or fields["n_heads"]
    return {**fields, "act_fn": hf.get("hidden_act", "relu2")}


def persimmon_config(hf: dict[str, Any]) -> dict[str, Any]:
    fields = _common(hf, 0.5, "layer_norm_eps")
    fields["act_fn"] = hf.get("hidden_act", "relu2")
    if hf.get("qk_layernorm", True):
        fields.update(use_qk_norm=True, qk_norm_type="LN")
    return fields


def starcoder2_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("use_bias", True))
    m = embeddings(cfg, "model.embed_tokens.weight") | norm("ln_final", "model.norm", bias=True)
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm", bias=True)
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.c_fc", f"{h}.mlp.c_proj", bias=bias)
    return m


def nemotron_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "model.embed_tokens.weight")
    m |= norm("ln_final", "model.norm", bias=True, transform=plus_one)
    bias, mlp_bias = bool(hf.get("attention_bias")), bool(hf.get("mlp_bias"))
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(
            ours,
            f"{h}.input_layernorm",
            f"{h}.post_attention_layernorm",
            bias=True,
            transform=plus_one,
        )
        m |= llama_attention(f"{ours}.attn", f"{h}.self_attn", qkv_bias=bias, o_bias=bias)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.up_proj", f"{h}.mlp.down_proj", bias=mlp_bias)
    return m


def persimmon_weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    m = embeddings(cfg, "model.embed_tokens.weight")
    m |= norm("ln_final", "model.final_layernorm", bias=True)
    for ours, h in layers(cfg, "model.layers"):
        m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm", bias=True)
        attn = f"{h}.self_attn"
        m |= fused_qkv_per_head(f"{ours}.attn", f"{attn}.query_key_value", cfg.n_heads)
        m |= attention_out(f"{ours}.attn", f"{attn}.dense")
        if cfg.use_qk_norm:
            m |= norm(f"{ours}.attn.q_norm", f"{attn}.q_layernorm", bias=True)
            m |= norm(f"{ours}.attn.k_norm", f"{attn}.k_layernorm", bias=True)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.dense_h_to_4h", f"{h}.mlp.dense_4h_to_h")
    return m


_KEYS = DECODER_KEYS | ROPE_KEYS | PARTIAL_ROTARY_KEYS | {"head_dim", "hidden_act"}
FAMILIES = [
    Family(
        "starcoder2",
        ("Starcoder2ForCausalLM",),
        starcoder2_config,
        starcoder2_weight_map,
        _KEYS | {"norm_epsilon", "num_key_value_heads", "sliding_window", "use_bias"},
    ),
    Family(
        "nemotron",
        ("NemotronForCausalLM",),
        nemotron_config,
        nemotron_weight_map,
        _KEYS | {"attention_bias", "mlp_bias", "norm_eps", "num_key_value_heads"},
    ),
    Family(
        "persimmon",
        ("PersimmonForCausalLM",),
        persimmon_config,
        persimmon_weight_map,
        _KEYS | {"layer_norm_eps", "qk_layernorm"},
    ),
]
