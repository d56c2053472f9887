"""Qwen3-Next checks beyond the conformance suite's (tests/_families.py's `qwen3_next` spec:
Qwen3.5's hybrid layers with fused per-key-head projections, experts with a dense layer): the
fused layout read as transformers splits it, export bit for bit, the config's switches, and the
cached decode against transformers' own cached decode."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from tests._families import QWEN3_5_SEQ
from tests._tiny import D_VOCAB, TinyModel, hf_chunked_logits, recurrent_cached_atol

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("qwen3_next")


@pytest.fixture(scope="module")
def model(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


def test_config_reads_the_experts_and_the_dense_layer(model: HookedTransformer) -> None:
    cfg = model.cfg
    assert cfg.layer_types == ["linear", "global", "linear"]
    assert (cfg.num_experts, cfg.experts_per_token, cfg.d_mlp) == (5, 2, 12)
    assert not cfg.norm_topk_prob and cfg.shared_expert_d_mlp == 20
    assert cfg.mlp_types == ["moe", "dense", "moe"] and cfg.dense_d_mlp == 56


@torch.no_grad()
def test_fused_projections_split_as_transformers_splits_them(
    tiny: TinyModel, model: HookedTransformer
) -> None:
    """q, k, v, z, b, a of transformers' `fix_query_key_value_ordering` are x times our
    `qkv_weight` ([q | k | v]), `gate_weight`, `beta_weight`, `alpha_weight`."""
    hf = tiny.hf_model.model.layers[0].linear_attn
    ours = model.blocks[0].linear_attn
    x = torch.randn(2, 5, model.cfg.d_model)
    q, k, v, z, b, a = hf.fix_query_key_value_ordering(hf.in_proj_qkvz(x), hf.in_proj_ba(x))
    qkv = torch.cat([t.flatten(2) for t in (q, k, v)], dim=-1)
    for theirs, weight in (
        (qkv, ours.qkv_weight),
        (z.flatten(2), ours.gate_weight),
        (b, ours.beta_weight),
        (a, ours.alpha_weight),
    ):
        torch.testing.assert_close(x @ weight.T, theirs, atol=1e-6, rtol=0)


@torch.no_grad()
def test_checkpoint_exports_bit_exact(tiny: TinyModel, tmp_path: Path) -> None:
    """The fused projections' parts scatter back into the same in_proj_qkvz / in_proj_ba, and
    every other tensor the checkpoint holds is written back unchanged."""
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    model.save_pretrained(tmp_path)
    with (
        safe_open(tiny.path / "model.safetensors", framework="pt") as before,
        safe_open(tmp_path / "model.safetensors", framework="pt") as after,
    ):
        assert set(after.keys()) == set(before.keys())
        for name in before.keys():
            assert torch.equal(after.get_tensor(name), before.get_tensor(name)), name


@torch.no_grad()
def test_cached_decode_matches_transformers_cached_decode(
    tiny: TinyModel, model: HookedTransformer
) -> None:
    """A prompt chunk, single tokens, then a chunk through each library's cache: the same
    logits, to 1e-5 or 1.5 x transformers' own cached-vs-uncached gap on these tokens
    (`recurrent_cached_atol`: the gated delta-net amplifies 1-ulp differences)."""
    p = QWEN3_5_SEQ  # past the delta rule's 64-position chunk
    tokens = torch.randint(3, D_VOCAB, (2, p), generator=torch.Generator().manual_seed(1))
    bounds = [0, 7, *range(8, 17), 30, p]
    cache = KVCache.init_cache(model.cfg, batch_size=2, capacity=p)
    ours = torch.cat([model(tokens[:, a:b], past_kv_cache=cache) for a, b in pairwise(bounds)], 1)
    theirs = hf_chunked_logits(tiny.hf_model, tokens, bounds)
    atol, why = recurrent_cached_atol(tiny.hf_model, tokens, bounds, ATOL)
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0, msg=lambda m: f"{m}\natol: {why}")
