"""Qwen3.5 text (Qwen3_5ForCausalLM) and Qwen3.5-MoE text (Qwen3_5MoeForCausalLM): gated
delta-net linear attention mixed with gated softmax attention. The tiny checkpoints are the
conformance suite's (tests/_families.py's `qwen3_5` and `qwen3_5_moe` specs: two linear layers
around one attention layer, 2 key heads serving 4 value heads, a 3-tap convolution, GQA with
biases, partial rotary, (1 + w) norms perturbed, 70-token batches past the delta rule's
64-position chunk), which checks logits, residuals, processing, padding, KV-cached decoding and
greedy tokens against transformers' eager path (its torch fallback of the delta rule). Here: the
Qwen3.5-specific config, the recurrent layers' hooks and weights, the recurrent cache (its state,
a frozen cache, a state edit reaching later steps) and the refusal of unknown layer types.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from lmscope.loading.families import family_for
from tests._families import QWEN3_5_SEQ as LONG
from tests._families import qwen3_5_config
from tests._tiny import D_VOCAB as VOCAB
from tests._tiny import TinyModel

ATOL = 1e-5


@pytest.fixture(scope="module", params=["qwen3_5", "qwen3_5_moe"])
def tiny(request: pytest.FixtureRequest, tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family(request.param)


@pytest.fixture(scope="module")
def model(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, LONG), generator=torch.Generator().manual_seed(1))


def test_config(tiny: TinyModel, model: HookedTransformer) -> None:
    cfg = model.cfg
    moe = tiny.name == "qwen3_5_moe"
    assert (cfg.num_experts, cfg.experts_per_token) == ((5, 2) if moe else (None, None))
    if moe:
        assert (cfg.d_mlp, cfg.shared_expert_d_mlp, cfg.norm_topk_prob) == (12, 20, True)
    assert cfg.layer_types == ["linear", "global", "linear"]
    assert (cfg.rotary_dim, cfg.attn_output_gate, cfg.use_qk_norm) == (4, True, True)
    assert (cfg.linear_n_key_heads, cfg.linear_n_value_heads) == (2, 4)
    assert (cfg.linear_d_key, cfg.linear_d_value, cfg.linear_conv_size) == (6, 10, 3)
    assert hasattr(model.blocks[0], "linear_attn") and not hasattr(model.blocks[0], "attn")


@torch.no_grad()
def test_kv_cache_keeps_a_recurrent_state(model: HookedTransformer, tokens) -> None:
    """A linear layer's cache entry is its state after the call's positions (cached decoding
    equals uncached in the conformance suite); a frozen cache continues every call from it."""
    cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2, capacity=LONG)
    model(tokens, past_kv_cache=cache)
    state = cache.entries[0].read(LONG)[1]
    assert state.shape == (2, 4, 6, 10)
    # a frozen cache continues every call from the same state
    cache.freeze()
    again = [model(tokens[:, :1], past_kv_cache=cache) for _ in range(2)]
    torch.testing.assert_close(again[0], again[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="linear-attention state after 3 positions"):
        cache.entries[0].read(3)


@torch.no_grad()
def test_recurrent_hooks_fire_with_documented_shapes(model: HookedTransformer) -> None:
    tokens = torch.arange(3, 12)[None].repeat(2, 1)  # [2, 9]
    _, cache = model.run_with_cache(tokens)
    shapes = {
        "blocks.0.linear_attn.hook_q": (2, 9, 2, 6),
        "blocks.0.linear_attn.hook_k": (2, 9, 2, 6),
        "blocks.0.linear_attn.hook_v": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_beta": (2, 9, 4),
        "blocks.0.linear_attn.hook_g": (2, 9, 4),
        "blocks.0.linear_attn.hook_readout": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_gate": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_z": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_state": (2, 4, 6, 10),
        "blocks.0.hook_attn_out": (2, 9, 40),
        "blocks.1.attn.hook_gate": (2, 9, 4, 16),
        "blocks.1.attn.hook_z": (2, 9, 4, 16),
    }
    assert {name: tuple(cache[name].shape) for name in shapes} == shapes
    assert not any(name.startswith("blocks.0.attn.") for name in cache.keys())
    g, beta = cache["blocks.0.linear_attn.hook_g"], cache["blocks.0.linear_attn.hook_beta"]
    assert (g <= 0).all() and ((beta > 0) & (beta < 1)).all()
    # hook_z is what W_O reads: the layer's output is z @ W_O
    la = model.blocks[0].linear_attn
    out = torch.einsum("bphd,hdm->bpm", cache["blocks.0.linear_attn.hook_z"], la.W_O)
    torch.testing.assert_close(out, cache["blocks.0.hook_attn_out"], atol=ATOL, rtol=0)
    weights = model.named_weights()
    assert weights["blocks.0.linear_attn.W_V"].shape == (4, 40, 10)
    assert weights["blocks.1.attn.W_gate"].shape == (4, 40, 16)
    with pytest.raises(AttributeError, match="linear-attention layers"):
        _ = model.W_Q


@torch.no_grad()
def test_cached_state_edit_reaches_later_steps(model: HookedTransformer, tokens) -> None:
    def run(edit: bool) -> torch.Tensor:
        cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2, capacity=LONG)
        hooks = [("blocks.0.linear_attn.hook_state", lambda s, hook: s * 0)] if edit else []
        with model.hooks(fwd_hooks=hooks):
            model(tokens[:, :8], past_kv_cache=cache)
        return model(tokens[:, 8:9], past_kv_cache=cache)

    assert not torch.allclose(run(True), run(False), atol=1e-3)


def test_unknown_layer_type_is_refused() -> None:
    hf = {
        **qwen3_5_config().to_dict(),
        "architectures": ["Qwen3_5ForCausalLM"],
        "layer_types": ["linear_attention", "mamba", "full_attention"],
    }
    with pytest.raises(NotImplementedError, match="layer_types holds \\['mamba'\\]"):
        family_for(hf).config_from_hf(hf)
