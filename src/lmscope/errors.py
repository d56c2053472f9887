"""Errors lmscope raises for bad input, each saying what is wrong and what to do.

Every error about a checkpoint is a :class:`CheckpointError` whose message names the file (or
directory) and the problem. Each subclass also derives from the built-in exception that code
written against earlier lmscope versions caught (``FileNotFoundError``, ``KeyError``,
``pickle.UnpicklingError``), so ``except`` clauses keep working.
"""

from __future__ import annotations

import pickle

__all__ = [
    "BrowserNotFoundError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "FigureTooLargeError",
    "MissingTensorError",
    "RemoteCodeError",
    "UnsafeCheckpointError",
]


class CheckpointError(ValueError):
    """A checkpoint that lmscope will not load as it is: malformed, truncated, inconsistent with
    its config, or holding tensors lmscope would otherwise have to ignore."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The path, or a file the checkpoint needs (config.json, weights, a shard), does not exist."""


class MissingTensorError(CheckpointError, KeyError):
    """The model needs a tensor the checkpoint does not hold."""

    __str__ = CheckpointError.__str__  # KeyError would print the message as a quoted repr


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A pickled checkpoint holds Python objects other than tensors; lmscope never unpickles
    them (that could run arbitrary code)."""


class RemoteCodeError(CheckpointError):
    """The checkpoint's tokenizer needs Python code shipped with the checkpoint, and
    ``trust_remote_code=True`` was not given."""


class FigureTooLargeError(ValueError):
    """A `lmscope.viz` input too large for one self-contained page; the message gives its size,
    the limit, and how to slice or down-sample it."""


class BrowserNotFoundError(RuntimeError):
    """Saving a figure as PNG needs a headless Chromium and none was found; the message says how
    to install one or which format to save instead."""
