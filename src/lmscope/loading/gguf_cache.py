"""Dequantised GGUF files, kept in lmscope's cache so that only the first load pays for them.

Reading a GGUF file is slow: parsing its metadata takes seconds (SmolLM2-135M: ~2 s), every
tensor is dequantised in Python, and its tokenizer is rebuilt from the metadata (~3 s). The first
load of a file therefore writes what it read into ``<cache_dir()>/gguf/<sha256 of the file>/``:

* ``model.safetensors``: every tensor as :meth:`GGUFCheckpoint.get` returns it (float32, HF name,
  HF layout, llama.cpp's rewrites undone), written while the model loads, so nothing is
  dequantised twice;
* ``config.json``: the HF config built from the metadata;
* the tokenizer saved as a fast tokenizer (``tokenizer.json`` ...), which loads in ~0.1 s;
* ``lmscope-gguf.json``: the source's size and SHA-256 and the size of every file above.

Later loads of the same file open that directory as an ordinary :class:`DirectoryCheckpoint`
(whose fast paths then apply) without reading the GGUF at all. An entry is found by the file's
SHA-256; the hash is remembered per path, size, mtime, ctime and inode, so an unchanged file is
not hashed again and a changed one always is. An entry is written in a temporary directory and
renamed into place only when complete, so a killed load leaves no entry; an entry whose files do
not have the recorded sizes, or whose safetensors header is invalid, is removed and rebuilt.

The cache is on unless ``LMSCOPE_GGUF_CACHE=0`` or ``from_pretrained(..., gguf_cache=False)``.
It costs 4 bytes per parameter on disk (540 MB for SmolLM2-135M).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lmscope.errors import CheckpointError
from lmscope.loading.cache_entries import (
    intact_manifest,
    move_into_place,
    remove_stale_temps,
    safetensors_header,
    stat_key,
    switched_on,
    write_manifest,
    write_tensor,
)
from lmscope.loading.checkpoint import (
    DirectoryCheckpoint,
    copy_checked,
    load_tokenizer,
    read_json,
)
from lmscope.loading.embedded import cache_dir, write_json_atomic
from lmscope.loading.gguf import GGUFCheckpoint
from lmscope.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CachedGGUFCheckpoint",
    "CachingGGUFCheckpoint",
    "cache_enabled",
    "commit",
    "lookup",
    "open_gguf",
    "source_sha256",
]

ENV = "LMSCOPE_GGUF_CACHE"
FORMAT = 1
MANIFEST = "lmscope-gguf.json"
WEIGHTS = "model.safetensors"
_HASHES = "sources.json"


def cache_enabled(flag: bool | None = None) -> bool:
    """`flag` when given, else whether ``$LMSCOPE_GGUF_CACHE`` leaves the cache on (it is on
    unless set to 0, false, no or off).

    Example:
        >>> cache_enabled(False)
        False
    """
    return switched_on(flag, ENV)


def _root() -> Path:
    return cache_dir() / "gguf"


def _read_hashes() -> dict[str, Any]:
    try:
        value = json.loads((_root() / _HASHES).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch("[0-9a-f]{64}", value) is not None


def source_sha256(path: Path) -> str:
    """SHA-256 of the file at `path`, remembered in the cache by path and :func:`stat_key`.

    Example:
        >>> from lmscope.loading.embedded import embedded_model_path
        >>> len(source_sha256(embedded_model_path("smollm2-135m")))
        64
    """
    path = Path(path).resolve()
    key = stat_key(path)
    known = _read_hashes()
    record = known.get(str(path))
    if isinstance(record, dict) and record.get("stat") == key and _is_sha256(record["sha256"]):
        return record["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    _remember(known, path, key, digest.hexdigest())
    return digest.hexdigest()


def _remember(known: dict[str, Any], path: Path, key: list[int], sha: str) -> None:
    """Record `path`'s new hash, forget deleted files, and remove the entries that only a
    changed or deleted file had."""
    gone = [r for p, r in known.items() if p == str(path) or not os.path.exists(p)]
    known = {p: r for p, r in known.items() if p != str(path) and os.path.exists(p)}
    known[str(path)] = {"stat": key, "sha256": sha}
    kept = {r.get("sha256") for r in known.values() if isinstance(r, dict)}
    for old in {r.get("sha256") for r in gone if isinstance(r, dict)} - kept:
        if _is_sha256(old):
            shutil.rmtree(_root() / old, ignore_errors=True)
    try:
        write_json_atomic(_root() / _HASHES, known)
    except OSError:
        pass  # a read-only cache only costs hashing again


class CachedGGUFCheckpoint(DirectoryCheckpoint):
    """A cache entry: a :class:`DirectoryCheckpoint` whose tokenizer, which lmscope saved itself,
    is read by the class that saved it. `AutoTokenizer` would first read config.json through
    `AutoConfig`, whose model imports cost seconds."""

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        if not (self.path / "tokenizer_config.json").is_file():
            return None
        return functools.partial(_load_saved_tokenizer, self.path)


def _load_saved_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer lmscope saved in `folder`, read by the transformers class it names."""
    import transformers

    name = read_json(folder / "tokenizer_config.json").get("tokenizer_class")
    cls = getattr(transformers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase)):
        return load_tokenizer(str(folder), trust_remote_code=False)
    try:
        return cls.from_pretrained(folder)
    except Exception as err:  # tokenizers raises many types on a damaged file
        raise CheckpointError(
            f"{folder}: the cached tokenizer is damaged ({type(err).__name__}: {err}); delete "
            "the folder and load the model again"
        ) from None


