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
from lmscope.loading.families import Family, WeightMap
from lmscope.loading.pieces import attention, embeddings, layers, linear_mlp, norm, norms
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
    """A narrow embedding and its projection multiplied into one matrix [d_vocab, d_model]:
    W_E = embed_tokens @ project_in^T, or (`output`) the unembedding lm_head @ project_out. The
    two factors cannot be recovered from their product, so this has no inverse."""

    invertible = False
    output: bool = False

    def __call__(self, embedding: Tensor, projection: Tensor) -> Tensor:
        return embedding @ (projection if self.output else projection.T)


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Positions start at row POSITION_OFFSET of `embed_positions` (export leaves the rows
    before it zero: HF never reads them for an unpadded position); narrow word embeddings are
    multiplied by their projections (`Projected`)."""
    d = "model.decoder"
    offset = POSITION_OFFSET
    positions = Part(0, offset, offset + cfg.n_ctx, offset + cfg.n_ctx)
    m = embeddings(
        cfg, f"{d}.embed_tokens.weight", positions=(positions, f"{d}.embed_positions.weight")
    )
    if (hf.get("word_embed_proj_dim") or cfg.d_model) != cfg.d_model:
        m["embed.W_E"] = (Projected(), f"{d}.embed_tokens.weight", f"{d}.project_in.weight")
        head = (Projected(output=True), m["unembed.weight"], f"{d}.project_out.weight")
        m["unembed.weight"] = head
    affine = hf.get("layer_norm_elementwise_affine", True)
    bias = hf.get("enable_bias", True)
    if affine and cfg.norm_placement == "pre":
        m |= norm("ln_final", f"{d}.final_layer_norm", bias=True)
    for ours, h in layers(cfg, f"{d}.layers"):
        if affine:
            m |= norms(ours, f"{h}.self_attn_layer_norm", f"{h}.final_layer_norm", bias=True)
        a = f"{h}.self_attn"
        qkv = (f"{a}.{p}_proj" for p in "qkv")
        m |= attention(f"{ours}.attn", *qkv, f"{a}.out_proj", qkv_bias=bias, o_bias=bias)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.fc1", f"{h}.fc2", bias=bias)
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
