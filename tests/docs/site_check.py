"""Checks of the built documentation site, run by `make docs` after `mkdocs build --strict`
(LMSCOPE_SITE=site pytest tests/docs/site_check.py): not part of `make test`, whose time budget
the build (~10 s) does not fit, and the file name keeps pytest's default collection away.

- every relative link and #anchor of every built page (the API reference's cross-references
  included, which the Markdown-level test_links.py cannot see) resolves to a file and an id;
- the front page and one API page render in headless Chromium (the session's `browser` fixture,
  tests/conftest.py), served over HTTP from localhost: the header, navigation and content are visible and the screenshot is not
  blank, and nothing was requested from the network. Screenshots are kept in site/_checks/ for a look.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

SITE = Path(os.environ.get("LMSCOPE_SITE", "site")).resolve()


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            if key in ("href", "src") and value and tag in ("a", "img", "link", "script"):
                self.hrefs.append(value)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(errors="replace"))
    return page


def target_file(page: Path, href: str) -> Path:
    """The file a relative href of a built page opens (a folder means its index.html)."""
    dest = (page.parent / unquote(urlsplit(href).path)).resolve() if urlsplit(href).path else page
    return dest / "index.html" if dest.is_dir() else dest


def broken_links(site: Path) -> list[str]:
    """'page: href (why)' for every relative link of the site whose file or #anchor is missing."""
    pages = {p: parse(p) for p in site.rglob("*.html")}
    # 404.html is served at any depth, so mkdocs gives it root-absolute links on purpose
    pages = {p: page for p, page in pages.items() if p.name != "404.html"}
    problems = []
    for path, page in pages.items():
        for href in page.hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or href.startswith(("mailto:", "javascript:", "data:")):
                continue
            dest = target_file(path, href)
            where = path.relative_to(site)
            if not dest.exists():
                problems.append(f"{where}: {href} (no file)")
            elif parts.fragment and dest.suffix == ".html":
                ids = pages[dest].ids if dest in pages else parse(dest).ids
                if unquote(parts.fragment) not in ids:
                    problems.append(f"{where}: {href} (no id #{parts.fragment})")
    return problems


@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site at {SITE}: run `make docs` (it builds site/ first)")
    return SITE


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site over HTTP on localhost, as a reader gets it (search's worker needs http)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_every_internal_link_and_anchor_resolves(site: Path) -> None:
    assert broken_links(site) == []


@pytest.mark.parametrize(
    ("page", "must_show"),
    [
        ("", "lmscope"),
        ("api/hooked_transformer/", "run_with_cache"),
    ],
)
def test_page_renders_in_chromium(
    site: Path, served: str, browser: Any, page: str, must_show: str
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    shown = context.new_page()
    errors: list[str] = []
    shown.on("pageerror", lambda e: errors.append(str(e)))
    shown.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    requests: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(served):
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort()

    shown.route("**/*", route)
    shown.goto(served + page)
    shown.wait_for_load_state("networkidle")
    assert shown.locator("header.md-header").is_visible()
    assert shown.locator("nav.md-nav--primary").count() == 1
    content = shown.locator("article.md-content__inner")
    assert content.is_visible() and must_show in content.inner_text()
    out = site / "_checks" / ((page.strip("/").replace("/", "_") or "index") + ".png")
    out.parent.mkdir(exist_ok=True)
    png = shown.screenshot(path=str(out))
    context.close()
    assert requests == [], f"{page} asked the network for {requests}"
    assert errors == [], f"{page}: script errors {errors}"
    assert len(png) > 20_000, f"{page}: the screenshot ({len(png)} bytes) looks blank"


API_MODULES = {
    "viz": "lmscope.viz",
    "harvest": "lmscope.harvest",
    "encoders": "lmscope.encoders",
    "sae": "lmscope.sae",
    "train": "lmscope.train",
}


@pytest.mark.parametrize("page", sorted(API_MODULES))
def test_api_page_documents_every_public_name(site: Path, page: str) -> None:
    """Each name of the module's __all__ has an entry (griffe resolves a name shared with a
    submodule to the submodule, so such functions are listed explicitly on the page)."""
    import importlib

    module = importlib.import_module(API_MODULES[page])
    ids = parse(site / "api" / page / "index.html").ids
    prefix = API_MODULES[page]
    missing = [
        name
        for name in module.__all__
        if f"{prefix}.{name}" not in ids
        and not any(i.endswith(f".{name}.{name}") for i in ids)
        and not any(i.startswith(f"{prefix}.") and i.endswith(f".{name}") for i in ids)
    ]
    assert missing == [], f"docs/api/{page}.md lacks {missing}"


def test_model_table_sorts_and_filters(served: str, browser: Any) -> None:
    """docs/javascripts/tables.js on the model table: filtering hides the rows without every word
    typed, a header click sorts numerically (d_model) and a second click reverses; unknown
    figures ("?") stay last both ways."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served + "models/")
    table = page.locator("article table").first
    rows = table.locator("tbody tr")
    total = rows.count()
    assert total > 12
    page.locator(".lms-table-filter").first.fill("llama rotary")
    shown = [r for r in rows.all() if r.is_visible()]
    assert 0 < len(shown) < total
    assert all("llama" in r.inner_text().lower() for r in shown)
    page.locator(".lms-table-filter").first.fill("")
    headers = [h.inner_text().strip() for h in table.locator("thead th").all()]
    col = headers.index("d_model")
    table.locator("thead th").nth(col).click()

    def column() -> list[str]:
        return [r.locator("td").nth(col).inner_text().strip() for r in rows.all()]

    def known(cells: list[str]) -> list[float]:
        return [float(c.replace(",", "")) for c in cells if c not in ("", "?")]

    cells = column()
    ascending = known(cells)
    assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
    unknown = cells.index("?")  # unknown figures sort last, in either direction
    assert set(cells[unknown:]) == {"?"}
    table.locator("thead th").nth(col).click()
    cells = column()
    assert known(cells) == sorted(ascending, reverse=True)
    assert set(cells[cells.index("?") :]) == {"?"}
    context.close()
    assert errors == []