def lookup(sha256: str) -> CachedGGUFCheckpoint | None:
    """The cache entry of the GGUF file with this SHA-256, or None when there is none yet. A
    broken entry (a file missing, truncated or grown, an invalid safetensors header) is removed,
    so the load rebuilds it.

    Example:
        >>> from lmscope.loading.embedded import embedded_model_path
        >>> entry = lookup(source_sha256(embedded_model_path("smollm2-135m")))
        >>> entry is None or (entry.path / "model.safetensors").is_file()
        True
    """
    entry = _root() / sha256
    if not entry.exists():
        return None
    if intact_manifest(entry, MANIFEST, FORMAT) is not None:
        try:
            return CachedGGUFCheckpoint(entry)
        except CheckpointError:
            pass
    shutil.rmtree(entry, ignore_errors=True)
    return None


class CachingGGUFCheckpoint:
    """A :class:`GGUFCheckpoint` that writes each tensor it hands out into a new cache entry.

    It reads as the GGUF file does (errors name the GGUF file). :func:`commit` completes the
    entry once the model has loaded; an entry not committed is deleted with this object.
    """

    def __init__(self, source: GGUFCheckpoint, sha256: str, verbose: bool = True) -> None:
        self.source, self.sha256 = source, sha256
        self._verbose = verbose
        self._written: set[str] = set()
        self._error: OSError | None = None  # a failed write (full disk): the load goes on
        self._bar: tqdm | None = None
        names = source.tensor_names()
        shapes = {n: (source.tensor_shape(n), torch.float32) for n in names}
        header, self._offsets = safetensors_header(shapes)
        root = _root()
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(root)
        self._tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{sha256[:16]}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        self._file = open(self._tmp / WEIGHTS, "wb")  # noqa: SIM115 (closed by commit)
        weakref.finalize(self, self._file.close)
        self._file.write(header)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def __repr__(self) -> str:
        return f"CachingGGUFCheckpoint({self.source!r}, into={str(self._tmp)!r})"

    def get(self, name: str, keep: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        """`source.get(name)`, written to the entry the first time it is asked for."""
        tensor = self.source.get(name)
        if self._error is None and name not in self._written:
            try:
                self._write(name, tensor)
            except OSError as err:
                self._error = err
        return tensor if out is None else copy_checked(name, tensor, out)

    def _write(self, name: str, tensor: torch.Tensor) -> None:
        if self._bar is None:
            self._bar = progress_bar(
                len(self._offsets) + 1, "reading GGUF", self._verbose, "tensor"
            )
        write_tensor(self._file.fileno(), tensor.to(torch.float32), self._offsets[name])
        self._written.add(name)
        self._bar.update()

    def commit(self) -> CachedGGUFCheckpoint | GGUFCheckpoint:
        """Complete the entry (config, tokenizer, manifest), move it into place and open it;
        the GGUF checkpoint itself when the entry cannot be completed (a tensor never read, a
        tokenizer transformers cannot build, a full disk: the load goes on without a cache)."""
        missing = set(self._offsets) - self._written
        bar = self._bar or progress_bar(1, "reading GGUF", self._verbose, "tensor")
        try:
            if self._error is not None:
                raise self._error
            if missing:
                return self.source
            self._file.close()
            (self._tmp / "config.json").write_text(json.dumps(self.source.hf_config, indent=2))
            bar.set_postfix_str("tokenizer")
            load_tokenizer = self.source.tokenizer_loader()
            if load_tokenizer is not None and not _save_tokenizer(load_tokenizer, self._tmp):
                return self.source
            write_manifest(
                self._tmp,
                MANIFEST,
                FORMAT,
                source=str(self.source.path),
                source_size=self.source.path.stat().st_size,
                source_sha256=self.sha256,
            )
            entry = _root() / self.sha256
            move_into_place(self._tmp, entry, MANIFEST, FORMAT)
            return CachedGGUFCheckpoint(entry)
        except (OSError, CheckpointError) as err:
            warnings.warn(
                f"lmscope could not keep the dequantised {self.source.path} in its cache "
                f"({type(err).__name__}: {err}); the next load reads the GGUF file again. Set "
                f"LMSCOPE_CACHE to a writable directory, or {ENV}=0 to stop trying",
                stacklevel=3,
            )
            return self.source
        finally:
            bar.update(bar.total - bar.n)
            bar.close()
            self._cleanup()


def _save_tokenizer(load: Callable[[], PreTrainedTokenizerBase], folder: Path) -> bool:
    """Build the GGUF's tokenizer and save it into `folder` as a fast tokenizer (False when it
    cannot be built, or has no fast form: the model then reads it from the GGUF, as without a
    cache, and its first use reports any error)."""
    try:
        tokenizer = load()
    except CheckpointError:
        return False
    if not getattr(tokenizer, "is_fast", False):
        return False
    tokenizer.save_pretrained(folder)
    return True


def commit(checkpoint: Any) -> Any:
    """Complete a :class:`CachingGGUFCheckpoint`'s entry after a successful load and return the
    checkpoint to read from afterwards (any other checkpoint is returned as it is).

    Example:
        >>> from lmscope.loading.embedded import embedded_model_path
        >>> checkpoint = open_gguf(embedded_model_path("smollm2-135m"), cache=True)
        >>> # ... load every tensor with checkpoint.get(name) ...
        >>> checkpoint = commit(checkpoint)  # the cache entry, from now on
    """
    if isinstance(checkpoint, CachingGGUFCheckpoint):
        return checkpoint.commit()
    return checkpoint


def open_gguf(path: Path, cache: bool, verbose: bool = True) -> Any:
    """The checkpoint of the GGUF file at `path`: with `cache`, its cache entry when there is
    one, else a :class:`CachingGGUFCheckpoint` that builds it; without, the GGUF file itself.

    Example:
        >>> from lmscope.loading.embedded import embedded_model_path
        >>> open_gguf(embedded_model_path("smollm2-135m"), cache=False).architecture
        'llama'
    """
    if not cache:
        return GGUFCheckpoint(path)
    try:
        sha256 = source_sha256(path)
        found = lookup(sha256)
        if found is not None:
            return found
        source = GGUFCheckpoint(path)
        if source.unmapped_tensors:
            return source  # the load refuses such a file; nothing to keep
        return CachingGGUFCheckpoint(source, sha256, verbose)
    except OSError as err:
        warnings.warn(
            f"lmscope's GGUF cache in {_root()} is not usable ({err}); reading {path} directly. "
            f"Set LMSCOPE_CACHE to a writable directory, or {ENV}=0",
            stacklevel=3,
        )
        return GGUFCheckpoint(path)
