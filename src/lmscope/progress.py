"""Progress bars for long work: shown on a terminal once the work has taken two seconds, never
when `verbose=False` or output is not a terminal (CI logs, notebooks' captured stderr).

Example:
    >>> bar = progress_bar(100, "training", verbose=False)
    >>> bar.disable
    True
"""

from __future__ import annotations

import io
import sys
from typing import IO

from tqdm.auto import tqdm

DELAY_S = 2.0


def progress_bar(
    total: int,
    desc: str,
    verbose: bool = True,
    unit: str = "it",
    initial: int = 0,
    file: IO[str] | io.TextIOBase | None = None,
) -> tqdm:
    """A tqdm bar on `file` (default stderr), shown only when `verbose` and `file` is a terminal,
    after two seconds of work.

    Example:
        >>> with progress_bar(10, "steps", unit="step") as bar:
        ...     for _ in range(10):
        ...         bar.update()
    """
    file = sys.stderr if file is None else file
    shown = verbose and hasattr(file, "isatty") and file.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        file=file,
        disable=not shown,
        delay=DELAY_S,
    )
