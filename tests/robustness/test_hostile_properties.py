"""Property tests: random mutations of a valid safetensors header and of a valid GGUF header
either give a CheckpointError naming the file, or load weights equal to what the mutated file
really says (read by the safetensors and gguf libraries themselves)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hostile_files import (
    LOADERS,
    edit_header,
    faithful_reference,
    patch,
    split_safetensors,
    weights,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmscope.errors import CheckpointError
from lmscope.loading.gguf import read_gguf
from tests._tiny import TinyModel
from tests.loading.test_gguf import _llama_cpp_permute, _write_tiny

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never fails by the draw
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F33"]


@pytest.fixture(scope="module")
def llama_dir(tiny_llama: TinyModel) -> Path:
    return tiny_llama.path


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf-prop") / "tiny.gguf"
    _write_tiny(path, "llama", tied=False)
    return path


def _field_mutation() -> st.SearchStrategy:
    """(field, value) for one tensor's header entry."""
    return st.one_of(
        st.tuples(st.just("dtype"), st.sampled_from(DTYPES)),
        st.tuples(st.just("shape"), st.lists(st.integers(0, 300), max_size=3)),
        st.tuples(
            st.just("data_offsets"),
            st.lists(st.integers(-16, 200_000), min_size=2, max_size=2),
        ),
    )


def _assert_rule(path: Path, work: Path, load) -> None:
    """A CheckpointError naming `work`, or weights equal to what safetensors reads."""
    try:
        model = load(path)
    except CheckpointError as err:
        assert str(work) in str(err), str(err)
        return
    want = faithful_reference(work, load)
    got = weights(model)
    for name, value in want.items():
        assert torch.equal(got[name], value), name


@SETTINGS
@given(
    index=st.integers(0, 100),
    mutation=_field_mutation(),
    kind=st.sampled_from(sorted(LOADERS)),
)
def test_mutated_safetensors_header_fields(llama_dir: Path, index, mutation, kind) -> None:
    field, value = mutation
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(shutil.copytree(llama_dir, Path(tmp) / "work"))
        names = sorted(split_safetensors(work / "model.safetensors")[0].keys() - {"__metadata__"})
        name = names[index % len(names)]
        edit_header(work, lambda header: header[name].__setitem__(field, value))
        _assert_rule(work, work, LOADERS[kind])


@SETTINGS
@given(
    position=st.integers(0, 10_000), byte=st.integers(0, 255), kind=st.sampled_from(sorted(LOADERS))
)
def test_mutated_safetensors_header_bytes(llama_dir: Path, position, byte, kind) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(shutil.copytree(llama_dir, Path(tmp) / "work"))
        file = work / "model.safetensors"
        length = file.stat().st_size - len(split_safetensors(file)[1])  # 8 + header
        patch(file, position % length, bytes([byte]))
        _assert_rule(work, work, LOADERS[kind])


def _gguf_says(path: Path) -> dict[str, np.ndarray]:
    """Each tensor as the gguf library reads it from the file: {gguf name: float32 array}."""
    reader = gguf.GGUFReader(path)
    return {
        t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        for t in reader.tensors
    }


@SETTINGS
@given(position=st.integers(0, 100_000), byte=st.integers(0, 255))
def test_mutated_gguf_header_bytes(gguf_file: Path, position, byte) -> None:
    """A byte of the GGUF header (metadata and tensor infos, not the data) changed: a
    CheckpointError naming the file, or tensors equal to what gguf reads (Q/K rows un-permuted
    as llama.cpp permuted them) and a model holding them."""
    data_start = gguf.GGUFReader(gguf_file).data_offset
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        shutil.copy(gguf_file, path)
        patch(path, position % data_start, bytes([byte]))
        try:
            checkpoint = read_gguf(path)
            model = LOADERS["raw"](path)
        except CheckpointError as err:
            assert str(path) in str(err), str(err)
            return
        says = _gguf_says(path)
        cfg = checkpoint.hf_config
        heads = {"attn_q": cfg["num_attention_heads"], "attn_k": cfg["num_key_value_heads"]}
        for name in checkpoint.tensor_names():
            gguf_name = checkpoint.gguf_name(name)
            ours = checkpoint.get(name).numpy()
            kind = gguf_name.split(".")[-2]
            if kind in heads:
                ours = _llama_cpp_permute(ours, heads[kind])
            got = ours.reshape(says[gguf_name].shape)  # a mutated byte can make a value NaN
            assert np.array_equal(got, says[gguf_name], equal_nan=True), name
        embed = checkpoint.get("model.embed_tokens.weight")
        assert torch.equal(model.W_E, embed)
