"""Tokens coloured by a value, value on hover."""

from __future__ import annotations

import pytest
import torch

from lmscope import viz


def test_colours_and_hover(open_figure) -> None:
    tokens = ["The", " cat", "\n", " sat"]
    shown = open_figure(viz.colored_tokens(tokens, [0.0, 2.0, -2.0, 1.0], title="neuron"), "tokens")
    page = shown.page
    spans = page.locator(".lmv-tok")
    assert spans.all_text_contents() == ["The", " cat", "\u21b5", " sat"]
    colours = spans.evaluate_all("ss => ss.map(s => getComputedStyle(s).backgroundColor)")
    assert colours[:3] == ["rgb(247, 247, 247)", "rgb(5, 48, 97)", "rgb(103, 0, 31)"]
    spans.nth(3).hover()
    assert shown.tip() == "' sat' (position 3): 1"


def test_several_series_share_a_scale() -> None:
    html = viz.colored_tokens(["a", "b"], torch.tensor([[0.0, 1.0], [0.5, 4.0]]),
                              labels=["n1", "n2"]).to_html()  # fmt: skip
    assert html.count("class='lmv-tokrow'") == 2 and "n2: &#x27;b&#x27; (position 1): 4" in html
    assert "<span>4</span>" in html  # the scale's top is the largest value of any series
    with pytest.raises(ValueError, match="tokens has 3 labels"):
        viz.colored_tokens(["a", "b", "c"], [1.0, 2.0])
