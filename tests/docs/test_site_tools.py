"""The site's generators: scripts/make_diagram.py draws every hook point and weight the model has,
with the shapes a forward gives them; scripts/mkdocs_hooks.py finds pages the nav leaves out;
scripts/render_notebooks.py turns an executed notebook into a page with its outputs."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault(name, importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def make_diagram() -> ModuleType:
    return _script("make_diagram")


@pytest.mark.parametrize("kind", ["gpt2-like", "rotary-gqa"])
def test_diagram_draws_every_hook_point_and_weight(make_diagram: ModuleType, kind: str) -> None:
    model = make_diagram.build(kind)
    svgs = make_diagram.diagrams(kind)
    assert sorted(svgs) == sorted(n for n in make_diagram.file_names() if n.startswith(kind))
    whole = svgs[f"{kind}-model.svg"]
    text = " ".join(re.findall(r">([^<]+)<", whole))
    for name in model.hook_dict:  # the whole model: every hook point, by its last name at least
        assert name.rpartition(".")[2] in text, name
    block = svgs[f"{kind}-block.svg"]
    for name in model.hook_dict:
        if name.startswith("blocks.0."):
            assert name.rpartition(".")[2] in block, name
    for weight in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out"):
        assert f">{weight} [" in block
    assert ">W_E [d_vocab, d_model]<" in whole and "W_U [d_model, d_vocab]" in whole


def test_diagram_shapes_come_from_the_forward(make_diagram: ModuleType) -> None:
    block = make_diagram.diagrams("rotary-gqa")["rotary-gqa-block.svg"]
    assert "hook_k [batch, pos, kv_head, d_head]" in block  # 2 K/V heads under GQA
    assert "hook_q [batch, pos, head_index, d_head]" in block
    assert "hook_pattern [batch, head_index, query_pos, key_pos]" in block
    assert "W_K [kv_head, d_model, d_head]" in block
    assert re.search(
        r"hook_result \[batch, pos, head_index, d_model\] <[^>]+>\(set_use_attn_result\)", block
    )
    assert "W_pos" not in make_diagram.diagrams("rotary-gqa")["rotary-gqa-model.svg"]


def test_unlisted_pages_are_found(tmp_path: Path) -> None:
    hooks = _script("mkdocs_hooks")
    for page in ("index.md", "a.md", "sub/b.md", "sub/c.md"):
        (tmp_path / page).parent.mkdir(exist_ok=True)
        (tmp_path / page).write_text("# x\n")
    nav = [{"Home": "index.md"}, {"Sub": [{"B": "sub/b.md"}]}]
    assert hooks.unlisted_pages(tmp_path, nav) == ["a.md", "sub/c.md"]
    config = {"docs_dir": str(tmp_path), "nav": nav}
    assert hooks.on_config(config)["nav"][-1] == {"More": ["a.md", "sub/c.md"]}


def test_notebook_renders_with_its_outputs(tmp_path: Path) -> None:
    render_notebooks = _script("render_notebooks")
    cells = [
        {"cell_type": "markdown", "source": ["# Title\n", "Some text."]},
        {
            "cell_type": "code",
            "source": "x = 1\nprint(x)",
            "outputs": [
                {"output_type": "stream", "name": "stdout", "text": ["1\n"]},
                {"output_type": "stream", "name": "stderr", "text": ["a warning\n"]},
                {
                    "output_type": "execute_result",
                    "data": {"text/html": "<div>fig</div>", "text/plain": "F"},
                },
                {"output_type": "error", "ename": "ValueError", "evalue": "bad"},
            ],
        },
    ]
    notebook = tmp_path / "demo.ipynb"
    notebook.write_text(json.dumps({"cells": cells}))
    page, figures = render_notebooks.render(notebook, tmp_path / "out")
    assert figures == ["figure-1.html"]
    assert (tmp_path / "out" / "demo" / "figure-1.html").read_text() == "<div>fig</div>"
    assert "# Title\nSome text." in page and "```python\nx = 1\nprint(x)\n```" in page
    assert "```text\n1\n```" in page and "a warning" not in page  # stderr (warnings) left out
    assert '<iframe src="figure-1.html"' in page and "ValueError: bad" in page
