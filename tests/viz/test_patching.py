"""Patching heatmaps straight from lmscope.patching's outputs."""

from __future__ import annotations

import pytest
import torch

from lmscope import viz


def test_block_every_is_three_panels_on_one_scale(open_figure) -> None:
    result = torch.randn(3, 2, 4)  # get_act_patch_block_every: [3, layer, pos]
    result[1, 0, 0] = 5.0
    fig = viz.patching_heatmap(result, ["<s>", " A", " B", " A"], metric_name="logit diff")
    page = open_figure(fig, "patching").page
    titles = page.eval_on_selector_all(".lmv-title", "ts => ts.map(t => t.textContent)")
    assert titles == ["Patching: logit diff per position", "resid_pre", "attn_out", "mlp_out"]
    assert page.locator(".lmv-cells rect[data-tip]").count() == 24
    cols = page.eval_on_selector_all(".lmv-collabel", "ts => ts.map(t => t.textContent)")
    assert cols[:4] == ["<s> (0)", " A (1)", " B (2)", " A (3)"]
    tip = page.locator(".lmv-cells").nth(1).locator("rect").first.get_attribute("data-tip")
    assert tip == "0 \u00d7 <s> (0): logit diff 5"


def test_layer_head_and_head_every() -> None:
    grid = viz.patching_heatmap(torch.randn(2, 3)).to_svg()
    assert "per head" in grid and grid.count("<title>") == 6
    every = viz.patching_heatmap(torch.randn(5, 2, 3)).to_svg()  # attn_head_all_pos_every
    for name in ("output", "query", "key", "value", "pattern"):
        assert f">{name}</text>" in every
    with pytest.raises(ValueError, match="panel_titles has 1 labels"):
        viz.patching_heatmap(torch.randn(2, 2, 3), panel_titles=["x"])
