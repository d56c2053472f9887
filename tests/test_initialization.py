"""HookedTransformer(cfg) draws its weights as TransformerLens 3.9 does for every `init_mode`:
the std of each weight matches TransformerLens's own draw (tests/compat/tl_init_stds.json,
written by scripts/tl_init_stds.py), within the sampling error of two independent estimates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.config import INIT_MODES

TL = json.loads((Path(__file__).parent / "compat" / "tl_init_stds.json").read_text())


@pytest.mark.parametrize("key", sorted(TL["stds"]))
def test_weight_stds_match_transformer_lens(key: str) -> None:
    mode, initializer_range = key.split(":")
    cfg = HookedTransformerConfig(
        **TL["config"], init_mode=mode, initializer_range=float(initializer_range), seed=1
    )
    weights = HookedTransformer(cfg).named_weights()
    expected = TL["stds"][key]
    assert sorted(expected) == sorted(n for n in weights if "W_" in n)
    for name, tl_std in expected.items():
        w = weights[name].detach()
        # Each std estimate is off by ~0.71/sqrt(n) (normal; less for uniform), so the two
        # independent draws differ by ~1/sqrt(n): 5 of those is a 1-in-a-million miss.
        tolerance = 5 / w.numel() ** 0.5
        assert abs(float(w.std()) / tl_std - 1) < tolerance, (name, float(w.std()), tl_std)
        assert abs(float(w.mean())) < 5 * tl_std / w.numel() ** 0.5, name


def test_biases_zero_and_norm_weights_one_in_every_mode() -> None:
    for mode in INIT_MODES:
        model = HookedTransformer(HookedTransformerConfig(**TL["config"], init_mode=mode))
        for name, value in model.named_weights().items():
            if name.rsplit(".", 1)[-1].startswith("b"):
                assert torch.all(value == 0), (mode, name)
            elif name.endswith(".w"):
                assert torch.all(value == 1), (mode, name)


def test_initializer_range_defaults_as_transformer_lens() -> None:
    base = dict(TL["config"])
    assert HookedTransformerConfig(**base).initializer_range == pytest.approx(0.8 / 128**0.5)
    assert HookedTransformerConfig(**base, init_mode="xavier_normal").initializer_range == 1.0
    assert (
        HookedTransformerConfig(**base, init_mode="muP", initializer_range=0.3).initializer_range
        == 0.3
    )


def test_seed_makes_the_draw_repeatable() -> None:
    cfg = dict(TL["config"], init_mode="kaiming_normal", seed=7)
    a = HookedTransformer(HookedTransformerConfig(**cfg)).W_Q
    b = HookedTransformer(HookedTransformerConfig(**cfg)).W_Q
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unknown_init_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="init_mode 'he' is not one of"):
        HookedTransformerConfig(**TL["config"], init_mode="he")
