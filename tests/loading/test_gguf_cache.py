"""The GGUF cache: the first load of a GGUF file keeps its dequantised tensors, config and
tokenizer in lmscope's cache; later loads read that copy, bit for bit the same model."""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from lmscope import HookedTransformer, progress
from lmscope.errors import CheckpointError
from lmscope.loading import gguf_cache, open_checkpoint
from lmscope.loading.embedded import embedded_model_path
from lmscope.loading.gguf import GGUFCheckpoint, read_gguf
from tests.loading.test_gguf import _write_tiny

TOKENS = torch.tensor([[1, 5, 9, 33, 60, 2, 17]])


class FakeTTY(io.StringIO):
    """A stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty lmscope cache, with the GGUF cache on whatever the environment says."""
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(gguf_cache.ENV, raising=False)
    return tmp_path / "cache" / "gguf"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    _write_tiny(path, "llama", tied=False)
    return path


def _entries(root: Path) -> list[Path]:
    """Complete cache entries (not temporaries, not the hash memo)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _logits(path: Path, **kwargs) -> torch.Tensor:
    model = HookedTransformer.from_pretrained(path, **kwargs)
    with torch.no_grad():
        return model(TOKENS)


def _no_gguf_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the GGUF file was read although its cache entry exists")

    monkeypatch.setattr(gguf, "GGUFReader", refuse)


def test_second_load_reads_the_cache_bit_for_bit(cache, tiny, monkeypatch) -> None:
    direct = _logits(tiny, gguf_cache=False)
    assert not cache.exists()
    first = _logits(tiny)
    (entry,) = _entries(cache)
    assert entry.name == gguf_cache.source_sha256(tiny)
    assert {"model.safetensors", "config.json", "lmscope-gguf.json"} <= {
        p.name for p in entry.iterdir()
    }
    _no_gguf_reading(monkeypatch)
    checkpoint = open_checkpoint(tiny, gguf_cache=True)
    assert isinstance(checkpoint, gguf_cache.CachedGGUFCheckpoint)
    second = _logits(tiny)
    raw = HookedTransformer.from_pretrained_no_processing(tiny)
    assert torch.equal(first, direct)
    assert torch.equal(second, first)
    # the entry holds exactly what the GGUF reader gives, under the HF names
    monkeypatch.undo()
    source = read_gguf(tiny)
    for name in source.tensor_names():
        assert torch.equal(checkpoint.get(name), source.get(name)), name
    assert checkpoint.hf_config == source.hf_config
    assert torch.equal(raw.W_U, source.get("lm_head.weight").T)


def test_opting_out_writes_nothing(cache, tiny, monkeypatch) -> None:
    HookedTransformer.from_pretrained(tiny, gguf_cache=False)
    monkeypatch.setenv(gguf_cache.ENV, "0")
    HookedTransformer.from_pretrained(tiny)
    assert not cache.exists()
    assert isinstance(open_checkpoint(tiny), GGUFCheckpoint)  # open_checkpoint: off by default


def test_changed_source_is_never_served_from_the_old_entry(cache, tiny) -> None:
    first = _logits(tiny)
    stat = tiny.stat()
    # Same size, same mtime, other weights: only the hash (and ctime) tell the files apart.
    reader = gguf.GGUFReader(tiny)
    info = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    del reader
    with open(tiny, "r+b") as f:
        f.seek(int(info.data_offset))
        f.write(np.full(16, 3.0, dtype=np.float32).tobytes())
    os.utime(tiny, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert tiny.stat().st_size == stat.st_size
    changed = _logits(tiny)
    assert torch.equal(changed, _logits(tiny, gguf_cache=False))
    assert not torch.equal(changed, first)
    # the old entry is dropped once no remembered file has its hash
    assert [e.name for e in _entries(cache)] == [gguf_cache.source_sha256(tiny)]
    # and so is the entry of a file that is gone
    other = tiny.with_name("other.gguf")
    _write_tiny(other, "qwen2", qkv_bias=True)
    tiny.unlink()
    assert _entries(cache) != []
    gguf_cache.source_sha256(other)
    assert _entries(cache) == []


def test_hash_is_remembered_until_the_file_changes(cache, tiny, monkeypatch) -> None:
    calls = []
    real = gguf_cache.hashlib.sha256

    def counting():
        calls.append(1)
        return real()

    monkeypatch.setattr(gguf_cache.hashlib, "sha256", counting)
    digest = gguf_cache.source_sha256(tiny)
    assert gguf_cache.source_sha256(tiny) == digest
    assert len(calls) == 1
    tiny.write_bytes(tiny.read_bytes())  # same bytes, new ctime: hashed again, same digest
    assert gguf_cache.source_sha256(tiny) == digest
    assert len(calls) == 2


@pytest.mark.parametrize("damage", ["truncate", "header", "missing config"])
def test_damaged_entry_is_rebuilt(cache, tiny, damage) -> None:
    first = _logits(tiny)
    (entry,) = _entries(cache)
    weights = entry / "model.safetensors"
    size = weights.stat().st_size
    if damage == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(size - 100)
    elif damage == "header":  # same size, a header length past the end of the file
        with open(weights, "r+b") as f:
            f.write((2**40).to_bytes(8, "little"))
        with pytest.raises(CheckpointError):
            gguf_cache.DirectoryCheckpoint(entry)
    else:
        (entry / "config.json").unlink()
    assert torch.equal(_logits(tiny), first)
    assert weights.stat().st_size == size
    assert isinstance(open_checkpoint(tiny, gguf_cache=True), gguf_cache.CachedGGUFCheckpoint)


def test_failed_first_load_leaves_no_entry(cache, tiny, monkeypatch) -> None:
    real = GGUFCheckpoint.get
    calls = []

    def failing(self, name, keep=False, out=None):
        calls.append(name)
        if len(calls) == 5:
            raise CheckpointError(f"{self.path}: simulated failure")
        return real(self, name, keep, out)

    monkeypatch.setattr(GGUFCheckpoint, "get", failing)
    with pytest.raises(CheckpointError, match="simulated"):
        HookedTransformer.from_pretrained(tiny)
    gc.collect()
    assert list(cache.iterdir()) == [cache / "sources.json"]  # no entry, no temporary left
    monkeypatch.undo()
    assert torch.equal(_logits(tiny), _logits(tiny, gguf_cache=False))


def test_half_precision_loads_keep_float32_in_the_cache(cache, tiny) -> None:
    """A bfloat16 first load writes what the GGUF holds (float32), not the model's bf16."""
    first = _logits(tiny, dtype="bfloat16")
    assert first.dtype == torch.bfloat16
    assert torch.equal(_logits(tiny, dtype="bfloat16"), first)
    assert torch.equal(_logits(tiny), _logits(tiny, gguf_cache=False))


