"""Line plots: series, legend, hover values, thinning of long series."""

from __future__ import annotations

import pytest
import torch

from lmscope import viz


def test_series_legend_and_hover(open_figure) -> None:
    fig = viz.line(torch.tensor([[3.0, 2.0, 1.5], [3.5, 2.5, 2.0]]), x=[10, 20, 30],
                   labels=["train", "eval"], ylabel="loss")  # fmt: skip
    shown = open_figure(fig, "line")
    page = shown.page
    assert page.locator("polyline.lmv-series").count() == 2
    assert page.locator(".lmv-legend").all_text_contents() == ["train", "eval"]
    page.locator(".lmv-points").nth(1).locator("circle").nth(2).hover()
    assert shown.tip() == "eval: x=30, loss=2"


def test_long_series_are_thinned() -> None:
    svg = viz.line(torch.arange(100_000.0)).to_svg()
    points = svg.split("points='")[1].split("'")[0].split()
    assert len(points) == 2000 and svg.count("<circle") == 286  # markers for hover
    xs = [float(p.split(",")[0]) for p in points]
    assert xs == sorted(xs) and xs[-1] == pytest.approx(xs[0] + 560)  # first and last kept


def test_log_y_and_bad_input() -> None:
    assert ">1000</text>" in viz.line([1.0, 10.0, 1000.0], log_y=True).to_svg()
    with pytest.raises(ValueError, match="log_y needs positive"):
        viz.line([0.0, 1.0], log_y=True)
    with pytest.raises(ValueError, match="x has 2 values but each series has 3"):
        viz.line([1.0, 2.0, 3.0], x=[0, 1])
