"""Text <-> tokens with a real (trained byte-level BPE) tokenizer: BOS, padding, round trips."""

from __future__ import annotations

import re

import pytest
import torch

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.utils import test_prompt
from tests._tiny import TinyModel
from tests._unchecked import unchecked

TEXTS = ["Hello world! Hello there", "The cat", "Mary went to the store and the park"]


@pytest.fixture
def model(tiny_gpt2_tok: TinyModel) -> HookedTransformer:
    """Its tokenizer adds no special tokens (like GPT-2's), and strings get no BOS."""
    return HookedTransformer.from_pretrained_no_processing(
        tiny_gpt2_tok.path, default_prepend_bos=False
    )


@pytest.fixture
def model_bos(tiny_gpt2_tok_bos: TinyModel) -> HookedTransformer:
    """Its tokenizer's post-processor prepends BOS (like Llama's)."""
    return HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok_bos.path)


def _plain_ids(model: HookedTransformer, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


# -- BOS ------------------------------------------------------------------------------------------
def test_default_prepend_bos_follows_transformer_lens(
    tiny_gpt2_tok: TinyModel, model: HookedTransformer, model_bos: HookedTransformer
) -> None:
    """BOS is prepended by default for GPT-2 (TransformerLens's model table), whether or not
    the tokenizer adds one itself; default_prepend_bos=False turns it off."""
    text = TEXTS[0]
    default = HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok.path)
    assert default.cfg.default_prepend_bos is True
    bos = default.tokenizer.bos_token_id
    assert default.to_tokens(text)[0].tolist() == [bos, *default.tokenizer(text)["input_ids"]]
    assert model.cfg.default_prepend_bos is False
    assert model_bos.cfg.default_prepend_bos is True
    assert model.to_tokens(text)[0].tolist() == model.tokenizer(text)["input_ids"]
    own = model_bos.tokenizer(text)["input_ids"]
    assert own[0] == model_bos.tokenizer.bos_token_id and own[1] != own[0]
    assert model_bos.to_tokens(text)[0].tolist() == own


def test_default_prepend_bos_is_settled_where_the_tokenizer_is_attached(
    model: HookedTransformer, model_bos: HookedTransformer
) -> None:
    """`cfg.default_prepend_bos` is a plain dataclass field (no property calling back into the
    model): a loader given the value leaves the tokenizer unloaded; one without it loads the
    tokenizer at once and takes what it does (BOS first or not)."""
    assert vars(HookedTransformerConfig)["default_prepend_bos"] is True  # a default, no property
    assert model._tokenizer is None  # from_pretrained passed its value: the tokenizer waits
    for source, does_bos in ((model, False), (model_bos, True)):
        loads = []

        def load(source: HookedTransformer = source, loads: list = loads) -> object:
            loads.append(1)
            return source.tokenizer

        lazy = HookedTransformer(source.cfg.to_dict() | {"default_prepend_bos": not does_bos})
        lazy.set_tokenizer_loader(load, default_prepend_bos=does_bos)
        assert (loads, lazy.cfg.default_prepend_bos) == ([], does_bos)
        eager = HookedTransformer(source.cfg.to_dict() | {"default_prepend_bos": not does_bos})
        eager.set_tokenizer_loader(load)
        assert (loads, eager.cfg.default_prepend_bos) == ([1], does_bos)
        assert eager.tokenizer is source.tokenizer and loads == [1]


@pytest.mark.parametrize("which", ["model", "model_bos"])
def test_prepend_bos_adds_exactly_one_bos(request: pytest.FixtureRequest, which: str) -> None:
    m: HookedTransformer = request.getfixturevalue(which)
    bos = m.tokenizer.bos_token_id
    for text in TEXTS:
        plain = _plain_ids(m, text)
        assert bos not in plain
        assert m.to_tokens(text, prepend_bos=True)[0].tolist() == [bos, *plain]
        assert m.to_tokens(text, prepend_bos=False)[0].tolist() == plain


def test_bos_changes_the_forward_pass_consistently(model_bos: HookedTransformer) -> None:
    text = TEXTS[1]
    with torch.no_grad():
        from_text = model_bos(text)
        from_tokens = model_bos(model_bos.to_tokens(text))
        without_bos = model_bos(text, prepend_bos=False)
    assert torch.equal(from_text, from_tokens)
    assert from_text.shape[1] == without_bos.shape[1] + 1


# -- padding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("prepend_bos", [False, True])
def test_lists_are_padded_right_by_default_and_left_on_request(
    model: HookedTransformer, prepend_bos: bool
) -> None:
    pad = model.tokenizer.pad_token_id
    assert pad == model.tokenizer.eos_token_id  # set_tokenizer's fallback pad token
    singles = [model.to_tokens(t, prepend_bos=prepend_bos)[0].tolist() for t in TEXTS]
    length = max(len(s) for s in singles)
    right = model.to_tokens(TEXTS, prepend_bos=prepend_bos)
    left = model.to_tokens(TEXTS, prepend_bos=prepend_bos, padding_side="left")
    assert right.shape == left.shape == (len(TEXTS), length)
    for i, ids in enumerate(singles):
        n_pad = length - len(ids)
        assert right[i].tolist() == ids + [pad] * n_pad
        assert left[i].tolist() == [pad] * n_pad + ids


