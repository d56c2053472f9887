"""CodeGen: a GPT-J-like parallel block (one shared `ln_1`), partial rotary on adjacent pairs, and
one fused `qkv_proj` in its model-parallel layout: the output rows form `mp_num = 4` chunks, each
holding [q | v | k] (in that order) for a quarter of the model width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap, gptj, heads_in, heads_out, transpose
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
    """qkv_proj.weight [3 d_model, d_model] -> W_Q / W_K / W_V [n_heads, d_model, d_head]
    (`which` is "Q", "K" or "V"). Gathering the part's rows from the four chunks copies, so the
    inverse scatters them back itself."""

    which: str
    n_heads: int

    def _rows(self, w: Tensor) -> Tensor:
        """The part's rows of each chunk, as a view: [MP_NUM, d_model / MP_NUM, d_model]."""
        d_model = w.shape[-1]
        return w.reshape(MP_NUM, 3, d_model // MP_NUM, d_model)[:, _CHUNK[self.which]]

    def __call__(self, w: Tensor) -> Tensor:
        d_model = w.shape[-1]
        return heads_in(self.n_heads)(self._rows(w).reshape(d_model, d_model))

    def source_shapes(self, shape: Shape) -> list[Shape]:
        _, d_model, _ = shape
        return [(3 * d_model, d_model)]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        rows = self._rows(out)
        rows.copy_(value.transpose(1, 2).reshape(rows.shape))


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    nh = cfg.n_heads
    m: WeightMap = {
        "embed.W_E": "transformer.wte.weight",
        "ln_final.w": "transformer.ln_f.weight",
        "ln_final.b": "transformer.ln_f.bias",
        "unembed.W_U": (
            transpose,
            "transformer.wte.weight" if cfg.tie_word_embeddings else "lm_head.weight",
        ),
        "unembed.b_U": "lm_head.bias",
    }
    for layer in range(cfg.n_layers):
        h, b = f"transformer.h.{layer}.", f"blocks.{layer}."
        for ours in ("ln1", "ln2"):  # one shared LayerNorm, as in GPT-J
            m[f"{b}{ours}.w"] = f"{h}ln_1.weight"
            m[f"{b}{ours}.b"] = f"{h}ln_1.bias"
        for name in "QKV":
            m[f"{b}attn.W_{name}"] = (QKVPart(name, nh), f"{h}attn.qkv_proj.weight")
        m[f"{b}attn.W_O"] = (heads_out(nh), f"{h}attn.out_proj.weight")
        m[f"{b}mlp.W_in"] = (transpose, f"{h}mlp.fc_in.weight")
        m[f"{b}mlp.b_in"] = f"{h}mlp.fc_in.bias"
        m[f"{b}mlp.W_out"] = (transpose, f"{h}mlp.fc_out.weight")
        m[f"{b}mlp.b_out"] = f"{h}mlp.fc_out.bias"
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
