"""Entries of lmscope's file caches (`gguf_cache`, `processed_cache`): a folder written under a
temporary name, completed by a manifest that records every file's size, and renamed into place,
so a killed load leaves no entry and a damaged one is noticed by its sizes.

Example:
    >>> header, offsets = safetensors_header({"w": ((2, 3), torch.bfloat16)})
    >>> offsets["w"] == len(header)
    True
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "intact_manifest",
    "move_into_place",
    "remove_stale_temps",
    "safetensors_header",
    "stat_key",
    "switched_on",
    "write_manifest",
    "write_tensor",
]

STALE_TEMP_S = 24 * 3600  # a temporary entry this old belongs to a load that was killed

_SAFETENSORS_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.uint8: "U8",  # padding (see `lmscope.loading.processed_cache`)
}


def switched_on(flag: bool | None, env: str) -> bool:
    """`flag` when given, else whether the environment variable `env` leaves a cache on (it is
    on unless set to 0, false, no or off).

    Example:
        >>> switched_on(None, "LMSCOPE_UNSET_SWITCH")
        True
    """
    if flag is not None:
        return bool(flag)
    return os.environ.get(env, "1").strip().lower() not in ("0", "false", "no", "off")


def stat_key(path: Path) -> list[int]:
    """What must stay equal for a file to be the one a cache entry was made from: size, mtime,
    ctime (which no one can set back) and inode."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def safetensors_header(
    entries: dict[str, tuple[tuple[int, ...], torch.dtype]], align: int = 8
) -> tuple[bytes, dict[str, int]]:
    """The header of a safetensors file holding tensors of these (shape, dtype) in this order
    (8-byte length, JSON padded with spaces so the data starts at a multiple of `align`, a
    multiple of 8) and each tensor's byte offset in the file.

    Example:
        >>> header, offsets = safetensors_header({"a": ((4,), torch.float32), "b": ((2,), torch.float16)})
        >>> offsets["b"] - offsets["a"]
        16
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (shape, dtype) in entries.items():
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: cannot keep a {dtype} tensor in the cache")
        size = dtype.itemsize * int(torch.Size(shape).numel())
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % align)
    start = 8 + len(text)
    where = {name: start + header[name]["data_offsets"][0] for name in entries}
    return struct.pack("<Q", len(text)) + text, where


def write_tensor(fd: int, tensor: torch.Tensor, offset: int) -> None:
    """Write `tensor`'s bytes (any dtype, any device, any layout) at `offset` of the open file
    `fd`.

    The tensor's pages are read in first, one byte each: a tensor that maps a file (a weight
    adopted from its checkpoint) faults its pages in while the kernel copies them, which splits
    the copy, and the written file then lies in small page-cache blocks that a later map of it
    faults in 1.5-2x slower (measured on the kept weights of a 2 GB checkpoint)."""
    data = tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
    if data.size:
        int(data[:: mmap.PAGESIZE].sum())  # (every page read once: see above)
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def write_manifest(folder: Path, manifest_name: str, fmt: int, **fields: Any) -> None:
    """Write the manifest that completes an entry: its format, the size of every file in
    `folder`, and `fields`."""
    files = {p.name: p.stat().st_size for p in folder.iterdir() if p.name != manifest_name}
    manifest = {"format": fmt, **fields, "files": files}
    (folder / manifest_name).write_text(json.dumps(manifest, indent=2))


def intact_manifest(entry: Path, manifest_name: str, fmt: int) -> dict[str, Any] | None:
    """The manifest of `entry` when it is a complete entry of format `fmt` (the manifest names
    every file with the size it was written with), else None."""
    try:
        manifest = json.loads((entry / manifest_name).read_text())
        files = manifest["files"]
        intact = manifest.get("format") == fmt and all(
            (entry / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest if intact else None


def move_into_place(tmp: Path, entry: Path, manifest_name: str, fmt: int) -> None:
    """Rename the finished `tmp` to `entry`; when another process got there first, its entry is
    as good and `tmp` is removed (an OSError only when `entry` is not a complete entry)."""
    try:
        os.rename(tmp, entry)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if intact_manifest(entry, manifest_name, fmt) is None:
            raise


def remove_stale_temps(root: Path) -> None:
    """Remove temporary entries (`.tmp-*`) left by loads that were killed long ago."""
    now = time.time()
    for stale in root.glob(".tmp-*"):
        try:
            if now - stale.stat().st_mtime > STALE_TEMP_S:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