def test_padding_matches_the_hf_tokenizer(model: HookedTransformer) -> None:
    for side in ("right", "left"):
        model.tokenizer.padding_side = side
        expected = model.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
        assert torch.equal(model.to_tokens(TEXTS, padding_side=side), expected)
    model.tokenizer.padding_side = "right"


@pytest.mark.parametrize("padding_side", [None, "left"])
@pytest.mark.parametrize("prepend_bos", [False, True])
def test_forward_on_a_list_matches_each_string_alone(
    model: HookedTransformer, padding_side: str | None, prepend_bos: bool
) -> None:
    with torch.no_grad():
        batched = model(TEXTS, padding_side=padding_side, prepend_bos=prepend_bos)
        length = batched.shape[1]
        for i, text in enumerate(TEXTS):
            alone = model(text, prepend_bos=prepend_bos)[0]
            n = alone.shape[0]
            real = slice(length - n, length) if padding_side == "left" else slice(0, n)
            torch.testing.assert_close(batched[i, real], alone, atol=1e-5, rtol=0)


def test_loss_on_a_padded_list_ignores_padding(model: HookedTransformer) -> None:
    with torch.no_grad():
        per_token = model(TEXTS, return_type="loss", loss_per_token=True, padding_side="left")
        for i, text in enumerate(TEXTS):
            alone = model(text, return_type="loss", loss_per_token=True)[0]
            torch.testing.assert_close(
                per_token[i, per_token.shape[1] - alone.shape[0] :], alone, atol=1e-5, rtol=0
            )
            assert torch.all(per_token[i, : per_token.shape[1] - alone.shape[0]] == 0)


def test_padding_side_default_comes_from_the_config(model: HookedTransformer) -> None:
    model.cfg.default_padding_side = "left"
    pad = model.tokenizer.pad_token_id
    tokens = model.to_tokens(["The cat", TEXTS[0]])
    assert tokens[0, 0] == pad and tokens[0, -1] != pad


@pytest.mark.parametrize("bad", ["Left", "", "center", "right ", 0])
def test_padding_side_other_than_left_or_right_is_refused(
    model: HookedTransformer, bad: object
) -> None:
    message = rf"padding_side must be 'left' or 'right', got {re.escape(repr(bad))}"
    calls = [
        lambda: model.to_tokens(TEXTS, padding_side=bad),
        lambda: model.to_tokens(TEXTS[0], padding_side=bad),
        lambda: model(TEXTS, padding_side=bad),
        lambda: model(model.to_tokens(TEXTS[0]), padding_side=bad),
        lambda: model.to_str_tokens(TEXTS[0], padding_side=bad),
        lambda: model.generate(TEXTS, 1, padding_side=bad, verbose=False),
        lambda: model.generate_stream(TEXTS, 1, padding_side=bad),
    ]
    for call in calls:
        with unchecked(), pytest.raises(ValueError, match=message):
            call()


def test_a_bad_default_padding_side_setting_is_refused(model: HookedTransformer) -> None:
    model.cfg.default_padding_side = "Left"
    with pytest.raises(
        ValueError, match=r"model\.cfg\.default_padding_side must be 'left' or 'right', got 'Left'"
    ):
        model.to_tokens(TEXTS)
    with pytest.raises(ValueError, match=r"default_padding_side must be 'left' or 'right'"):
        HookedTransformerConfig(
            d_model=8, n_layers=1, n_ctx=8, d_vocab=10, n_heads=2, default_padding_side="Left"
        )


def test_test_prompt_reports_the_models_numbers(model: HookedTransformer, capsys) -> None:
    prompt, answer = "When Mary and John went to the", "store"
    results = test_prompt(prompt, answer, model, top_k=3)
    prompt_tokens = model.to_tokens(prompt)
    answer_tokens = model.to_tokens(" " + answer, prepend_bos=False)
    with torch.no_grad():
        logits = model(torch.cat([prompt_tokens, answer_tokens], dim=1))[0]
    assert len(results) == answer_tokens.shape[1]
    for i, entry in enumerate(results):
        pos, tok = prompt_tokens.shape[1] - 1 + i, int(answer_tokens[0, i])
        assert entry["logit"] == pytest.approx(float(logits[pos, tok]))
        assert entry["rank"] == int((logits[pos] > logits[pos, tok]).sum())
        assert entry["prob"] == pytest.approx(float(logits[pos].softmax(-1)[tok]))
        assert [t for t, _, _ in entry["top_k"]] == model.to_str_tokens(logits[pos].topk(3).indices)
    assert "Ranks of the answer tokens" in capsys.readouterr().out


