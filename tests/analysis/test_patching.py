"""Activation patching against a brute-force reference: one full forward per index, patched by hand."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
from tiny_analysis_models import make_model, one_thread, random_tokens

from lmscope.analysis import patching as P
from lmscope.utils import get_act_name
from tests._unchecked import unchecked

BATCH, POS, CHANGED = 2, 7, 3  # corrupted = clean with the token at CHANGED replaced


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="module", params=["ln", "rms_gqa", "parallel"])
def setup(request: pytest.FixtureRequest):
    model = make_model(request.param)
    clean = random_tokens(BATCH, POS, seed=5)
    corrupted = clean.clone()
    corrupted[:, CHANGED] = (corrupted[:, CHANGED] + 11) % model.cfg.d_vocab
    answer, wrong = clean[:, -1], (clean[:, -1] + 1) % model.cfg.d_vocab
    rows = torch.arange(BATCH)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[rows, -1, answer] - logits[rows, -1, wrong]).mean()

    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupted_value = metric(model(corrupted))
    return model, clean, corrupted, clean_cache, metric, metric(clean_logits), corrupted_value


@torch.no_grad()
def brute_force(
    model, corrupted, clean_cache, metric, setter: Callable, activation: str, rows
) -> torch.Tensor:
    out = []
    for index in rows:
        name = get_act_name(activation, index[0])

        def hook(act, hook, index=index, name=name):
            return setter(act.clone(), index, clean_cache[name])

        out.append(float(metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, hook)]))))
    return torch.tensor(out)


CASES = [
    (P.get_act_patch_resid_pre, P.layer_pos_patch_setter, "resid_pre", ("layer", "pos")),
    (P.get_act_patch_attn_out, P.layer_pos_patch_setter, "attn_out", ("layer", "pos")),
    (P.get_act_patch_mlp_out, P.layer_pos_patch_setter, "mlp_out", ("layer", "pos")),
    (
        P.get_act_patch_attn_head_out_by_pos,
        P.layer_pos_head_vector_patch_setter,
        "z",
        ("layer", "pos", "head"),
    ),
    (P.get_act_patch_attn_head_k_all_pos, P.layer_head_vector_patch_setter, "k", ("layer", "head")),
    (P.get_act_patch_attn_head_v_all_pos, P.layer_head_vector_patch_setter, "v", ("layer", "head")),
    (P.get_act_patch_attn_head_q_all_pos, P.layer_head_vector_patch_setter, "q", ("layer", "head")),
    (
        P.get_act_patch_attn_head_pattern_by_pos,
        P.layer_head_pos_pattern_patch_setter,
        "pattern",
        ("layer", "head_index", "dest_pos"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[2] + "_" + "_".join(c[3]) for c in CASES])
def test_partials_match_brute_force(setup, case) -> None:
    model, _, corrupted, clean_cache, metric, *_ = setup
    fn, setter, activation, axes = case
    got = fn(model, corrupted, clean_cache, metric)
    cfg = model.cfg
    n_heads = cfg.n_key_value_heads if activation in ("k", "v") else cfg.n_heads
    sizes = {
        "layer": cfg.n_layers,
        "pos": POS,
        "dest_pos": POS,
        "head": n_heads,
        "head_index": n_heads,
    }
    assert got.shape == tuple(sizes[a] for a in axes)
    rows = P.index_grid(got.shape).tolist()
    want = brute_force(model, corrupted, clean_cache, metric, setter, activation, rows)
    torch.testing.assert_close(got.flatten(), want, atol=1e-5, rtol=0)


def test_results_do_not_depend_on_batching_or_start_layer(setup) -> None:
    model, _, corrupted, clean_cache, metric, *_ = setup
    args = (model, corrupted, clean_cache, metric)
    default = P.get_act_patch_attn_head_out_all_pos(*args)
    one = P.get_act_patch_attn_head_out_all_pos(*args, patches_per_forward=1)
    full = P.get_act_patch_attn_head_out_all_pos(*args, use_start_at_layer=False)
    torch.testing.assert_close(default, one, atol=1e-5, rtol=0)
    torch.testing.assert_close(default, full, atol=1e-5, rtol=0)


def test_patching_the_changed_token_at_layer_0_restores_the_clean_run(setup) -> None:
    model, _, corrupted, clean_cache, metric, clean_value, corrupted_value = setup
    grid = P.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    assert grid.shape == (model.cfg.n_layers, POS)
    torch.testing.assert_close(grid[0, CHANGED], clean_value, atol=1e-5, rtol=0)
    # earlier positions hold identical residuals in both runs at every layer: no effect
    torch.testing.assert_close(
        grid[:, :CHANGED],
        torch.full((model.cfg.n_layers, CHANGED), float(corrupted_value)),
        atol=1e-5,
        rtol=0,
    )
    # at layer 0 the later positions are identical too
    torch.testing.assert_close(
        grid[0, CHANGED + 1 :],
        torch.full((POS - CHANGED - 1,), float(corrupted_value)),
        atol=1e-5,
        rtol=0,
    )


def test_explicit_rows_and_index_df(setup) -> None:
    model, _, corrupted, clean_cache, metric, *_ = setup
    grid = P.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    rows = torch.tensor([[2, 5], [0, 3], [1, 6]])
    flat = P.get_act_patch_resid_pre(model, corrupted, clean_cache, metric, index_df=rows)
    torch.testing.assert_close(flat, grid[rows[:, 0], rows[:, 1]], atol=1e-5, rtol=0)
    as_list, returned = P.get_act_patch_resid_pre(
        model, corrupted, clean_cache, metric, index_df=[(1, 6)], return_index_df=True
    )
    assert returned == [(1, 6)]
    torch.testing.assert_close(as_list, grid[1, 6:7], atol=1e-5, rtol=0)
    with unchecked(), pytest.raises(ValueError, match="first index axis"):
        P.generic_activation_patch(
            model, corrupted, clean_cache, metric, P.layer_pos_patch_setter, "resid_pre", ("pos",)
        )
    with unchecked(), pytest.raises(ValueError, match="unknown index axis"):
        P.generic_activation_patch(
            model,
            corrupted,
            clean_cache,
            metric,
            P.layer_pos_patch_setter,
            "resid_pre",
            ("layer", "position"),
        )


def test_every_stacks_have_one_head_axis_under_gqa(setup) -> None:
    model, _, corrupted, clean_cache, metric, *_ = setup
    cfg = model.cfg
    args = (model, corrupted, clean_cache, metric)
    block = P.get_act_patch_block_every(*args)
    assert block.shape == (3, cfg.n_layers, POS)
    torch.testing.assert_close(block[0], P.get_act_patch_resid_pre(*args), atol=1e-6, rtol=0)
    heads = P.get_act_patch_attn_head_all_pos_every(*args, kv_layout="repeat")
    assert heads.shape == (5, cfg.n_layers, cfg.n_heads)
    k = P.get_act_patch_attn_head_k_all_pos(*args)
    assert k.shape == (cfg.n_layers, cfg.n_key_value_heads)
    for h in range(cfg.n_heads):  # query head h shows the kv head it reads
        torch.testing.assert_close(heads[2, :, h], k[:, h // cfg.n_groups], atol=0, rtol=0)
    padded = P.get_act_patch_attn_head_all_pos_every(*args)  # TransformerLens's layout
    kv = cfg.n_key_value_heads
    torch.testing.assert_close(padded[2, :, :kv], k, atol=0, rtol=0)
    assert not padded[2:4, :, kv:].any() and torch.equal(padded[[0, 1, 4]], heads[[0, 1, 4]])
    by_pos = P.get_act_patch_attn_head_by_pos_every(*args, kv_layout="repeat")
    assert by_pos.shape == (5, cfg.n_layers, POS, cfg.n_heads)
    pattern = P.get_act_patch_attn_head_pattern_by_pos(*args)
    torch.testing.assert_close(by_pos[4], pattern.transpose(1, 2), atol=0, rtol=0)


def test_make_df_from_ranges_needs_pandas_or_gives_rows() -> None:
    assert P.index_grid([2, 3]).tolist()[:4] == [[0, 0], [0, 1], [0, 2], [1, 0]]
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError):
            P.make_df_from_ranges([2, 3], ["layer", "pos"])
    else:
        df = P.make_df_from_ranges([2, 3], ["layer", "pos"])
        assert list(df.columns) == ["layer", "pos"] and len(df) == 6


def test_pattern_dest_src_setter() -> None:
    model = make_model("ln")
    clean, corrupted = random_tokens(1, 4, seed=2), random_tokens(1, 4, seed=3)
    rows = torch.arange(1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[rows, -1, 0].mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    got = P.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted, cache, metric)
    assert got.shape == (3, 4, 4, 4)
    picks = [(0, 1, 3, 2), (2, 3, 3, 0)]
    want = brute_force(
        model,
        corrupted,
        cache,
        metric,
        P.layer_head_dest_src_pos_pattern_patch_setter,
        "pattern",
        picks,
    )
    torch.testing.assert_close(torch.stack([got[p] for p in picks]), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "layout",
    [
        dict(normalization_type="LN", post_embedding_ln=True, positional_embedding_type="alibi"),
        dict(
            normalization_type="RMS",
            norm_placement="pre_and_post",
            positional_embedding_type="rotary",
            window_size=3,
            attn_types=["local", "global", "local"],
            attn_scores_soft_cap=20.0,
        ),
        dict(
            normalization_type="RMS",
            gated_mlp=True,
            act_fn="silu",
            num_experts=4,
            experts_per_token=2,
        ),
    ],
    ids=["alibi_post_embedding_ln", "sliding_window_post_norms", "moe"],
)
def test_start_at_layer_and_batching_are_exact_on_other_layouts(layout) -> None:
    model = make_model("ln", **layout)
    clean = random_tokens(BATCH, POS, seed=5)
    corrupted = clean.clone()
    corrupted[:, CHANGED] = (corrupted[:, CHANGED] + 11) % model.cfg.d_vocab
    rows = torch.arange(BATCH)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[rows, -1, clean[:, -1]] - logits[rows, -1, 0]).mean()

    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    args = (model, corrupted, cache, metric)
    for fn in (P.get_act_patch_resid_pre, P.get_act_patch_attn_head_out_all_pos):
        fast = fn(*args)
        slow = fn(*args, use_start_at_layer=False, patches_per_forward=1)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_compiled_sweep_equals_the_eager_sweep(setup, request: pytest.FixtureRequest) -> None:
    """compile=...: one graph (traced here with Dynamo's eager backend) serves every chunk of
    the sweep and gives the eager sweep's numbers; a setter of another kind runs eagerly."""
    from lmscope.compiled import CompileFallbackWarning

    if request.node.callspec.params["setup"] != "rms_gqa":
        pytest.skip("tracing takes seconds: one family (GQA) stands for all")
    model, _, corrupted, clean_cache, metric, _, _ = setup
    traced = {"backend": "eager"}
    for sweep in (P.get_act_patch_attn_head_out_all_pos, P.get_act_patch_attn_head_pattern_all_pos):
        eager = sweep(model, corrupted, clean_cache, metric)
        compiled = sweep(
            model, corrupted, clean_cache, metric, compile=traced, patches_per_forward=3
        )
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)

    def double_clean(corrupted_act, index, clean_act):
        corrupted_act[:, index[1]] = 2 * clean_act[:, index[1]]

    args = (model, corrupted, clean_cache, metric, double_clean, "resid_pre", ("layer", "pos"))
    with pytest.warns(CompileFallbackWarning, match="double_clean"):
        compiled = P.generic_activation_patch(*args, compile=traced)
    torch.testing.assert_close(compiled, P.generic_activation_patch(*args), atol=0, rtol=0)
