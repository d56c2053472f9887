"""generate without a tokenizer fails as TransformerLens's does (an AssertionError, here one that is
also a ValueError, with TransformerLens's message and the fix), before any forward pass."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.generation import NoTokenizerError
from tests._tiny import TinyModel


@pytest.fixture
def model(tiny_gpt2: TinyModel) -> HookedTransformer:
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    assert model.tokenizer is None
    return model


def _forwards(model: HookedTransformer) -> list[int]:
    calls: list[int] = []
    model.add_hook("hook_embed", lambda x, hook: calls.append(1))
    return calls


@pytest.mark.parametrize("text", ["Hello", ["Hello", "there"]])
def test_text_input_without_tokenizer(model: HookedTransformer, text: object) -> None:
    calls = _forwards(model)
    for call in (
        lambda: model.generate(text, 2, verbose=False),
        lambda: next(model.generate_stream(text, 2)),
    ):
        with pytest.raises(AssertionError, match="Must provide a tokenizer if passing a string"):
            call()
        with pytest.raises(ValueError, match="set_tokenizer"):
            call()
    assert calls == []


def test_stop_at_eos_without_an_eos_id(model: HookedTransformer) -> None:
    calls = _forwards(model)
    tokens = torch.tensor([[1, 2, 3]])
    with pytest.raises(NoTokenizerError, match="Must pass a eos_token_id if stop_at_eos is True"):
        model.generate(tokens, 2, verbose=False)  # stop_at_eos defaults to True, as in TL
    assert calls == []
    # either fix works: an explicit EOS id, or not stopping at EOS
    with_eos = model.generate(tokens, 2, eos_token_id=0, do_sample=False, verbose=False)
    without = model.generate(tokens, 2, stop_at_eos=False, do_sample=False, verbose=False)
    assert without.shape == (1, 5) and torch.equal(without[:, :3], tokens)
    assert torch.equal(without[:, : with_eos.shape[1]], with_eos)  # the same greedy tokens
