"""mkdocs hooks for the documentation site (mkdocs.yml `hooks:`).

A page added under docs/ but not yet named in mkdocs.yml's nav is appended to a "More" section,
so it is built, searchable and reachable from the nav instead of an omitted-file warning that
--strict turns into a failed build. Name it in the nav to give it its place. The tutorial pages
that scripts/render_notebooks.py generates (docs/tutorials/, only when the notebooks were
executed) go to a "Tutorials" section, the gallery first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _nav_pages(nav: Any) -> set[str]:
    """Every page path a nav (mkdocs.yml's nested lists/dicts) names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_nav_pages(item) for item in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(_nav_pages(value) for value in nav.values())) if nav else set()
    return set()


def unlisted_pages(docs_dir: Path, nav: Any) -> list[str]:
    """The Markdown pages under docs_dir that the nav does not name, sorted.

    Example:
        >>> unlisted_pages(Path("docs"), ["index.md"])  # doctest: +SKIP
        ['analysis.md', ...]
    """
    listed = _nav_pages(nav)
    pages = (p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md"))
    return sorted(p for p in pages if p not in listed)


def on_config(config: Any) -> Any:
    missing = unlisted_pages(Path(config["docs_dir"]), config["nav"])
    if not missing or config["nav"] is None:
        return config
    # the tutorials scripts/render_notebooks.py generates from the executed notebooks
    tutorials = [p for p in missing if p.startswith("tutorials/")]
    if tutorials:
        gallery = [p for p in tutorials if p == "tutorials/gallery.md"]
        config["nav"].append({"Tutorials": gallery + [p for p in tutorials if p not in gallery]})
    others = [p for p in missing if p not in tutorials]
    if others:
        config["nav"].append({"More": others})
    return config
