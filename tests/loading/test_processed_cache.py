"""The processed-weights cache: the second processed load of the same files with the same
settings keeps its processed weights (the first only notes the key), and every later one maps
them instead of processing again, giving the same model bit for bit. (Every family:
tests/loading/test_conformance.py's `test_processed_cache_gives_the_processed_model`.)"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import lmscope.loading
from lmscope import HookedTransformer
from lmscope.errors import CheckpointError
from lmscope.loading import processed_cache
from lmscope.loading.transforms import Permute
from tests._tiny import TinyModel

TOKENS = torch.tensor([[1, 5, 9, 33, 60, 2, 17], [3, 4, 8, 12, 90, 61, 7]])


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith(".")) if root.exists() else []


def _same_model(got: HookedTransformer, want: HookedTransformer) -> None:
    assert repr(got.cfg) == repr(want.cfg)
    g, w = got.state_dict(), want.state_dict()
    assert list(g) == list(w)
    for name in w:
        assert g[name].dtype == w[name].dtype, name
        assert torch.equal(g[name], w[name]), name
    with torch.no_grad():
        assert torch.equal(got(TOKENS), want(TOKENS))


def _keep(path: Path | str, **settings: object) -> HookedTransformer:
    """Load twice: the second load keeps the processed weights. Returns the second model."""
    HookedTransformer.from_pretrained(path, **settings)
    return HookedTransformer.from_pretrained(path, **settings)


def _copy(tiny: TinyModel, tmp_path: Path) -> Path:
    path = tmp_path / "model"
    shutil.copytree(tiny.path, path)
    return path


@pytest.fixture
def forbid_processing(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make any further weight processing fail the test."""

    def forbid() -> None:
        def processing(*args: object) -> None:
            raise AssertionError("processed weights although they were kept")

        monkeypatch.setattr(lmscope.loading, "process_unit", processing)

    return forbid


SETTINGS = [
    {},
    {"dtype": torch.bfloat16},
    {"dtype": torch.float16},
    {"dtype": torch.float64},
    {"first_n_layers": 1},
    {"fold_ln": False},
    {"center_writing_weights": False, "fold_value_biases": False},
]
CASES = [(family, s) for family in ("gpt2", "llama_gqa") for s in SETTINGS]
CASES.append(("gpt2", {"refactor_factored_attn_matrices": True}))  # learned positions only


@pytest.mark.parametrize(
    ("family", "settings"),
    CASES,
    ids=[f + ":" + (",".join(f"{k}={v}" for k, v in s.items()) or "default") for f, s in CASES],
)
def test_kept_load_is_the_processed_model(
    family, settings, tiny_family, processed_cache_dir, forbid_processing
) -> None:
    tiny = tiny_family(family)
    want = HookedTransformer.from_pretrained(tiny.path, processed_cache=False, **settings)
    first = HookedTransformer.from_pretrained(tiny.path, **settings)
    assert _entries(processed_cache_dir) == []  # a model loaded once is not kept
    second = HookedTransformer.from_pretrained(tiny.path, **settings)
    assert len(_entries(processed_cache_dir)) == 1
    _same_model(first, want)
    _same_model(second, want)
    forbid_processing()
    _same_model(HookedTransformer.from_pretrained(tiny.path, **settings), want)


def test_each_setting_is_its_own_entry(tiny_family, processed_cache_dir) -> None:
    path = tiny_family("llama_gqa").path
    for settings in ({}, {"dtype": torch.bfloat16}, {"first_n_layers": 1}, {"fold_ln": False}):
        _keep(path, **settings)
    assert len(_entries(processed_cache_dir)) == 4


def test_markers_of_first_loads_are_dropped_when_kept_or_old(tiny_family, processed_cache_dir):
    path = tiny_family("llama_gqa").path
    HookedTransformer.from_pretrained(path)
    (marker,) = (processed_cache_dir / ".seen").iterdir()
    HookedTransformer.from_pretrained(path)  # keeps: the marker goes
    assert not marker.exists()
    HookedTransformer.from_pretrained(path, fold_ln=False)
    (old,) = (processed_cache_dir / ".seen").iterdir()
    month_ago = old.stat().st_mtime - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    HookedTransformer.from_pretrained(path, dtype=torch.bfloat16)  # a new marker, the old goes
    assert len(list((processed_cache_dir / ".seen").iterdir())) == 1 and not old.exists()


