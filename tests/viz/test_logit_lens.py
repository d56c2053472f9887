"""Logit lens figures from tensors and from a real cache."""

from __future__ import annotations

import html
import importlib

import pytest
import torch

from lmscope import HookedTransformer, viz
from tests._tiny import TinyModel


def test_lens_with_top_k(open_figure) -> None:
    probs = torch.tensor([[0.1, 0.2], [0.3, 0.9]])
    fig = viz.logit_lens(
        probs, ["The", " cat"], layer_labels=["0_pre", "final_post"], target=" sat",
        top_tokens=[["a", "b"], [" sat", "\n"]], top_probs=torch.tensor([[0.5, 0.2], [0.9, 0.05]]),
    )  # fmt: skip
    shown = open_figure(fig, "logit_lens")
    cells = shown.page.locator(".lmv-cells").first.locator("rect[data-tip]")
    assert cells.count() == 4
    cells.nth(3).hover()
    assert shown.tip() == "after final_post, position 1 ' cat': probability of ' sat' 0.9"
    texts = shown.page.locator(".lmv-cells").nth(1).locator("text").all_text_contents()
    assert texts == ["a", "b", " sat", "\u21b5"]


def test_rank_is_log_coloured() -> None:
    svg = viz.logit_lens(torch.tensor([[0.0, 999.0]]), ["a", "b"], kind="rank").to_svg()
    assert "-log10(rank + 1)" in svg and "rank 999" in svg
    with pytest.raises(ValueError, match="kind must be"):
        viz.logit_lens(torch.zeros(1, 2), ["a", "b"], kind="p")
    with pytest.raises(ValueError, match="both top_tokens and top_probs"):
        viz.logit_lens(torch.zeros(1, 2), ["a", "b"], top_tokens=[["x"]])


@torch.no_grad()
def test_from_cache_matches_the_unembedded_residual(tiny_gpt2_tok: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(str(tiny_gpt2_tok.path))
    tokens = model.to_tokens("the quick brown fox")
    logits, cache = model.run_with_cache(tokens)
    fig = viz.logit_lens_from_cache(cache, tokens, kind="prob", k=3)
    svg = fig.to_svg()
    top = int(logits[0, -1].argmax())
    # after the last layer, the lens is the model's own output
    p_final = logits[0].softmax(-1)[:, top]
    n = tokens.shape[1]
    target = model.to_string(top)
    for j in range(n):
        tip = f"after final_post, position {j} "
        start = svg.index(tip)
        value = float(svg[start : svg.index("</title>", start)].rsplit(" ", 1)[1])
        assert value == pytest.approx(float(p_final[j]), rel=1e-3, abs=1e-6)
    assert html.escape(f"Logit lens of {target!r}") in svg
    assert len(model.to_str_tokens(tokens[0])) == n


@torch.no_grad()
def test_from_cache_in_chunks_of_layers(tiny_gpt2_tok: TinyModel, monkeypatch) -> None:
    """Layers share one unembedding product up to LENS_CHUNK logits: the values do not depend on
    how many share it."""
    lens_module = importlib.import_module("lmscope.viz.logit_lens")  # viz.logit_lens: the function

    model = HookedTransformer.from_pretrained(str(tiny_gpt2_tok.path))
    tokens = model.to_tokens("the quick brown fox jumps")
    _, cache = model.run_with_cache(tokens)
    drawn = []
    monkeypatch.setattr(lens_module, "logit_lens", lambda *a, **kw: drawn.append((a, kw)))
    for chunk in (1 << 24, 1):  # all layers in one product; one layer per product
        monkeypatch.setattr(lens_module, "LENS_CHUNK", chunk)
        for kind in ("prob", "rank"):
            viz.logit_lens_from_cache(cache, tokens, kind=kind, k=3)
    (one, one_kw), (one_rank, _), (each, each_kw), (each_rank, _) = drawn
    torch.testing.assert_close(one[0], each[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one_kw["top_probs"], each_kw["top_probs"], rtol=1e-5, atol=1e-7)
    assert one_kw["top_tokens"] == each_kw["top_tokens"]
    assert torch.equal(one_rank[0], each_rank[0])
