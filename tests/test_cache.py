"""ActivationCache: dict behaviour, and every residual-stream analysis checked by an identity.

Tiny random models (LayerNorm; RMSNorm + rotary + gated MLP + GQA; parallel attention/MLP), with
non-trivial biases and norm weights, processed like `from_pretrained` unless a test says otherwise.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmscope import ActivationCache, HookedTransformer
from lmscope.utils import Slice

_spec = importlib.util.spec_from_file_location(
    "tiny_analysis_models", Path(__file__).parent / "analysis" / "tiny_analysis_models.py"
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
make_model, random_tokens, VARIANTS = _helpers.make_model, _helpers.random_tokens, _helpers.VARIANTS
one_thread = _helpers.one_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


ATOL = 1e-5  # one or two terms in float32
SUM_ATOL = 1e-4  # identities that sum hundreds of terms


@pytest.fixture(scope="module", params=list(VARIANTS))
def run(
    request: pytest.FixtureRequest,
) -> tuple[HookedTransformer, torch.Tensor, torch.Tensor, ActivationCache]:
    model = make_model(request.param)
    tokens = random_tokens(3, 9)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


@pytest.fixture(scope="module")
def ln_run() -> tuple[HookedTransformer, torch.Tensor, torch.Tensor, ActivationCache]:
    model = make_model("ln")
    tokens = random_tokens(3, 9)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# -- dict behaviour ----------------------------------------------------------------------------------
def test_indexing_by_shorthand_negative_layers_and_full_names(ln_run) -> None:
    model, _, _, cache = ln_run
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache["blocks.2.hook_resid_post"]
    assert cache["k1"] is cache["blocks.1.attn.hook_k"]
    assert cache["scale", 2, "ln1"] is cache["blocks.2.ln1.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert ("pattern", 1) in cache and "blocks.0.hook_mlp_out" in cache
    assert ("pattern", 7) not in cache
    with pytest.raises(KeyError, match="names_filter"):
        cache["blocks.0.attn.hook_result"]
    assert len(cache) == len(list(cache)) == len(cache.keys()) == len(cache.values())
    assert dict(cache.items()) == cache.cache_dict
    assert cache.to("cpu") is cache


def test_remove_batch_dim_and_batch_slicing(ln_run) -> None:
    model, tokens, _, cache = ln_run
    with pytest.raises(ValueError, match="batch size 1"):
        ActivationCache(dict(cache.cache_dict), model).remove_batch_dim()
    one = cache.apply_slice_to_batch_dim(1)
    assert not one.has_batch_dim
    close(one["resid_pre", 1], cache["resid_pre", 1][1], 0)
    with torch.no_grad():
        _, single = model.run_with_cache(tokens[1:2])
    single.remove_batch_dim()
    assert not single.has_batch_dim
    close(single["resid_pre", 2], one["resid_pre", 2])
    two = cache.apply_slice_to_batch_dim([0, 2])
    assert two.has_batch_dim and two["pattern", 0].shape[0] == 2
    three = cache.apply_slice_to_batch_dim((0, 2))
    assert three["pattern", 0].shape[0] == 2


def test_toggle_autodiff_sets_global_grad_mode(ln_run) -> None:
    cache = ln_run[3]
    before = torch.is_grad_enabled()
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
        cache.toggle_autodiff(True)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(before)


def test_stack_activation(run) -> None:
    model, _, _, cache = run
    stacked = cache.stack_activation("pattern")
    assert stacked.shape[0] == model.cfg.n_layers
    close(stacked[1], cache["pattern", 1], 0)
    assert cache.stack_activation("resid_pre", layer=2).shape[0] == 2


# -- accumulated_resid (the logit lens) -------------------------------------------------------------
def test_accumulated_resid_labels_follow_transformerlens(ln_run) -> None:
    _, _, _, cache = ln_run
    assert cache.accumulated_resid(return_labels=True)[1] == [
        "0_pre",
        "1_pre",
        "2_pre",
        "final_post",
    ]
    assert cache.accumulated_resid(1, return_labels=True)[1] == ["0_pre", "1_pre"]
    _, labels = cache.accumulated_resid(2, incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre"]
    _, labels = cache.accumulated_resid(1, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "1_pre", "1_mid"]
    resid = cache.accumulated_resid(pos_slice=-1)
    assert resid.shape == (4, 3, 32)
    close(resid[2], cache["resid_pre", 2][:, -1], 0)


def test_logit_lens_recomputes_each_layers_scale(run) -> None:
    model, _, logits, cache = run
    resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    # final entry: exactly the model's logits
    close(resid[-1] @ model.W_U + model.b_U, logits[:, -1], 1e-4)
    # every entry: the final norm applied to that residual on its own
    raw = cache.accumulated_resid(pos_slice=-1)
    centred = raw - raw.mean(-1, keepdim=True) if model.cfg.normalization_type == "LNPre" else raw
    expected = centred / (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    close(resid, expected)
    # TransformerLens 2.x behaviour (the cached final scale for every entry) is still available,
    # agrees on the final entry and is wrong for the early ones
    reused = cache.accumulated_resid(apply_ln=True, pos_slice=-1, recompute_ln=False)
    close(reused[-1], resid[-1])
    assert not torch.allclose(reused[0], resid[0], atol=1e-3)


def test_logit_lens_into_an_inner_layer_matches_its_norm(run) -> None:
    model, _, _, cache = run
    resid = cache.accumulated_resid(layer=2, apply_ln=True)
    close(resid[-1], cache["normalized", 2, "ln1"])
    if not model.cfg.parallel_attn_mlp:
        mid = cache.accumulated_resid(layer=1, mlp_input=True, apply_ln=True)
        close(mid[-1], cache["normalized", 1, "ln2"])


def test_logit_lens_on_unprocessed_model_applies_the_norm_weights() -> None:
    model = make_model("rms_gqa", processed=False)
    tokens = random_tokens(2, 7)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    resid = cache.accumulated_resid(apply_ln=True)
    close(resid[-1] @ model.W_U + model.b_U, logits, 1e-4)


def test_accumulated_resid_without_batch_dim_and_with_index_list(ln_run) -> None:
    model, tokens, _, cache = ln_run
    with torch.no_grad():
        _, single = model.run_with_cache(tokens[:1])
    single.remove_batch_dim()
    resid = single.accumulated_resid(apply_ln=True, pos_slice=[1, 4])
    assert resid.shape == (4, 2, 32)
    full = cache.accumulated_resid(apply_ln=True, pos_slice=Slice([1, 4]))
    close(resid, full[:, 0])
    resid = single.accumulated_resid(apply_ln=True, pos_slice=-1, recompute_ln=False)
    close(resid, cache.accumulated_resid(apply_ln=True, pos_slice=-1, recompute_ln=False)[:, 0])


# -- decompositions --------------------------------------------------------------------------------
def test_decompose_resid_sums_to_the_residual(run) -> None:
    model, _, _, cache = run
    n = model.cfg.n_layers
    for layer in range(n + 1):
        target = cache["resid_post", n - 1] if layer == n else cache["resid_pre", layer]
        parts, labels = cache.decompose_resid(layer, return_labels=True)
        assert len(labels) == len(parts)
        close(parts.sum(0), target)
        if layer < n and not model.cfg.parallel_attn_mlp:
            mid = cache.decompose_resid(layer, mlp_input=True)
            close(mid.sum(0), cache["resid_mid", layer])
    attn = cache.decompose_resid(mode="attn", incl_embeds=False)
    mlp = cache.decompose_resid(mode="mlp", incl_embeds=False)
    embeds = cache.decompose_resid(0)
    close(attn.sum(0) + mlp.sum(0) + embeds.sum(0), cache["resid_post", -1])


def test_decompose_resid_labels(ln_run) -> None:
    cache = ln_run[3]
    _, labels = cache.decompose_resid(layer=1, mlp_input=True, return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out"]


def test_decompose_resid_with_ln_sums_to_the_normalised_residual(run) -> None:
    model, _, _, cache = run
    for layer in range(model.cfg.n_layers):
        parts = cache.decompose_resid(layer, apply_ln=True, pos_slice=(2, 7))
        close(parts.sum(0), cache["normalized", layer, "ln1"][:, 2:7])
    parts = cache.decompose_resid(apply_ln=True, pos_slice=-1)
    close(parts.sum(0), cache["ln_final.hook_normalized"][:, -1])


def test_head_results_plus_bias_sum_to_attn_out(run) -> None:
    model, tokens, _, cache = run
    cache.compute_head_results()
    for layer in range(model.cfg.n_layers):
        result = cache["result", layer]
        assert result.shape == (3, 9, model.cfg.n_heads, model.cfg.d_model)
        close(result.sum(-2) + model.b_O[layer], cache["attn_out", layer])
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, hooked = model.run_with_cache(tokens, names_filter=lambda n: "result" in n)
    finally:
        model.set_use_attn_result(False)
    close(hooked["result", 1], cache["result", 1])


def test_stack_head_results(run) -> None:
    model, _, _, cache = run
    heads, labels = cache.stack_head_results(pos_slice=-1, return_labels=True)
    n_heads = model.cfg.n_heads
    assert heads.shape == (model.cfg.n_layers * n_heads, 3, 32)
    assert labels[: n_heads + 1] == [f"L0H{h}" for h in range(n_heads)] + ["L1H0"]
    close(heads[n_heads + 2], cache["result", 1][:, -1, 2], 0)
    for layer in range(model.cfg.n_layers + 1):
        stack, labels = cache.stack_head_results(layer, incl_remainder=True, return_labels=True)
        assert labels[-1] == "remainder" and len(stack) == layer * n_heads + 1
        target = (
            cache["resid_post", -1] if layer == model.cfg.n_layers else cache["resid_pre", layer]
        )
        close(stack.sum(0), target)
    empty = cache.stack_head_results(0, pos_slice=-1)
    assert empty.shape == (0, 3, 32)
    normed = cache.stack_head_results(incl_remainder=True, apply_ln=True)
    close(normed.sum(0), cache["ln_final.hook_normalized"])


def test_neuron_results_sum_to_mlp_out(run) -> None:
    model, _, _, cache = run
    for layer in range(model.cfg.n_layers):
        neurons = cache.get_neuron_results(layer)
        assert neurons.shape == (3, 9, model.cfg.d_mlp, 32)
        close(neurons.sum(-2) + model.b_out[layer], cache["mlp_out", layer])
    some = cache.get_neuron_results(1, neuron_slice=[3, 7], pos_slice=-1)
    close(some, cache.get_neuron_results(1)[:, -1, [3, 7]])
    direction = torch.randn(32, 2)
    close(
        cache.get_neuron_results(2, project_output_onto=direction),
        cache.get_neuron_results(2) @ direction,
    )
    close(
        cache.get_neuron_results(2, project_output_onto=direction[:, 0]),
        cache.get_neuron_results(2) @ direction[:, 0],
    )


def test_stack_neuron_results(run) -> None:
    model, _, _, cache = run
    d_mlp = model.cfg.d_mlp
    stack, labels = cache.stack_neuron_results(2, return_labels=True, incl_remainder=True)
    assert len(stack) == 2 * d_mlp + 1 and labels[d_mlp + 1] == "L1N1"
    close(stack.sum(0), cache["resid_pre", 2], SUM_ATOL)
    one = cache.stack_neuron_results(2, neuron_slice=5, return_labels=True)
    assert one[1] == ["L0N5", "L1N5"] and one[0].shape == (2, 3, 9, 32)
    direction = torch.randn(32)
    projected = cache.stack_neuron_results(
        2, pos_slice=-1, apply_ln=True, project_output_onto=direction
    )
    dense = cache.stack_neuron_results(2, pos_slice=-1, apply_ln=True)
    close(projected, dense @ direction)
    if not model.cfg.parallel_attn_mlp:
        mid = cache.stack_neuron_results(1, incl_remainder=True, mlp_input=True)
        close(mid.sum(0), cache["resid_mid", 1], SUM_ATOL)


def test_full_decomposition_sums_to_the_final_residual(run) -> None:
    model, _, _, cache = run
    stack, labels = cache.get_full_resid_decomposition(return_labels=True)
    cfg = model.cfg
    n_embeds = 2 if cfg.positional_embedding_type == "standard" else 1
    assert len(labels) == len(stack) == cfg.n_layers * (cfg.n_heads + cfg.d_mlp) + n_embeds + 1
    assert labels[-1] == "bias" and labels[0] == "L0H0" and "L2N0" in labels
    close(stack.sum(0), cache["resid_post", -1], SUM_ATOL)
    mlps = cache.get_full_resid_decomposition(expand_neurons=False)
    assert len(mlps) == cfg.n_layers * (cfg.n_heads + 1) + n_embeds + 1
    close(mlps.sum(0), cache["resid_post", -1])
    for layer in range(cfg.n_layers):
        close(cache.get_full_resid_decomposition(layer).sum(0), cache["resid_pre", layer], SUM_ATOL)
        if not cfg.parallel_attn_mlp:
            mid = cache.get_full_resid_decomposition(layer, mlp_input=True)
            close(mid.sum(0), cache["resid_mid", layer], SUM_ATOL)


def test_full_decomposition_projected_and_normalised(run) -> None:
    _, _, _, cache = run
    direction = torch.randn(32, 3)
    dense = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1)
    projected = cache.get_full_resid_decomposition(
        apply_ln=True, pos_slice=-1, project_output_onto=direction
    )
    close(projected, dense @ direction, SUM_ATOL)
    close(dense.sum(0), cache["ln_final.hook_normalized"][:, -1], SUM_ATOL)
    vec = cache.get_full_resid_decomposition(pos_slice=-1, project_output_onto=direction[:, 0])
    close(vec.sum(0), cache["resid_post", -1][:, -1] @ direction[:, 0], SUM_ATOL)


# -- logit attribution ------------------------------------------------------------------------------
def test_logit_attrs_of_the_full_stack_equal_the_logits(run) -> None:
    model, tokens, logits, cache = run
    stack = cache.get_full_resid_decomposition()
    attrs = cache.logit_attrs(stack, tokens)  # [components, batch, pos]: each position's own token
    expected = logits.gather(-1, tokens[..., None])[..., 0] - model.b_U[tokens]
    close(attrs.sum(0), expected, SUM_ATOL)
    answer, wrong = tokens[:, -1], (tokens[:, -1] + 1) % model.cfg.d_vocab
    heads = cache.stack_head_results(pos_slice=-1, incl_remainder=True)
    diff = cache.logit_attrs(heads, answer, incorrect_tokens=wrong, pos_slice=-1)
    assert diff.shape == (len(heads), 3)
    rows = torch.arange(3)
    expected = logits[rows, -1, answer] - logits[rows, -1, wrong]
    expected = expected - (model.b_U[answer] - model.b_U[wrong])
    close(diff.sum(0), expected, SUM_ATOL)


def test_logit_attrs_token_forms(ln_run) -> None:
    model, _, logits, cache = ln_run
    stack = cache.decompose_resid(pos_slice=-1)
    by_int = cache.logit_attrs(stack, 5, pos_slice=-1)
    by_scalar = cache.logit_attrs(stack, torch.tensor(5), pos_slice=-1)
    by_batch = cache.logit_attrs(stack, torch.tensor([5, 5, 5]), pos_slice=-1)
    close(by_int, by_scalar, 0)
    close(by_int, by_batch, 0)
    close(by_int.sum(0), logits[:, -1, 5] - model.b_U[5], SUM_ATOL)
    full_pos = cache.logit_attrs(cache.decompose_resid(), torch.tensor([5, 6, 7]))
    assert full_pos.shape == (len(stack), 3, 9)  # one answer per prompt, at every position
    close(full_pos[:, 1, -1], cache.logit_attrs(stack, 6, pos_slice=-1)[:, 1])
    first = cache.logit_attrs(stack[:, :1], 5, pos_slice=-1, batch_slice=0, has_batch_dim=False)
    close(first[:, 0], by_int[:, 0])
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(stack, torch.tensor([1, 2, 3]), incorrect_tokens=4)


def test_logit_attrs_exact_on_unprocessed_rms_model() -> None:
    # Without fold_ln the final RMSNorm's weight is folded into the directions (TransformerLens
    # leaves it out and is off by that weight).
    model = make_model("rms_gqa", processed=False)
    tokens = random_tokens(2, 6)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    attrs = cache.logit_attrs(cache.get_full_resid_decomposition(), tokens)
    expected = logits.gather(-1, tokens[..., None])[..., 0] - model.b_U[tokens]
    close(attrs.sum(0), expected, SUM_ATOL)


def test_apply_ln_to_stack_options(ln_run) -> None:
    model, _, _, cache = ln_run
    parts = cache.decompose_resid()
    sliced = cache.apply_ln_to_stack(parts, batch_slice=[0, 2])
    close(sliced, cache.apply_ln_to_stack(parts)[:, [0, 2]], 0)
    recomputed = cache.apply_ln_to_stack(parts, recompute_ln=True)
    one = parts[3] - parts[3].mean(-1, keepdim=True)
    close(recomputed[3], one / (one.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt())
    with pytest.raises(ValueError, match="mlp_input"):
        cache.apply_ln_to_stack(parts, layer=-1, mlp_input=True)
    _, partial = model.run_with_cache(random_tokens(1, 4), names_filter=lambda n: "resid" in n)
    with pytest.raises(KeyError, match="hook_scale"):
        partial.accumulated_resid(apply_ln=True, recompute_ln=False)
    assert partial.accumulated_resid(apply_ln=True).shape == (4, 1, 4, 32)  # recomputing needs none


def test_no_norm_model_leaves_stacks_alone() -> None:
    model = make_model("ln", processed=False, normalization_type=None)
    with torch.no_grad():
        _, cache = model.run_with_cache(random_tokens(2, 5))
    parts = cache.decompose_resid()
    close(cache.apply_ln_to_stack(parts), parts, 0)


# -- other block layouts: what adds up, and clear errors where nothing does --------------------------
LAYOUTS = {
    "post_residual": dict(normalization_type="LN", norm_placement="post_residual"),
    "pre_and_post": dict(
        normalization_type="RMS",
        norm_placement="pre_and_post",
        positional_embedding_type="rotary",
        gated_mlp=True,
        act_fn="gelu",
        output_logits_soft_cap=30.0,
        use_qk_norm=True,
    ),
    "post": dict(normalization_type="RMS", norm_placement="post", gated_mlp=True, act_fn="silu"),
    "post_embedding_ln": dict(
        normalization_type="LN", post_embedding_ln=True, positional_embedding_type="alibi"
    ),
    "moe": dict(
        normalization_type="RMS", gated_mlp=True, act_fn="silu", num_experts=4, experts_per_token=2
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_other_layouts(layout: str) -> None:
    model = make_model("ln", **LAYOUTS[layout])
    tokens = random_tokens(2, 6)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    final = cache["resid_post", -1]
    lens = cache.accumulated_resid(apply_ln=True)[-1] @ model.W_U.detach() + model.b_U.detach()
    cap = model.cfg.output_logits_soft_cap
    close(cap * torch.tanh(lens / cap) if cap > 0 else lens, logits, 1e-4)
    if layout == "post_residual":  # each block re-normalises the residual: nothing adds up
        for fn in (
            cache.decompose_resid,
            cache.stack_head_results,
            cache.get_full_resid_decomposition,
        ):
            with pytest.raises(ValueError, match="post_residual"):
                fn()
        return
    close(cache.decompose_resid().sum(0), final)
    if layout in ("pre_and_post", "post"):  # attn_out / mlp_out are after ln1_post / ln2_post
        with pytest.raises(ValueError, match="ln1_post"):
            cache.stack_head_results()
        with pytest.raises(ValueError, match="ln1_post"):
            cache.get_full_resid_decomposition(expand_neurons=False)
        if layout == "post":  # no norm reads the residual inside the model
            parts = cache.decompose_resid(layer=2)
            close(cache.apply_ln_to_stack(parts, layer=2), parts, 0)
        return
    if layout == "moe":
        with pytest.raises(ValueError, match="mixture"):
            cache.get_neuron_results(0)
        with pytest.raises(ValueError, match="expand_neurons"):
            cache.get_full_resid_decomposition()
        stack = cache.get_full_resid_decomposition(expand_neurons=False)
    else:
        parts, labels = cache.decompose_resid(layer=0, return_labels=True)
        assert labels == ["embed"]  # the normalised embedding (the LayerNorm follows the sum)
        close(parts[0], cache["resid_pre", 0], 0)
        stack = cache.get_full_resid_decomposition()
    close(stack.sum(0), final, SUM_ATOL)
    attrs = cache.logit_attrs(stack, tokens).sum(0)
    close(attrs, logits.gather(-1, tokens[..., None])[..., 0] - model.b_U[tokens], SUM_ATOL)
