"""Heatmaps: one cell per value with its value on hover, labels, colour scales, limits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmscope import viz
from lmscope.viz._svg import RDBU, make_scale


def test_cells_labels_and_hover(open_figure) -> None:
    values = torch.tensor([[-2.0, 0.0, 1.0], [0.5, 2.0, -1.0]])
    fig = viz.heatmap(values, ["a", " b", "c"], ["L0", "L1"], title="grid", value_name="score")
    shown = open_figure(fig, "heatmap")
    page = shown.page
    cells = page.locator(".lmv-cells rect[data-tip]")
    assert cells.count() == 6
    assert page.locator("svg title").count() == 0  # turned into data-tip tooltips
    tips = cells.evaluate_all("cs => cs.map(c => c.dataset.tip)")
    assert tips[1] == "L0 \u00d7  b: score 0"
    fills = cells.evaluate_all("cs => cs.map(c => c.getAttribute('fill'))")
    assert (
        fills[1] == "#f7f7f7" and fills[0] == "#67001f" and fills[4] == "#053061"
    )  # RdBu, 0 white
    cells.nth(5).hover()
    assert shown.tip() == "L1 \u00d7 c: score -1"
    rows = page.eval_on_selector_all(".lmv-rowlabel", "ts => ts.map(t => t.textContent)")
    cols = page.eval_on_selector_all(".lmv-collabel", "ts => ts.map(t => t.textContent)")
    assert rows == ["L0", "L1"] and cols == ["a", " b", "c"]


def test_svg_is_the_same_figure(tmp_path) -> None:
    fig = viz.heatmap(np.arange(6.0).reshape(2, 3))
    svg = fig.save(tmp_path / "h.svg").read_text()
    assert svg.startswith("<svg xmlns='http://www.w3.org/2000/svg'")
    assert svg.count("<title>") == 6  # standalone SVG viewers show these on hover
    assert svg in fig.to_html()


def test_scales() -> None:
    seq = make_scale(np.array([0.2, 0.9]))
    assert (seq.vmin, seq.vmax) == (0.0, 0.9) and seq.colors(np.array([0.0]))[0] == "#f7fbff"
    div = make_scale(np.array([-0.5, 2.0]))
    assert (div.vmin, div.vmax, div.stops) == (-2.0, 2.0, RDBU)
    assert make_scale(np.array([1.0, 2.0]), vmin=-1, vmax=5).vmin == -1
    assert make_scale(np.array([np.nan, 1.0])).colors(np.array([np.nan]))[0] == "#d9d9d9"


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="must be 2-d, got shape"):
        viz.heatmap(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="x_labels has 2 labels but the values have 3"):
        viz.heatmap(torch.zeros(2, 3), x_labels=["a", "b"])
    with pytest.raises(viz.FigureTooLargeError, match="100,000 one figure draws"):
        viz.heatmap(torch.zeros(400, 400))
    with pytest.raises(TypeError, match="list of 2 labels, not one string"):
        viz.heatmap(torch.zeros(2, 2), y_labels="ab")
