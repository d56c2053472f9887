"""`test_prompt`'s results as an HTML table: for each answer token its rank, logit and probability,
and the model's top-k tokens at that step (the answer highlighted among them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmscope.viz._figure import _ID, Figure
from lmscope.viz._svg import BLUES, Scale, esc, fmt, show_token

_PROB_SCALE = Scale(BLUES, 0.0, 1.0)


def prompt_table(results: Sequence[dict[str, Any]], *, prompt: str = "", title: str = "") -> Figure:
    """An HTML table of `lmscope.utils.test_prompt(..., print_details=False)`'s results: one row
    per answer token with its rank, logit, probability and the top-k tokens (probability on hover,
    the answer outlined).

    `prompt_table_from_model` runs test_prompt for you.

    Example:
        >>> from lmscope import viz
        >>> results = [{"token": " Paris", "rank": 0, "logit": 17.2, "prob": 0.61,
        ...             "top_k": [(" Paris", 17.2, 0.61), (" the", 15.9, 0.17)]}]
        >>> viz.prompt_table(results, prompt="The capital of France is").save("prompt.html")
    """
    if isinstance(results, dict):
        results = [results]
    if not results:
        raise ValueError(
            "results is empty: pass what test_prompt(..., print_details=False) returns"
        )
    need = {"token", "rank", "logit", "prob", "top_k"}
    for i, row in enumerate(results):
        if not isinstance(row, dict) or not need <= row.keys():
            raise ValueError(
                f"results[{i}] must be a dict with keys {sorted(need)} (test_prompt's return "
                f"value), got {row!r:.120}"
            )
    k = max(len(r["top_k"]) for r in results)
    head = "".join(f"<th>#{r + 1}</th>" for r in range(k))
    body_rows = []
    for r in results:
        answer = r["token"]
        chips = []
        for tok, logit, prob in r["top_k"]:
            (bg,) = _PROB_SCALE.colors(np.array([prob]))
            fg = "white" if _PROB_SCALE.dark(np.array([prob]))[0] else "#111"
            cls = "lmv-chip lmv-answer" if tok == answer else "lmv-chip"
            tip = f"{tok!r}: p={fmt(prob)}, logit={fmt(logit)}"
            chips.append(
                f"<td><span class='{cls}' data-tip='{esc(tip)}' style='background:{bg};"
                f"color:{fg}'>{esc(show_token(tok, 16))}</span></td>"
            )
        chips += ["<td></td>"] * (k - len(chips))
        rank_cls = "lmv-good" if r["rank"] == 0 else ""
        body_rows.append(
            f"<tr><td class='lmv-answer-cell'>{esc(show_token(answer))}</td>"
            f"<td class='{rank_cls}'>{int(r['rank'])}</td><td>{fmt(float(r['logit']))}</td>"
            f"<td>{float(r['prob']):.2%}</td>{''.join(chips)}</tr>"
        )
    heading = f"<div class='lmv-heading'>{esc(title)}</div>" if title else ""
    prompt_line = f"<div class='lmv-prompt'>{esc(show_token(prompt))}</div>" if prompt else ""
    body = (
        f"<div class='lmv lmv-table' id='{_ID}' data-kind='prompt_table'>{heading}{prompt_line}"
        f"<table><thead><tr><th>answer token</th><th>rank</th><th>logit</th><th>prob</th>{head}"
        f"</tr></thead><tbody>{''.join(body_rows)}</tbody></table></div>"
        f"<script>lmscopeViz1.init('{_ID}')</script>"
    )
    width = 330 + k * 96
    height = 90 + 30 * len(results) + (24 if prompt else 0)
    return Figure(body, kind="prompt_table", title=title or "test_prompt", size=(width, height))


def prompt_table_from_model(
    prompt: str,
    answer: str | list[str],
    model: Any,
    *,
    prepend_space_to_answer: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
    title: str = "",
) -> Figure:
    """Run `lmscope.utils.test_prompt` (without printing) and show its results as a table.

    Example:
        >>> viz.prompt_table_from_model("The capital of France is", "Paris", model, top_k=5)
    """
    from lmscope.utils import test_prompt

    results = test_prompt(
        prompt, answer, model, prepend_space_to_answer=prepend_space_to_answer,
        print_details=False, prepend_bos=prepend_bos, top_k=top_k,
    )  # fmt: skip
    return prompt_table(results, prompt=prompt, title=title or f"test_prompt: {prompt!r}")
