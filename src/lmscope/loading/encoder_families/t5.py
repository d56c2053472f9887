"""T5 (T5ForConditionalGeneration): pre-RMSNorm encoder and decoder, relative position buckets
from the first layer of each stack, no attention scaling, no biases.

- `feed_forward_proj`: "relu" (T5 1.0: wi, wo) or "gated-gelu" (T5 1.1, flan-T5: wi_0 is the gate
  through gelu_new, wi_1 the linear half), or any "gated-<act>" / "<act>" lmscope has.
- The unembedding is `lm_head.weight` when the checkpoint has its own (T5 1.1 written by
  transformers 4), else the shared embedding; the decoder output is scaled by d_model**-0.5
  first when `scale_decoder_outputs` says so (default: `tie_word_embeddings`, true for T5 1.0).
"""

from __future__ import annotations

from typing import Any

from lmscope.loading.encoder_families import ENCODER_DECODER
from lmscope.loading.families import Family, WeightMap, heads_in, heads_out, transpose

MODEL = ENCODER_DECODER


def feed_forward(hf: dict[str, Any]) -> tuple[str, bool]:
    """(act_fn, gated) of a T5 config's `feed_forward_proj` ("relu", "gated-gelu", ...); as in
    transformers, "gated-gelu" means gelu_new (and `dense_act_fn` is derived from it)."""
    proj = hf.get("feed_forward_proj", "relu")
    parts = proj.split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"feed_forward_proj={proj!r} is not 'gated-<act>' or '<act>'")
    return ("gelu_new" if proj == "gated-gelu" else parts[-1]), gated


def t5_config(hf: dict[str, Any]) -> dict[str, Any]:
    act, gated = feed_forward(hf)
    tied = hf.get("tie_word_embeddings", True)
    scale = hf.get("scale_decoder_outputs", tied is not False)
    return dict(
        d_model=hf["d_model"],
        d_head=hf["d_kv"],
        n_heads=hf["num_heads"],
        d_mlp=hf["d_ff"],
        d_vocab=hf["vocab_size"],
        n_layers=hf["num_layers"],
        n_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        n_ctx=hf.get("n_positions") or 512,
        eps=hf.get("layer_norm_epsilon", 1e-6),
        act_fn=act,
        gated_mlp=gated,
        normalization_type="RMS",
        positional_embedding_type="relative_positional_bias",
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
        use_attn_scale=False,
        tie_word_embeddings=bool(tied),
        scale_decoder_outputs=bool(scale),
        has_mlm_head=False,
        has_pooler=False,
        has_nsp_head=False,
    )


def _attention(m: WeightMap, nh: int, ours: str, theirs: str) -> None:
    for name in "QKV":
        m[f"{ours}.W_{name}"] = (heads_in(nh), f"{theirs}.{name.lower()}.weight")
    m[f"{ours}.W_O"] = (heads_out(nh), f"{theirs}.o.weight")


def _mlp(m: WeightMap, gated: bool, ours: str, theirs: str) -> None:
    if gated:
        m[f"{ours}.W_gate"] = (transpose, f"{theirs}.wi_0.weight")
        m[f"{ours}.W_in"] = (transpose, f"{theirs}.wi_1.weight")
    else:
        m[f"{ours}.W_in"] = (transpose, f"{theirs}.wi.weight")
    m[f"{ours}.W_out"] = (transpose, f"{theirs}.wo.weight")


def t5_weight_map(cfg: Any, hf: dict[str, Any]) -> WeightMap:
    nh, gated = cfg.n_heads, cfg.gated_mlp
    m: WeightMap = {"embed.W_E": "shared.weight"}
    for stack, n in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        rel = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        m[f"{stack}.0.attn.rel_pos_bias.weight"] = rel
        for layer in range(n):
            h, b = f"{stack}.block.{layer}.layer.", f"{stack}.{layer}."
            _attention(m, nh, f"{b}attn", f"{h}0.SelfAttention")
            m[f"{b}ln1.w"] = f"{h}0.layer_norm.weight"
            if stack == "decoder":
                _attention(m, nh, f"{b}cross_attn", f"{h}1.EncDecAttention")
                m[f"{b}ln2.w"] = f"{h}1.layer_norm.weight"
                _mlp(m, gated, f"{b}mlp", f"{h}2.DenseReluDense")
                m[f"{b}ln3.w"] = f"{h}2.layer_norm.weight"
            else:
                _mlp(m, gated, f"{b}mlp", f"{h}1.DenseReluDense")
                m[f"{b}ln2.w"] = f"{h}1.layer_norm.weight"
        m[f"{stack}_final_ln.w"] = f"{stack}.final_layer_norm.weight"
    m["unembed.W_U"] = (transpose, "shared.weight" if cfg.tie_word_embeddings else "lm_head.weight")
    return m


_T5_KEYS = frozenset(
    {
        "d_ff",
        "d_kv",
        "d_model",
        "dense_act_fn",
        "feed_forward_proj",
        "is_gated_act",
        "layer_norm_epsilon",
        "n_positions",
        "num_decoder_layers",
        "num_heads",
        "num_layers",
        "relative_attention_max_distance",
        "relative_attention_num_buckets",
        "scale_decoder_outputs",
        "tie_word_embeddings",
        "vocab_size",
    }
)
# initializer_factor only scales the initialisation; classifier_dropout is a head's
_IGNORED = frozenset({"initializer_factor", "gradient_checkpointing"})

# family -> (its own output head, the embedding a tied model reads instead)
OUTPUT_HEADS = {"t5": ("lm_head.weight", "shared.weight")}
FAMILIES = [
    Family("t5", ("T5ForConditionalGeneration",), t5_config, t5_weight_map, _T5_KEYS, _IGNORED)
]
