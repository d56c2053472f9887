"""`python -m lmscope demo --html`: the page opens offline with all five figures working."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmscope.cli import main
from tests._tiny import TinyModel


def test_demo_page_in_the_browser(
    open_page, tiny_gpt2_tok: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo.html"
    main(
        [
            "demo",
            "--model",
            str(tiny_gpt2_tok.path),
            "--prompt",
            "the quick brown fox",
            "--html",
            str(out),
        ]
    )
    assert f"Wrote {out}" in capsys.readouterr().out
    page = open_page(out).page
    kinds = page.eval_on_selector_all(".lmv[data-ready]", "rs => rs.map(r => r.dataset.kind)")
    assert kinds == ["tokens", "bars", "logit_lens", "heatmap", "attention"]
    assert page.locator("canvas.lmv-thumb").count() == 2 * 4  # the tiny model's heads
    assert page.locator(".lmv-attn .lmv-toks .lmv-tok").count() == 48  # 2 x 24 random tokens
