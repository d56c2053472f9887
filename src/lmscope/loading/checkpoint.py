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
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError, safe_open

from lmscope.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    MissingTensorError,
    RemoteCodeError,
    UnsafeCheckpointError,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
# A safetensors handle maps its whole file, and every page read stays in this process's RSS until
# the handle goes. Reopening after this many bytes keeps ~one chunk of the file resident while
# loading instead of all of it (peak RSS ~ model + chunk, not model + file); reopening is cheap.
_REMAP_BYTES = 64 * 2**20
# A tensor read into a model of another dtype passes through a buffer of this many bytes.
_CAST_CHUNK_BYTES = 8 * 2**20
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
# Floating-point safetensors dtypes torch reads; a weight stored as anything else is refused.
_FLOAT_DTYPES = frozenset([*_SAFETENSORS_DTYPES, "F8_E4M3", "F8_E5M2"])
_CORRUPT = "it is truncated or corrupt: download or save it again"


def read_json(file: Path) -> dict[str, Any]:
    """A JSON object file (config.json, tokenizer_config.json, a shard index); errors name it."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}); {_CORRUPT}") from None
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{file} holds a JSON {type(value).__name__}, not an object; {_CORRUPT}"
        )
    return value


def _safetensors_header(file: Path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the data, {name: {"dtype", "shape", "data_offsets"}}) of a safetensors
    file: an 8-byte little-endian header length, then the JSON header, then the data.

    safetensors itself checks the header against the file first: that it parses, that every
    tensor's byte count matches its shape and dtype, and that the tensors cover the data exactly
    once (no overlap, nothing before the data or past the end), so the offsets read here are safe.
    """
    try:
        with safe_open(file, framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{file} is not a valid safetensors file ({err}); {_CORRUPT}"
        ) from None
    with open(file, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return 8 + length, header


def _check_float(file: Path, key: str, dtype: str) -> None:
    """Refuse a weight whose stored dtype is not floating point (an integer dtype means a wrong
    header, or a quantised format lmscope does not read: its bytes are not the weights)."""
    if dtype not in _FLOAT_DTYPES:
        raise CheckpointError(
            f"{file}: tensor {key!r} is stored as {dtype}, not a floating-point type, so its bytes "
            f"are not weights lmscope can read (a wrong header, or a quantised checkpoint); "
            f"save the checkpoint again with float weights ({', '.join(sorted(_FLOAT_DTYPES))})"
        )


def _map_private(file: Path, start: int, entry: dict[str, Any]) -> torch.Tensor | None:
    """One tensor as a private copy-on-write map of just its own pages of `file` (None when its
    dtype is not one of `_SAFETENSORS_DTYPES` or it is empty). Its pages enter RSS only when
    read, leave when the tensor goes, and writes to it never reach the file."""
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
    nothing, when `out` is not a contiguous floating-point CPU tensor of the stored shape). A
    tensor stored in another float dtype is read in chunks and cast into `out`, so a bfloat16
    checkpoint loads into a float32 (or a float32 one into a bfloat16) model without holding the
    tensor twice or leaving file pages in RSS."""
    dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
    if (
        dtype is None
        or not out.is_floating_point()
        or list(out.shape) != entry["shape"]
        or out.device.type != "cpu"
        or not out.is_contiguous()
    ):
        return False
    begin, end = entry["data_offsets"]
    if end - begin != out.numel() * dtype.itemsize:
        raise CheckpointError(
            f"{file}: the header gives tensor data of {end - begin} bytes for {entry}"
        )
    if out.numel() == 0:
        return True
    with open(file, "rb", buffering=0) as f:
        if dtype == out.dtype:
            _pread_exact(f.fileno(), file, start + begin, out)
            return True
        flat = out.view(-1)
        step = _CAST_CHUNK_BYTES // dtype.itemsize
        bounce = torch.empty(min(step, flat.numel()), dtype=dtype)
        for first in range(0, flat.numel(), step):
            chunk = bounce[: min(step, flat.numel() - first)]
            _pread_exact(f.fileno(), file, start + begin + first * dtype.itemsize, chunk)
            flat[first : first + chunk.numel()].copy_(chunk)
    return True


def _pread_exact(fd: int, file: Path, offset: int, out: torch.Tensor) -> None:
    """Fill the contiguous CPU tensor `out` with the bytes of `file` from `offset`."""
    buffer = memoryview((ctypes.c_char * out.nbytes).from_address(out.data_ptr())).cast("B")
    done = 0
    while done < out.nbytes:  # a single read stops at 2 GiB
        n = os.preadv(fd, [buffer[done:]], offset + done)
        if n == 0:
            raise CheckpointError(f"{file} ends inside tensor data; {_CORRUPT}")
        done += n


def _load_bin(file: Path) -> Mapping[str, torch.Tensor]:
    """A `pytorch_model*.bin` state dict, read only with `torch.load(weights_only=True)`.

    Files in torch's zip format are memory-mapped; legacy (pre-1.6, non-zip) files cannot be,
    and are read whole. A pickle that asks for anything but tensors is refused, never run.
    """
    try:
        state = torch.load(
            file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file)
        )
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "a Python object"
        raise UnsafeCheckpointError(
            f"{file}: Weights only load failed: the pickle asks for {what}, which is not a tensor "
            "type (or the file is corrupt). lmscope never unpickles arbitrary Python objects, "
            "since that can run code. If you trust the file, convert it to safetensors with a "
            "tool you trust, in a sandbox (torch.load it there and write the tensors with "
            "safetensors.torch.save_file), or use a safetensors version of the checkpoint"
        ) from None
    except Exception as err:  # torch.load raises RuntimeError, EOFError, KeyError, ... on bad bytes
        raise CheckpointError(
            f"{file} is not a readable PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); {_CORRUPT}"
        ) from None
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"{file} holds a {type(state).__name__}, not a state dict of named tensors"
        )
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; a state dict "
                "maps tensor names to tensors"
            )
    return state


def _weight_files(path: Path) -> list[Path]:
    """The weight files of a model directory: those a shard index lists when there is one, else
    `model.safetensors` (or `pytorch_model.bin`) alone when present, else every shard. Stray
    files beside them (Mistral's `consolidated.safetensors`, adapters) are not weights of the
    model."""
    for index_name, single, pattern in (
        ("model.safetensors.index.json", "model.safetensors", "*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model*.bin"),
    ):
        index = path / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f'{index} has no "weight_map" of tensor names to files')
            files = [path / name for name in sorted(set(map(str, weight_map.values())))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointNotFoundError(
                    f"{index} lists shards that are not in {path}: {missing}; download them"
                )
            return files
        if (path / single).is_file():
            return [path / single]
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise CheckpointNotFoundError(f"{path} has no *.safetensors or pytorch_model*.bin weights")


def resolve_key(name: str, keys: Collection[str], where: str) -> str:
    """The key among `keys` that holds the HF tensor `name`: `name` itself, or `name` without
    its base-model prefix ("transformer.", "model."), which checkpoints keep or drop.

    Example:
        >>> resolve_key("transformer.h.0.attn.c_attn.weight", {"h.0.attn.c_attn.weight"}, "x")
        'h.0.attn.c_attn.weight'
    """
    if name in keys:
        return name
    rest = name.partition(".")[2]
    if rest in keys:
        return rest
    raise MissingTensorError(
        f"{where} is missing tensor {name!r}; it holds {len(keys)} tensors such as {list(keys)[:4]}"
    )


def copy_checked(name: str, tensor: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`copy_into(out, tensor)`, refusing a shape mismatch (which copy_ would broadcast
    silently)."""
    if tensor.shape != out.shape:
        raise CheckpointError(
            f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, the model expects "
            f"{tuple(out.shape)}"
        )
    return copy_into(out, tensor)


def copy_into(out: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`out.copy_(tensor)`; a host tensor bound for an accelerator in another dtype crosses in its
    own dtype and is cast there (torch would cast on the host first: one CPU thread, and a
    bfloat16 weight crossing as float32 moves twice the bytes).

    Example:
        >>> copy_into(torch.empty(2, device="cuda"), torch.ones(2, dtype=torch.bfloat16))
    """
    if tensor.device != out.device and tensor.dtype != out.dtype and out.device.type != "cpu":
        tensor = tensor.to(out.device)
    return out.copy_(tensor)


@runtime_checkable  # isinstance-checkable, so run-time type checks (beartype) can read the hint
class Checkpoint(Protocol):
    """What a family adapter reads from: HF config and HF-named tensors."""

    # the file or directory, named in every error about it
    path: Path
    # where `hf_config` comes from (config.json, or the GGUF file's metadata)
    config_file: Path
    hf_config: dict[str, Any]
    # whether `get(name, out=...)` reads from disk into `out` without materialising the tensor
    reads_into: bool

    def tensor_names(self) -> list[str]: ...

    def resolve(self, name: str) -> str:
        """The name under which `tensor_names()` lists the tensor the model asks for as `name`
        (MissingTensorError naming it when the checkpoint lacks it)."""
        ...

    def unread_tensors(self, used: set[str]) -> list[str]:
        """Tensors of the file that no name in `used` (resolved names) reads."""
        ...

    def file_of(self, name: str) -> Path:
        """The file holding the tensor `name`, for error messages."""
        ...

    def n_elements(self) -> int:
        """How many values the checkpoint's tensors hold in all (from the headers, unread)."""
        ...

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
        self.config_file = self.path / "config.json"
        if not self.config_file.is_file():
            ggufs = sorted(p.name for p in self.path.glob("*.gguf"))
            hint = f"; to load a GGUF file, pass its path ({self.path / ggufs[0]})" if ggufs else ""
            raise CheckpointNotFoundError(
                f"{self.path} has no config.json; is it a Hugging Face model directory?{hint}"
            )
        self.hf_config: dict[str, Any] = read_json(self.config_file)
        self._files: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._headers: dict[Path, tuple[int, dict[str, Any]]] = {}
        self._mapped_bytes: dict[Path, int] = {}
        for file in _weight_files(self.path):
            if file.suffix == ".safetensors":
                self._headers[file] = _safetensors_header(file)
                keys = list(self._headers[file][1])
            else:
                self._handles[file] = _load_bin(file)
                keys = list(self._handles[file])
            for key in keys:
                if key in self._files:
                    raise CheckpointError(
                        f"{self.path}: tensor {key!r} is stored twice, in {self._files[key].name} "
                        f"and {file.name}; remove the file that is not part of this model"
                    )
                self._files[key] = file

    def __repr__(self) -> str:
        return f"DirectoryCheckpoint({str(self.path)!r}, tensors={len(self._files)})"

    def tensor_names(self) -> list[str]:
        return list(self._files)

    def weight_files(self) -> list[Path]:
        """The files the tensors are read from, in name order."""
        return sorted(set(self._files.values()))

    def resolve(self, name: str) -> str:
        """The stored key for `name`; checkpoints differ on the base-model prefix ("transformer.")."""
        return resolve_key(name, self._files, f"checkpoint {self.path}")

    def unread_tensors(self, used: set[str]) -> list[str]:
        return [key for key in self._files if key not in used]

    def file_of(self, name: str) -> Path:
        return self._files[self.resolve(name)]

    def n_elements(self) -> int:
        total = sum(
            _numel(entry["shape"])
            for _, header in self._headers.values()
            for entry in header.values()
        )
        return total + sum(
            t.numel()
            for file, state in self._handles.items()
            if file.suffix == ".bin"
            for t in state.values()
        )

    def get(self, name: str, keep: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        key = self.resolve(name)
        file = self._files[key]
        if file.suffix == ".safetensors":
            start, header = self._headers[file]
            _check_float(file, key, header[key]["dtype"])
            if out is not None and _read_into(file, start, header[key], out):
                return out
        if out is not None:
            return copy_checked(key, self.get(name), out)
        if file.suffix == ".safetensors" and keep:
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
        tensor = self._handles[file][key]
        if not tensor.is_floating_point():
            _check_float(file, key, str(tensor.dtype).removeprefix("torch."))
        # torch.load(mmap=True) maps the file once: a kept tensor must not alias another one.
        return tensor.clone() if keep else tensor

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        if not any((self.path / f).exists() for f in _TOKENIZER_FILES):
            return None
        if not self.trust_remote_code:
            _refuse_remote_tokenizer(self.path)
        return functools.partial(
            load_tokenizer, str(self.path), trust_remote_code=self.trust_remote_code
        )


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _refuse_remote_tokenizer(path: Path) -> None:
    """Raise RemoteCodeError when the directory's tokenizer is Python code shipped with the
    checkpoint (an `auto_map` entry for AutoTokenizer), which lmscope runs only when asked."""
    for name in ("tokenizer_config.json", "config.json"):
        file = path / name
        auto_map = read_json(file).get("auto_map") if file.is_file() else None
        if isinstance(auto_map, list) or (
            isinstance(auto_map, dict) and "AutoTokenizer" in auto_map
        ):
            code = auto_map if isinstance(auto_map, list) else auto_map["AutoTokenizer"]
            raise RemoteCodeError(_remote_code_message(file, code))


def _remote_code_message(file: Path | str, code: Any) -> str:
    return (
        f"{file}: the tokenizer is custom Python code shipped with the checkpoint ({code}), and "
        "lmscope runs no such code unless asked. Pass trust_remote_code=True if you trust that "
        "code, or pass tokenizer= a tokenizer you built yourself"
    )


def load_tokenizer(path: str, *, trust_remote_code: bool, **kwargs: Any) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained(path, trust_remote_code=..., **kwargs)`, importing
    transformers only when called. The flag is always passed as a bool: given None, transformers
    would ask on the terminal whether to run a checkpoint's code. Failures become
    CheckpointError (RemoteCodeError when the tokenizer needs code that was not trusted)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=bool(trust_remote_code), **kwargs
        )
    except Exception as err:  # transformers and tokenizers raise many types on bad files
        if "trust_remote_code" in str(err):
            raise RemoteCodeError(_remote_code_message(path, "auto_map")) from None
        raise CheckpointError(
            f"{path}: could not load its tokenizer ({type(err).__name__}: {err}); the tokenizer "
            "files are corrupt or incomplete: download them again, or pass tokenizer="
        ) from None
