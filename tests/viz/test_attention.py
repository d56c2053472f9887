"""The attention view: thumbnails per head, token labels, hover values equal to the pattern's,
head selection, both hover modes, causal storage, and the size limit."""

from __future__ import annotations

import base64
import re

import pytest
import torch

from lmscope import viz
from lmscope.viz.attention import _stored_values

TOKENS = ["<bos>", " The", " <b>cat</b>", "\n", ' "sat"', " on"]


def causal_pattern(n_layers: int, n_heads: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_layers, n_heads, n, n, generator=gen) * 2
    mask = torch.ones(n, n, dtype=torch.bool).triu(1)
    return scores.masked_fill(mask, float("-inf")).softmax(-1)


def token_values(page) -> list[float | None]:
    values = page.eval_on_selector_all(
        ".lmv-toks .lmv-tok", "ts => ts.map(t => t.dataset.a ?? null)"
    )
    return [None if v is None else float(v) for v in values]


def test_grid_tokens_hover_and_selection(open_figure) -> None:
    pattern = causal_pattern(2, 3, len(TOKENS))
    fig = viz.attention_heads(pattern, TOKENS, title="two layers")
    shown = open_figure(fig, "attention")
    page = shown.page
    assert page.locator("canvas.lmv-thumb").count() == 6
    texts = page.eval_on_selector_all(".lmv-toks .lmv-tok", "ts => ts.map(t => t.textContent)")
    assert texts == [t.replace("\n", "\u21b5") for t in TOKENS]
    q_labels = page.eval_on_selector_all(".lmv-qlabel", "ts => ts.map(t => t.textContent)")
    assert q_labels == texts  # tokens on both axes
    assert page.locator(".lmv-klabel").count() == len(TOKENS)
    assert page.inner_text(".lmv-detail-title") == "Layer 0, head 0"

    # hovering a token colours every token by the attention it pays to it (exact to 1e-4)
    assert token_values(page) == [None] * len(TOKENS)
    page.hover(".lmv-toks .lmv-tok >> nth=3")
    assert token_values(page) == pytest.approx(pattern[0, 0, 3].tolist(), abs=1e-4)
    assert page.locator(".lmv-hl-row").is_visible()
    assert "attention from" in shown.tip()
    page.hover(".lmv-toks .lmv-tok >> nth=5")
    assert token_values(page) == pytest.approx(pattern[0, 0, 5].tolist(), abs=1e-4)

    # hovering a thumbnail previews its head; clicking keeps it after the mouse leaves the grid
    page.hover("canvas.lmv-thumb[data-l='1'][data-h='2']")
    assert page.inner_text(".lmv-detail-title") == "Layer 1, head 2"
    page.hover(".lmv-detail-title")
    assert page.inner_text(".lmv-detail-title") == "Layer 0, head 0"
    page.click("canvas.lmv-thumb[data-l='1'][data-h='1']")
    page.hover(".lmv-toks .lmv-tok >> nth=4")
    assert shown.root().get_attribute("data-head") == "1"
    assert token_values(page) == pytest.approx(pattern[1, 1, 4].tolist(), abs=1e-4)

    # the other mode: what attends to the hovered token (a column of the pattern)
    page.check("input[value=src]")
    page.hover(".lmv-toks .lmv-tok >> nth=2")
    assert token_values(page) == pytest.approx(pattern[1, 1, :, 2].tolist(), abs=1e-4)
    assert page.locator(".lmv-hl-col").is_visible()

    # hovering a matrix cell shows its value
    box = page.locator("canvas.lmv-matrix").bounding_box()
    cell = box["width"] / len(TOKENS)
    page.mouse.move(box["x"] + 1.5 * cell, box["y"] + 4.5 * cell)  # query 4, key 1
    value = float(re.search(r": ([0-9.]+)$", shown.tip()).group(1))
    assert value == pytest.approx(float(pattern[1, 1, 4, 1]), abs=1e-4)


