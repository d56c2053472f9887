"""utils additions: Slice (TransformerLens semantics), get_corner, lm_accuracy, test_prompt,
tokenize_and_concatenate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from tiny_analysis_models import make_model, one_thread

from lmscope.utils import Slice, get_corner, lm_accuracy, tokenize_and_concatenate
from lmscope.utils import test_prompt as check_prompt


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


X = torch.arange(2 * 6 * 3).reshape(2, 6, 3)


@pytest.mark.parametrize(
    ("arg", "expected", "mode"),
    [
        (None, X, "identity"),
        (-1, X[:, -1], "int"),
        (2, X[:, 2], "int"),
        ((1, 4), X[:, 1:4], "slice"),
        ((0, 6, 2), X[:, 0:6:2], "slice"),
        (slice(-3, None), X[:, -3:], "slice"),
        ([4, 0, 4], X[:, [4, 0, 4]], "array"),
        (torch.tensor([1, 2]), X[:, [1, 2]], "array"),
        (np.array([5]), X[:, [5]], "array"),
        (torch.tensor(3), X[:, 3], "int"),
    ],
)
def test_slice_apply(arg, expected, mode) -> None:
    s = Slice(arg)
    assert s.mode == mode
    torch.testing.assert_close(s.apply(X, dim=1), expected, atol=0, rtol=0)
    assert Slice.unwrap(s) is s and Slice(s).mode == mode


def test_slice_indices_and_errors() -> None:
    assert Slice(-1).indices().tolist() == [-1]
    assert Slice((1, 4)).indices(10).tolist() == [1, 2, 3]
    assert Slice(None).indices(3).tolist() == [0, 1, 2]
    assert Slice([3, 1]).indices().tolist() == [3, 1]
    with pytest.raises(ValueError, match="max_ctx"):
        Slice((1, 4)).indices()
    with pytest.raises(TypeError):
        Slice(True)
    with pytest.raises(ValueError):
        Slice([0.5, 1.5])
    torch.testing.assert_close(Slice(-2).apply(X, dim=-2), X[:, -2], atol=0, rtol=0)


def test_get_corner_and_lm_accuracy() -> None:
    t = torch.arange(4 * 5 * 6).reshape(4, 5, 6)
    torch.testing.assert_close(get_corner(t, 2), t[:2, :2, :2], atol=0, rtol=0)
    logits = torch.zeros(1, 4, 5)
    tokens = torch.tensor([[0, 1, 2, 3]])
    logits[0, 0, 1] = logits[0, 1, 2] = logits[0, 2, 4] = 1.0  # 2 of 3 next tokens right
    assert float(lm_accuracy(logits, tokens)) == pytest.approx(2 / 3)
    assert lm_accuracy(logits, tokens, per_token=True).tolist() == [[True, True, False]]


def test_test_prompt_reports_ranks(tokenizer_bos, capsys) -> None:
    model = make_model("ln", d_vocab=len(tokenizer_bos))
    model.set_tokenizer(tokenizer_bos, default_prepend_bos=True)
    results = check_prompt("The quick brown fox", "jumps over", model, top_k=3)
    out = capsys.readouterr().out
    assert "Tokenized prompt:" in out and "Ranks of the answer tokens:" in out
    answer = model.to_tokens(" jumps over", prepend_bos=False)[0]
    assert len(results) == len(answer)
    tokens = torch.cat([model.to_tokens("The quick brown fox"), answer[None]], dim=1)
    with torch.no_grad():
        logits = model(tokens)[0]
    n = tokens.shape[1] - len(answer)
    for i, r in enumerate(results):
        row = logits[n - 1 + i]
        assert r["rank"] == int((row > row[answer[i]]).sum())
        assert r["logit"] == pytest.approx(float(row[answer[i]]), abs=1e-5)
        assert len(r["top_k"]) == 3 and r["top_k"][0][1] == pytest.approx(
            float(row.max()), abs=1e-5
        )
    quiet = check_prompt("The quick brown fox", ["jumps", "runs"], model, print_details=False)
    assert capsys.readouterr().out == "" and len(quiet) >= 2


def test_tokenize_and_concatenate(tokenizer_bos) -> None:
    n_vocab = len(tokenizer_bos)
    texts = ["The quick brown fox jumps over the lazy dog."] * 6 + ["Hello world!"]
    rows = tokenize_and_concatenate(texts, tokenizer_bos, max_length=16)
    assert rows.ndim == 2 and rows.shape[1] == 16 and rows.shape[0] >= 2
    assert (rows[:, 0] == tokenizer_bos.bos_token_id).all()
    joined = tokenizer_bos.eos_token.join(texts)
    flat = tokenizer_bos(joined, add_special_tokens=False)["input_ids"]
    # the rows are the joined text's tokens in order (chunked tokenisation may split words at
    # chunk edges, so compare the leading stretch that precedes any chunk boundary)
    assert rows[0, 1:6].tolist() == flat[:5]
    no_bos = tokenize_and_concatenate(
        {"text": texts}, tokenizer_bos, max_length=16, add_bos_token=False
    )
    assert no_bos.shape[1] == 16 and no_bos[0, :5].tolist() == flat[:5]
    assert tokenize_and_concatenate([], tokenizer_bos, max_length=8).shape == (0, 8)
    assert len(tokenizer_bos) == n_vocab  # the shared tokenizer is not modified (no pad added)


class _FakeHFDataset:
    """The slice of the `datasets.Dataset` API that tokenize_and_concatenate uses."""

    def __init__(self, columns: dict[str, list]) -> None:
        self.columns = columns
        self.format: str | None = None

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def remove_columns(self, name: str) -> _FakeHFDataset:
        return _FakeHFDataset({k: v for k, v in self.columns.items() if k != name})

    def map(self, fn, batched: bool, remove_columns: list[str], **kwargs) -> _FakeHFDataset:
        assert batched and kwargs in ({"num_proc": 10}, {})
        out = fn({k: list(v) for k, v in self.columns.items()})
        kept = {k: v for k, v in self.columns.items() if k not in remove_columns}
        return _FakeHFDataset({**kept, **{k: list(v) for k, v in out.items()}})

    def with_format(self, type: str) -> _FakeHFDataset:
        self.format = type
        return self


def test_tokenize_and_concatenate_hugging_face_path(tokenizer_bos) -> None:
    texts = ["The quick brown fox jumps over the lazy dog."] * 6
    data = _FakeHFDataset({"text": texts, "meta": list(range(6))})
    out = tokenize_and_concatenate(data, tokenizer_bos, max_length=16)
    assert out.column_names == ["tokens"] and out.format == "torch"
    rows = torch.tensor(np.stack(out.columns["tokens"]))
    torch.testing.assert_close(rows, tokenize_and_concatenate(texts, tokenizer_bos, max_length=16))
