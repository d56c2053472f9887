"""Calls made without jaxtyping's run-time checks, for `make test-typed`.

`make test-typed` checks every annotation in `src/lmscope` at run time (jaxtyping's pytest hook,
beartype). Two kinds of test need those checks off for a call:

- a test that passes, on purpose, input the annotation excludes (`reset_hooks(direction="BOTH")`,
  a [2, 4] tensor where [1, ...] is declared), to see lmscope's own error: its users run without
  run-time checking, so lmscope's check is what answers them, and the annotation stays the
  contract a static checker holds callers to;
- a test of `torch.compile`: Dynamo cannot trace beartype's wrappers, so a checked forward always
  falls back to eager.

Outside `make test-typed` nothing is checked and `unchecked()` changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from jaxtyping import config


@contextmanager
def unchecked() -> Iterator[None]:
    """Turn jaxtyping's run-time checks off inside the block.

    Example:
        >>> with unchecked(), pytest.raises(ValueError, match="direction"):
        ...     model.reset_hooks(direction="BOTH")
    """
    before = config.jaxtyping_disable
    config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        config.update("jaxtyping_disable", before)
