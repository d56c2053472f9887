"""Files of a harvest directory: safetensors written without copies and published atomically,
read back memory-mapped, and the JSON manifest.

Every file appears under its final name only when it is complete: it is written to `NAME.tmp`
and renamed (`os.replace` is atomic), so a process killed at any instant leaves either the old
file, the new one, or a `.tmp` that the next run deletes. A killed process loses nothing it
wrote (the kernel holds it); `fsync=True` also waits for each file to reach the disk before the
rename, which is what survives a power cut or an OS crash, at the cost of waiting for the disk.

Shards are plain safetensors files (the format of the `safetensors` package, which reads them
too): an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and
byte range, then the tensors' bytes. Writing the format directly lets the bytes go from the
activation buffers to the file (and through SHA-256) without a Python-side copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

TMP_SUFFIX = ".tmp"
FORMAT = "lmscope.harvest"  # the manifest's "format"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENS_FILE = "tokens.safetensors"
REDUCED_FILE = "reduced.safetensors"
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH = {code: dtype for dtype, code in _DTYPES.items()}


class HarvestDirectoryError(ValueError):
    """A folder harvest will not write into or read: another harvest (made with other
    arguments), or files that are not a harvest."""


def _raw_bytes(t: Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, as a view (no copy)."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def write_safetensors(
    path: Path,
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
    fsync: bool = False,
) -> tuple[str, int]:
    """Write `tensors` as a safetensors file at `path`, atomically (`path.tmp`, rename; with
    `fsync`, flushed to the disk first); returns the file's SHA-256 (hex) and size.

    Example:
        >>> sha, size = write_safetensors(Path("x.safetensors"), {"a": torch.zeros(2, 3)})
    """
    header: dict[str, Any] = {}
    offset = 0
    parts = []
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} has no safetensors code")
        t = t.detach().to("cpu").contiguous()
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
        parts.append(t)
    if metadata:
        header["__metadata__"] = dict(metadata)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # data starts 8-byte aligned
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f:
        write_chunk(f, digest, struct.pack("<Q", len(head)))
        write_chunk(f, digest, head)
        for t in parts:
            write_chunk(f, digest, _raw_bytes(t))
        _finish(f, fsync)
    publish(tmp, path)
    return digest.hexdigest(), 8 + len(head) + offset


def _finish(f: BinaryIO | Any, fsync: bool) -> None:
    f.flush()
    if fsync:
        os.fsync(f.fileno())


def write_chunk(f: BinaryIO, digest: Any, chunk: bytes | memoryview) -> None:
    """Append `chunk` to the open file and to the running SHA-256."""
    f.write(chunk)
    digest.update(chunk)


def publish(tmp: Path, path: Path) -> None:
    """Rename the finished `tmp` to `path` (atomic: readers see the old file or the new one)."""
    os.replace(tmp, path)


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets) and the offset
    at which its data starts.

    Example:
        >>> header, start = read_header(Path("x.safetensors"))
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def mmap_safetensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, memory-mapped: nothing is read until it is used.

    The mapping is copy-on-write (`numpy.memmap(mode="c")`): writing into a tensor changes the
    process's pages, never the file.

    Example:
        >>> acts = mmap_safetensors(Path("shards/shard-00000.safetensors"))
    """
    header, start = read_header(path)
    end = max((spec["data_offsets"][1] for spec in header.values()), default=0)
    if end == 0:
        data = torch.empty(0, dtype=torch.uint8)
    else:
        data = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c", offset=start, shape=end))
    out = {}
    for name, spec in header.items():
        lo, hi = spec["data_offsets"]
        dtype = _TORCH[spec["dtype"]]
        out[name] = data[lo:hi].view(dtype).reshape(spec["shape"])
    return out


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json(path: Path, doc: Mapping[str, Any], fsync: bool = False) -> None:
    """Write `doc` as JSON at `path`, atomically (`path.tmp`, rename; with `fsync`, flushed to
    the disk first)."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "w") as f:
        f.write(json.dumps(doc, indent=1))
        _finish(f, fsync)
    publish(tmp, path)


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the `.tmp` files a killed run left under `folder`; returns them."""
    gone = [p for p in folder.rglob(f"*{TMP_SUFFIX}") if p.is_file()]
    for p in gone:
        p.unlink()
    return gone


def write_safetensors_from_raw(
    path: Path,
    name: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    raw: Path,
    fsync: bool = False,
) -> tuple[str, int]:
    """Write one tensor whose bytes are already in the file `raw` (written as they were made,
    before the shape was known) as a safetensors file at `path`, atomically; returns its SHA-256
    and size. `raw` is deleted."""
    size = raw.stat().st_size
    header = {name: {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [0, size]}}
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as f, open(raw, "rb") as src:
        write_chunk(f, digest, struct.pack("<Q", len(head)))
        write_chunk(f, digest, head)
        while block := src.read(1 << 24):
            write_chunk(f, digest, block)
        _finish(f, fsync)
    publish(tmp, path)
    raw.unlink()
    return digest.hexdigest(), 8 + len(head) + size