@pytest.mark.parametrize("where", ["cache folder", "tensor write"])
def test_unwritable_cache_warns_and_loads_from_the_gguf(cache, tiny, monkeypatch, where) -> None:
    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if where == "cache folder":
        monkeypatch.setattr(gguf_cache.tempfile, "mkdtemp", refuse)
    else:
        monkeypatch.setattr(gguf_cache.os, "pwrite", refuse)
    with pytest.warns(UserWarning, match="No space left on device"):
        logits = _logits(tiny)
    monkeypatch.undo()
    assert torch.equal(logits, _logits(tiny, gguf_cache=False))
    assert _entries(cache) == []
    assert not list(cache.glob(".tmp-*"))


def test_progress_bar_only_on_a_terminal_and_when_verbose(cache, tiny, monkeypatch) -> None:
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    assert progress.progress_bar(3, "x", file=FakeTTY()).disable is False
    assert progress.progress_bar(3, "x", verbose=False, file=FakeTTY()).disable is True
    assert progress.progress_bar(3, "x", file=io.StringIO()).disable is True
    quiet, shown = FakeTTY(), FakeTTY()
    monkeypatch.setattr("sys.stderr", quiet)
    HookedTransformer.from_pretrained(tiny, verbose=False)
    assert quiet.getvalue() == ""
    for entry in _entries(cache):
        gguf_cache.shutil.rmtree(entry)
    monkeypatch.setattr("sys.stderr", shown)
    HookedTransformer.from_pretrained(tiny)
    n_tensors = len(read_gguf(tiny).tensor_names())
    assert "reading GGUF" in shown.getvalue()
    assert f"{n_tensors + 1}/{n_tensors + 1}" in shown.getvalue()


@pytest.mark.slow
def test_cached_tokenizer_equals_the_gguf_tokenizer(tmp_path) -> None:
    """SmolLM2's tokenizer saved as the cache saves it (tokenizer.json), read back by the class
    that saved it, gives the GGUF tokenizer's ids, special tokens and BOS default."""
    from lmscope.model import _prepends_bos

    original = read_gguf(embedded_model_path("smollm2-135m")).tokenizer_loader()()
    assert gguf_cache._save_tokenizer(lambda: original, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    cached = gguf_cache._load_saved_tokenizer(tmp_path)
    assert type(cached) is type(original)
    for text in [
        "The capital of France is",
        "  leading spaces, tabs\tand\nnewlines",
        "Ünïcödé — 東京 🙂 1234567",
        "<|im_start|>user\nHi<|im_end|>",
    ]:
        assert cached(text)["input_ids"] == original(text)["input_ids"], text
        ids = original(text)["input_ids"]
        assert cached.decode(ids) == original.decode(ids)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(cached, attr) == getattr(original, attr), attr
    assert len(cached) == len(original)
    assert _prepends_bos(cached) == _prepends_bos(original)