def test_test_prompt_takes_one_prompt_string(model: HookedTransformer) -> None:
    with (
        unchecked(),
        pytest.raises(
            TypeError,
            match=r"test_prompt takes one prompt string .*got list; call it once per prompt",
        ),
    ):
        test_prompt(["The cat", "The dog"], "sat", model, print_details=False)
    with (
        unchecked(),
        pytest.raises(TypeError, match=r"answer must be a string or a non-empty list of strings"),
    ):
        test_prompt("The cat", [], model, print_details=False)


# -- strings ------------------------------------------------------------------------------------
def test_to_str_tokens(model: HookedTransformer, model_bos: HookedTransformer) -> None:
    text = TEXTS[2]
    pieces = model.to_str_tokens(text)
    assert "".join(pieces) == text
    assert len(pieces) == len(_plain_ids(model, text))
    assert " the" in pieces
    assert model_bos.to_str_tokens(text) == ["<|endoftext|>", *pieces]
    tokens = model.to_tokens(text)
    assert model.to_str_tokens(tokens) == pieces
    assert model.to_str_tokens(tokens[0]) == pieces
    assert model.to_str_tokens(tokens[0].tolist()) == pieces
    # a list of strings gives one list per string (unpadded), as in TransformerLens
    assert model.to_str_tokens(TEXTS) == [model.to_str_tokens(t) for t in TEXTS]
    with (
        unchecked(),
        pytest.raises(ValueError, match=r"to_str_tokens takes one sequence.*got \(3, \d+\)"),
    ):
        model.to_str_tokens(model.to_tokens(TEXTS))


def test_to_string_round_trip(model: HookedTransformer) -> None:
    for text in TEXTS:
        tokens = model.to_tokens(text, prepend_bos=False)
        assert model.to_string(tokens[0]) == text
        assert model.to_string(tokens[0].tolist()) == text
    assert model.to_string(model.to_tokens(TEXTS[:1], prepend_bos=False)) == TEXTS[:1]
    batch = model.to_tokens(["The cat", "The"], prepend_bos=False)
    assert model.to_string(batch) == ["The cat", "The" + "<|endoftext|>" * (batch.shape[1] - 1)]
    the = model.to_single_token("The")
    assert model.to_string(the) == "The"


def test_to_single_token(model: HookedTransformer) -> None:
    assert model.to_single_token(" the") == _plain_ids(model, " the")[0]
    assert model.to_single_token("Hello") == _plain_ids(model, "Hello")[0]
    with pytest.raises(
        ValueError, match=r"'Interpretability research' is \d+ tokens \['In', 't', .*\], not one"
    ):
        model.to_single_token("Interpretability research")


@pytest.mark.parametrize("prepend_bos", [False, True])
def test_get_token_position(model: HookedTransformer, prepend_bos: bool) -> None:
    text = TEXTS[2]  # " the" occurs twice
    pieces = model.to_str_tokens(text, prepend_bos=prepend_bos)
    hits = [i for i, p in enumerate(pieces) if p == " the"]
    assert len(hits) == 2
    first = model.get_token_position(" the", text, prepend_bos=prepend_bos)
    last = model.get_token_position(" the", text, mode="last", prepend_bos=prepend_bos)
    assert (first, last) == (hits[0], hits[1])
    tokens = model.to_tokens(text, prepend_bos=prepend_bos)
    the_id = model.to_single_token(" the")
    assert model.get_token_position(the_id, tokens, mode="last") == hits[1]
    assert model.get_token_position(" the", tokens[0]) == hits[0]
    with pytest.raises(ValueError, match="does not occur in the input"):
        model.get_token_position("Hello", text)


def test_truncate_to_n_ctx(model: HookedTransformer) -> None:
    long_text = " ".join(TEXTS * 10)
    full = model.to_tokens(long_text)
    assert full.shape[1] > model.cfg.n_ctx
    truncated = model.to_tokens(long_text, truncate=True)
    assert torch.equal(truncated, full[:, : model.cfg.n_ctx])
    with pytest.raises(ValueError, match="n_ctx=64"):
        model(long_text)


def test_tokenizer_loads_on_first_use(tiny_gpt2_tok_bos: TinyModel) -> None:
    """Loading leaves the tokenizer for later, and the first read of it loads it; the
    config's default_prepend_bos comes from the architecture, so reading it loads nothing."""
    import copy

    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok_bos.path)
    assert model._tokenizer is None
    cfg = copy.deepcopy(model.cfg)
    assert cfg.default_prepend_bos is True and model._tokenizer is None
    assert model.tokenizer is not None and model._tokenizer is not None
    fresh = HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok_bos.path)
    assert fresh.to_str_tokens("ab")[0] == fresh.tokenizer.bos_token
    forced = HookedTransformer.from_pretrained_no_processing(
        tiny_gpt2_tok_bos.path, default_prepend_bos=False
    )
    assert forced.cfg.default_prepend_bos is False and forced._tokenizer is None
