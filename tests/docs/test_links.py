"""Every internal link of the Markdown documentation points to a page that exists and, when it
names an anchor, to a heading of that page (the slug mkdocs' toc gives it). A fast check on the
sources for `make test`; `make docs` builds the site with --strict (mkdocs validates links and
anchors too) and crawls the built HTML (tests/docs/site_check.py).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_IMAGE = re.compile(r"!\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*(?:\{#([\w-]+)\})?\s*$", re.M)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


@cache
def generated() -> set[Path]:
    """The files `make docs` generates under docs/ before building (not in a clean clone):
    scripts/make_diagram.py's SVGs."""
    spec = importlib.util.spec_from_file_location(
        "make_diagram", ROOT / "scripts" / "make_diagram.py"
    )
    assert spec is not None and spec.loader is not None
    module = sys.modules.setdefault("make_diagram", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(module)
    return {(module.OUT / name).resolve() for name in module.file_names()}


def slug(heading: str) -> str:
    """The anchor mkdocs' toc gives a heading (Python-Markdown's default slugify).

    Example:
        >>> slug("Writing a family adapter")
        'writing-a-family-adapter'
    """
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets _1, _2, ... as toc does)."""
    found: set[str] = set()
    for title, explicit in _HEADING.findall(_FENCE.sub("", page.read_text())):
        base = explicit or slug(title)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}_{n}"
        found.add(name)
    return found


def links(page: Path) -> list[str]:
    """The internal link and image targets of a page, outside code."""
    text = _CODE.sub("", _FENCE.sub("", page.read_text()))
    targets = _LINK.findall(text) + _IMAGE.findall(text)
    return [t for t in targets if not _EXTERNAL.match(t)]


def broken(page: Path) -> list[str]:
    """Each internal link of `page` that names a missing file or anchor, with the reason."""
    problems = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if path and not dest.exists() and dest not in generated():
            problems.append(
                f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return problems


PAGES = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md"))


@pytest.mark.parametrize("page", PAGES)
def test_internal_links_resolve(page: str) -> None:
    assert broken(ROOT / page) == []


def test_checker_finds_a_broken_anchor_and_file(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Some `code` section\n\n[ok](#some-code-section)\n"
    )
    (tmp_path / "b.md").write_text(
        "[x](a.md#title) [y](a.md#nope) [z](c.md) [w](https://e.org)\n`[no](d.md)`\n"
    )
    assert broken(tmp_path / "a.md") == []
    problems = broken(tmp_path / "b.md")
    assert len(problems) == 2
    assert "#nope" in problems[0] and "c.md" in problems[1]
