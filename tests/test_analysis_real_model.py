"""Acceptance: an IOI-style experiment on the embedded SmolLM2-135M (fold_ln-processed, RMSPre, GQA).

Eight prompts "When A and B went to the store, S gave a drink to" (four with the indirect object
first, four with the subject first); the corrupted prompt names the indirect object in the S2 slot,
which flips the answer. Metric: logit difference logit(IO) - logit(S) at the last position.

Every number asserted below was measured first (CPU, float32; measurement in the comments):
- logit difference: clean 3.99 to 7.55 (mean 5.97) on all 8 prompts; corrupted -7.25 to -2.91;
- logit lens (accumulated_resid, apply_ln): |logit diff| <= 0.53 at every layer input up to
  23_pre, then 11.47 at 24_pre (its maximum), 5.92 at the end; the answer appears in layer 23;
- head attribution (stack_head_results + logit_attrs): L23H3 is the top head (mean 2.53; the
  top head on 7 of 8 prompts, L23H2 on the other), then L29H1 (1.36); layer 23's heads give 4.92
  of the 5.97; the most negative heads are L29H0 (-1.05) and L24H4 (-0.91);
- residual-stream patching (normalised: 0 = corrupted, 1 = clean), position 9 = S2, 13 = final:
      layer      0     8    16    20    22    24    28
      S2      1.00  1.00  1.00  0.84  0.49  0.04  0.00
      final   0.00  0.00  0.00  0.10  0.46  0.87  0.94
  (" a" at position 11: at most 0.01): the information sits at S2 until layer ~20 and has moved to
  the final position by layer 24;
- attribution patching of the same 21 rows: Spearman 0.64 against exact patching (0.88 on a wider
  80-row grid, layers 0, 2, ..., 28, 29 x positions 9-13). It matches the final-position rows
  (0.76 / 0.87 for exact 0.87 / 0.94 at layers 24 / 28) and the " a" rows, but misses the S2 rows
  (-0.01 to 0.12 for an exact 0.84-1.0): the metric is far from linear in that residual.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.analysis import attribution, evals, patching
from lmscope.analysis.head_detector import detect_head

pytestmark = pytest.mark.slow

TEMPLATE = "When {a} and {b} went to the store, {s} gave a drink to"
PAIRS = [  # (indirect object, subject)
    ("Mary", "John"),
    ("Tom", "James"),
    ("Sarah", "Paul"),
    ("Anna", "Mark"),
    ("Lisa", "David"),
    ("John", "Sarah"),
    ("James", "Anna"),
    ("Paul", "Lisa"),
]
S2, FINAL = 9, 13
PATCH_LAYERS = [0, 8, 16, 20, 22, 24, 28]
PATCH_POSITIONS = [S2, 11, FINAL]  # 11 is " a": a position that should not matter


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    """One torch thread: on this shared 2-core machine OpenMP's spinning threads made the module
    3x slower (100 s vs 33 s at load 7); an idle machine loses little."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (no ties expected in float metrics)."""
    rx = x.flatten().argsort().argsort().double()
    ry = y.flatten().argsort().argsort().double()
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


@pytest.fixture(scope="module")
def ioi():
    model = HookedTransformer.from_pretrained("smollm2-135m", default_prepend_bos=False)
    clean_text, corrupted_text, io, s = [], [], [], []
    for i, (io_name, s_name) in enumerate(PAIRS):
        a, b = (io_name, s_name) if i % 2 == 0 else (s_name, io_name)
        clean_text.append(TEMPLATE.format(a=a, b=b, s=s_name))
        corrupted_text.append(TEMPLATE.format(a=a, b=b, s=io_name))
        io.append(model.to_single_token(" " + io_name))
        s.append(model.to_single_token(" " + s_name))
    clean, corrupted = model.to_tokens(clean_text), model.to_tokens(corrupted_text)
    io, s = torch.tensor(io), torch.tensor(s)
    rows = torch.arange(len(PAIRS))

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        return logits[rows, -1, io] - logits[rows, -1, s]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits).mean()

    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean)
        corrupted_logits = model(corrupted)
    return dict(
        model=model,
        clean=clean,
        corrupted=corrupted,
        io=io,
        s=s,
        cache=cache,
        logit_diff=logit_diff,
        metric=metric,
        clean_ld=logit_diff(clean_logits),
        corrupted_ld=logit_diff(corrupted_logits),
    )


def test_prompts_line_up(ioi) -> None:
    model, clean, corrupted = ioi["model"], ioi["clean"], ioi["corrupted"]
    assert clean.shape == corrupted.shape == (8, 14)
    assert model.to_str_tokens(clean[0])[S2] == " John"
    assert (clean != corrupted).any(0).nonzero().flatten().tolist() == [S2]


def test_logit_difference(ioi) -> None:
    clean_ld, corrupted_ld = ioi["clean_ld"], ioi["corrupted_ld"]
    assert (clean_ld > 2).all() and clean_ld.mean() > 4  # measured min 3.99, mean 5.97
    assert (corrupted_ld < -1).all()  # measured max -2.91


