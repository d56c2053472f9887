"""Checkpoints on disk seen through one small interface: `hf_config`, `tensor_names()`, `get(name)`
and `tokenizer()`.

`get` reads one tensor at a time (safetensors `safe_open`, or a memory-mapped `.bin` read with
`torch.load(weights_only=True)`), so loading never holds a second copy of the whole model.
"""

from __future__ import annotations

import json
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


class Checkpoint(Protocol):
    """What a family adapter reads from: HF config and HF-named tensors."""

    hf_config: dict[str, Any]

    def tensor_names(self) -> list[str]: ...

    def get(self, name: str) -> torch.Tensor: ...

    def tokenizer(self) -> PreTrainedTokenizerBase | None: ...


class DirectoryCheckpoint:
    """A directory written by `save_pretrained` (or a hub snapshot): config.json + weights.

    Safetensors (single or sharded) are preferred; `.bin` files are read only with
    `torch.load(weights_only=True)`, which refuses to unpickle code.
    """

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
        self._mapped_bytes: dict[Path, int] = {}
        safetensors = sorted(self.path.glob("*.safetensors"))
        bins = sorted(p for p in self.path.glob("*.bin") if p.name.startswith("pytorch_model"))
        if safetensors:
            for file in safetensors:
                with safe_open(file, framework="pt") as f:
                    for key in f.keys():
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

    def get(self, name: str) -> torch.Tensor:
        key = self._resolve(name)
        file = self._files[key]
        if file.suffix == ".safetensors":
            handle = self._handles.get(file)
            if handle is None or self._mapped_bytes[file] > _REMAP_BYTES:
                handle = self._handles[file] = safe_open(file, framework="pt")
                self._mapped_bytes[file] = 0
            tensor = handle.get_tensor(key)
            self._mapped_bytes[file] += tensor.nbytes
            return tensor
        return self._handles[file][key]

    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        if not any((self.path / f).exists() for f in _TOKENIZER_FILES):
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path, trust_remote_code=self.trust_remote_code)
