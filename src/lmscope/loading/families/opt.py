"""OPT: learned positions stored with an offset of 2 (row p + 2 of `embed_positions` is position
p), ReLU MLP, pre-LayerNorm blocks, except with `do_layer_norm_before=False` (opt-350m): post-LN
blocks (`norm_placement="post_residual"`, no final norm). Checkpoints whose word embeddings are
narrower than the model (`word_embed_proj_dim != hidden_size`, opt-350m) have `project_in` /
`project_out` matrices; they are folded into W_E and W_U (linear maps on the way in and out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, heads_bias, heads_in, heads_out, transpose
from lmscope.loading.transforms import Part, Transform

POSITION_OFFSET = 2  # OPTLearnedPositionalEmbedding.offset


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    pre_ln = hf.get("do_layer_norm_before", True)
    if pre_ln and hf.get("_remove_final_layer_norm"):
        raise NotImplementedError(
            "OPT with _remove_final_layer_norm=True (pre-LN blocks without a final norm) is not supported"
        )
    d_model = hf["hidden_size"]
    return dict(
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"],
        d_mlp=hf["ffn_dim"],
        d_vocab=hf["vocab_size"],
        n_ctx=hf["max_position_embeddings"],
        act_fn=hf.get("activation_function", "relu"),
        normalization_type="LN",
        eps=1e-5,  # nn.LayerNorm's default; OPT's config has no epsilon
        positional_embedding_type="standard",
        # do_layer_norm_before=False (opt-350m): post-LN blocks, and no final norm
        norm_placement="pre" if pre_ln else "post_residual",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


@dataclass(frozen=True)
class Projected(Transform):
    """A narrow embedding and its projection multiplied into one matrix: W_E = embed_tokens @
    project_in^T [d_vocab, d_model], or (`output`) W_U = (lm_head @ project_out)^T. The two
    factors cannot be recovered from their product, so this has no inverse."""

    invertible = False
    output: bool = False

    def __call__(self, embedding: Tensor, projection: Tensor) -> Tensor:
        if self.output:
            return (embedding @ projection).T
        return embedding @ projection.T


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh = cfg.n_heads
    d = "model.decoder."
    lm_head = f"{d}embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    projected = (hf.get("word_embed_proj_dim") or cfg.d_model) != cfg.d_model
    # the rows from POSITION_OFFSET on; export leaves the first rows zero (HF never reads them
    # for an unpadded position)
    positions = Part(0, POSITION_OFFSET, POSITION_OFFSET + cfg.n_ctx, POSITION_OFFSET + cfg.n_ctx)
    m: WeightMap = {
        "pos_embed.W_pos": (positions, f"{d}embed_positions.weight"),
    }
    if projected:
        m["embed.W_E"] = (Projected(), f"{d}embed_tokens.weight", f"{d}project_in.weight")
        m["unembed.W_U"] = (Projected(output=True), lm_head, f"{d}project_out.weight")
    else:
        m["embed.W_E"] = f"{d}embed_tokens.weight"
        m["unembed.W_U"] = (transpose, lm_head)
    affine = hf.get("layer_norm_elementwise_affine", True)
    bias = hf.get("enable_bias", True)
    if affine and cfg.norm_placement == "pre":
        m["ln_final.w"] = f"{d}final_layer_norm.weight"
        m["ln_final.b"] = f"{d}final_layer_norm.bias"
    for layer in range(cfg.n_layers):
        h, b = f"{d}layers.{layer}.", f"blocks.{layer}."
        if affine:
            for ours, theirs in (("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")):
                m[f"{b}{ours}.w"] = f"{h}{theirs}.weight"
                m[f"{b}{ours}.b"] = f"{h}{theirs}.bias"
        for name in "QKV":
            proj = f"{h}self_attn.{name.lower()}_proj."
            m[f"{b}attn.W_{name}"] = (heads_in(nh), f"{proj}weight")
            if bias:
                m[f"{b}attn.b_{name}"] = (heads_bias(nh), f"{proj}bias")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}self_attn.out_proj.weight")
        m[f"{b}mlp.W_in"] = (transpose, f"{h}fc1.weight")
        m[f"{b}mlp.W_out"] = (transpose, f"{h}fc2.weight")
        if bias:
            m[f"{b}attn.b_O"] = f"{h}self_attn.out_proj.bias"
            m[f"{b}mlp.b_in"] = f"{h}fc1.bias"
            m[f"{b}mlp.b_out"] = f"{h}fc2.bias"
    return m


CONFIG_KEYS = frozenset(
    {
        "_remove_final_layer_norm",
        "activation_function",
        "do_layer_norm_before",
        "enable_bias",
        "ffn_dim",
        "hidden_size",
        "layer_norm_elementwise_affine",
        "max_position_embeddings",
        "num_attention_heads",
        "num_hidden_layers",
        "tie_word_embeddings",
        "vocab_size",
        "word_embed_proj_dim",
    }
)
FAMILY = Family("opt", ("OPTForCausalLM",), config_from_hf, weight_map, CONFIG_KEYS)
