"""Every ```python block of the pages below runs as written, in order, one namespace per page.

A page not listed here has no runnable example yet, or (docs/analysis.md) examples that are
fragments of a longer session; the documentation-site work turns those into runnable ones and
adds the page here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "README.md",
    "docs/reliability.md",
    "docs/generation.md",
    "docs/devices.md",
    "docs/export.md",
    "docs/loading.md",
    "docs/gguf-cache.md",
    "docs/hooks.md",
    "docs/performance.md",
    "docs/migration.md",
    "docs/encoders.md",
    "docs/viz.md",
    "docs/harvest.md",
    "docs/serve.md",
]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return _BLOCK.findall((ROOT / page).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python example"
    namespace: dict[str, object] = {"__name__": f"docs_{Path(page).stem}"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page} (python block {i + 1})", "exec"), namespace)
