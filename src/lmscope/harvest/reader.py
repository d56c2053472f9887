"""Reading a harvest folder: `lmscope.harvest.open(DIR)`, memory-mapped, as a torch Dataset.

Example:
    >>> h = lmscope.harvest.open("acts")
    >>> len(h), h[0]["tokens"].shape               # sequences; one sequence's tokens
    >>> h.read("blocks.0.hook_resid_post").shape    # every shard, concatenated (in memory)
    >>> loader = torch.utils.data.DataLoader(h.tokens_of("blocks.0.hook_resid_post"), batch_size=4096, shuffle=True)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.utils.data import Dataset

from lmscope.harvest import store
from lmscope.harvest.reducers import from_spec
from lmscope.harvest.store import FORMAT, MANIFEST, REDUCED_FILE, HarvestDirectoryError


def open_tokens(path: Path) -> Int[Tensor, "n_seqs seq_len"]:
    """The packed tokens of a harvest (int32, memory-mapped)."""
    return store.mmap_safetensors(path)["tokens"]


class Harvest(Dataset):
    """A harvest folder, memory-mapped: `h[i]` is sequence i's tokens and activations
    ({"tokens": [seq_len], hook: [seq_len, ...]}), `len(h)` the number of sequences in complete
    shards. Nothing is read from disk until it is used.

    Example:
        >>> h = Harvest("acts")
        >>> h.hooks, len(h), h.complete
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise HarvestDirectoryError(
                f"{str(self.folder)!r} holds no {MANIFEST}: not a harvest folder"
            )
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise HarvestDirectoryError(f"{path} is not an lmscope harvest manifest")
        args = self.manifest["arguments"]
        self.hooks: list[str] = args["hooks"]
        self.seq_len: int = args["seq_len"]
        self.complete: bool = self.manifest["complete"]
        self.shards: list[dict[str, Any]] = self.manifest["shards"]
        # complete shards from the start (a run still going may have finished later ones first)
        self._shards = []
        for i, record in enumerate(self.shards):
            if record["id"] != i:
                break
            self._shards.append(record)

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{len(self._shards)} shards so far"
        return f"Harvest({str(self.folder)!r}, {len(self)} sequences, hooks={self.hooks}, {state})"

    @cached_property
    def tokens(self) -> Int[Tensor, "n_seqs seq_len"]:
        """Every packed sequence's token ids (int32, memory-mapped), done or not."""
        return open_tokens(self.folder / self.manifest["tokens"]["file"])

    @cached_property
    def _mapped(self) -> list[dict[str, Tensor]]:
        return [
            store.mmap_safetensors(self.folder / r["file"]) for r in self._shards if "file" in r
        ]

    def __len__(self) -> int:
        return self._shards[-1]["seqs"][1] if self._shards else 0

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)} sequences")
        i %= len(self)
        rows = self._shards[0]["seqs"][1] - self._shards[0]["seqs"][0]
        shard, row = divmod(i, rows)
        item = {"tokens": self.tokens[i]}
        if self._mapped:
            item.update({hook: t[row] for hook, t in self._mapped[shard].items()})
        return item

    def shard(self, i: int) -> dict[str, Tensor]:
        """Shard i's activations, hook -> [rows, seq_len, ...] (memory-mapped)."""
        return self._mapped[i]

    def iter_shards(self, hook: str) -> Iterator[Float[Tensor, "rows seq_len ..."]]:
        """Each complete shard's activations at `hook`, in order (memory-mapped)."""
        self._check_hook(hook)
        for acts in self._mapped:
            yield acts[hook]

    def read(self, hook: str) -> Float[Tensor, "n_seqs seq_len ..."]:
        """Every complete shard's activations at `hook`, concatenated (a copy in memory)."""
        self._check_hook(hook)
        if not self._mapped:
            raise ValueError(
                f"{self.folder} stores no raw activations (reducers only): see .reduced"
            )
        return torch.cat(list(self.iter_shards(hook)))

    def tokens_of(self, hook: str) -> TokenActivations:
        """A torch Dataset of per-token activation vectors at `hook` (what SAE or probe
        training samples), memory-mapped across the shards."""
        self._check_hook(hook)
        return TokenActivations(list(self.iter_shards(hook)))

    def _check_hook(self, hook: str) -> None:
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} was not harvested; this folder holds {self.hooks}")

    @cached_property
    def reduced(self) -> dict[str, dict[str, dict[str, Tensor]]]:
        """The reducers' results: hook -> reducer name -> statistic -> tensor."""
        info = self.manifest.get("reduced")
        if info is None:
            raise ValueError(
                f"{self.folder} has no reducer results"
                + ("" if self.complete else " yet (the harvest is not complete)")
            )
        states = store.mmap_safetensors(self.folder / REDUCED_FILE)
        out: dict[str, dict[str, dict[str, Tensor]]] = {}
        for hook, specs in self.manifest["arguments"]["reducers"].items():
            for spec in specs:
                reducer = from_spec(spec)
                prefix = f"{hook}/{reducer.key}/"
                state = {k[len(prefix) :]: v for k, v in states.items() if k.startswith(prefix)}
                out.setdefault(hook, {})[reducer.key] = reducer.result(state)
        return out

    def verify(self) -> None:
        """Check every file against the SHA-256 in the manifest (reads everything); raises
        ValueError naming the first file that differs."""
        files = [(self.manifest["tokens"]["file"], self.manifest["tokens"]["sha256"])]
        for r in self.shards:
            files += [
                (r[f], r[s])
                for f, s in (("file", "sha256"), ("reducer_file", "reducer_sha256"))
                if f in r
            ]
        if "reduced" in self.manifest:
            files.append((self.manifest["reduced"]["file"], self.manifest["reduced"]["sha256"]))
        for name, sha in files:
            if store.sha256_file(self.folder / name) != sha:
                raise ValueError(
                    f"{self.folder / name} does not match the manifest's SHA-256: it changed or is damaged"
                )


class TokenActivations(Dataset):
    """Per-token activation vectors over shards: item i is token i's activation (the
    [seq_len, ...] rows of every shard, flattened to tokens), memory-mapped."""

    def __init__(self, shards: list[Tensor]) -> None:
        self._shards = [t.reshape(-1, *t.shape[2:]) for t in shards]
        self._per_shard = self._shards[0].shape[0] if self._shards else 0
        self._len = sum(t.shape[0] for t in self._shards)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> Tensor:
        if not 0 <= i < self._len:
            raise IndexError(f"token {i} out of range for {self._len} tokens")
        shard, row = divmod(i, self._per_shard)
        return self._shards[shard][row]


def open(folder: str | Path) -> Harvest:  # noqa: A001  (lmscope.harvest.open, like io.open)
    """Open a harvest folder for reading (memory-mapped): a torch Dataset over its sequences.

    Example:
        >>> h = lmscope.harvest.open("acts")
        >>> h[0]["blocks.0.hook_resid_post"].shape
    """
    return Harvest(folder)
