"""Every ```python block of the pages below runs as written, in order, one namespace per page.

A block that is not meant to run starts with the line `# not run: <why>` (it needs a GPU, the
network, ...): it is skipped, and an empty reason fails. A docs page with no python block needs
no entry here (tests/docs/test_links.py still checks its links).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "README.md",
    "docs/families/second_wave.md",
    "docs/families/norm_variants.md",
    "docs/reliability.md",
    "docs/generation.md",
    "docs/devices.md",
    "docs/export.md",
    "docs/loading.md",
    "docs/gguf-cache.md",
    "docs/processed-cache.md",
    "docs/hooks.md",
    "docs/performance.md",
    "docs/migration.md",
    "docs/encoders.md",
    "docs/viz.md",
    "docs/harvest.md",
    "docs/serve.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/mech-interp.md",
    "docs/special-cases.md",
    "docs/analysis.md",
    "docs/training.md",
    "docs/sae.md",
    "docs/models.md",
]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_NOT_RUN = re.compile(r"\A# not run:(.*)$", re.M)


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    return _BLOCK.findall((ROOT / page).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python example"
    namespace: dict[str, object] = {"__name__": f"docs_{Path(page).stem}"}
    # a page may switch autograd off for its session (cache.toggle_autodiff(False)); the
    # tests after it must not inherit that
    with torch.enable_grad():
        for i, block in enumerate(blocks):
            skipped = _NOT_RUN.match(block)
            if skipped:
                assert skipped.group(1).strip(), f"{page} block {i + 1}: say why it is not run"
                continue
            exec(compile(block, f"{page} (python block {i + 1})", "exec"), namespace)
