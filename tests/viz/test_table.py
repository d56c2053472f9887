"""test_prompt's results as an HTML table."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer, viz
from lmscope.viz._svg import show_token
from tests._tiny import TinyModel


def test_table_from_model(open_figure, tiny_gpt2_tok: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(str(tiny_gpt2_tok.path))
    with torch.no_grad():
        fig = viz.prompt_table_from_model("the quick brown", "fox jumps", model, top_k=4)
    shown = open_figure(fig, "prompt_table")
    page = shown.page
    rows = page.locator("tbody tr")
    n_answer = model.to_tokens(" fox jumps", prepend_bos=False).shape[1]
    assert rows.count() == n_answer
    assert page.locator("thead th").all_text_contents()[-4:] == ["#1", "#2", "#3", "#4"]
    first = rows.first.locator("td").all_text_contents()
    answer = model.to_string(model.to_tokens(" fox jumps", prepend_bos=False)[0, 0])
    assert first[0] == show_token(answer)
    page.locator(".lmv-chip").first.hover()
    assert shown.tip().startswith("'") and "p=" in shown.tip()


def test_answer_is_outlined_and_bad_results_refused() -> None:
    results = [{"token": " b", "rank": 1, "logit": 2.0, "prob": 0.3,
                "top_k": [(" a", 3.0, 0.6), (" b", 2.0, 0.3)]}]  # fmt: skip
    html = viz.prompt_table(results).to_html()
    assert html.count("lmv-chip lmv-answer") == 1 and "30.00%" in html
    with pytest.raises(ValueError, match="must be a dict with keys"):
        viz.prompt_table([{"token": "x"}])
