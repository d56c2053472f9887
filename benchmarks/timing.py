"""The timing core of the suite: contenders called round-robin, so drift in machine load hits all
alike; warm-up rounds, then the median of the timed ones. A contender that raises is a result.

    >>> from benchmarks.timing import time_round_robin
    >>> out = time_round_robin({"a": lambda: sum(range(100))}, warmup=1, repeats=3)
    >>> sorted(out["a"])
    ['median_s', 'min_s', 'times_s']
"""

from __future__ import annotations

import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


def sync(device: str) -> None:
    """Wait for `device`'s queued work (CUDA); nothing on the CPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def error_text(exc: BaseException) -> str:
    """An exception as one short line for the results."""
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text[:300]


def time_round_robin(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str = "cpu"
) -> dict[str, dict[str, Any]]:
    """For each function: `warmup` untimed rounds, then `repeats` timed rounds, every round calling
    each function once in turn. A function that raises is dropped and its error recorded."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    errors: dict[str, str] = {}
    for round_idx in range(warmup + repeats):
        for name, fn in fns.items():
            if name in errors:
                continue
            try:
                sync(device)
                start = time.perf_counter()
                out = fn()
                sync(device)
                elapsed = time.perf_counter() - start
            except Exception as exc:  # a tool failing a workload is a result, not a crash
                errors[name] = error_text(exc)
                traceback.print_exc(file=sys.stderr)
                continue
            del out
            if round_idx >= warmup:
                times[name].append(elapsed)
    result: dict[str, dict[str, Any]] = {}
    for name in fns:
        if name in errors:
            result[name] = {"error": errors[name]}
        else:
            t = times[name]
            result[name] = {"median_s": statistics.median(t), "min_s": min(t), "times_s": t}
    return result
