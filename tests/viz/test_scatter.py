"""Scatter plots: a point per pair, label and values on hover, groups, the y = x line."""

from __future__ import annotations

import pytest
import torch

from lmscope import viz


def test_points_groups_and_hover(open_figure) -> None:
    exact = torch.tensor([[1.0, -2.0], [0.5, 3.0]])  # [layer, head]
    estimate = torch.tensor([[0.9, -1.5], [0.7, 2.0]])
    fig = viz.scatter(
        exact, estimate, labels=["L0H0", "L0H1", "L1H0", "L1H1"], groups=["a", "a", "b", "b"],
        diagonal=True, xlabel="exact", ylabel="attribution",
    )  # fmt: skip
    shown = open_figure(fig, "scatter")
    page = shown.page
    points = page.locator(".lmv-points circle")
    assert points.count() == 4
    colours = points.evaluate_all("cs => cs.map(c => c.getAttribute('fill'))")
    assert colours[0] == colours[1] != colours[2] == colours[3]
    assert page.locator(".lmv-legend").all_text_contents() == ["a", "b"]
    assert page.locator(".lmv-diagonal").count() == 1
    points.nth(3).hover()
    assert shown.tip() == "L1H1 (b): exact=3, attribution=2"
    # the points sit where their values say: larger x further right, larger y higher up
    cx = points.evaluate_all("cs => cs.map(c => +c.getAttribute('cx'))")
    cy = points.evaluate_all("cs => cs.map(c => +c.getAttribute('cy'))")
    assert cx[1] < cx[2] < cx[0] < cx[3] and cy[1] > cy[2] > cy[0] > cy[3]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="x has 3 values and y 2"):
        viz.scatter([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(viz.FigureTooLargeError):
        viz.scatter(torch.zeros(30_000), torch.zeros(30_000))
