"""On a CUDA GPU (skipped without one; CI has none): every family in bfloat16 and float16 against
transformers in the same dtype on the same GPU, and a model split over `cuda:0` and the CPU.

The GPU figures in docs/devices.md and docs/loading.md come from running this file on an H200:
    pytest -q tests/test_cuda.py
"""

from __future__ import annotations

import pytest
import torch
from test_dtypes import FAMILIES, FAMILY_PARAMS, SLACK, _distance, _log_probs
from transformers import AutoModelForCausalLM

from lmscope import HookedTransformer
from lmscope.devices import unit_names
from tests._tiny import TinyModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = torch.device("cuda", 0)
CPU = torch.device("cpu")


@pytest.fixture(params=FAMILY_PARAMS)
def tiny(request: pytest.FixtureRequest) -> TinyModel:
    return FAMILIES[request.param](request)


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    """float32 matmuls in full precision, as on the CPU (the default; kept explicit)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _hf_on_gpu(tiny: TinyModel, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' eager model in `dtype` on the GPU (eager experts where the version has the
    switch: older ones have no other)."""
    kwargs = dict(dtype=dtype, attn_implementation="eager", experts_implementation="eager")
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny.path, **kwargs)
    except TypeError:
        del kwargs["experts_implementation"]
        model = AutoModelForCausalLM.from_pretrained(tiny.path, **kwargs)
    return model.to(GPU).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@torch.no_grad()
def test_half_precision_on_the_gpu_is_as_close_to_float32_as_transformers(
    tiny: TinyModel, dtype: torch.dtype, tokens: torch.Tensor
) -> None:
    tokens = tokens.to(GPU)
    reference = _hf_on_gpu(tiny, torch.float32)(tokens).logits
    hf = _hf_on_gpu(tiny, dtype)(tokens).logits
    budget = SLACK * _distance(hf, reference)

    model = HookedTransformer.from_pretrained_no_processing(tiny.path, dtype=dtype, device="cuda")
    assert {(p.dtype, p.device) for p in model.parameters()} == {(dtype, GPU)}
    fast = model(tokens)
    explicit, cache = model.run_with_cache(tokens)
    assert {t.device for t in cache.values()} == {GPU}
    distances = {"fast": _distance(fast, reference), "explicit": _distance(explicit, reference)}
    assert max(distances.values()) <= budget, (distances, budget)

    processed = HookedTransformer.from_pretrained(tiny.path, dtype=dtype, device="cuda")
    assert {(p.dtype, p.device) for p in processed.parameters()} == {(dtype, GPU)}
    lp_budget = SLACK * _distance(_log_probs(hf), _log_probs(reference))
    lp_distance = _distance(_log_probs(processed(tokens)), _log_probs(reference))
    assert lp_distance <= lp_budget, (lp_distance, lp_budget)

    generated = model.generate(
        tokens[:, :5], max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False
    )  # with the KV cache
    full = model(generated)
    assert torch.equal(full[:, 4:-1].argmax(-1), generated[:, 5:])


def _split_plan(n_layers: int) -> dict[str, str]:
    """The first half of the blocks (and the embeddings) on the GPU, the rest on the CPU."""
    plan = {name: "cuda:0" for name in unit_names(n_layers)}
    for name in [f"blocks.{i}" for i in range(n_layers // 2, n_layers)] + ["ln_final", "unembed"]:
        plan[name] = "cpu"
    return plan


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_neox", "tiny_llama"])
def test_a_model_split_over_the_gpu_and_the_cpu_equals_the_cpu_model(
    fixture: str, request: pytest.FixtureRequest, tokens: torch.Tensor
) -> None:
    path = request.getfixturevalue(fixture).path
    plain = HookedTransformer.from_pretrained(path)
    n = plain.cfg.n_layers
    model = HookedTransformer.from_pretrained(path, device_map=_split_plan(n))
    assert model.W_E.device == GPU and model.W_U.device == CPU
    assert model.blocks[0].attn.W_Q.device == GPU and model.blocks[n - 1].attn.W_Q.device == CPU
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), plain(tokens), rtol=0, atol=1e-5)
        _, cache = model.run_with_cache(tokens)  # each activation on its block's device
        assert cache["blocks.0.hook_resid_post"].device == GPU
        assert cache[f"blocks.{n - 1}.hook_resid_post"].device == CPU
        _, gathered = model.run_with_cache(tokens, device="cpu")
        _, expected = plain.run_with_cache(tokens)
        assert {t.device for t in gathered.values()} == {CPU}
        for name in expected:
            torch.testing.assert_close(gathered[name], expected[name], rtol=0, atol=1e-5)
    loss = model(tokens, return_type="loss")
    loss.backward()
    assert model.W_E.grad is not None and model.W_E.grad.device == GPU
    args = dict(max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    got = model.generate(tokens[:1, :5], **args)
    assert got.device == GPU  # where the embedding is, as TransformerLens returns them
    assert torch.equal(got.cpu(), plain.generate(tokens[:1, :5], **args))


def test_auto_device_map_puts_a_small_model_on_the_gpu(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(tiny_llama.path, device_map="auto")
    assert set(model.device_map.values()) == {GPU}
    model = HookedTransformer.from_pretrained(tiny_llama.path, n_devices=1)
    assert set(model.device_map.values()) == {GPU}
