"""A griffe extension for the API reference (mkdocs.yml, mkdocstrings `extensions:`).

lmscope's docstrings head their doctest with "Example:" (singular), which Google style reads as an
admonition titled "Example", so its `>>>` lines would render as Markdown (block quotes, and
`x[0]["k"]` as a broken reference link). This extension renames the heading to "Examples:", the
section griffe renders as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class ExamplesSection(griffe.Extension):
    """Treat a docstring's "Example:" heading as Google style's "Examples:" section."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
