"""Checkpoints on disk seen through one small interface: `hf_config`, `tensor_names()`, `get(name)`
and `tokenizer_loader()`.

`get` reads one tensor at a time (safetensors `safe_open`, or a memory-mapped `.bin` read with
`torch.load(weights_only=True)`), so loading never holds a second copy of the whole model. A
tensor asked for with `keep=True` is a private (copy-on-write) map of its own pages of the file,
so the model can adopt it as a parameter without copying it: writes to it never reach the file.
With `out=`, a safetensors tensor is read from the file straight into `out` (one copy, by the
kernel, and no page of the file enters this process's RSS).
"""

from __future__ import annotations

import ctypes
import functools
import json
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors import safe_open

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
# A safetensors handle maps its whole file, and every page read stays in this process's RSS until
# the handle goes. Reopening after this many bytes keeps ~one chunk of the file resident while
# loading instead of all of it (peak RSS ~ model + chunk, not model + file); reopening is cheap.
_REMAP_BYTES = 64 * 2**20
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}


def _safetensors_header(file: Path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the data, {name: {"dtype", "shape", "data_offsets"}}) of a safetensors
    file: an 8-byte little-endian header length, then the JSON header, then the data."""
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def _map_private(file: Path, start: int, entry: dict[str, Any]) -> torch.Tensor | None:
    """One tensor as a private copy-on-write map of just its own pages of `file` (None when its
    dtype is not a float type or it is empty). Its pages enter RSS only when read, leave when
    the tensor goes, and writes to it never reach the file."""
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    begin, end = entry["data_offsets"]
    if dtype is None or end <= begin:
        return None
    offset = start + begin
    page_start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(file, "rb") as f:
        buffer = mmap.mmap(
            f.fileno(), start + end - page_start, access=mmap.ACCESS_COPY, offset=page_start
        )
    count = (end - begin) // dtype.itemsize
    tensor = torch.frombuffer(buffer, dtype=dtype, count=count, offset=offset - page_start)
    return tensor.view(entry["shape"])


def _read_into(file: Path, start: int, entry: dict[str, Any], out: torch.Tensor) -> bool:
    """Read one safetensors tensor from `file` into `out` with `preadv` (False, having read
    nothing, when `out` is not a contiguous CPU tensor of the stored shape and dtype)."""
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    if (
        dtype != out.dtype
        or list(out.shape) != entry["shape"]
        or out.device.type != "cpu"
        or not out.is_contiguous()
    ):
        return False
    begin, end = entry["data_offsets"]
    if end - begin != out.nbytes:
        raise OSError(f"{file}: the header gives tensor data of {end - begin} bytes for {entry}")
    if out.nbytes == 0:
        return True
    buffer = memoryview((ctypes.c_char * out.nbytes).from_address(out.data_ptr())).cast("B")
    with open(file, "rb", buffering=0) as f:
        done = 0
        while done < out.nbytes:  # a single read stops at 2 GiB
            n = os.preadv(f.fileno(), [buffer[done:]], start + begin + done)
            if n == 0:
                raise OSError(f"{file} ends inside tensor data; is the file truncated?")
            done += n
    return True


def copy_checked(name: str, tensor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out.copy_(tensor)`, refusing a shape mismatch (which copy_ would broadcast silently)."""
    if tensor.shape != out.shape:
        raise ValueError(
            f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
            f"{tuple(out.shape)}"
        )
    return out.copy_(tensor)


class Checkpoint(Protocol):
    """What a family adapter reads from: HF config and HF-named tensors."""

    hf_config: dict[str, Any]
    # whether `get(name, out=...)` reads from disk into `out` without materialising the tensor
    reads_into: bool

    def tensor_names(self) -> list[str]: ...

    def get(self, name: str, keep: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        """The HF-named tensor. `keep=True` asks for one that may become a parameter as it is:
        it must not share memory with any other tensor handed out. With `out`, the tensor is
        written into `out` (same shape; `copy_checked` semantics) and `out` is returned."""
        ...

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        """A cheap callable that builds the tokenizer (None when the checkpoint has none)."""
        ...


class DirectoryCheckpoint:
    """A directory written by `save_pretrained` (or a hub snapshot): config.json + weights.

    Safetensors (single or sharded) are preferred; `.bin` files are read only with
    `torch.load(weights_only=True)`, which refuses to unpickle code.
    """

    reads_into = True

    def __init__(self, path: str | Path, trust_remote_code: bool = False) -> None:
        self.path = Path(path)
        self.trust_remote_code = trust_remote_code
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{self.path} has no config.json; is it a Hugging Face model directory?"
            )
        self.hf_config: dict[str, Any] = json.loads(config_file.read_text())
        self._files: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._mapped_bytes: dict[Path, int] = {}
        safetensors = sorted(self.path.glob("*.safetensors"))
        bins = sorted(p for p in self.path.glob("*.bin") if p.name.startswith("pytorch_model"))
        if safetensors:
            for file in safetensors:
                self._headers[file] = _safetensors_header(file)
                for key in self._headers[file][1]:
                    self._files[key] = file
        elif bins:
            for file in bins:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                self._handles[file] = state
                for key in state:
                    self._files[key] = file
        else:
            raise FileNotFoundError(
                f"{self.path} has no *.safetensors or pytorch_model*.bin weights"
            )

    def __repr__(self) -> str:
        return f"DirectoryCheckpoint({str(self.path)!r}, tensors={len(self._files)})"

    def tensor_names(self) -> list[str]:
        return list(self._files)

    def _resolve(self, name: str) -> str:
        """The stored key for `name`; checkpoints differ on the base-model prefix ("transformer.")."""
        if name in self._files:
            return name
        head, _, rest = name.partition(".")
        if rest in self._files:
            return rest
        raise KeyError(
            f"checkpoint {self.path} is missing tensor {name!r}; it holds {len(self._files)} tensors "
            f"such as {list(self._files)[:4]}"
        )

    def get(self, name: str, keep: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        key = self._resolve(name)
        file = self._files[key]
        if out is not None:
            if file.suffix == ".safetensors":
                start, header = self._headers[file]
                if _read_into(file, start, header[key], out):
                    return out
            return copy_checked(key, self.get(name), out)
        if file.suffix == ".safetensors" and keep:
            start, header = self._headers[file]
            tensor = _map_private(file, start, header[key])
            if tensor is not None:
                return tensor
        if file.suffix == ".safetensors":
            handle = self._handles.get(file)
            if handle is None or self._mapped_bytes[file] > _REMAP_BYTES:
                handle = self._handles[file] = safe_open(file, framework="pt")
                self._mapped_bytes[file] = 0
            tensor = handle.get_tensor(key)
            self._mapped_bytes[file] += tensor.nbytes
            return tensor
        # torch.load(mmap=True) maps the file once: a kept tensor must not alias another one.
        return self._handles[file][key].clone() if keep else self._handles[file][key]

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        if not any((self.path / f).exists() for f in _TOKENIZER_FILES):
            return None
        return functools.partial(
            load_tokenizer, str(self.path), trust_remote_code=self.trust_remote_code
        )


def load_tokenizer(path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(path, **kwargs)`, importing transformers only when called."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)
