"""HookedTransformerConfig derived fields, and models built from a config alone (no checkpoint)."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.processing import process_weights


def _cfg(**kwargs) -> HookedTransformerConfig:
    base = dict(d_model=32, n_layers=2, n_ctx=16, d_vocab=50, n_heads=4, seed=0)
    base.update(kwargs)
    return HookedTransformerConfig(**base)


def test_derived_fields() -> None:
    cfg = _cfg(n_key_value_heads=2, positional_embedding_type="rotary")
    assert (cfg.d_head, cfg.d_mlp, cfg.d_vocab_out) == (8, 128, 50)
    assert cfg.n_groups == 2
    assert cfg.attn_scale == pytest.approx(8**0.5)
    assert cfg.rotary_dim == 8
    assert cfg.initializer_range == pytest.approx(0.8 / 32**0.5)
    # attention: Q and O per head, K and V per kv head; MLP: in and out
    assert cfg.n_params == 2 * (32 * 8 * (2 * 4 + 2 * 2) + 2 * 32 * 128)
    assert _cfg(d_head=4).n_heads == 4 and _cfg(n_heads=-1, d_head=8).n_heads == 4
    assert _cfg(dtype="bfloat16").dtype is torch.bfloat16


def test_to_dict_round_trip() -> None:
    cfg = _cfg(gated_mlp=True, act_fn="silu", normalization_type="RMS")
    again = HookedTransformerConfig.from_dict(cfg.to_dict())
    assert again == cfg
    model = HookedTransformer(cfg.to_dict())
    assert model.cfg == cfg


def test_seed_makes_initialisation_reproducible() -> None:
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        a, b = HookedTransformer(_cfg())(tokens), HookedTransformer(_cfg())(tokens)
        c = HookedTransformer(_cfg(seed=1))(tokens)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


VARIANTS = {
    "attn_only": dict(attn_only=True),
    "no_norm": dict(normalization_type=None),
    "solu": dict(act_fn="solu_ln"),
    "parallel": dict(parallel_attn_mlp=True),
    "llama_like": dict(
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        act_fn="silu",
        n_key_value_heads=2,
    ),
}


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_config_built_variants_run_and_process_exactly(variant: str) -> None:
    model = HookedTransformer(_cfg(**VARIANTS[variant]))
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
        torch.testing.assert_close(model(tokens), logits, atol=1e-5, rtol=0)
        for layer in range(2):
            post = cache["resid_post", layer]
            pre, attn_out = cache["resid_pre", layer], cache["attn_out", layer]
            if model.cfg.attn_only:
                assert not any(".mlp." in n or "mlp_out" in n for n in model.hook_dict)
                assert torch.equal(pre + attn_out, post)
            elif model.cfg.parallel_attn_mlp:
                assert torch.equal(pre + attn_out + cache["mlp_out", layer], post)
            else:
                assert torch.equal(cache["resid_mid", layer] + cache["mlp_out", layer], post)
        if variant == "solu":
            assert cache["blocks.0.mlp.hook_mid"].shape == (2, 8, 128)
        log_probs = logits.log_softmax(-1)
        process_weights(model)
        torch.testing.assert_close(model(tokens).log_softmax(-1), log_probs, atol=1e-4, rtol=0)
