"""The figure object: notebook HTML, saving by suffix, PNG through Chromium, pages."""

from __future__ import annotations

import re

import pytest
import torch

from lmscope import viz


def test_repr_html_is_self_contained_and_ids_are_fresh() -> None:
    fig = viz.bars([1.0, -1.0], ["a", "b"])
    first, second = fig._repr_html_(), fig._repr_html_()
    assert "<script>" in first and "lmscopeViz1" in first
    ids = re.findall(r"id='(lmv[0-9a-f]+)'", first + second)
    assert len(set(ids)) == 2  # the same figure shown twice in a notebook: two live figures
    assert not re.search(r"(src|href)=", first)


def test_page_holds_every_figure_once_scripted(open_figure) -> None:
    figs = [viz.line([1.0, 2.0]), viz.colored_tokens(["a"], [1.0]), viz.bars([1.0], ["x"])]
    fig = viz.page(*figs, title="run")
    html = fig.to_html()
    assert (
        html.count("<style>") == html.count("if (window.lmscopeViz1)") == 1
        and "default-src 'none'" in html
    )
    page = open_figure(fig, "page").page
    assert page.locator(".lmv[data-ready]").count() == 3
    assert page.inner_text(".lmv-h1") == "run"
    with pytest.raises(TypeError, match="takes lmscope.viz figures"):
        viz.page("not a figure")


def test_png_through_chromium(tmp_path) -> None:
    fig = viz.heatmap(torch.eye(3), title="eye")
    png = fig.save(tmp_path / "eye.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (2 * fig.size[0], 2 * fig.size[1])


def test_png_without_a_browser_says_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LMSCOPE_CHROMIUM", raising=False)
    with pytest.raises(viz.BrowserNotFoundError, match="apt-get install chromium"):
        viz.line([1.0, 2.0]).save(tmp_path / "x.png")
    monkeypatch.setenv("LMSCOPE_CHROMIUM", str(tmp_path / "nothing"))
    with pytest.raises(viz.BrowserNotFoundError, match="not an executable file"):
        viz.line([1.0, 2.0]).save(tmp_path / "x.png")


def test_unknown_suffix(tmp_path) -> None:
    with pytest.raises(ValueError, match="use a .html, .svg or .png"):
        viz.line([1.0]).save(tmp_path / "x.pdf")


def test_the_checks_catch_requests_and_errors(open_page, tmp_path) -> None:
    """What the fixture fails a figure for: a request to a non-file URL, a console error."""
    page = tmp_path / "leaky.html"
    page.write_text(
        "<div class='lmv' data-ready='1'></div><img src='http://127.0.0.1:9/x.png'>"
        "<script>console.error('boom')</script>"
    )
    shown = open_page(page)
    shown.page.wait_for_load_state("load")
    assert shown.requests == ["http://127.0.0.1:9/x.png"]
    assert "boom" in shown.errors
    shown.requests.clear()
    shown.errors.clear()  # (teardown would fail the test otherwise)


def test_low_precision_and_grad_tensors_are_accepted() -> None:
    """bfloat16 / float16 activations and tensors that need grad draw like float32 ones."""
    pattern = torch.rand(2, 3, 3).tril()
    pattern = (pattern / pattern.sum(-1, keepdim=True)).requires_grad_()
    ref = viz.heatmap(pattern[0].detach()).to_svg()
    for dtype in (torch.bfloat16, torch.float16):
        low = pattern.detach().to(dtype)
        assert viz.heatmap(low[0].float()).to_svg() == viz.heatmap(low[0]).to_svg()
        assert "lmv-thumb" in viz.attention_heads(low, ["a", "b", "c"]).to_html()
    assert viz.heatmap(pattern[0]).to_svg() == ref
    assert "lmv-thumb" in viz.attention_heads(pattern, ["a", "b", "c"]).to_html()
