"""Falcon with rotary positions (`FalconForCausalLM`: Falcon-7B, -40B, -180B, Falcon2-11B).

- Falcon-7B: multi-query attention (one key/value head) with q, k and v fused in
  `query_key_value` as row blocks `[q | k | v]`, a parallel block reading one `input_layernorm`.
- The "new decoder architecture" (40B, 180B, 11B): `num_kv_heads` key/value heads, the fused
  rows grouped per key/value head `[group, (q_1 .. q_G | k | v), d_head]` (`GroupedQKV`), and
  two norms, `ln_attn` and `ln_mlp`, for the parallel branches (one with
  `num_ln_in_parallel_attn=1`).
- Otherwise (`multi_query=False`): q, k and v fused per head as GPT-NeoX does; a sequential block
  when `parallel_attn=False`.
LayerNorms with bias, a plain MLP `dense_h_to_4h` / `dense_4h_to_h` (GELU by default), biases
everywhere with `bias=True`, tied embeddings by default. Falcon-RW's ALiBi (`alibi=True`, scaled
with the scores) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import DECODER_KEYS, ROPE_KEYS, Family, WeightMap, rope_settings
from lmscope.loading.pieces import (
    ATTENTION,
    attention_out,
    embeddings,
    fused_qkv,
    fused_qkv_per_head,
    layers,
    linear_mlp,
    norm,
    norms,
)
from lmscope.loading.transforms import Shape, Transform


@dataclass(frozen=True)
class GroupedQKV(Transform):
    """q, k or v (`part` 0, 1, 2) of Falcon's grouped fused projection, whose rows are laid out
    [kv_head, (q_1 .. q_group | k | v), d_head] (a weight [rows, d_model] or a bias [rows]): the
    parts interleave, so this copies, and inverts by scattering the rows back."""

    n_kv: int
    group: int
    part: int

    def _slots(self, w: Tensor) -> Tensor:
        grouped = w.view(self.n_kv, self.group + 2, -1, *w.shape[1:])
        if self.part == 0:
            return grouped[:, : self.group]
        return grouped[:, self.group + self.part - 1]

    def __call__(self, w: Tensor) -> Tensor:
        return self._slots(w).reshape(-1, *w.shape[1:])

    def source_shapes(self, shape: Shape) -> list[Shape]:
        heads = self.n_kv * self.group if self.part == 0 else self.n_kv
        d_head = shape[0] // heads
        return [(self.n_kv * (self.group + 2) * d_head, *shape[1:])]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        slots = self._slots(out)
        slots.copy_(value.reshape(slots.shape))


def _new_arch(hf: dict[str, Any]) -> bool:
    return bool(hf.get("new_decoder_architecture", False))


def config_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    if hf.get("alibi"):
        raise NotImplementedError(
            "Falcon with alibi=True (Falcon-RW: ALiBi scaled together with the scores) is not "
            "supported by lmscope; the rotary Falcons load"
        )
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if _new_arch(hf):
        n_kv = hf.get("num_kv_heads") or n_heads
    else:
        n_kv = 1 if hf.get("multi_query", True) else n_heads
    rope = rope_settings(hf)
    parallel = bool(hf.get("parallel_attn", True)) or _new_arch(hf)
    return dict(
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_key_value_heads=n_kv,
        d_mlp=hf.get("ffn_hidden_size") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        n_ctx=rope["n_ctx"],
        act_fn=hf.get("activation", "gelu"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="rotary",
        rotary_base=rope["rotary_base"],
        rope_scaling=rope["rope_scaling"],
        parallel_attn_mlp=parallel,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    bias = bool(hf.get("bias", False))
    nh, nkv, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    m = embeddings(cfg, "transformer.word_embeddings.weight")
    m |= norm("ln_final", "transformer.ln_f", bias=True)
    for ours, h in layers(cfg, "transformer.h"):
        if _new_arch(hf) and (hf.get("num_ln_in_parallel_attn") or 2) == 2:
            m |= norms(ours, f"{h}.ln_attn", f"{h}.ln_mlp", bias=True)
        elif cfg.parallel_attn_mlp:
            m |= norms(ours, f"{h}.input_layernorm", f"{h}.input_layernorm", bias=True)
        else:
            m |= norms(ours, f"{h}.input_layernorm", f"{h}.post_attention_layernorm", bias=True)
        attn, qkv = f"{ours}.attn", f"{h}.self_attention.query_key_value"
        if _new_arch(hf):
            for index, part in enumerate("qkv"):
                weight, bias_name = ATTENTION[part]
                rewrite = GroupedQKV(nkv, nh // nkv, index)
                m[f"{attn}.{weight}"] = (rewrite, f"{qkv}.weight")
                if bias:
                    m[f"{attn}.{bias_name}"] = (rewrite, f"{qkv}.bias")
        elif nkv == 1:  # multi-query: [q | k | v] rows
            m |= fused_qkv(attn, qkv, (nh * dh, dh, dh), bias=bias)
        else:
            m |= fused_qkv_per_head(attn, qkv, nh, bias=bias)
        m |= attention_out(attn, f"{h}.self_attention.dense", bias=bias)
        mlp = f"{h}.mlp"
        m |= linear_mlp(f"{ours}.mlp", f"{mlp}.dense_h_to_4h", f"{mlp}.dense_4h_to_h", bias=bias)
    return m


FAMILY = Family(
    "falcon",
    ("FalconForCausalLM",),
    config_from_hf,
    weight_map,
    DECODER_KEYS
    | ROPE_KEYS
    | {
        "activation",
        "alibi",
        "bias",
        "ffn_hidden_size",
        "layer_norm_epsilon",
        "multi_query",
        "new_decoder_architecture",
        "num_kv_heads",
        "num_ln_in_parallel_attn",
        "parallel_attn",
    },
)
