"""Every family in float32, bfloat16, float16 and float64, against transformers in the same dtype.

Half-precision parity is relative to what transformers itself achieves: on the same tiny random
checkpoint, lmscope in a dtype must be no further (root-mean-square over the logits) from
transformers' float32 logits than transformers in that dtype is, with 1.5x slack for rounding luck. float64 keeps lmscope's float32
tolerances. The tiny checkpoints are the family fixtures of tests/conftest.py and the spec tables
of tests/loading/test_families_*.py, built once per session.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import TinyModel
from transformers import AutoModelForCausalLM, PreTrainedModel

from lmscope import HookedTransformer

HALF = [torch.bfloat16, torch.float16]
SLACK = 1.5
LOGIT_ATOL = 1e-5  # lmscope's float32 tolerance against transformers (tests/loading)


def _family_module(name: str) -> ModuleType:
    """A tests/loading family module (for its spec tables), imported under the name pytest gives
    it, so its cache of built checkpoints is shared with its own tests."""
    folder = str(Path(__file__).parent / "loading")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def _conftest(fixture: str) -> Callable[[pytest.FixtureRequest], TinyModel]:
    return lambda request: request.getfixturevalue(fixture)


def _classic(name: str) -> Callable[[pytest.FixtureRequest], TinyModel]:
    def build(request: pytest.FixtureRequest) -> TinyModel:
        module = _family_module("test_families_classic")
        return module._get(name, request.getfixturevalue("tmp_path_factory"))

    return build


def _llama_like(name: str) -> Callable[[pytest.FixtureRequest], TinyModel]:
    def build(request: pytest.FixtureRequest) -> TinyModel:
        module = _family_module("test_families_llama_like")
        return module._tiny(name, request.getfixturevalue("tmp_path_factory"))

    return build


_NORM_VARIANTS: dict[str, TinyModel] = {}


def _norm_variant(name: str) -> Callable[[pytest.FixtureRequest], TinyModel]:
    def build(request: pytest.FixtureRequest) -> TinyModel:
        if name not in _NORM_VARIANTS:
            module = _family_module("test_families_norm_variants")
            model_cls, make_config = module.SPECS[name]
            factory = request.getfixturevalue("tmp_path_factory")
            _NORM_VARIANTS[name] = module._build_tiny(
                factory, f"dtype_{name}", model_cls, make_config()
            )
        return _NORM_VARIANTS[name]

    return build


# One checkpoint per family adapter, plus the variants whose features touch precision
# (soft-caps, q/k norms, local rotary bases, rope scaling, routers, ALiBi, partial rotary).
FAMILIES: dict[str, Callable[[pytest.FixtureRequest], TinyModel]] = {
    "gpt2": _conftest("tiny_gpt2"),
    "neox": _conftest("tiny_neox"),
    "llama": _conftest("tiny_llama"),
    "mistral": _conftest("tiny_mistral"),
    "gpt_neo": _classic("gpt_neo"),
    "gptj": _classic("gptj"),
    "codegen": _classic("codegen"),
    "opt": _classic("opt"),
    "bloom": _classic("bloom"),
    "bigcode_mqa": _classic("bigcode_mqa"),
    "llama3": _llama_like("llama3"),
    "mixtral": _llama_like("mixtral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    "qwen2_moe": _llama_like("qwen2_moe"),
    "qwen3_moe": _llama_like("qwen3_moe"),
    "gemma": _norm_variant("gemma"),
    "gemma2": _norm_variant("gemma2"),
    "gemma3": _norm_variant("gemma3"),
    "phi": _norm_variant("phi"),
    "phi3": _norm_variant("phi3"),
    "olmo": _norm_variant("olmo"),
    "olmo2": _norm_variant("olmo2"),
    "olmoe": _norm_variant("olmoe"),
    "stablelm": _norm_variant("stablelm"),
}


@pytest.fixture(params=list(FAMILIES))
def tiny(request: pytest.FixtureRequest) -> TinyModel:
    return FAMILIES[request.param](request)


_HF: dict[tuple[str, torch.dtype], PreTrainedModel] = {}


def _hf(tiny: TinyModel, dtype: torch.dtype) -> PreTrainedModel:
    """transformers' model loaded in `dtype` (eager attention, eager experts), as users load it."""
    key = (str(tiny.path), dtype)
    if key not in _HF:
        _HF[key] = AutoModelForCausalLM.from_pretrained(
            tiny.path, dtype=dtype, attn_implementation="eager", experts_implementation="eager"
        ).eval()
    return _HF[key]


def _distance(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Root-mean-square difference, in float64. (The largest difference is one rounding outlier
    among a few thousand logits, so it says little about a dtype's precision.)"""
    return (got.double() - expected.double()).pow(2).mean().sqrt().item()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().log_softmax(-1)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@torch.no_grad()
def test_half_precision_is_as_close_to_float32_as_transformers(
    tiny: TinyModel, dtype: torch.dtype, tokens: torch.Tensor
) -> None:
    reference = tiny.hf_model(tokens).logits  # transformers, float32
    hf = _hf(tiny, dtype)(tokens).logits
    assert hf.dtype == dtype
    budget = SLACK * _distance(hf, reference)

    model = HookedTransformer.from_pretrained_no_processing(tiny.path, dtype=dtype)
    assert model.cfg.dtype == dtype
    assert {p.dtype for p in model.parameters()} == {dtype}
    fast = model(tokens)
    explicit, cache = model.run_with_cache(tokens)  # explicit attention, hooked norms
    assert fast.dtype == explicit.dtype == dtype
    assert {t.dtype for t in cache.values() if t.is_floating_point()} == {dtype}
    distances = {"fast": _distance(fast, reference), "explicit": _distance(explicit, reference)}

    processed = HookedTransformer.from_pretrained(tiny.path, dtype=dtype)
    assert {p.dtype for p in processed.parameters()} == {dtype}
    lp_budget = SLACK * _distance(_log_probs(hf), _log_probs(reference))
    lp_distance = _distance(_log_probs(processed(tokens)), _log_probs(reference))
    print(
        f"\nDIST {tiny.name} {dtype} hf={budget / SLACK:.4g} fast={distances['fast']:.4g} "
        f"explicit={distances['explicit']:.4g} hf_lp={lp_budget / SLACK:.4g} processed_lp={lp_distance:.4g}"
    )
    assert max(distances.values()) <= budget, (distances, budget)
    assert lp_distance <= lp_budget, (lp_distance, lp_budget)
