"""Attribution patching: exact as a directional derivative (finite differences in float64), and a
good ranking of exact activation patching on a small model (Spearman rank correlation)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_analysis_models import make_model, one_thread, random_tokens, randomise, spearman

from lmscope.analysis import attribution as A
from lmscope.analysis import patching as P
from lmscope.processing import process_weights
from lmscope.utils import get_act_name


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def _setup(
    variant: str, dtype: torch.dtype = torch.float32, seed: int = 0, std: float = 0.25, **kw
):
    model = make_model(variant, processed=False, seed=seed, dtype=dtype, **kw)
    randomise(model, seed, std)
    process_weights(model)
    clean = random_tokens(3, 8, seed=seed + 10)
    corrupted = clean.clone()
    corrupted[:, 3] = (corrupted[:, 3] + 7) % model.cfg.d_vocab
    answer, wrong = clean[:, -1], (clean[:, -1] + 1) % model.cfg.d_vocab
    rows = torch.arange(3)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[rows, -1, answer] - logits[rows, -1, wrong]).mean()

    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(clean)
        corrupted_value = metric(model(corrupted))
    return model, corrupted, cache, metric, metric(clean_logits), corrupted_value


def _scaled_setter(alpha: float, setter):
    """Patch `corrupted + alpha * (clean - corrupted)` instead of `clean` at the index."""

    def scaled(corrupted_act: torch.Tensor, index, clean_act: torch.Tensor) -> torch.Tensor:
        original = corrupted_act.clone()
        setter(corrupted_act, index, clean_act)
        return original + alpha * (corrupted_act - original)

    return scaled


FD_CASES = [
    (A.get_attr_patch_resid_pre, P.layer_pos_patch_setter, "resid_pre", ("layer", "pos")),
    (A.get_attr_patch_mlp_out, P.layer_pos_patch_setter, "mlp_out", ("layer", "pos")),
    (
        A.get_attr_patch_attn_head_out_by_pos,
        P.layer_pos_head_vector_patch_setter,
        "z",
        ("layer", "pos", "head"),
    ),
    (
        A.get_attr_patch_attn_head_k_all_pos,
        P.layer_head_vector_patch_setter,
        "k",
        ("layer", "head"),
    ),
    (
        A.get_attr_patch_attn_head_v_all_pos,
        P.layer_head_vector_patch_setter,
        "v",
        ("layer", "head"),
    ),
    (
        A.get_attr_patch_attn_head_q_all_pos,
        P.layer_head_vector_patch_setter,
        "q",
        ("layer", "head"),
    ),
    (
        A.get_attr_patch_attn_head_pattern_by_pos,
        P.layer_head_pos_pattern_patch_setter,
        "pattern",
        ("layer", "head_index", "dest_pos"),
    ),
]


@pytest.mark.parametrize("variant", ["ln", "rms_gqa"])
@pytest.mark.parametrize("case", FD_CASES, ids=[c[2] for c in FD_CASES])
def test_attribution_is_the_directional_derivative(variant: str, case) -> None:
    """attr[index] = d/dα metric(corrupted with a += α (clean - corrupted) at index) at α = 0."""
    model, corrupted, cache, metric, _, _ = _setup(variant, dtype=torch.float64)
    fn, setter, activation, axes = case
    attr = fn(model, corrupted, cache, metric)
    cfg = model.cfg
    n_heads = cfg.n_key_value_heads if activation in ("k", "v") else cfg.n_heads
    sizes = {"layer": cfg.n_layers, "pos": 8, "dest_pos": 8, "head": n_heads, "head_index": n_heads}
    assert attr.shape == tuple(sizes[a] for a in axes)
    # the entries with the largest attributions plus a few others
    flat = attr.flatten().abs().argsort(descending=True)
    picks = [tuple(torch.unravel_index(i, attr.shape)) for i in [*flat[:4], flat[len(flat) // 2]]]
    picks = [tuple(int(v) for v in p) for p in picks]
    h = 1e-5
    rows = torch.tensor(picks)
    up = P.generic_activation_patch(
        model, corrupted, cache, metric, _scaled_setter(h, setter), activation, index_df=rows
    )
    down = P.generic_activation_patch(
        model, corrupted, cache, metric, _scaled_setter(-h, setter), activation, index_df=rows
    )
    derivative = (up - down) / (2 * h)
    want = torch.stack([attr[p] for p in picks]).to(derivative.dtype)
    torch.testing.assert_close(derivative, want, atol=1e-6, rtol=1e-5)


def test_many_shares_one_backward_and_matches_single_calls() -> None:
    model, corrupted, cache, metric, _, _ = _setup("rms_gqa")
    out = A.attribution_patch_many(
        model, corrupted, cache, metric, {"resid_pre": ("layer", "pos"), "k": ("layer", "head")}
    )
    single = A.get_attr_patch_resid_pre(model, corrupted, cache, metric)
    torch.testing.assert_close(out["resid_pre"], single, atol=1e-6, rtol=1e-5)
    assert out["k"].shape == (3, model.cfg.n_key_value_heads)
    every = A.get_attr_patch_attn_head_all_pos_every(model, corrupted, cache, metric, "repeat")
    assert every.shape == (5, 3, model.cfg.n_heads)
    torch.testing.assert_close(every[2, :, 1], out["k"][:, 0], atol=1e-6, rtol=1e-5)  # group 0
    by_pos = A.get_attr_patch_attn_head_by_pos_every(model, corrupted, cache, metric)
    assert by_pos.shape == (5, 3, 8, model.cfg.n_heads)
    block = A.get_attr_patch_block_every(model, corrupted, cache, metric)
    torch.testing.assert_close(block[0], single, atol=1e-6, rtol=1e-5)
    # the parameters were frozen for the pass: no gradients leak into the model
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_attribution_sums_to_the_linearised_total_effect() -> None:
    # Patching every position of resid_pre at layer 0 turns the corrupted run into the clean one;
    # its attribution is the gradient dotted with the whole difference.
    model, corrupted, cache, metric, _, _ = _setup("ln")
    attr = A.get_attr_patch_resid_pre(model, corrupted, cache, metric)
    acts, grads, value = A.corrupted_activations_and_grads(
        model, corrupted, metric, [get_act_name("resid_pre", 0)]
    )
    name = get_act_name("resid_pre", 0)
    total = ((cache[name] - acts[name]) * grads[name]).sum()
    torch.testing.assert_close(attr[0].sum(), total, atol=1e-6, rtol=1e-5)
    assert attr[0, :3].abs().max() == 0  # identical positions before the change


# Measured on this small model (4 layers, d_model 32, 8 heads, LayerNorm, weights N(0, 0.15)),
# attribution vs exact patching, Spearman rank correlation, seeds 0/1/2/3:
#   each head's output [layer, head] (32 heads):        0.993 0.993 0.996 0.979
#   all five head activations [5, layer, head] (160):   0.982 0.992 0.987 0.985
#   (parallel attn/MLP variant: 0.998 0.998 0.994 0.996 / 0.982 0.981 0.988 0.986; the RMS + GQA
#   variant is weaker, 0.80 0.95 0.69 0.97 / 0.91 0.93 0.75 0.90, and resid/attn_out/mlp_out by
#   position weaker still, 0.5-0.95: see docs/analysis.md). Asserted on seeds 0 and 1: > 0.95.
@pytest.mark.parametrize("seed", [0, 1])
def test_attribution_ranks_heads_like_exact_patching(seed: int) -> None:
    model, corrupted, cache, metric, _, corrupted_value = _setup(
        "ln", seed=seed, std=0.15, n_layers=4, n_heads=8
    )
    exact = P.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric)
    approx = A.get_attr_patch_attn_head_all_pos_every(model, corrupted, cache, metric)
    effect = exact - corrupted_value
    assert spearman(effect[0], approx[0]) > 0.95
    assert spearman(effect, approx) > 0.95
    # and the largest head effect is the largest attribution
    assert effect[0].abs().argmax() == approx[0].abs().argmax()


def test_patching_and_attribution_functions_come_from_one_table() -> None:
    """Every standard patch is declared once (STANDARD_PATCHES); both modules bind a function for
    each entry with its activation and axes, and no other `get_*_patch_<name>` partial."""
    names = set(P.STANDARD_PATCHES)
    stacks = {"block_every", "attn_head_all_pos_every", "attn_head_by_pos_every"}
    for module, prefix in ((P, "get_act_patch_"), (A, "get_attr_patch_")):
        bound = {n.removeprefix(prefix) for n in dir(module) if n.startswith(prefix)}
        assert bound == names | stacks, (prefix, bound ^ (names | stacks))
    for name, spec in P.STANDARD_PATCHES.items():
        act = getattr(P, f"get_act_patch_{name}")
        assert act.keywords == {
            "patch_setter": spec.setter,
            "activation_name": spec.activation,
            "index_axis_names": spec.axes,
        }
        assert (
            spec.what in act.__doc__ and spec.what in getattr(A, f"get_attr_patch_{name}").__doc__
        )
    assert P.STANDARD_PATCHES["attn_head_v_by_pos"].shape == "[layer, pos, kv_head]"
