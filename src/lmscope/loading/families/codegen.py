"""CodeGen: a GPT-J-like parallel block (one shared `ln_1`), partial rotary on adjacent pairs, and
one fused `qkv_proj` in its model-parallel layout: the output rows form `mp_num = 4` chunks, each
holding [q | v | k] (in that order) for a quarter of the model width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, gptj
from lmscope.loading.pieces import (
    ATTENTION,
    attention_out,
    embeddings,
    layers,
    linear_mlp,
    norm,
    norms,
)
from lmscope.loading.transforms import Shape, Transform

MP_NUM = 4  # fixed in transformers' CodeGenAttention
_CHUNK = {"Q": 0, "V": 1, "K": 2}  # order inside each model-parallel chunk


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """GPT-J's configuration; CodeGen only adds the constraint of its fused qkv layout."""
    if hf["n_embd"] % MP_NUM:
        raise ValueError(f"CodeGen's fused qkv_proj needs n_embd divisible by {MP_NUM}")
    return gptj.config_from_hf(hf)


@dataclass(frozen=True)
class QKVPart(Transform):
    """qkv_proj.weight [3 d_model, d_model] -> q, k or v [d_model, d_model] (`which` is "Q", "K"
    or "V"). Gathering the part's rows from the four chunks copies, so the inverse scatters them
    back itself."""

    which: str

    def _rows(self, w: Tensor) -> Tensor:
        """The part's rows of each chunk, as a view: [MP_NUM, d_model / MP_NUM, d_model]."""
        d_model = w.shape[-1]
        return w.reshape(MP_NUM, 3, d_model // MP_NUM, d_model)[:, _CHUNK[self.which]]

    def __call__(self, w: Tensor) -> Tensor:
        d_model = w.shape[-1]
        return self._rows(w).reshape(d_model, d_model)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        _, d_model = shape
        return [(3 * d_model, d_model)]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        rows = self._rows(out)
        rows.copy_(value.reshape(rows.shape))


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """GPT-J's layout, except that q, k and v come fused in `qkv_proj`'s model-parallel chunks."""
    m = embeddings(cfg, "transformer.wte.weight", head_bias="lm_head.bias")
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        m |= norms(ours, f"{h}.ln_1", f"{h}.ln_1", bias=True)  # one shared LayerNorm, as in GPT-J
        for which in "QKV":
            weight = ATTENTION[which.lower()][0]
            m[f"{ours}.attn.{weight}"] = (QKVPart(which), f"{h}.attn.qkv_proj.weight")
        m |= attention_out(f"{ours}.attn", f"{h}.attn.out_proj", bias=False)
        m |= linear_mlp(f"{ours}.mlp", f"{h}.mlp.fc_in", f"{h}.mlp.fc_out")
    return m


# n_ctx: a CodeGenConfig size that transformers' CodeGen model never reads (n_positions counts)
FAMILY = Family(
    "codegen",
    ("CodeGenForCausalLM",),
    config_from_hf,
    weight_map,
    gptj.CONFIG_KEYS,
    frozenset({"n_ctx"}),
)
