"""HookedTransformer methods a TransformerLens notebook calls, with TransformerLens 3.9's
signatures and semantics: token helpers, input_to_embed, the state-dict processing methods,
process_weights_, load_and_process_state_dict, devices, set_use_*, sample_datapoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmscope import HookedTransformer
from tests._tiny import TinyModel
from tests._unchecked import unchecked


@pytest.fixture
def gpt2(tiny_gpt2_tok: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok.path)


def test_single_token_helpers_round_trip(gpt2: HookedTransformer) -> None:
    token = gpt2.to_single_token("Hello")
    assert gpt2.to_single_str_token(token) == "Hello"
    assert gpt2.tokens_to_residual_directions(torch.tensor([[token]])).shape == (64,)
    torch.testing.assert_close(
        gpt2.tokens_to_residual_directions("Hello"), gpt2.W_U[:, token], atol=0, rtol=0
    )
    with unchecked(), pytest.raises(TypeError, match="int_token must be an int"):
        gpt2.to_single_str_token("Hello")


def test_get_token_position_takes_one_sequence(gpt2: HookedTransformer) -> None:
    tokens = gpt2.to_tokens("Hello world! Hello there")  # BOS first by default
    hello = gpt2.to_single_token("Hello")
    hits = [i for i, t in enumerate(tokens[0].tolist()) if t == hello]
    assert len(hits) == 2 and hits[0] == 1
    assert gpt2.get_token_position(hello, tokens) == hits[0]
    assert gpt2.get_token_position("Hello", tokens[0], mode="last") == hits[1]
    with unchecked(), pytest.raises(ValueError, match=r"one sequence.*\[1, pos\]"):
        gpt2.get_token_position(hello, tokens.repeat(2, 1))
    with unchecked(), pytest.raises(ValueError, match="mode must be 'first' or 'last'"):
        gpt2.get_token_position(hello, tokens, mode="middle")


def test_input_to_embed_feeds_start_at_layer(gpt2: HookedTransformer) -> None:
    texts = ["Hello world! Hello there", "The cat"]
    resid, tokens, shortformer, mask = gpt2.input_to_embed(texts, padding_side="left")
    assert resid.shape == (*tokens.shape, 64) and shortformer is None
    assert mask is not None and mask[1, 0] == 0
    with torch.no_grad():
        expected = gpt2(texts, padding_side="left")
        got = gpt2(resid, start_at_layer=0, attention_mask=mask)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert gpt2.input_to_embed("The cat")[3] is None


def test_process_weights_in_place_equals_from_pretrained(tiny_gpt2: TinyModel, tokens) -> None:
    processed = HookedTransformer.from_pretrained(tiny_gpt2.path)
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    model.process_weights_()
    for name, weight in processed.named_weights().items():
        torch.testing.assert_close(model.named_weights()[name], weight, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="already folded"):
        model.process_weights_()  # as TransformerLens: fold skipped, the rest is idempotent
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), processed(tokens), atol=1e-5, rtol=0)


def test_state_dict_methods_return_processed_copies(tiny_gpt2: TinyModel, tokens) -> None:
    """fold_layer_norm & co. take a state dict and return the processed one; the model is
    unchanged, and loading the result into a processed model reproduces from_pretrained."""
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    before = {k: v.clone() for k, v in model.named_weights().items()}
    folded = model.fold_layer_norm(model.state_dict())
    assert "blocks.0.ln1.w" not in folded and "blocks.0.ln1.w" in before
    assert all(torch.equal(v, model.named_weights()[k]) for k, v in before.items())
    w = before["blocks.0.ln1.w"]
    expected = before["blocks.0.attn.W_Q"] * w[:, None]
    expected = expected - expected.mean(dim=-2, keepdim=True)
    torch.testing.assert_close(folded["blocks.0.attn.W_Q"], expected, atol=1e-6, rtol=0)
    unembed = model.center_unembed(model.state_dict())["unembed.W_U"]
    torch.testing.assert_close(unembed.mean(-1), torch.zeros(64), atol=1e-6, rtol=0)
    values = model.fold_value_biases(model.state_dict())
    assert torch.count_nonzero(values["blocks.0.attn.b_V"]) == 0
    with pytest.raises(ValueError, match="fold_biases=True and center_weights=True"):
        model.fold_layer_norm(model.state_dict(), fold_biases=False)
    target = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    target.load_and_process_state_dict(model.state_dict())
    reference = HookedTransformer.from_pretrained(tiny_gpt2.path)
    with torch.no_grad():
        torch.testing.assert_close(target(tokens), reference(tokens), atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="does not have"):
        target.load_and_process_state_dict({"blocks.9.attn.W_Q": torch.zeros(1)})


def test_devices_and_flags(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(tiny_llama.path, device="cpu")
    assert model.cpu() is model and model.to("cpu", print_details=False) is model
    assert model.cfg.device == "cpu"
    assert model.n_params_total == sum(p.numel() for p in model.parameters())
    model.set_ungroup_grouped_query_attention(True)
    assert model.cfg.ungroup_grouped_query_attention is True
    assert model.all_head_labels()[:2] == ["L0H0", "L0H1"]
    torch.testing.assert_close(
        model.accumulated_bias(2), model.b_O.sum(0) + model.b_out.sum(0), atol=1e-6, rtol=0
    )


def test_sample_datapoint_draws_from_the_dataset(gpt2: HookedTransformer) -> None:
    gpt2.dataset = [{"text": "The cat"}, {"text": "Hello world! Hello there"}]
    np.random.seed(0)
    first = np.random.randint(0, 2)
    np.random.seed(0)
    assert gpt2.sample_datapoint() == gpt2.dataset[first]["text"]
    tokens = gpt2.sample_datapoint(tokenize=True)
    assert tokens.ndim == 2 and tokens[0, 0] == gpt2.tokenizer.bos_token_id
    gpt2.dataset = None
    gpt2.cfg.original_architecture = "LlamaForCausalLM"  # no training sample known
    with pytest.raises(ValueError, match="no sample training dataset.*model.dataset"):
        gpt2.sample_datapoint()
