"""The notebooks under notebooks/ (jupytext py:percent sources) parse, assert their findings and
draw with lmscope.viz. They are executed by `make notebooks` (scripts/run_notebooks.py, in CI after
`make test`), not here: executing them takes minutes."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
EXPECTED = {
    "main_demo",
    "exploratory_analysis",
    "activation_patching",
    "attribution_patching",
    "steering_and_generation",
}


def code_cells(path: Path) -> list[str]:
    nb = jupytext.read(path, fmt="py:percent")
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def assertions(path: Path) -> list[str]:
    """The source of every assert statement of the notebook, in order."""
    out = []
    for source in code_cells(path):
        tree = ast.parse(source)
        out += [
            ast.get_source_segment(source, node)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assert)
        ]
    return out


def test_every_notebook_is_there() -> None:
    assert {p.stem for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_parses_and_asserts_its_findings(path: Path) -> None:
    nb = jupytext.read(path, fmt="py:percent")
    kinds = [cell.cell_type for cell in nb.cells]
    assert kinds[0] == "markdown" and nb.cells[0].source.startswith("# "), "starts with a title"
    assert kinds.count("markdown") >= 5, "prose between the code"
    sources = code_cells(path)
    for source in sources:
        ast.parse(source)
    found = assertions(path)
    assert len(found) >= 5, found
    text = "\n".join(sources)
    assert "viz." in text, "figures come from lmscope.viz"
    for banned in ("plotly", "circuitsvis", "matplotlib", 'from_pretrained("gpt2'):
        assert banned not in text


def test_runner_finds_notebooks_by_name() -> None:
    spec = importlib.util.spec_from_file_location(
        "run_notebooks", ROOT / "scripts" / "run_notebooks.py"
    )
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    assert [p.stem for p in runner.notebook_sources(["main_demo"])] == ["main_demo"]
    assert {p.stem for p in runner.notebook_sources()} == EXPECTED
    with pytest.raises(SystemExit, match="no notebook named"):
        runner.notebook_sources(["nope"])


def test_make_notebooks_runs_in_ci_after_the_tests() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "\nnotebooks: $(VENV)/.dev\n\t$(PY) scripts/run_notebooks.py" in makefile
    steps = [line.split("#")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "make test" in steps and steps.index("make notebooks") > steps.index("make test")
    assert "/notebooks/executed/" in (ROOT / ".gitignore").read_text().splitlines()
