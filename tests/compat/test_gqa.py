"""Grouped-query attention with `ungroup_grouped_query_attention`, as TransformerLens lays it out:
W_K, W_V, b_K, b_V and hook_k / hook_v get one entry per query head (query head h reads key/value
head h // n_groups: repeat_interleave), so per-head einsums against W_K / W_V work."""

from __future__ import annotations

import einops
import pytest
import torch

from lmscope import HookedTransformer
from lmscope.analysis import patching as P
from tests._tiny import TinyModel
from tests._unchecked import unchecked


@pytest.fixture
def tiny(tiny_llama_tied_bias: TinyModel) -> TinyModel:
    return tiny_llama_tied_bias  # 4 query heads, 2 kv heads, attention biases


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(2))


def test_weights_and_hooks_have_n_heads_when_ungrouped(tiny: TinyModel, tokens) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    cfg, attn = model.cfg, model.blocks[0].attn
    grouped_logits, grouped = model.run_with_cache(tokens)
    assert attn.W_K.shape == (cfg.n_key_value_heads, cfg.d_model, cfg.d_head)  # documented
    model.set_ungroup_grouped_query_attention(True)
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, grouped_logits, atol=1e-5, rtol=1e-5)
    g = cfg.n_groups
    for name, shape in (("W_K", (cfg.d_model, cfg.d_head)), ("b_V", (cfg.d_head,))):
        ungrouped, stored = getattr(attn, name), getattr(attn, f"_{name}")
        assert ungrouped.shape == (cfg.n_heads, *shape) and stored.shape[0] == cfg.n_key_value_heads
        for h in range(cfg.n_heads):  # TransformerLens's repeat_interleave layout
            assert torch.equal(ungrouped[h], stored[h // g])
    assert model.W_V.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert model.b_K.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head)
    for kind in ("k", "v"):
        got = cache[kind, 1]
        assert got.shape == (*tokens.shape, cfg.n_heads, cfg.d_head)
        assert torch.equal(got, grouped[kind, 1].repeat_interleave(g, dim=2))
    # a per-head einsum against W_K gives hook_k (layer 0 has no rotary before hook_k)
    x = cache["blocks.1.ln1.hook_normalized"] * model.blocks[1].ln1.w
    k = einops.einsum(x, model.W_K[1], "b p dm, h dm dh -> b p h dh") + model.b_K[1]
    torch.testing.assert_close(k, cache["k", 1], atol=1e-5, rtol=1e-5)
    model.set_ungroup_grouped_query_attention(False)
    assert model.W_K.shape[1] == cfg.n_key_value_heads


def test_grouped_views_edit_the_model_and_processing_keeps_them(tiny: TinyModel, tokens) -> None:
    """Loading, folding and editing write the stored kv-head weights, never a repeated copy."""
    plain = HookedTransformer.from_pretrained(tiny.path)
    ungrouped = HookedTransformer.from_pretrained(tiny.path, ungroup_grouped_query_attention=True)
    torch.testing.assert_close(ungrouped(tokens), plain(tokens), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ungrouped.blocks[0].attn._W_V[1] = 0.0
        ungrouped.blocks[0].attn._b_V[1] = 0.0
    _, cache = ungrouped.run_with_cache(tokens, names_filter="blocks.0.attn.hook_v")
    v = cache["blocks.0.attn.hook_v"]
    assert v[:, :, 2:].abs().sum() == 0 and v[:, :, :2].abs().sum() > 0  # heads 2, 3 read kv 1


def test_split_qkv_input_when_ungrouped(tiny: TinyModel, tokens) -> None:
    """hook_k_input / hook_v_input get one copy per query head, as in TransformerLens."""
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    reference = model(tokens)
    model.set_ungroup_grouped_query_attention(True)
    model.set_use_split_qkv_input(True)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("_input"))
    assert cache["blocks.0.hook_k_input"].shape[2] == model.cfg.n_heads
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=1e-5)


def test_patching_kv_axes(tiny: TinyModel, tokens) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    clean, corrupted = tokens[:1], tokens[1:]
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, 3] - logits[0, -1, 5]

    args = (model, corrupted, clean_cache, metric)
    grouped = P.get_act_patch_attn_head_k_all_pos(*args)
    assert grouped.shape == (model.cfg.n_layers, model.cfg.n_key_value_heads)
    with unchecked(), pytest.raises(ValueError, match="kv_layout must be 'pad' or 'repeat'"):
        P.get_act_patch_attn_head_all_pos_every(*args, kv_layout="tile")
    model.set_ungroup_grouped_query_attention(True)
    _, clean_cache = model.run_with_cache(clean)
    args = (model, corrupted, clean_cache, metric)
    per_head = P.get_act_patch_attn_head_k_all_pos(*args)
    assert per_head.shape == (model.cfg.n_layers, model.cfg.n_heads)
    every = P.get_act_patch_attn_head_all_pos_every(*args)
    torch.testing.assert_close(every[2], per_head, atol=0, rtol=0)
