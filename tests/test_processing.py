"""Weight processing: each step keeps the log-probs, and leaves the weights in the promised form."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.components.norm import LayerNorm, LayerNormPre, RMSNorm, RMSNormPre
from lmscope.processing import (
    center_unembed,
    center_writing_weights,
    fold_layer_norm,
    fold_value_biases,
    process_weights,
)
from tests._tiny import TinyModel

LOGPROB_ATOL = 1e-4
STEPS = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]


@pytest.fixture(params=["tiny_gpt2", "tiny_llama", "tiny_llama_tied_bias"])
def tiny(request: pytest.FixtureRequest) -> TinyModel:
    """GPT-2 (LayerNorm) and Llama (RMSNorm, with and without attention/MLP biases)."""
    return request.getfixturevalue(request.param)


def _raw(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


@torch.no_grad()
def _log_probs(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    return model(tokens).log_softmax(-1)


@pytest.mark.parametrize("step", STEPS)
def test_each_step_alone_preserves_log_probs(tiny: TinyModel, tokens, step: str) -> None:
    model = _raw(tiny)
    before = _log_probs(model, tokens)
    expected = tiny.hf_model(tokens).logits.log_softmax(-1).detach()
    torch.testing.assert_close(before, expected, atol=LOGPROB_ATOL, rtol=0)
    process_weights(model, **{s: s == step for s in STEPS})
    after = _log_probs(model, tokens)
    torch.testing.assert_close(after, before, atol=LOGPROB_ATOL, rtol=0)
    torch.testing.assert_close(after, expected, atol=LOGPROB_ATOL, rtol=0)


def test_all_steps_are_recorded(tiny: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(tiny.path)
    is_ln = tiny.name.startswith("gpt2")
    assert model.cfg.processing == {
        "fold_ln": True,
        "center_writing_weights": is_ln,
        "center_unembed": True,
        "fold_value_biases": True,
    }
    with pytest.raises(ValueError, match="already folded"):
        process_weights(model)


def test_fold_ln_leaves_weightless_norms(tiny: TinyModel, tokens) -> None:
    model = _raw(tiny)
    is_ln = tiny.name.startswith("gpt2")
    full, pre = (LayerNorm, LayerNormPre) if is_ln else (RMSNorm, RMSNormPre)
    assert type(model.blocks[0].ln1) is full
    assert type(model.ln_final) is full
    fold_layer_norm(model)
    assert model.cfg.normalization_type == ("LNPre" if is_ln else "RMSPre")
    norms = [model.ln_final] + [n for b in model.blocks for n in (b.ln1, b.ln2)]
    for norm in norms:
        assert type(norm) is pre
        assert norm.w is None
    # hook points of the new norms are registered under the same names
    for name in ("blocks.0.ln1.hook_scale", "blocks.1.ln2.hook_normalized", "ln_final.hook_scale"):
        assert model.hook_dict[name] is model.get_submodule(name)
    _, cache = model.run_with_cache(
        tokens, names_filter=["blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized"]
    )
    # without weights the norm is the bare normalisation of the residual
    x = cache["resid_pre", 0]
    if is_ln:
        x = x - x.mean(-1, keepdim=True)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    torch.testing.assert_close(cache["normalized", 0, "ln1"], expected, atol=1e-6, rtol=0)


def test_fold_ln_folds_weights_into_readers(tiny_llama: TinyModel) -> None:
    model = _raw(tiny_llama)
    w = model.blocks[0].ln1.w.detach().clone()
    W_Q = model.blocks[0].attn.W_Q.detach().clone()
    fold_layer_norm(model)
    torch.testing.assert_close(model.blocks[0].attn.W_Q, W_Q * w[:, None], atol=0, rtol=0)


@torch.no_grad()
def test_center_writing_weights_centres_writers_on_layernorm(tiny_gpt2: TinyModel) -> None:
    model = _raw(tiny_gpt2)
    assert model.W_E.mean(-1).abs().max() > 1e-3  # not centred to begin with
    assert center_writing_weights(model) is True
    writers = {
        "W_E": model.W_E,
        "W_pos": model.W_pos,
        "W_O": model.W_O,
        "b_O": model.b_O,
        "W_out": model.W_out,
        "b_out": model.b_out,
    }
    for name, w in writers.items():
        torch.testing.assert_close(
            w.mean(-1), torch.zeros(w.shape[:-1]), atol=1e-6, rtol=0, msg=name
        )


@torch.no_grad()
def test_center_writing_weights_is_skipped_on_rmsnorm(tiny_llama_tied_bias: TinyModel) -> None:
    model = _raw(tiny_llama_tied_bias)
    before = {k: v.clone() for k, v in model.named_weights().items()}
    assert center_writing_weights(model) is False
    for name, value in model.named_weights().items():
        assert torch.equal(value, before[name]), name
    process_weights(model, fold_ln=True, center_writing_weights=True, center_unembed=False)
    assert model.cfg.processing["center_writing_weights"] is False


@torch.no_grad()
def test_center_unembed_centres_over_vocab(tiny: TinyModel) -> None:
    model = _raw(tiny)
    center_unembed(model)
    torch.testing.assert_close(
        model.W_U.mean(-1), torch.zeros(model.cfg.d_model), atol=1e-6, rtol=0
    )
    assert abs(float(model.b_U.mean())) < 1e-6


@torch.no_grad()
def test_fold_value_biases_zeroes_b_V_and_moves_it_to_b_O(tiny: TinyModel) -> None:
    model = _raw(tiny)
    b_V, W_O, b_O = model.b_V.clone(), model.W_O.clone(), model.b_O.clone()
    has_bias = b_V.abs().max() > 0
    assert has_bias == (tiny.name != "llama_gqa")
    fold_value_biases(model)
    assert torch.equal(model.b_V, torch.zeros_like(b_V))
    groups = model.cfg.n_groups
    expected = b_O + torch.einsum("lhd,lhdm->lm", b_V.repeat_interleave(groups, dim=1), W_O)
    torch.testing.assert_close(model.b_O, expected, atol=1e-6, rtol=0)
