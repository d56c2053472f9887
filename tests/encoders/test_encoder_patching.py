"""Activation patching and attribution patching on an encoder (tiny BertForMaskedLM). Positions
are not causal: a patch at the last position moves the metric at the first, which no decoder
can show."""

from __future__ import annotations

import torch

from lmscope import HookedEncoder
from lmscope.analysis.attribution import get_attr_patch_block_every, get_attr_patch_resid_pre
from lmscope.analysis.patching import get_act_patch_attn_head_out_all_pos, get_act_patch_resid_pre
from tests._tiny import TinyModel


def _setup(tiny: TinyModel):
    model = HookedEncoder.from_pretrained(tiny.path)
    clean = torch.tensor([[5, 17, 23, 9, 41, 12, 30]])
    corrupted = clean.clone()
    corrupted[0, -1] = 44  # the corruption sits at the last position

    def metric(logits: torch.Tensor) -> torch.Tensor:  # read at the FIRST position
        return logits[:, 0, 7] - logits[:, 0, 8]

    return model, clean, corrupted, metric


def test_activation_patching_is_not_causal(encoder_models) -> None:
    model, clean, corrupted, metric = _setup(encoder_models["bert_mlm"])
    with torch.no_grad():
        clean_value = float(metric(model(clean)))
        corrupted_value = float(metric(model(corrupted)))
    assert abs(clean_value - corrupted_value) > 1e-3  # the last token moves position 0
    _, clean_cache = model.run_with_cache(clean)
    grid = get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert grid.shape == (model.cfg.n_layers, clean.shape[1])
    # at layer 0 only the corrupted position differs: patching it restores the clean run
    assert abs(float(grid[0, -1]) - clean_value) < 1e-5
    torch.testing.assert_close(grid[0, :-1], torch.full((6,), corrupted_value), atol=1e-5, rtol=0)
    heads = get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)


def test_attribution_patching_runs_on_encoders(encoder_models) -> None:
    model, clean, corrupted, metric = _setup(encoder_models["bert_mlm"])
    _, clean_cache = model.run_with_cache(clean)
    approx = get_attr_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert approx.shape == (model.cfg.n_layers, clean.shape[1])
    assert float(approx[0, :-1].abs().max()) == 0.0  # no difference there at layer 0
    assert float(approx[0, -1].abs()) > 0.0  # gradient flows back from position 0
    every = get_attr_patch_block_every(model, corrupted, clean_cache, metric)
    assert every.shape[:2] == (3, model.cfg.n_layers)
