"""The figure object every `lmscope.viz` function returns, and the page that holds several.

A figure is an HTML fragment (inline CSS and JS, no network) plus, for the static kinds, an SVG
document. It shows itself in Jupyter / VS Code / Colab through `_repr_html_`, and `save` writes one
self-contained file by suffix: `.html` (always), `.svg` (static figures), `.png` (any figure, through
a headless Chromium screenshot).
"""

from __future__ import annotations

import html
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path

from lmscope.errors import BrowserNotFoundError

_ID = "__lmv_id__"  # placeholder for the figure's element id, replaced by a fresh id per render
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# The standalone page may load nothing: no script, style, font or image from anywhere.
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


@cache
def asset(name: str) -> str:
    """The text of a file in `lmscope/viz/assets` (the shared CSS and JS)."""
    return resources.files("lmscope.viz").joinpath("assets", name).read_text()


def json_script(data: object) -> str:
    """`data` as JSON that is safe inside a `<script>` element (no `</script>` can end it)."""
    return json.dumps(data, separators=(",", ":")).replace("</", "<\\/")


def _runtime() -> str:
    return f"<style>{asset('viz.css')}</style><script>{asset('viz.js')}</script>"


class Figure:
    """One figure: renders inline in notebooks and saves as HTML, SVG (static kinds) or PNG.

    Build figures with the `lmscope.viz` functions rather than this class.

    Example:
        >>> fig = viz.heatmap(torch.rand(3, 4), title="random")
        >>> fig.save("random.html")      # one file, nothing loaded from the network
        >>> fig.save("random.svg")       # the static figure itself
    """

    def __init__(
        self, body: str, *, kind: str, title: str, size: tuple[int, int], svg: str | None = None
    ) -> None:
        self._body = body  # HTML with _ID where the root element's id goes
        self.kind = kind
        self.title = title
        self.size = size  # (width, height) in CSS pixels: the PNG's size
        self._svg = svg

    def __repr__(self) -> str:
        return (
            f"<lmscope.viz figure {self.kind!r}: {self.title!r}, {self.size[0]}x{self.size[1]} px>"
        )

    def fragment(self) -> str:
        """The figure's HTML without the shared CSS/JS, with a fresh element id."""
        return self._body.replace(_ID, "lmv" + secrets.token_hex(6))

    def _repr_html_(self) -> str:
        return _runtime() + self.fragment()

    def to_html(self) -> str:
        """A complete, self-contained HTML page of the figure (what `.save("x.html")` writes).

        Example:
            >>> page = viz.line([3.0, 2.0, 1.5]).to_html()
            >>> "http" in page.split("<body>")[1]
            False
        """
        return standalone_page(self.title, self.fragment())

    def to_svg(self) -> str:
        """The figure as a standalone SVG document (static figures only).

        Example:
            >>> svg = viz.bars([1.0, -2.0], ["a", "b"]).to_svg()
        """
        if self._svg is None:
            raise ValueError(
                f"the {self.kind} figure is interactive HTML with no SVG form; save it as .html, "
                "or as .png for a picture of it"
            )
        return self._svg

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the figure to `path`: `.html` / `.htm`, `.svg` or `.png`, by suffix.

        Example:
            >>> viz.line([3.0, 2.0, 1.5], title="loss").save("loss.png")
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".html", ".htm"):
            path.write_text(self.to_html(), encoding="utf-8")
        elif suffix == ".svg":
            path.write_text(self.to_svg(), encoding="utf-8")
        elif suffix == ".png":
            screenshot(self.to_html(), self.size, path)
        else:
            raise ValueError(
                f"cannot save a figure as {path.name!r}: use a .html, .svg or .png file name"
            )
        return path


def standalone_page(title: str, body: str) -> str:
    """A full HTML page holding `body`, the shared CSS/JS, and a policy that blocks all loads."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        f"<title>{html.escape(title)}</title>{_runtime()}</head>"
        f"<body class='lmv-page'>{body}</body></html>\n"
    )


def find_browser() -> str | None:
    """The Chromium to render PNGs with: $LMSCOPE_CHROMIUM, else the first on PATH, else None."""
    env = os.environ.get("LMSCOPE_CHROMIUM")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise BrowserNotFoundError(
                f"LMSCOPE_CHROMIUM={env!r} is not an executable file: point it at a Chromium "
                "binary or unset it"
            )
        return env
    for name in _BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: str, size: tuple[int, int], path: Path, scale: int = 2) -> None:
    """Render the HTML `page` in headless Chromium and write a PNG of its top-left `size` pixels
    (times `scale` for a sharp image) to `path`."""
    browser = find_browser()
    if browser is None:
        raise BrowserNotFoundError(
            "saving a figure as .png needs a headless Chromium, and none is on PATH: install one "
            "(Debian/Ubuntu: apt-get install chromium) or set LMSCOPE_CHROMIUM to its path; or "
            "save as .svg (static figures) or .html"
        )
    width, height = size
    with tempfile.TemporaryDirectory(prefix="lmscope-viz-") as tmp:
        page_file = Path(tmp) / "figure.html"
        page_file.write_text(page, encoding="utf-8")
        out = Path(tmp) / "figure.png"
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp}/profile",
            f"--force-device-scale-factor={scale}", f"--window-size={width},{height}",
            f"--screenshot={out}", page_file.as_uri(),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if not out.exists():
            raise RuntimeError(
                f"{browser} wrote no screenshot (exit status {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        shutil.move(out, path)


class Page(Figure):
    """Several figures on one page, sharing one copy of the CSS/JS (see `viz.page`)."""

    def __init__(self, figures: list[Figure], title: str) -> None:
        if not figures:
            raise ValueError("a page needs at least one figure")
        self.figures = figures
        width = max(f.size[0] for f in figures) + 32
        height = sum(f.size[1] + 24 for f in figures) + 60
        heading = f"<h1 class='lmv-h1'>{html.escape(title)}</h1>" if title else ""
        super().__init__(heading, kind="page", title=title, size=(width, height))

    def fragment(self) -> str:
        parts = "".join(
            f"<section class='lmv-section'>{f.fragment()}</section>" for f in self.figures
        )
        return f"<div class='lmv-pagebody'>{self._body}{parts}</div>"


def page(*figures: Figure, title: str = "") -> Page:
    """Put several figures on one page (one HTML file, one copy of the scripts).

    Example:
        >>> viz.page(viz.line([3.0, 2.0]), viz.bars([1.0, -1.0], ["a", "b"]), title="run 1").save("run1.html")
    """
    for f in figures:
        if not isinstance(f, Figure):
            raise TypeError(f"viz.page takes lmscope.viz figures, got {type(f).__name__}")
    return Page(list(figures), title)
