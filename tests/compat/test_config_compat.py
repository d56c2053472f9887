"""HookedTransformerConfig's classmethods as TransformerLens's own unit tests use them."""

from __future__ import annotations

import pytest

from lmscope import HookedTransformerConfig

FIELDS = {"n_layers": 2, "d_vocab": 100, "d_model": 6, "n_ctx": 5, "d_head": 2, "attn_only": True}


def test_unwrap_returns_a_config_unchanged() -> None:
    cfg = HookedTransformerConfig(**FIELDS)
    assert HookedTransformerConfig.unwrap(cfg) is cfg


def test_unwrap_builds_a_config_from_a_dict() -> None:
    cfg = HookedTransformerConfig.unwrap(dict(FIELDS))
    assert isinstance(cfg, HookedTransformerConfig)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (2, 6, 3, 100)
    assert cfg == HookedTransformerConfig(**FIELDS)


def test_unwrap_refuses_other_types_and_unknown_fields() -> None:
    with pytest.raises(TypeError, match="HookedTransformerConfig or a dict"):
        HookedTransformerConfig.unwrap([("n_layers", 2)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_layer_typo"):
        HookedTransformerConfig.unwrap({**FIELDS, "n_layer_typo": 3})


@pytest.mark.parametrize(("act_fn", "expected"), [("solu_ln", True), ("relu", False)])
def test_is_layer_norm_activation(act_fn: str, expected: bool) -> None:
    cfg = HookedTransformerConfig.unwrap({**FIELDS, "attn_only": False, "act_fn": act_fn})
    assert cfg.is_layer_norm_activation() is expected
