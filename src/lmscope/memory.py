"""Process memory settings that make caching activations on CPU cheap.

A cache holds every activation of a forward pass until it is dropped; glibc then hands that
memory back to the kernel, and the next run pays a page fault (and zeroing) on every page again.
For SmolLM2-135M at 4 x 128 tokens that made `run_with_cache()` 1.3-1.7x a plain forward; kept for
reuse, it is 1.03x (docs/benchmarks.md). `tune_malloc()` keeps up to 1 GiB of freed heap and
serves blocks up to 256 MiB from the heap, the usual advice for PyTorch on CPU (where jemalloc or
tcmalloc are not preloaded). It changes the whole process's allocator, so importing lmscope does
not call it: the first `run_with_cache` does (or call it yourself); `LMSCOPE_TUNE_MALLOC=0` keeps
glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
KEEP_FREED_BYTES = 2**30
HEAP_BLOCK_BYTES = 256 * 2**20
_tuned: bool | None = None


def tune_malloc() -> bool:
    """Keep freed memory for reuse (glibc only). Returns whether the settings are in force.

    Example:
        >>> import lmscope.memory
        >>> lmscope.memory.tune_malloc()
        True
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("LMSCOPE_TUNE_MALLOC", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc caps the mmap threshold (32 MiB on older releases): fall back to the largest it takes.
    for block in (HEAP_BLOCK_BYTES, 32 * 2**20):
        if mallopt(_M_MMAP_THRESHOLD, block) == 1:
            break
    else:
        return False
    _tuned = mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES) == 1
    return _tuned


def release_freed_memory() -> bool:
    """Hand the heap's freed pages back to the kernel now (glibc's `malloc_trim`; returns False
    and does nothing elsewhere). `tune_malloc` keeps freed memory for the next forward pass; a
    load's working buffers are not needed again, and kept they would add to the loaded model's
    peak memory.

    Example:
        >>> import lmscope.memory
        >>> lmscope.memory.release_freed_memory()
        True
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
