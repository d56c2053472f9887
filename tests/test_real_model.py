"""The embedded real model (SmolLM2-135M-Instruct, Q4_1 GGUF) against transformers on the same file."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.loading.embedded import embedded_model_path

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Mechanistic interpretability studies how neural networks compute.",
]


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    path = embedded_model_path("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@pytest.fixture(scope="module")
def raw_model() -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing("smollm2-135m")


@pytest.fixture(scope="module")
def smollm2() -> HookedTransformer:
    return HookedTransformer.from_pretrained("smollm2-135m")


def _hf_logits(hf_model, tokens: torch.Tensor, impl: str) -> torch.Tensor:
    hf_model.set_attn_implementation(impl)
    with torch.no_grad():
        return hf_model(tokens).logits


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_hf_eager_on_explicit_path(raw_model, hf_model, prompt):
    tokens = raw_model.to_tokens(prompt)
    expected = _hf_logits(hf_model, tokens, "eager")
    with torch.no_grad():
        # Caching the pattern forces the explicit (materialised) attention path, like HF eager.
        logits, cache = raw_model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_pattern")
        )
    assert len(cache) == raw_model.cfg.n_layers
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_hf_sdpa_on_fast_path(raw_model, hf_model, prompt):
    tokens = raw_model.to_tokens(prompt)
    expected = _hf_logits(hf_model, tokens, "sdpa")
    with torch.no_grad():
        logits = raw_model(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


def test_residual_stream_matches_hf(raw_model, hf_model):
    tokens = raw_model.to_tokens(PROMPTS[1])
    hf_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states
        _, cache = raw_model.run_with_cache(
            tokens, names_filter=lambda n: n.endswith("hook_resid_pre")
        )
    for layer in range(raw_model.cfg.n_layers):
        torch.testing.assert_close(cache["resid_pre", layer], hidden[layer], atol=1e-4, rtol=1e-5)


def test_loss_matches_hf(raw_model, hf_model):
    tokens = raw_model.to_tokens(PROMPTS[1])
    hf_model.set_attn_implementation("sdpa")
    with torch.no_grad():
        expected = hf_model(tokens, labels=tokens).loss
        loss = raw_model(tokens, return_type="loss")
    assert abs(loss.item() - expected.item()) < 1e-4
    assert 1.0 < loss.item() < 8.0  # a trained model, not noise (ln(49152) = 10.8)


def test_processed_model_gives_same_log_probs(raw_model, smollm2: HookedTransformer):
    tokens = raw_model.to_tokens(PROMPTS)
    with torch.no_grad():
        raw = raw_model(tokens).log_softmax(-1)
        processed = smollm2(tokens).log_softmax(-1)
    torch.testing.assert_close(processed, raw, atol=1e-4, rtol=0)
    assert smollm2.cfg.normalization_type == "RMSPre"


def test_greedy_continuation_names_paris(smollm2: HookedTransformer):
    tokens = smollm2.to_tokens("The capital of France is")
    with torch.no_grad():
        for _ in range(4):
            next_token = smollm2(tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
    assert "Paris" in smollm2.to_string(tokens[0])


def test_bos_is_prepended_by_default_as_in_transformer_lens(smollm2: HookedTransformer):
    # The GGUF says add_bos_token = false, but TransformerLens prepends BOS to Llama models;
    # lmscope follows TransformerLens, adds exactly one, and prepend_bos=False leaves it out.
    assert smollm2.cfg.default_prepend_bos is True
    plain = smollm2.to_tokens("Hello", prepend_bos=False)
    with_bos = smollm2.to_tokens("Hello")
    assert with_bos[0, 0].item() == smollm2.tokenizer.bos_token_id
    assert torch.equal(with_bos[0, 1:], plain[0])
