"""One adapter per tool: each module drives its tool through every workload the way that tool's
users write it, and owns the tool's loads.

    >>> from benchmarks.adapters import ADAPTERS, adapter_for_load
    >>> sorted(ADAPTERS), adapter_for_load("hf").__name__
    (['lmscope', 'nnsight', 'tl3', 'tl4'], 'HFAdapter')
"""

from __future__ import annotations

from benchmarks.adapters.base import Adapter
from benchmarks.adapters.hf import HFAdapter
from benchmarks.adapters.lmscope import LmscopeAdapter
from benchmarks.adapters.nnsight import NnsightAdapter
from benchmarks.adapters.tl3 import TL3Adapter
from benchmarks.adapters.tl4 import TL4Adapter

ADAPTERS: dict[str, type[Adapter]] = {
    "lmscope": LmscopeAdapter,
    "tl3": TL3Adapter,
    "tl4": TL4Adapter,
    "nnsight": NnsightAdapter,
}


def adapter_for_load(kind: str) -> type[Adapter]:
    """The adapter whose tool measures load kind `kind` ("hf" is HF's own)."""
    for cls in (HFAdapter, *ADAPTERS.values()):
        if kind in cls.load_kinds:
            return cls
    raise ValueError(f"unknown load kind {kind!r}")


__all__ = ["ADAPTERS", "Adapter", "HFAdapter", "adapter_for_load"]
