"""Activation harvesting at dataset scale: dataset -> packed tokens -> activations -> sharded
safetensors + manifest, resumable after a kill, on one process or scaled out on Ray; reducers
(mean/variance, covariance, top-k examples, histograms) for when raw activations would not fit;
a memory-mapped reader. docs/harvest.md has the guide.

`lmscope.harvest` is this package and is also callable: `lmscope.harvest(model, data, ...)`
calls `lmscope.harvest.harvest`, and `lmscope.harvest.open(DIR)` reads the result. (The
package's module object is a `ModuleType` subclass with `__call__`, which Python supports by
assigning the module's `__class__`; `from lmscope.harvest import harvest` is the same function
for code that prefers a plain one, e.g. for type checkers.)

Example:
    >>> import lmscope
    >>> h = lmscope.harvest(model, "corpus.jsonl", hooks=["blocks.0.hook_resid_post"], out="acts")
    >>> lmscope.harvest.open("acts").read("blocks.0.hook_resid_post").shape
"""

from __future__ import annotations

import sys
import types
from typing import Any

from lmscope.harvest.data import DatasetError
from lmscope.harvest.engine import harvest, weights_sha256
from lmscope.harvest.reader import Harvest, TokenActivations, open
from lmscope.harvest.reducers import Covariance, Histogram, MeanVar, Reducer, TopK
from lmscope.harvest.store import HarvestDirectoryError

__all__ = [
    "Covariance",
    "DatasetError",
    "Harvest",
    "HarvestDirectoryError",
    "Histogram",
    "MeanVar",
    "Reducer",
    "TokenActivations",
    "TopK",
    "harvest",
    "open",
    "weights_sha256",
]


class _CallableModule(types.ModuleType):
    """This package's module type: calling the module calls `harvest`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Harvest:
        return harvest(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
