"""Processed weights, kept in lmscope's cache so that a processed load costs what an unprocessed
one does.

Processing (fold_ln, centring, value-bias folding) rewrites most weights, and a rewritten weight
needs fresh memory: a processed load can never just map the checkpoint as HF's load does, and on
a CPU it takes 2-6x HF's time (docs/performance.md, "Loading"). So the second processed load of
a checkpoint with the same settings also writes the processed weights to
``<cache_dir()>/processed/<key>/`` (or under ``$LMSCOPE_PROCESSED_CACHE_DIR``:
``model.safetensors``, ``config.json``, ``lmscope-processed.json``), and every later load with
that key maps the file instead, as an unprocessed load maps a checkpoint: its weights are adopted
without a copy and the model equals the processed one bit for bit. The first load only notes the
key (``.seen/<key>``): a model loaded once costs no write and no disk.

The key is a SHA-256 over everything the processed weights depend on: the source files (path,
size, mtime, ctime and inode: a changed file is a new key), the model's config (dtype, layers
kept, overrides), the processing steps, the tensors left unread, the device each weight is
processed on (a GPU may round differently), torch's version and the text of lmscope's own
modules (a new lmscope is a new key). An entry is written under a temporary name and renamed
into place when complete; one whose files do not have their recorded sizes, or whose header is
invalid, is removed and rebuilt.

Kept only for models of at least 16 MiB (smaller ones process in milliseconds) and loaded from
files (not `hf_model=`, not a GGUF file's first read, which has its own cache). The entries used
least recently are removed once they hold more than ``$LMSCOPE_PROCESSED_CACHE_GB`` (default 20)
GiB; a model larger than that is not kept. ``LMSCOPE_PROCESSED_CACHE=0`` or
``from_pretrained(..., processed_cache=False)`` turns the cache off.

Example:
    >>> key = entry_key(checkpoint, model, steps, unread=frozenset())
    >>> lookup(key) is None   # not kept yet: process, then `store(key, model)`
    True
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

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
from lmscope.loading.checkpoint import DirectoryCheckpoint
from lmscope.loading.embedded import cache_dir
from lmscope.loading.gguf import GGUFCheckpoint
from lmscope.loading.language_model import LanguageModelCheckpoint
from lmscope.loading.transforms import Permute
from lmscope.progress import progress_bar

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer

__all__ = ["Kept", "cache_enabled", "cache_root", "entry_key", "lookup", "store"]

ENV = "LMSCOPE_PROCESSED_CACHE"
SIZE_ENV = "LMSCOPE_PROCESSED_CACHE_GB"
DIR_ENV = "LMSCOPE_PROCESSED_CACHE_DIR"
DEFAULT_GB = 20.0
MIN_BYTES = 16 << 20  # smaller models process in milliseconds
FORMAT = 1
MANIFEST = "lmscope-processed.json"
WEIGHTS = "model.safetensors"
_FREE_MARGIN = 1 << 30  # disk left free after writing an entry
_SEEN_DAYS = 30  # a first load's marker waits this long for a second load
_ALIGN = 64  # BLAS may round differently at another address modulo this (or another layout)


def cache_enabled(flag: bool | None = None) -> bool:
    """`flag` when given, else whether ``$LMSCOPE_PROCESSED_CACHE`` leaves the cache on (it is on
    unless set to 0, false, no or off).

    Example:
        >>> cache_enabled(False)
        False
    """
    return switched_on(flag, ENV)


def cache_root() -> Path:
    """``$LMSCOPE_PROCESSED_CACHE_DIR``, else ``<cache_dir()>/processed``."""
    chosen = os.environ.get(DIR_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else cache_dir() / "processed"


def _limit_bytes() -> int:
    """The most the entries may hold together (``$LMSCOPE_PROCESSED_CACHE_GB``)."""
    raw = os.environ.get(SIZE_ENV, "")
    try:
        gib = float(raw) if raw.strip() else DEFAULT_GB
    except ValueError:
        raise ValueError(f"{SIZE_ENV}={raw!r} is not a number of GiB (e.g. 20)") from None
    return int(gib * (1 << 30))


@functools.cache
def _code_digest() -> str:
    """SHA-256 of the text of every lmscope module: what processes the weights (and what a key
    would otherwise miss after an upgrade or an edit of the source)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(str(file.relative_to(package)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _source_files(checkpoint: Any) -> list[Path] | None:
    """The files the checkpoint's weights and config come from (None: not from files that stay
    put: an in-memory `hf_model`, or a GGUF file being read and dequantised for the first time,
    whose next load reads the GGUF cache instead)."""
    if isinstance(checkpoint, LanguageModelCheckpoint):
        checkpoint = checkpoint.inner
    if isinstance(checkpoint, DirectoryCheckpoint):
        return [checkpoint.config_file, *checkpoint.weight_files()]
    if isinstance(checkpoint, GGUFCheckpoint):
        return [checkpoint.path]
    return None


def _weights_bytes(model: HookedTransformer) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def entry_key(
    checkpoint: Any,
    model: HookedTransformer,
    steps: dict[str, bool],
    unread: frozenset[str] | set[str],
) -> str | None:
    """The cache key of `model` (built, placed, not yet loaded) processed with `steps` from
    `checkpoint`, or None when such a model is not kept (see the module docstring).

    Example:
        >>> entry_key(checkpoint, model, {"fold_ln": True}, frozenset())
        '3f5c...'
    """
    files = _source_files(checkpoint)
    if files is None or not steps or _weights_bytes(model) < MIN_BYTES:
        return None
    try:
        sources = [[str(f), *stat_key(f)] for f in (file.resolve() for file in files)]
    except OSError:
        return None
    parts = {
        "format": FORMAT,
        "lmscope": _code_digest(),
        "torch": torch.__version__,
        "sources": sources,
        "config": repr(model.cfg),
        "steps": sorted(steps.items()),
        "unread": sorted(unread),
        "devices": [f"{name}@{p.device}" for name, p in model.named_parameters()],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Kept:
    """A cache entry: its checkpoint, the memory order each weight was kept in (`layout`: name ->
    the permutation from memory order to the parameter's, for weights that are not row-major)
    and the padding tensors that place each weight at its original alignment."""

    checkpoint: DirectoryCheckpoint
    layout: dict[str, tuple[int, ...]]
    padding: frozenset[str]

    def weight_map(self, model: HookedTransformer) -> dict[str, Any]:
        """The weight map that loads the entry into `model` (made to look processed first, see
        `lmscope.processing.processed_structure`): each parameter from its own tensor, in the
        memory order it was kept in. A damaged entry (other tensors than the model's) is removed,
        with an error that says to load again, which processes and keeps anew."""
        names = [name for name, _ in model.named_parameters()]
        stored = set(self.checkpoint.tensor_names()) - self.padding
        if stored != set(names):
            shutil.rmtree(self.checkpoint.path, ignore_errors=True)
            raise CheckpointError(
                f"{self.checkpoint.path}: this processed-weights cache entry holds other tensors "
                f"than the model's ({len(stored)} against {len(names)}); it was damaged and is "
                "now removed: load the model again"
            )
        return {
            name: (Permute(self.layout[name]), name) if name in self.layout else name
            for name in names
        }


def lookup(key: str) -> Kept | None:
    """The entry of `key`, or None when there is none. A damaged entry (files missing,
    truncated or grown, an invalid header or manifest) is removed."""
    entry = cache_root() / key
    if not entry.exists():
        return None
    manifest = intact_manifest(entry, MANIFEST, FORMAT)
    if manifest is not None:
        try:
            layout = {name: tuple(dims) for name, dims in manifest["layout"].items()}
            padding = frozenset(manifest["padding"])
            kept = Kept(DirectoryCheckpoint(entry), layout, padding)
        except (CheckpointError, OSError, ValueError, KeyError, TypeError, AttributeError):
            kept = None
        if kept is not None:
            _mark_used(entry)
            return kept
    shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):  # (an unusable cache: `store` says so)
        _note_seen(cache_root(), key)  # this load writes it again
    return None


def store(key: str, model: HookedTransformer, verbose: bool = True) -> None:
    """After processing `model`: on the first load of `key`, note the key; on the second, write
    the processed parameters as its entry, then remove the entries used least recently beyond
    the size limit. (A model loaded once costs no write and no disk.) A model over the limit is
    not kept; a write that fails (a full or read-only disk) only warns: the next load processes
    again."""
    size = _weights_bytes(model)
    limit = _limit_bytes()
    if size > limit:
        return
    root = cache_root()
    tmp: Path | None = None
    try:
        if not _seen_before(root, key):
            return
        if shutil.disk_usage(root).free < size + _FREE_MARGIN:
            raise OSError(f"less than {(size + _FREE_MARGIN) / 2**30:.1f} GiB free")
        remove_stale_temps(root)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{key[:16]}-"))
        _write_entry(tmp, key, model, verbose)
        move_into_place(tmp, root / key, MANIFEST, FORMAT)
        _mark_used(root / key)
    except OSError as err:
        warnings.warn(
            f"lmscope could not keep the processed weights in {root} ({err}); the next load "
            f"processes them again. Set LMSCOPE_CACHE to a writable directory with space, or "
            f"{ENV}=0 to stop trying",
            stacklevel=3,
        )
        return
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _evict(root, limit, keep=key)


def _seen_before(root: Path, key: str) -> bool:
    """Whether a processed load of `key` ran before (a marker `<root>/.seen/<key>`); notes this
    one when not. Markers unused for `_SEEN_DAYS` days are removed."""
    marker = root / ".seen" / key
    if marker.exists():
        marker.unlink(missing_ok=True)  # the entry takes over from here
        return True
    _note_seen(root, key)
    old = time.time() - _SEEN_DAYS * 86400
    for other in marker.parent.iterdir():
        try:
            if other.stat().st_mtime < old:
                other.unlink()
        except OSError:
            pass
    return False


def _note_seen(root: Path, key: str) -> None:
    """Note a processed load of `key`: the next one keeps its weights."""
    (root / ".seen").mkdir(parents=True, exist_ok=True)
    (root / ".seen" / key).touch()


def _mark_used(entry: Path) -> None:
    """Stamp the entry as used now: `_evict` removes the entries used least recently first."""
    now = time.time_ns()  # (what the file system stamps by itself is coarser)
    try:
        os.utime(entry / MANIFEST, ns=(now, now))
    except OSError:
        pass  # a read-only cache: eviction order is only a little off


def _memory_order(param: Tensor) -> tuple[int, ...] | None:
    """The permutation that makes `param` row-major (its dimensions from the largest stride to
    the smallest), when that gives a dense row-major tensor; None for one laid out otherwise (a
    part of a fused tensor: kept row-major, its layout lost)."""
    order = tuple(sorted(range(param.ndim), key=lambda d: -param.stride(d)))
    return order if param.permute(order).is_contiguous() else None


def _write_entry(folder: Path, key: str, model: HookedTransformer, verbose: bool) -> None:
    """Write the entry: every parameter in its own memory order, at its own address's offset
    modulo `_ALIGN` (a U8 padding tensor before it where needed), so the mapped weights meet
    BLAS at the alignment and layout they had and the model computes the same bits."""
    params = dict(model.named_parameters())
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    stored: dict[str, Tensor] = {}
    layout: dict[str, list[int]] = {}
    at = 0  # offset from the data's start, itself at a multiple of _ALIGN
    for name, param in params.items():
        order = _memory_order(param)
        value = param.detach().permute(order) if order is not None else param.detach()
        if order is not None and order != tuple(range(param.ndim)):
            layout[name] = [order.index(d) for d in range(param.ndim)]  # stored -> parameter
        want = param.data_ptr() % _ALIGN if param.is_cpu else 0
        gap = (want - at) % _ALIGN
        if gap:
            tensors[f".pad{len(tensors)}"] = ((gap,), torch.uint8)
            at += gap
        tensors[name] = (tuple(value.shape), value.dtype)
        stored[name] = value
        at += value.numel() * value.element_size()
    header, offsets = safetensors_header(tensors, align=_ALIGN)
    with (
        open(folder / WEIGHTS, "wb") as f,
        progress_bar(len(stored), "keeping processed weights", verbose, "tensor") as bar,
    ):
        f.write(header)
        for name, value in stored.items():
            write_tensor(f.fileno(), value, offsets[name])  # (padding stays a hole of zeros)
            bar.update()
    hf_config = getattr(model, "hf_config", None) or {}
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
    padding = [name for name in tensors if name not in stored]
    write_manifest(
        folder, MANIFEST, FORMAT, key=key, model=model.cfg.model_name, layout=layout,
        padding=padding,
    )  # fmt: skip


def _evict(root: Path, limit: int, keep: str) -> None:
    """Remove the entries used least recently until the rest hold at most `limit` bytes."""
    entries: list[tuple[float, int, Path]] = []
    for entry in root.iterdir():
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            size = sum(int(v) for v in manifest["files"].values())
            used = (entry / MANIFEST).stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # being written by another process, or damaged: `lookup` handles it
        entries.append((used, size, entry))
    total = sum(size for _, size, _ in entries)
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry.name != keep:
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
