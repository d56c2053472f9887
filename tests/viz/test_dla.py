"""Bars, per-head and per-neuron DLA, and DLA from a cache."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer, viz
from tests._tiny import TinyModel


def test_bars_top_k_and_hover(open_figure) -> None:
    fig = viz.bars(
        [0.5, -3.0, 2.0, 0.1], ["embed", "0_attn_out", "0_mlp_out", "1_attn_out"], top_k=3
    )
    shown = open_figure(fig, "bars")
    rects = shown.page.locator(".lmv-bar rect")
    assert rects.evaluate_all("rs => rs.map(r => r.dataset.tip)") == [
        "0_attn_out: -3", "0_mlp_out: 2", "embed: 0.5",
    ]  # fmt: skip
    colors = rects.evaluate_all("rs => rs.map(r => r.getAttribute('fill'))")
    assert colors == ["#d6604d", "#2171b5", "#2171b5"]  # negative red, positive blue
    widths = rects.evaluate_all("rs => rs.map(r => +r.getAttribute('width'))")
    assert widths[0] == pytest.approx(1.5 * widths[1], rel=1e-2)
    rects.nth(1).hover()
    assert shown.tip() == "0_mlp_out: 2"


def test_heads_and_neurons() -> None:
    heads = torch.zeros(3, 4)
    heads[2, 1], heads[0, 3] = -4.0, 2.0
    svg = viz.dla_heads(heads, top_k=2).to_svg()
    assert svg.count("<title>") == 12 + 2
    assert svg.index(">L2H1</text>") < svg.index(">L0H3</text>")
    neurons = torch.zeros(2, 100)
    neurons[1, 42] = 7.0
    svg = viz.top_neurons(neurons, k=5).to_svg()
    assert svg.count("class='lmv-bar'") == 5 and "<title>L1N42: 7</title>" in svg
    assert "<title>N3: 0</title>" in viz.top_neurons(torch.zeros(4), k=4).to_svg()
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        viz.bars([1.0], top_k=0)


@torch.no_grad()
def test_from_cache_adds_up_to_the_logit_difference(tiny_gpt2_tok: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(str(tiny_gpt2_tok.path))
    tokens = model.to_tokens(["the quick brown", "over the lazy"])
    logits, cache = model.run_with_cache(tokens)
    a, b = int(logits[0, -1].argmax()), int(logits[0, -1].argmin())
    fig = viz.dla_from_cache(cache, a, b)
    svg = fig.to_svg()
    parts, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
    expected = cache.logit_attrs(parts, a, b, pos_slice=-1).mean(-1)
    for label, value in zip(labels, expected.tolist(), strict=True):
        start = svg.index(f"<title>{label}: ")
        shown = float(svg[start : svg.index("</title>", start)].split(": ")[1])
        assert shown == pytest.approx(value, rel=1e-3, abs=1e-6)
    assert svg.count("lmv-cells") == 1 and "top 8 heads by |DLA|" in svg  # all 2 x 4 heads
