"""Loading in the target dtype: the model is built in `dtype` and processed one unit at a time in
float32, and the result equals, bit for bit, what loading in float32, processing there and casting
once gives. Half-precision checkpoints load into half-precision models without copies, and into
float32 models through a chunked cast that never holds a tensor twice.

The tiny checkpoints are the family fixtures of tests/test_dtypes.py (built once per session);
the 2 GB measurement of peak memory and time lives in benchmarks/big_load.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_dtypes import FAMILIES, FAMILY_PARAMS

from lmscope import HookedTransformer
from lmscope.loading import checkpoint as checkpoint_module
from lmscope.processing import STEPS
from tests._tiny import TinyModel

HALF = [torch.bfloat16, torch.float16]
_REFERENCE: dict[tuple[str, tuple[str, ...]], HookedTransformer] = {}


def _reference(path: Path, steps: tuple[str, ...]) -> HookedTransformer:
    """The float32 load with `steps` on (cached: every dtype compares against it)."""
    key = (str(path), steps)
    if key not in _REFERENCE:
        _REFERENCE[key] = HookedTransformer.from_pretrained(
            path, **{step: step in steps for step in STEPS}
        )
    return _REFERENCE[key]


def _assert_same_weights(
    got: HookedTransformer, expected: HookedTransformer, dtype: torch.dtype
) -> None:
    """`got`'s parameters equal `expected`'s cast once to `dtype`, bit for bit; buffers are
    equal as they are; the same processing outcome."""
    got_state, expected_state = got.state_dict(), expected.state_dict()
    assert got_state.keys() == expected_state.keys()
    params = {name for name, _ in got.named_parameters()}
    cast = {k: v.to(dtype) if k in params else v for k, v in expected_state.items()}
    differ = [
        name
        for name, tensor in got_state.items()
        if tensor.dtype != cast[name].dtype or not torch.equal(tensor, cast[name])
    ]
    assert not differ, differ[:5]
    assert got.cfg.processing == expected.cfg.processing
    assert got.cfg.normalization_type == expected.cfg.normalization_type


@pytest.fixture(params=FAMILY_PARAMS)
def tiny(request: pytest.FixtureRequest) -> TinyModel:
    return FAMILIES[request.param](request)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_processed_half_load_equals_float32_processing_then_one_cast(
    tiny: TinyModel, dtype: torch.dtype
) -> None:
    model = HookedTransformer.from_pretrained(tiny.path, dtype=dtype)
    assert model.cfg.dtype == dtype
    _assert_same_weights(model, _reference(tiny.path, STEPS), dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("family", ["gpt2", "llama", "neox", "phi", "bloom", "gemma2"])
def test_each_step_alone_in_half_precision(
    family: str, step: str, dtype: torch.dtype, request: pytest.FixtureRequest
) -> None:
    path = FAMILIES[family](request).path
    model = HookedTransformer.from_pretrained(path, dtype=dtype, **{s: s == step for s in STEPS})
    _assert_same_weights(model, _reference(path, (step,)), dtype)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_unprocessed_half_load_equals_a_cast(tiny_llama: TinyModel, dtype: torch.dtype) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path, dtype=dtype)
    reference = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    _assert_same_weights(model, reference, dtype)


def test_chunked_cast_reads_cross_chunk_boundaries(
    tiny_gpt2: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A float32 checkpoint read into a bfloat16 model in chunks of 1,000 bytes (250 values, so
    chunks end inside rows) equals reading it whole and casting."""
    monkeypatch.setattr(checkpoint_module, "_CAST_CHUNK_BYTES", 1000)
    model = HookedTransformer.from_pretrained(tiny_gpt2.path, dtype=torch.bfloat16)
    _assert_same_weights(model, _reference(tiny_gpt2.path, STEPS), torch.bfloat16)


@pytest.fixture(scope="module")
def bf16_llama(tiny_llama: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_llama saved in bfloat16, as most hub checkpoints are."""
    path = tmp_path_factory.mktemp("llama_bf16")
    state = {k: v.to(torch.bfloat16) for k, v in tiny_llama.hf_model.state_dict().items()}
    tiny_llama.hf_model.save_pretrained(path, state_dict=state)
    return path


def _is_file_map(t: torch.Tensor) -> bool:
    """A tensor adopted from a safetensors map has a fixed-size storage torch did not allocate."""
    return not t.untyped_storage().resizable()


def test_bfloat16_checkpoint_is_adopted_by_a_bfloat16_model(
    bf16_llama: Path, tiny_llama: TinyModel
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(bf16_llama, dtype=torch.bfloat16)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    assert matrices and all(p.dtype == torch.bfloat16 and _is_file_map(p) for p in matrices)
    hf = tiny_llama.hf_model.model.layers[1].mlp.down_proj.weight
    assert torch.equal(model.blocks[1].mlp.out_weight, hf.to(torch.bfloat16))


def test_bfloat16_checkpoint_into_float32_is_exact(bf16_llama: Path) -> None:
    """bfloat16 -> float32 is exact, so the float32 model holds the checkpoint's values; processed
    in bfloat16 it equals float32 processing of those values then one cast."""
    full = HookedTransformer.from_pretrained_no_processing(bf16_llama)
    half = HookedTransformer.from_pretrained_no_processing(bf16_llama, dtype=torch.bfloat16)
    assert full.cfg.dtype == torch.float32
    _assert_same_weights(half, full, torch.bfloat16)
    processed = HookedTransformer.from_pretrained(bf16_llama, dtype=torch.bfloat16)
    _assert_same_weights(processed, HookedTransformer.from_pretrained(bf16_llama), torch.bfloat16)


def test_float64_is_processed_in_float64(tiny_gpt2: TinyModel, tokens: torch.Tensor) -> None:
    """A float64 model is processed in float64 (no float32 rounding): its log-probs match the
    unprocessed float64 model's to float64 precision, far closer than float32 processing can."""
    raw = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path, dtype=torch.float64)
    processed = HookedTransformer.from_pretrained(tiny_gpt2.path, dtype=torch.float64)
    assert {p.dtype for p in processed.parameters()} == {torch.float64}
    with torch.no_grad():
        expected = raw(tokens).log_softmax(-1)
        got = processed(tokens).log_softmax(-1)
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