def test_unprocessed_and_uncached_loads_keep_nothing(tiny_family, processed_cache_dir, monkeypatch):
    tiny = tiny_family("llama_gqa")
    HookedTransformer.from_pretrained_no_processing(tiny.path)
    HookedTransformer.from_pretrained(tiny.path, processed_cache=False)
    HookedTransformer.from_pretrained(tiny.path, hf_model=tiny.hf_model)  # no file to key on
    monkeypatch.setenv(processed_cache.ENV, "0")
    _keep(tiny.path)
    assert _entries(processed_cache_dir) == []
    _keep(tiny.path, processed_cache=True)  # the argument wins
    assert len(_entries(processed_cache_dir)) == 1


def test_small_models_are_not_kept(tiny_family, processed_cache_dir, monkeypatch) -> None:
    monkeypatch.setattr(processed_cache, "MIN_BYTES", 16 << 20)  # the default
    _keep(tiny_family("gpt2").path)
    assert _entries(processed_cache_dir) == []


def test_a_changed_checkpoint_is_processed_again(tiny_family, processed_cache_dir, tmp_path):
    path = _copy(tiny_family("gpt2"), tmp_path)
    old = _keep(path)
    weights = load_file(path / "model.safetensors")
    weights = {name: w * 1.5 if w.ndim == 2 else w for name, w in weights.items()}
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    want = HookedTransformer.from_pretrained(path, processed_cache=False)
    got = _keep(path)
    _same_model(got, want)
    _same_model(HookedTransformer.from_pretrained(path), want)
    assert not torch.equal(got.W_E, old.W_E)
    assert len(_entries(processed_cache_dir)) == 2


def test_a_new_lmscope_is_a_new_entry(tiny_family, processed_cache_dir, monkeypatch) -> None:
    path = tiny_family("gpt2").path
    _keep(path)
    monkeypatch.setattr(processed_cache, "_code_digest", lambda: "edited source")
    _keep(path)
    assert len(_entries(processed_cache_dir)) == 2


@pytest.mark.parametrize("damage", ["truncate", "grow", "manifest", "header"])
def test_a_damaged_entry_is_rebuilt(tiny_family, processed_cache_dir, damage) -> None:
    path = tiny_family("llama_gqa").path
    want = HookedTransformer.from_pretrained(path, processed_cache=False)
    _keep(path)
    (entry,) = _entries(processed_cache_dir)
    weights = entry / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[:-100])
    elif damage == "grow":
        weights.write_bytes(data + b"\0" * 8)
    elif damage == "manifest":
        (entry / processed_cache.MANIFEST).write_text("{not json")
    else:  # same size, a header safetensors refuses
        weights.write_bytes(data[:8] + b"[" + data[9:])
    _same_model(HookedTransformer.from_pretrained(path), want)
    assert _entries(processed_cache_dir) == [entry]  # rebuilt by the same load
    _same_model(HookedTransformer.from_pretrained(path), want)


def test_an_entry_with_other_tensors_is_refused_and_removed(tiny_family, processed_cache_dir):
    path = tiny_family("llama_gqa").path
    _keep(path)
    (entry,) = _entries(processed_cache_dir)
    manifest = json.loads((entry / processed_cache.MANIFEST).read_text())
    manifest["padding"].append("embed.W_E")  # a weight the entry would no longer hand out
    (entry / processed_cache.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="damaged and is now removed: load the model again"):
        HookedTransformer.from_pretrained(path)
    assert not entry.exists()
    _keep(path)
    assert _entries(processed_cache_dir) == [entry]


