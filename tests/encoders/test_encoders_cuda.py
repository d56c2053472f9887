"""On a CUDA GPU (skipped without one; CI has none): the encoders on the GPU equal themselves on
the CPU in float32, run in bfloat16, and T5 generates the same tokens there with and without
its KV cache.

    pytest -q tests/encoders/test_encoders_cuda.py
"""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedEncoder, HookedEncoderDecoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False


@torch.no_grad()
@pytest.mark.parametrize("name", ["bert_pretraining", "roberta", "distilbert"])
def test_encoder_on_gpu(encoder_models, encoder_inputs, name: str) -> None:
    tokens, mask = encoder_inputs
    cpu = HookedEncoder.from_pretrained(encoder_models[name].path)
    gpu = HookedEncoder.from_pretrained(encoder_models[name].path, device="cuda")
    assert gpu.W_E.is_cuda
    ref = cpu(tokens, "embeddings", attention_mask=mask)
    out = gpu(tokens, "embeddings", attention_mask=mask)
    torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=0)
    _, cache = gpu.run_with_cache(tokens, attention_mask=mask)  # hooked path: explicit pattern
    torch.testing.assert_close(
        cache["blocks.1.hook_normalized_resid_post"].cpu(), ref, atol=1e-5, rtol=0
    )
    half = HookedEncoder.from_pretrained(encoder_models[name].path, device="cuda", dtype="bfloat16")
    low = half(tokens, "embeddings", attention_mask=mask).float().cpu()
    assert float((low - ref).abs().max()) < 0.1 * float(ref.abs().max())


@torch.no_grad()
@pytest.mark.parametrize("name", ["t5", "t5_v11"])
def test_t5_on_gpu(encoder_models, encoder_inputs, name: str) -> None:
    tokens, mask = encoder_inputs
    cpu = HookedEncoderDecoder.from_pretrained(encoder_models[name].path)
    gpu = HookedEncoderDecoder.from_pretrained(encoder_models[name].path, device="cuda")
    decoder = torch.zeros(3, 1, dtype=torch.long)
    ref = cpu(tokens, decoder, attention_mask=mask)
    torch.testing.assert_close(
        gpu(tokens, decoder, attention_mask=mask).cpu(), ref, atol=1e-5, rtol=0
    )
    kwargs = dict(max_new_tokens=8, do_sample=False, eos_token_id=1, verbose=False)
    on_gpu = gpu.generate(tokens.cuda(), mask.cuda(), **kwargs)
    uncached = gpu.generate(tokens.cuda(), mask.cuda(), use_past_kv_cache=False, **kwargs)
    assert torch.equal(on_gpu, uncached)
    assert torch.equal(on_gpu.cpu(), cpu.generate(tokens, mask, **kwargs))