def test_logit_lens(ioi) -> None:
    model, cache, io, s = ioi["model"], ioi["cache"], ioi["io"], ioi["s"]
    resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    assert resid.shape == (31, 8, 576) and labels[-1] == "final_post"
    lens = resid @ model.W_U.detach() + model.b_U.detach()  # [31, batch, vocab]
    rows = torch.arange(8)
    lens_ld = (lens[:, rows, io] - lens[:, rows, s]).mean(-1)
    torch.testing.assert_close(lens_ld[-1], ioi["clean_ld"].mean(), atol=1e-3, rtol=0)
    assert lens_ld[: labels.index("24_pre")].abs().max() < 1.0  # measured 0.53
    assert labels[int(lens_ld.argmax())] == "24_pre" and lens_ld.max() > 8  # measured 11.47


def test_head_attribution(ioi) -> None:
    cache, io, s = ioi["cache"], ioi["io"], ioi["s"]
    heads, labels = cache.stack_head_results(pos_slice=-1, incl_remainder=True, return_labels=True)
    dla = cache.logit_attrs(heads, io, incorrect_tokens=s, pos_slice=-1)  # [271, batch]
    torch.testing.assert_close(dla.sum(0), ioi["clean_ld"], atol=1e-3, rtol=0)  # b_U is zero
    per_head = dla[:-1]
    mean = per_head.mean(-1)
    assert labels[int(mean.argmax())] == "L23H3" and mean.max() > 2  # measured 2.53
    top_per_prompt = [labels[i] for i in per_head.argmax(0).tolist()]
    assert top_per_prompt.count("L23H3") >= 6  # measured 7 of 8
    layer_23 = mean.reshape(30, 9)[23].sum()
    assert layer_23 > 0.6 * ioi["clean_ld"].mean()  # measured 4.92 of 5.97
    most_negative = labels[int(mean.argmin())]
    assert most_negative in ("L29H0", "L24H4") and mean.min() < -0.5  # measured L29H0, -1.05


def test_residual_stream_patching_and_attribution(ioi) -> None:
    model, corrupted, cache, metric = ioi["model"], ioi["corrupted"], ioi["cache"], ioi["metric"]
    clean_value, corrupted_value = ioi["clean_ld"].mean(), ioi["corrupted_ld"].mean()
    rows = torch.tensor([(layer, pos) for layer in PATCH_LAYERS for pos in PATCH_POSITIONS])
    patched = patching.get_act_patch_resid_pre(
        model, corrupted, cache, metric, index_df=rows, patches_per_forward=len(PATCH_POSITIONS)
    )
    effect = patched - corrupted_value
    grid = (effect / (clean_value - corrupted_value)).reshape(len(PATCH_LAYERS), -1)
    s2, middle, final = grid[:, 0], grid[:, 1], grid[:, 2]
    early = torch.tensor([layer <= 16 for layer in PATCH_LAYERS])
    late = torch.tensor([layer >= 24 for layer in PATCH_LAYERS])
    # early and middle layers: S2 carries everything, the final position nothing
    assert (s2[early] > 0.95).all() and (final[early].abs() < 0.05).all()
    # late layers: the final position carries it, S2 no longer
    assert (final[late] > 0.8).all() and (s2[late].abs() < 0.1).all()
    best = grid.argmax(-1)
    assert (best[early] == 0).all() and (best[late] == 2).all()
    assert middle.abs().max() < 0.1  # " a" never matters (measured <= 0.01)
    # attribution patching: one forward + backward for the whole [layer, pos] grid
    approx = attribution.get_attr_patch_resid_pre(model, corrupted, cache, metric)
    assert approx.shape == (30, 14)
    picked = approx[rows[:, 0], rows[:, 1]]
    assert _spearman(picked, effect) > 0.5  # measured 0.64 on these 21 rows
    approx_grid = (picked / (clean_value - corrupted_value)).reshape(len(PATCH_LAYERS), -1)
    # where the effect flows through the final position, the linear estimate is close...
    assert (
        (approx_grid[late, 2] - final[late]).abs() < 0.15
    ).all()  # measured 0.76/0.87 vs 0.87/0.94
    assert ((approx_grid[:, 1] - middle).abs() < 0.01).all()
    # ...but the S2 rows saturate: patching restores everything (1.0), the gradient sees ~0.1
    assert (approx_grid[early, 0] < 0.2).all()  # measured -0.01, 0.08, 0.10
    # positions before S2 are identical in both runs (up to float rounding between the cached
    # clean run's explicit attention and the corrupted run's fused kernel)
    assert approx[:, :S2].abs().max() < 1e-5


def test_evals_and_head_detector(ioi) -> None:
    model = ioi["model"]
    result = evals.ioi_eval(model, num_samples=16, batch_size=16)
    assert result["Accuracy"] >= 0.75 and result["Logit Difference"] > 1.5  # measured 0.875, 3.12
    gen = torch.Generator().manual_seed(0)
    random_tokens = torch.randint(1000, 20000, (2, 20), generator=gen)
    repeated = torch.cat([random_tokens, random_tokens], dim=1)
    scores = detect_head(model, repeated, "induction_head")
    layer, head = divmod(int(scores.argmax()), model.cfg.n_heads)
    assert scores.max() > 0.3 and 10 <= layer <= 25  # measured L18H6 at 0.46
