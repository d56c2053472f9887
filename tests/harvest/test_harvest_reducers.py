"""Reducers merge: states of parts, merged in any grouping, equal one pass over the whole (to
float64 rounding for the moments, exactly for top-k and histograms), and a harvest's reducers
equal those statistics of its own stored activations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from harvest_helpers import corpus

import lmscope
from lmscope.harvest import Covariance, Histogram, MeanVar, TopK

REDUCERS = [MeanVar(), Covariance(), TopK(k=5, context=2), Histogram(-1.0, 1.0, bins=8)]


def _parts(x: torch.Tensor, tokens: torch.Tensor, cuts: list[int], r: Any) -> list[dict]:
    bounds = [0, *cuts, x.shape[0]]
    return [
        r.batch_state(x[a:b], tokens[a:b], a * x.shape[1])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


@pytest.mark.parametrize("reducer", REDUCERS, ids=lambda r: r.kind)
def test_merged_parts_equal_one_pass(reducer: Any) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 7, 6, generator=gen)
    x[3, 2, 1] = x[6, 4, 1] = x[8, 0, 1] = 9.0  # ties: the earlier token ranks first
    tokens = torch.randint(0, 50, (10, 7), generator=gen)
    whole = reducer.result(reducer.batch_state(x, tokens, 0))
    a, b, c = _parts(x, tokens, [3, 4], reducer)
    left = reducer.result(reducer.merge(reducer.merge(a, b), c))
    right = reducer.result(reducer.merge(a, reducer.merge(b, c)))
    streamed = reducer.init(6)
    for part in (a, b, c):
        streamed = reducer.merge(streamed, part)
    for merged in (left, right, reducer.result(streamed)):
        assert merged.keys() == whole.keys()
        for key, value in whole.items():
            if key in ("mean", "var", "cov"):
                torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-12)
            else:
                assert torch.equal(merged[key], value), key
    flat = x.reshape(-1, 6).double()
    if reducer.kind == "mean_var":
        torch.testing.assert_close(whole["var"], flat.var(0), rtol=0, atol=1e-12)
    if reducer.kind == "covariance":
        torch.testing.assert_close(whole["cov"], torch.cov(flat.T), rtol=0, atol=1e-12)
    if reducer.kind == "top_k":
        assert whole["index"][:3, 1].tolist() == [3 * 7 + 2, 6 * 7 + 4, 8 * 7]
        seq, pos = divmod(int(whole["index"][1, 1]), 7)
        assert whole["context"][1, 1].tolist() == tokens[seq, pos - 2 : pos + 3].tolist()
        edge = whole["context"][2, 1].tolist()  # position 0: two tokens before the sequence
        assert edge == [-1, -1, *tokens[8, :3].tolist()]
    if reducer.kind == "histogram":
        inside = ((flat >= -1) & (flat < 1)).sum(0)
        assert torch.equal(whole["counts"][:, 1:-1].sum(1), inside)
        assert torch.equal(whole["counts"][:, 0], (flat < -1).sum(0))


def test_harvest_reducers_equal_one_pass_over_its_activations(
    tiny_tok_model: Any, tmp_path: Path
) -> None:
    hook = "blocks.1.mlp.hook_post"
    h = lmscope.harvest(
        tiny_tok_model, corpus(60), hooks=[hook, "blocks.0.attn.hook_z"], out=tmp_path,
        seq_len=16, batch_size=3, shard_tokens=16 * 7, reducers={hook: REDUCERS},
        save_activations=True, verbose=False,
    )  # fmt: skip
    assert len(h.shards) > 3
    acts = h.read(hook)
    for reducer in REDUCERS:
        one_pass = reducer.result(reducer.batch_state(acts, h.tokens, 0))
        for key, value in one_pass.items():
            got = h.reduced[hook][reducer.key][key]
            if key in ("mean", "var", "cov"):
                torch.testing.assert_close(got, value, rtol=0, atol=1e-10)
            else:
                assert torch.equal(got, value), (reducer.kind, key)


def test_reducers_alone_store_no_activations(tiny_tok_model: Any, tmp_path: Path) -> None:
    h = lmscope.harvest(
        tiny_tok_model, corpus(30), hooks=["blocks.0.attn.hook_z"], out=tmp_path, seq_len=16,
        shard_tokens=64, reducers=[MeanVar(), TopK(k=2, name="top2")], verbose=False,
    )  # fmt: skip
    assert not (tmp_path / "shards").exists()
    result = h.reduced["blocks.0.attn.hook_z"]
    assert result["mean_var"]["mean"].shape == (4 * 16,)  # heads x d_head features
    assert result["top2"]["values"].shape == (2, 64)
    with pytest.raises(ValueError, match="reducers only"):
        h.read("blocks.0.attn.hook_z")
