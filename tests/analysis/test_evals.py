"""evals: sanity_check, induction_loss, IOIDataset, ioi_eval, evaluate_on_dataset on a tiny model
with a trained (byte-level BPE) tokenizer; each checked against a direct computation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_analysis_models import make_model, one_thread

from lmscope.analysis import evals
from lmscope.utils import lm_cross_entropy_loss


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model(tokenizer_bos):
    model = make_model("ln", d_vocab=len(tokenizer_bos), n_ctx=64)
    model.set_tokenizer(tokenizer_bos, default_prepend_bos=True)
    return model


def test_sanity_check_is_the_loss_on_the_fixed_text(model) -> None:
    loss = evals.sanity_check(model)
    tokens = model.to_tokens(evals.SANITY_TEXT)[:, : model.cfg.n_ctx]
    with torch.no_grad():
        want = lm_cross_entropy_loss(model(tokens), tokens)
    torch.testing.assert_close(loss, want)


def test_induction_loss_scores_the_repeated_half(model) -> None:
    loss = evals.induction_loss(model, batch_size=2, subseq_len=10, seed=3)
    # rebuild the same tokens: seeded draw, then BOS + two copies
    gen = torch.Generator().manual_seed(3)
    low, high = 80, len(model.tokenizer)  # min(100, d_vocab // 4), min(20000, d_vocab)
    first = torch.randint(low, high, (2, 10), generator=gen)
    bos = torch.full((2, 1), model.tokenizer.bos_token_id)
    tokens = torch.cat([bos, first, first], dim=1)
    with torch.no_grad():
        per_token = lm_cross_entropy_loss(model(tokens), tokens, per_token=True)
    torch.testing.assert_close(loss, per_token[:, 11:].mean())
    assert per_token[:, 11:].shape[1] == 9  # the second copy, minus its first token
    long = evals.induction_loss(model, subseq_len=1000)  # cut to the context
    assert torch.isfinite(long)


def test_ioi_dataset(tokenizer_bos) -> None:
    data = evals.IOIDataset(tokenizer_bos, num_samples=20, seed=1)
    again = evals.IOIDataset(tokenizer_bos, num_samples=20, seed=1)
    assert len(data) == 20 and data.samples == again.samples
    assert len({s["text"] for s in data.samples}) > 5  # not one prompt repeated
    for s in data.samples:
        io, subj = s["IO"].strip(), s["S"].strip()
        assert io != subj and s["text"].count(io) == 2 and s["text"].count(subj) == 2
        assert s["text"].endswith(s["IO"])  # the text ends with the answer, as TransformerLens
    item = data[0]
    assert item["prompt"][0] == tokenizer_bos.bos_token_id
    assert tokenizer_bos.decode(item["prompt"][1:]) == data.samples[0]["text"]
    assert tokenizer_bos.decode(item["IO"]) == data.samples[0]["IO"]
    sym = evals.IOIDataset(tokenizer_bos, num_samples=10, symmetric=True, seed=2)
    assert len(sym) == 10
    for a, b in zip(sym.samples[::2], sym.samples[1::2], strict=True):
        assert (a["IO"], a["S"]) == (b["S"], b["IO"])


def test_ioi_eval_matches_per_prompt_runs(model, tokenizer_bos) -> None:
    data = evals.IOIDataset(tokenizer_bos, num_samples=6, seed=4)
    result = evals.ioi_eval(model, dataset=data, batch_size=4)  # padded batches of 4 and 2
    diffs = []
    for i in range(len(data)):
        item = data[i]
        io, subj = item["IO"], item["S"]
        start = int((io[: len(subj)] != subj[: len(io)]).nonzero()[0])
        prompt = item["prompt"][: len(item["prompt"]) - len(io) + start]  # up to the answer token
        with torch.no_grad():
            logits = model(prompt[None])[0, -1]
        diffs.append(float(logits[io[start]] - logits[subj[start]]))
    diffs = torch.tensor(diffs)
    assert result["Logit Difference"] == pytest.approx(float(diffs.mean()), abs=1e-4)
    assert result["Accuracy"] == pytest.approx(float((diffs > 0).float().mean()))
    # a template whose answer is not at the end is refused, not read at a wrong position
    bad = evals.IOIDataset(
        tokenizer_bos, templates=["[A] met [B]. [B] thanked [A] today"], num_samples=1
    )
    with pytest.raises(ValueError, match="does not end with its IO"):
        evals.ioi_eval(model, dataset=bad)


def test_evaluate_on_dataset(model) -> None:
    tokens = torch.randint(
        0, model.cfg.d_vocab, (6, 12), generator=torch.Generator().manual_seed(0)
    )
    batches = [{"tokens": t} for t in tokens.split(2)]
    got = evals.evaluate_on_dataset(model, batches, truncate=2)
    with torch.no_grad():
        want = sum(float(model(t, return_type="loss")) for t in tokens.split(2)[:2]) / 2
    assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="no batches"):
        evals.evaluate_on_dataset(model, [])
