"""refactor_factored_attn_matrices: logits unchanged, circuits unchanged, factors in SVD form."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_analysis_models import make_model, one_thread, random_tokens

from lmscope import HookedTransformer
from lmscope.processing import refactor_factored_attn_matrices


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def _qk_with_biases(model: HookedTransformer) -> torch.Tensor:
    W_Q = torch.cat([model.W_Q, model.b_Q[:, :, None]], dim=2)
    W_K = torch.cat([model.W_K, model.b_K[:, :, None]], dim=2)
    return W_Q @ W_K.transpose(-1, -2)


@pytest.mark.parametrize("processed", [True, False])
def test_refactor_keeps_logits_and_circuits(processed: bool) -> None:
    model = make_model("ln", processed=processed)
    tokens = random_tokens(2, 10)
    with torch.no_grad():
        before = model(tokens)
        qk, ov = _qk_with_biases(model), model.OV.AB
        b_out = model.b_O + torch.einsum("lhd,lhdm->lm", model.b_V, model.W_O)
    refactor_factored_attn_matrices(model)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before, atol=1e-4, rtol=0)
        torch.testing.assert_close(_qk_with_biases(model), qk, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.OV.AB, ov, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.b_O, b_out, atol=1e-6, rtol=0)
        assert model.b_V.abs().max() == 0
        # the factors are even: W_V^T W_V = W_O W_O^T = diag(S)
        S = model.OV.S
        gram_v = model.W_V.transpose(-1, -2) @ model.W_V
        gram_o = model.W_O @ model.W_O.transpose(-1, -2)
        torch.testing.assert_close(gram_v, torch.diag_embed(S), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gram_o, torch.diag_embed(S), atol=1e-5, rtol=1e-4)
    assert model.cfg.processing["refactor_factored_attn_matrices"] is True


@pytest.mark.parametrize("variant", ["rms_gqa", "parallel"])
def test_refactor_refuses_rotary_and_gqa(variant: str) -> None:
    with pytest.raises(ValueError, match="rotary|grouped-query"):
        refactor_factored_attn_matrices(make_model(variant))
    with pytest.raises(ValueError, match="grouped-query"):
        refactor_factored_attn_matrices(make_model("ln", n_key_value_heads=2))


def test_from_pretrained_option_matches_hf(tiny_gpt2, tokens) -> None:
    model = HookedTransformer.from_pretrained(tiny_gpt2.path, refactor_factored_attn_matrices=True)
    assert model.cfg.processing.get("refactor_factored_attn_matrices") is True
    with torch.no_grad():
        got = model(tokens).log_softmax(-1)
        want = tiny_gpt2.hf_model(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
