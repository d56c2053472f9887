"""Helpers that write hostile checkpoints from valid tiny ones, and the one rule every load of
such a file must obey: a clear lmscope error naming the file and the problem, or a load whose
weights equal what the file really says. Never a raw library error, never code execution."""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import torch
from safetensors.torch import load_file, save_file

from lmscope import HookedTransformer
from lmscope.errors import CheckpointError

Loader = Callable[[Path], HookedTransformer]
LOADERS: dict[str, Loader] = {
    "raw": HookedTransformer.from_pretrained_no_processing,
    "processed": HookedTransformer.from_pretrained,
}


def copy_dir(src: Path, dst: Path) -> Path:
    """A private copy of a checkpoint directory to break."""
    shutil.copytree(src, dst)
    return dst


def split_safetensors(file: Path) -> tuple[dict[str, Any], bytes]:
    """(header with __metadata__, data bytes) of a valid safetensors file."""
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def write_safetensors(file: Path, header: Any, data: bytes) -> None:
    """Write a safetensors file from a (possibly hostile) header and data, as given."""
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text + data)


def edit_header(directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Apply `edit` to the header of the directory's model.safetensors, data untouched."""
    file = directory / "model.safetensors"
    header, data = split_safetensors(file)
    edit(header)
    write_safetensors(file, header, data)
    return directory


def edit_config(directory: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    file = directory / "config.json"
    config = json.loads(file.read_text())
    edit(config)
    file.write_text(json.dumps(config))
    return directory


def patch(file: Path, offset: int, data: bytes) -> Path:
    """Overwrite bytes of `file` at `offset`."""
    raw = bytearray(file.read_bytes())
    raw[offset : offset + len(data)] = data
    file.write_bytes(bytes(raw))
    return file


def truncate(file: Path, size: int) -> Path:
    file.write_bytes(file.read_bytes()[:size])
    return file


def gguf_value_offset(file: Path, key: str) -> int:
    """Byte offset of a scalar metadata value in a GGUF file (its parts: key length, key,
    type, value)."""
    field = gguf.GGUFReader(file).fields[key]
    return field.offset + sum(p.nbytes for p in field.parts[:-1])


def gguf_tensor_info(file: Path, name: str) -> dict[str, int]:
    """Byte offsets of a tensor's type and data-offset fields in a GGUF file's tensor info, and
    its data offset relative to the data section."""
    reader = gguf.GGUFReader(file)
    tensor = next(t for t in reader.tensors if t.name == name)
    parts = tensor.field.parts  # name length, name, n_dims, dims, type, offset
    start = tensor.field.offset
    return {
        "type_at": start + sum(p.nbytes for p in parts[:4]),
        "offset_at": start + sum(p.nbytes for p in parts[:5]),
        "offset": int(parts[5][0]),
        "data_start": reader.data_offset,
    }


def weights(model: HookedTransformer) -> dict[str, torch.Tensor]:
    return {name: w.detach().clone() for name, w in model.named_weights().items()}


def faithful_reference(directory: Path, loader: Loader) -> dict[str, torch.Tensor]:
    """The weights the directory's safetensors file really holds, read by the safetensors
    library and rewritten canonically, then loaded by lmscope from the clean copy."""
    clean = directory.parent / f"{directory.name}-canonical"
    if not clean.exists():
        clean.mkdir()
        shutil.copy(directory / "config.json", clean / "config.json")
        tensors = {k: v.contiguous() for k, v in load_file(directory / "model.safetensors").items()}
        save_file(tensors, clean / "model.safetensors", metadata={"format": "pt"})
    return weights(loader(clean))


def assert_clear_or_faithful(
    path: Path,
    loader: Loader,
    *,
    problem: str | None,
    names: Path,
    expected: Callable[[], dict[str, torch.Tensor]] | None = None,
    marker: Path | None = None,
) -> CheckpointError | None:
    """The rule. With `problem`, loading `path` must raise a CheckpointError whose message names
    `names` and matches `problem`; without it, the load must succeed with `expected()` weights.
    Any other exception fails the test, as does `marker` (a file hostile code would write)."""
    error = None
    try:
        model = loader(path)
    except CheckpointError as err:
        error = err
        message = str(err)
        assert problem is not None, f"expected a faithful load of {path}, got: {message}"
        assert str(names) in message, f"the error does not name {names}: {message}"
        assert re.search(problem, message), f"{problem!r} not in: {message}"
    else:
        assert problem is None, f"{path} loaded, but should fail with {problem!r}"
        assert expected is not None
        want = expected()
        got = weights(model)
        assert got.keys() == want.keys()
        for name, value in want.items():
            assert torch.equal(got[name], value), name
    if marker is not None:
        assert not marker.exists(), "hostile code ran"
    return error
