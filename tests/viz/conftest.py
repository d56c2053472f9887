"""Browser fixtures for the viz tests, on the session's headless Chromium (`browser`, shared in
tests/conftest.py with the documentation site's tests).

`open_figure(fig, name)` saves the figure as HTML under the test's tmp dir, opens the file, and
returns the page once the figure's script has run. When the test ends, every opened page must
have made no request other than its own file:// URL and logged no console error; a screenshot of
each is saved next to its HTML.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmscope.viz import Figure


class FigurePage:
    """An opened figure: `page` (Playwright), and what it requested or logged."""

    def __init__(self, page: Any, path: Path) -> None:
        self.page = page
        self.path = path
        self.requests: list[str] = []
        self.errors: list[str] = []

    def root(self, index: int = 0) -> Any:
        return self.page.locator(".lmv").nth(index)

    def tip(self) -> str:
        """The visible tooltip's text ('' when none is shown)."""
        tip = self.page.locator(".lmv-tip:visible")
        return tip.first.inner_text() if tip.count() else ""


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[[Path], FigurePage]]:
    """Open an HTML file holding viz figures; checked for requests and errors at teardown."""
    opened: list[tuple[Any, FigurePage]] = []

    def open_(path: Path) -> FigurePage:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        shown = FigurePage(page, path)

        def route(r: Any) -> None:
            if r.request.url.startswith("file://"):
                r.continue_()
            else:
                shown.requests.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: shown.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: shown.errors.append(str(e)))
        page.goto(path.as_uri())
        page.wait_for_selector(".lmv[data-ready]", state="attached")
        opened.append((context, shown))
        return shown

    yield open_
    for context, shown in opened:  # a screenshot of each page next to its file, then the checks
        shown.page.screenshot(path=str(shown.path.with_suffix(".png")), full_page=True)
        context.close()
        assert shown.requests == [], f"{shown.path.name} made requests: {shown.requests}"
        assert shown.errors == [], f"{shown.path.name} logged errors: {shown.errors}"


@pytest.fixture
def open_figure(
    open_page: Callable[[Path], FigurePage], tmp_path: Path
) -> Callable[[Figure, str], FigurePage]:
    """Save a figure as `<name>.html` under the test's tmp dir and open it (see `open_page`)."""

    def open_(fig: Figure, name: str) -> FigurePage:
        return open_page(fig.save(tmp_path / f"{name}.html"))

    return open_