def test_fewer_queries_than_keys(open_figure) -> None:
    """A pattern from a KV-cached step: queries are the last positions of the keys."""
    pattern = causal_pattern(1, 2, 5)[:, :, 3:]  # [1, 2, 2 queries, 5 keys]
    shown = open_figure(viz.attention_heads(pattern[0], TOKENS[:5]), "attention_kv")
    page = shown.page
    assert page.locator("canvas.lmv-thumb").count() == 2
    page.hover(".lmv-toks .lmv-tok >> nth=1")  # a key with no query row: nothing coloured
    assert token_values(page) == [None] * 5
    page.hover(".lmv-toks .lmv-tok >> nth=4")
    assert token_values(page) == pytest.approx(pattern[0, 0, 1].tolist(), abs=1e-4)


def test_causal_patterns_store_the_lower_triangle_only() -> None:
    pattern = causal_pattern(2, 2, 40)
    causal = viz.attention_heads(pattern, [str(i) for i in range(40)]).to_html()
    full = viz.attention_heads(pattern + 1e-3 * (pattern == 0), [str(i) for i in range(40)])
    full_html = full.to_html()
    assert '"tri":true' in causal and '"tri":false' in full_html

    def stored_bytes(page: str) -> int:
        return len(base64.b64decode(re.search(r'"data":"([^"]*)"', page).group(1)))

    assert stored_bytes(causal) == 2 * 4 * (40 * 41 // 2)  # uint16, lower triangles of 4 heads
    assert stored_bytes(full_html) == 2 * 4 * 40 * 40


def test_huge_pattern_is_refused_before_any_copy() -> None:
    """30 layers x 9 heads x 1000 x 1000 (an expanded view: no memory) is refused at once."""
    huge = torch.zeros(1, 1, 1, 1).expand(30, 9, 1000, 1000)
    with pytest.raises(viz.FigureTooLargeError) as err:
        viz.attention_heads(huge, ["t"] * 1000)
    message = str(err.value)
    assert "[30, 9, 1000, 1000]" in message and "max_values=4,000,000" in message
    assert "downsample=True" in message and "attention[layer]" in message


def test_downsample_pools_positions_and_keeps_rows_summing_to_one() -> None:
    n = 300
    pattern = causal_pattern(2, 2, n)
    tokens = [f"t{i}" for i in range(n)]
    limit = 20_000
    with pytest.raises(viz.FigureTooLargeError):
        viz.attention_heads(pattern, tokens, max_values=limit)
    fig = viz.attention_heads(pattern, tokens, max_values=limit, downsample=True)
    html = fig.to_html()
    data = re.search(r'"nq":(\d+),"nk":(\d+)', html)
    nq = int(data.group(1))
    assert _stored_values(4, nq, nq) <= limit < _stored_values(4, nq + 1, nq + 1) * 2
    assert len(html) < limit * 2 * 1.34 + 60_000  # base64 of 2 bytes a value, plus the page
    from lmscope.viz.attention import _pool_positions

    pooled, labels = _pool_positions(pattern, tokens, 7)
    assert pooled.shape == (2, 2, 43, 43)
    assert torch.allclose(pooled.sum(-1), torch.ones(2, 2, 43), atol=1e-5)
    assert labels[0] == "t0\u2026[0-6]" and labels[-1] == "t294\u2026[294-299]"
    assert pooled.triu(1).abs().max() == 0  # still causal by blocks


def test_bad_input_is_refused_with_a_fix() -> None:
    pattern = causal_pattern(1, 2, 4)
    with pytest.raises(ValueError, match="index the batch first"):
        viz.attention_heads(pattern[None], ["a"] * 4)  # [1, 1, 2, 4, 4]
    with pytest.raises(ValueError, match="tokens has 3 labels"):
        viz.attention_heads(pattern, ["a"] * 3)
    with pytest.raises(ValueError, match="probabilities in"):
        viz.attention_heads(pattern * 5, ["a"] * 4)
    with pytest.raises(ValueError, match="selected"):
        viz.attention_heads(pattern, ["a"] * 4, selected=(1, 0))
    with pytest.raises(ValueError, match="no SVG form"):
        viz.attention_heads(pattern, ["a"] * 4).save("x.svg")


def test_circuitsvis_argument_order() -> None:
    pattern = causal_pattern(1, 2, 4)[0]
    fig = viz.attention_patterns(["a", "b", "c", "d"], pattern)
    assert fig.kind == "attention" and "lmv-thumb" in fig.to_html()
