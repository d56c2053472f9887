"""Weight maps name lmscope's storage parameters in the checkpoint's own layout: every family's
map covers exactly the model's parameters (every matrix, nothing that is not a parameter), a
Llama's is tensor names only (no transform at all), and errors name weights as TransformerLens
does."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from test_config_refusal import spec_configs

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.loading.families import family_for
from lmscope.loading.pieces import view_name


@functools.cache
def _specs() -> dict[str, dict[str, Any]]:
    return spec_configs()


def _map_and_params(name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    hf = _specs()[name]
    family = family_for(hf)
    cfg = HookedTransformerConfig(**family.config_from_hf(hf), init_weights=False)
    with torch.device("meta"):
        model = HookedTransformer(cfg)
    return family.weight_map(cfg, hf), dict(model.named_parameters())


@pytest.mark.parametrize("name", sorted(_specs()))
def test_every_family_maps_the_models_storage_parameters(name: str) -> None:
    mapped, params = _map_and_params(name)
    assert set(mapped) <= set(params), sorted(set(mapped) - set(params))[:5]
    matrices = {n for n, p in params.items() if p.ndim >= 2}
    assert matrices <= set(mapped), sorted(matrices - set(mapped))[:5]


@pytest.mark.parametrize("name", ["llama_conftest", "mistral_window"])
def test_a_llama_checkpoint_is_in_lmscope_s_layout(name: str) -> None:
    mapped, _ = _map_and_params(name)
    assert all(isinstance(source, str) for source in mapped.values())
    assert mapped["blocks.1.attn.k_weight"] == "model.layers.1.self_attn.k_proj.weight"
    assert mapped["blocks.0.mlp.in_weight"] == "model.layers.0.mlp.up_proj.weight"


def test_storage_parameters_are_named_as_their_transformerlens_views() -> None:
    assert view_name("blocks.3.attn.q_bias") == "blocks.3.attn.b_Q"
    assert view_name("blocks.0.attn.o_weight") == "blocks.0.attn.W_O"
    assert view_name("blocks.0.mlp.out_weight") == "blocks.0.mlp.W_out"
    assert view_name("blocks.0.mlp.experts.2.gate_weight") == "blocks.0.mlp.experts.2.W_gate"
    assert view_name("blocks.0.mlp.router_weight") == "blocks.0.mlp.W_gate"
    assert view_name("unembed.weight") == "unembed.W_U"
    assert view_name("blocks.0.ln1.w") == "blocks.0.ln1.w"
