"""Head detector: the detection patterns against loops, and the scores against hand computation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_analysis_models import make_model, one_thread, random_tokens

from lmscope.analysis.head_detector import (
    compute_head_attention_similarity_score,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
    get_supported_heads,
)
from tests._unchecked import unchecked


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


TOKENS = torch.tensor([7, 3, 9, 7, 3, 5, 7])


def _loop_patterns(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(tokens)
    prev, dup, ind = torch.zeros(n, n), torch.zeros(n, n), torch.zeros(n, n)
    for q in range(n):
        for k in range(q + 1):
            prev[q, k] = float(k == q - 1)
            dup[q, k] = float(k < q and tokens[k] == tokens[q])
            ind[q, k] = float(1 <= k <= q and k - 1 < q and tokens[k - 1] == tokens[q])
    return {"previous_token_head": prev, "duplicate_token_head": dup, "induction_head": ind}


def test_detection_patterns_match_loops() -> None:
    want = _loop_patterns(TOKENS)
    torch.testing.assert_close(
        get_previous_token_head_detection_pattern(TOKENS), want["previous_token_head"]
    )
    torch.testing.assert_close(
        get_duplicate_token_head_detection_pattern(TOKENS), want["duplicate_token_head"]
    )
    torch.testing.assert_close(get_induction_head_detection_pattern(TOKENS), want["induction_head"])
    batched = get_induction_head_detection_pattern(torch.stack([TOKENS, TOKENS.flip(0)]))
    torch.testing.assert_close(batched[1], _loop_patterns(TOKENS.flip(0))["induction_head"])
    assert set(get_supported_heads()) == set(want)


def test_scores_by_hand() -> None:
    n = 4
    detection = get_previous_token_head_detection_pattern(torch.arange(n))
    uniform = torch.tril(torch.ones(n, n))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    # a head that attends half to the previous token, half to itself (row 0: all to itself)
    half = 0.5 * torch.eye(n) + 0.5 * detection
    half[0, 0] = 1.0
    attention = torch.stack([detection + torch.eye(n) * (torch.arange(n) == 0), uniform, half])
    scores = compute_head_attention_similarity_score(attention, detection)
    # mul: share of attention on the pattern: 3 of 4 rows, 1/2+1/3+1/4 of 4, 1.5 of 4
    torch.testing.assert_close(scores, torch.tensor([3 / 4, (1 / 2 + 1 / 3 + 1 / 4) / 4, 1.5 / 4]))
    no_self = compute_head_attention_similarity_score(
        attention, detection, exclude_current_token=True
    )
    torch.testing.assert_close(
        no_self[2], torch.tensor(1.0)
    )  # all its non-self attention is previous
    no_bos = compute_head_attention_similarity_score(attention, detection, exclude_bos=True)
    torch.testing.assert_close(no_bos[0], torch.tensor(1.0))
    # abs: 1 - mean over rows of the L1 distance
    abs_scores = compute_head_attention_similarity_score(attention, detection, error_measure="abs")
    torch.testing.assert_close(abs_scores[0], torch.tensor(1 - 1 / 4))  # row 0 is off by 1
    with pytest.raises(ValueError, match="lower triangular"):
        compute_head_attention_similarity_score(attention, detection.T, error_measure="abs")


def test_detect_head_matches_cached_patterns() -> None:
    model = make_model("rms_gqa")
    tokens = random_tokens(2, 9)
    tokens[:, 5:] = tokens[:, 1:5]  # repeats, so duplicate and induction patterns are not empty
    scores = detect_head(model, tokens, "induction_head")
    assert scores.shape == (3, 4)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    pattern = get_induction_head_detection_pattern(tokens)
    for layer in range(3):
        attn = cache["pattern", layer]  # [batch, head, q, k]
        want = ((attn * pattern[:, None]).sum((-2, -1)) / attn.sum((-2, -1))).mean(0)
        torch.testing.assert_close(scores[layer], want)
    subset = detect_head(model, tokens, "induction_head", heads={1: [0, 2]})
    assert (subset[0] == -1).all() and (subset[1, [1, 3]] == -1).all()
    torch.testing.assert_close(subset[1, [0, 2]], scores[1, [0, 2]])
    as_list = detect_head(model, tokens, "induction_head", heads=[(2, 3)])
    torch.testing.assert_close(as_list[2, 3], scores[2, 3])


def test_detect_head_with_a_custom_pattern_and_a_cache() -> None:
    model = make_model("ln")
    tokens = random_tokens(1, 6)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    # plant a perfect previous-token head at L1H2 in the cache
    planted = get_previous_token_head_detection_pattern(tokens[0])
    planted[0, 0] = 1.0
    cache.cache_dict["blocks.1.attn.hook_pattern"][0, 2] = planted
    scores = detect_head(model, tokens, "previous_token_head", cache=cache, exclude_bos=True)
    assert scores[1, 2] == 1.0 and scores.flatten().argmax() == 1 * 4 + 2
    custom = detect_head(model, tokens, planted, cache=cache)
    torch.testing.assert_close(custom[1, 2], torch.tensor(1.0))
    with unchecked(), pytest.raises(ValueError, match="tokens"):
        detect_head(model, tokens, torch.eye(3))
    with unchecked(), pytest.raises(ValueError, match="unknown head type"):
        detect_head(model, tokens, "name_mover_head")  # type: ignore[arg-type]
    with unchecked(), pytest.raises(ValueError, match="single sequence"):
        detect_head(model, random_tokens(2, 6), "induction_head", cache=cache)