def test_least_recently_used_entries_go_beyond_the_limit(
    tiny_family, processed_cache_dir, monkeypatch
) -> None:
    path = tiny_family("llama_gqa").path
    _keep(path)
    (first,) = _entries(processed_cache_dir)
    size = sum(f.stat().st_size for f in first.iterdir())
    monkeypatch.setenv(processed_cache.SIZE_ENV, str(2.5 * size / 2**30))  # room for two
    _keep(path, fold_ln=False)  # a little larger (norm weights)
    (second,) = set(_entries(processed_cache_dir)) - {first}
    HookedTransformer.from_pretrained(path)  # uses the first again: now the second is oldest
    _keep(path, dtype=torch.bfloat16)  # half the size: 2.5+ in all
    left = _entries(processed_cache_dir)
    assert first in left and second not in left and len(left) == 2
    monkeypatch.setenv(processed_cache.SIZE_ENV, str(0.5 * size / 2**30))
    _keep(path, center_unembed=False)  # larger than the limit
    assert len(_entries(processed_cache_dir)) == 2


def test_a_bad_size_limit_is_named(tiny_family, processed_cache_dir, monkeypatch) -> None:
    monkeypatch.setenv(processed_cache.SIZE_ENV, "lots")
    with pytest.raises(ValueError, match="LMSCOPE_PROCESSED_CACHE_GB='lots' is not a number"):
        HookedTransformer.from_pretrained(tiny_family("gpt2").path)


def test_an_unwritable_cache_warns_and_loads(tiny_family, processed_cache_dir, monkeypatch):
    processed_cache_dir.parent.mkdir(parents=True, exist_ok=True)
    blocker = processed_cache_dir.parent / "a file"
    blocker.write_text("")
    monkeypatch.setenv(processed_cache.DIR_ENV, str(blocker / "processed"))
    path = tiny_family("gpt2").path
    want = HookedTransformer.from_pretrained(path, processed_cache=False)
    with pytest.warns(UserWarning, match="could not keep the processed weights"):
        got = HookedTransformer.from_pretrained(path)  # (even noting a first load fails)
    _same_model(got, want)


def test_weights_keep_their_memory_order(tiny_family, processed_cache_dir) -> None:
    """A weight adopted from a checkpoint that stores it transposed keeps that layout (and with
    it the rounding of every product it takes part in)."""
    path = tiny_family("llama4").path
    want = HookedTransformer.from_pretrained(path, processed_cache=False)
    _keep(path)
    got = HookedTransformer.from_pretrained(path)
    strides = {n: p.stride() for n, p in want.named_parameters()}
    assert any(not p.is_contiguous() for p in want.parameters())
    assert {n: p.stride() for n, p in got.named_parameters()} == strides
    _same_model(got, want)


def test_the_embedded_model_is_kept(processed_cache_dir, forbid_processing) -> None:
    want = HookedTransformer.from_pretrained("smollm2-135m", processed_cache=False)
    _keep("smollm2-135m")
    forbid_processing()
    got = HookedTransformer.from_pretrained("smollm2-135m")
    _same_model(got, want)
    assert got.to_string(got(TOKENS)[0].argmax(-1)) == want.to_string(want(TOKENS)[0].argmax(-1))


def test_permute_is_a_view_with_its_inverse() -> None:
    stored = torch.arange(24.0).view(4, 3, 2)
    transform = Permute((2, 0, 1))
    view = transform(stored)
    assert view.shape == (2, 4, 3) and view.data_ptr() == stored.data_ptr()
    assert transform.source_shapes(tuple(view.shape)) == [(4, 3, 2)]
    out = torch.empty(4, 3, 2)
    transform.inverse(view, out)
    assert torch.equal(out, stored)


def test_the_directory_defaults_to_lmscope_cache(tmp_path, monkeypatch) -> None:
    """Without LMSCOPE_PROCESSED_CACHE_DIR (which `processed_cache_dir` sets for every other
    test here), entries go under lmscope's cache directory."""
    monkeypatch.delenv(processed_cache.DIR_ENV, raising=False)
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "lmscope"))
    assert processed_cache.cache_root() == tmp_path / "lmscope" / "processed"
    monkeypatch.setenv(processed_cache.DIR_ENV, "  ")
    assert processed_cache.cache_root() == tmp_path / "lmscope" / "processed"
