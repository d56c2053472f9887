"""Activation names (TransformerLens shorthand), the loss helper, and ActivationCache."""

from __future__ import annotations

import pytest
import torch

from lmscope import ActivationCache, HookedTransformer
from lmscope.utils import get_act_name, lm_cross_entropy_loss, to_numpy
from tests._tiny import TinyModel


# -- get_act_name ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (("pattern", 3), "blocks.3.attn.hook_pattern"),
        (("attn", 3), "blocks.3.attn.hook_pattern"),
        (("attn_scores", 0), "blocks.0.attn.hook_attn_scores"),
        (("attn_logits", 0), "blocks.0.attn.hook_attn_scores"),
        (("k6",), "blocks.6.attn.hook_k"),
        (("key", 6), "blocks.6.attn.hook_k"),
        (("q", 1), "blocks.1.attn.hook_q"),
        (("query", 1), "blocks.1.attn.hook_q"),
        (("value", 1), "blocks.1.attn.hook_v"),
        (("z", 0), "blocks.0.attn.hook_z"),
        (("rot_k", 2), "blocks.2.attn.hook_rot_k"),
        (("result", 2), "blocks.2.attn.hook_result"),
        (("scale4ln1",), "blocks.4.ln1.hook_scale"),
        (("scale", 4, "ln2"), "blocks.4.ln2.hook_scale"),
        (("normalized", 0, "ln1"), "blocks.0.ln1.hook_normalized"),
        (("scale",), "ln_final.hook_scale"),
        (("normalized",), "ln_final.hook_normalized"),
        (("resid_post", 0), "blocks.0.hook_resid_post"),
        (("resid_pre", 5, "b"), "blocks.5.hook_resid_pre"),
        (("resid_mid", 11), "blocks.11.hook_resid_mid"),
        (("resid_post",), "hook_resid_post"),
        (("attn_out", 2), "blocks.2.hook_attn_out"),
        (("mlp_out", 2), "blocks.2.hook_mlp_out"),
        (("pre", 1), "blocks.1.mlp.hook_pre"),
        (("mlp_pre", 1), "blocks.1.mlp.hook_pre"),
        (("post", 1), "blocks.1.mlp.hook_post"),
        (("mlp_post", 1), "blocks.1.mlp.hook_post"),
        (("pre_linear", 0), "blocks.0.mlp.hook_pre_linear"),
        (("embed",), "hook_embed"),
        (("pos_embed",), "hook_pos_embed"),
        (("blocks.0.attn.hook_z",), "blocks.0.attn.hook_z"),
    ],
)
def test_get_act_name(args: tuple, expected: str) -> None:
    assert get_act_name(*args) == expected


def test_get_act_name_builds_real_hook_names(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    for args in [
        ("pattern", 1),
        ("k1",),
        ("scale0ln2",),
        ("resid_post", 1),
        ("pre_linear", 0),
        ("rot_q", 1),
        ("scale",),
        ("embed",),
    ]:
        assert get_act_name(*args) in model.hook_dict, args


def test_get_act_name_rejects_negative_layers() -> None:
    with pytest.raises(
        ValueError, match=r"layer -1 is negative; index the cache \(cache\[name, -1\]\)"
    ):
        get_act_name("resid_pre", -1)


# -- losses and conversions -------------------------------------------------------------------------
def test_lm_cross_entropy_loss_by_hand() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = torch.tensor([[0, 1, 2]])
    per_token = lm_cross_entropy_loss(logits, tokens, per_token=True)
    expected = -torch.log(torch.tensor([[0.25, 0.1]]))
    torch.testing.assert_close(per_token, expected)
    torch.testing.assert_close(lm_cross_entropy_loss(logits, tokens), expected.mean())
    # a masked last token drops the prediction that targets it
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(lm_cross_entropy_loss(logits, tokens, mask), expected[0, 0])
    torch.testing.assert_close(
        lm_cross_entropy_loss(logits, tokens, mask, per_token=True),
        torch.stack([expected[0, 0], torch.tensor(0.0)])[None],
    )


def test_lm_cross_entropy_loss_half_precision_computes_in_float32() -> None:
    logits = torch.randn(2, 6, 50, generator=torch.Generator().manual_seed(0)) * 8
    tokens = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(1))
    exact = lm_cross_entropy_loss(logits, tokens, per_token=True)
    for dtype in (torch.bfloat16, torch.float16):
        rounded = logits.to(dtype)
        loss = lm_cross_entropy_loss(rounded, tokens, per_token=True)
        assert loss.dtype == torch.float32
        # only the rounding of the logits themselves remains (no bf16 log_softmax on top)
        torch.testing.assert_close(
            loss, lm_cross_entropy_loss(rounded.float(), tokens, per_token=True)
        )
        assert (loss - exact).abs().max() < 0.1


def test_lm_cross_entropy_loss_needs_a_prediction() -> None:
    with pytest.raises(ValueError, match="at least 2 positions per sequence, got 1"):
        lm_cross_entropy_loss(torch.zeros(2, 1, 5), torch.zeros(2, 1, dtype=torch.long))


def test_to_numpy() -> None:
    t = torch.arange(6.0, requires_grad=True).reshape(2, 3)
    assert to_numpy(t).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert to_numpy([1, 2]).tolist() == [1, 2]
    assert to_numpy(3.5).item() == 3.5


# -- ActivationCache ------------------------------------------------------------------------------
@pytest.fixture
def run(tiny_llama: TinyModel, tokens) -> tuple[HookedTransformer, torch.Tensor, ActivationCache]:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    logits, cache = model.run_with_cache(tokens)
    return model, logits, cache


def test_cache_indexing(run) -> None:
    model, _, cache = run
    assert isinstance(cache, ActivationCache)
    n = model.cfg.n_layers
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["attn", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_pre", -1] is cache[f"blocks.{n - 1}.hook_resid_pre"]
    assert cache["resid_post", -2] is cache["blocks.0.hook_resid_post"]
    assert cache["scale", 0, "ln1"] is cache["blocks.0.ln1.hook_scale"]
    assert cache["scale", -1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["k1"] is cache["blocks.1.attn.hook_k"]
    assert cache["scale1ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["pattern", 0].shape == (2, 4, 12, 12)
    assert cache["k", 0].shape == (2, 12, 2, 16)
    assert len(cache) == len(cache.keys()) == len(list(cache))
    assert set(cache) == set(cache.keys())


def test_cache_contains(run) -> None:
    _, _, cache = run
    assert ("pattern", 0) in cache
    assert ("resid_post", -1) in cache
    assert "blocks.0.attn.hook_pattern" in cache
    assert "k0" in cache
    assert ("pattern", 2) not in cache
    assert "blocks.0.attn.hook_result" not in cache  # use_attn_result is off
    assert "nonsense" not in cache
    assert 3 not in cache


def test_cache_missing_key_names_close_keys(tiny_llama: TinyModel, tokens) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(
        KeyError,
        match=r"'blocks\.0\.attn\.hook_patern' is not in this cache \(2 activations\)\. "
        r"Close names in this cache: blocks\.0\.attn\.hook_pattern.*names_filter",
    ):
        cache["blocks.0.attn.hook_patern"]
    with pytest.raises(
        KeyError, match=r"'blocks\.0\.attn\.hook_z' is not in this cache.*names_filter"
    ):
        cache["z", 0]


def test_cache_remove_batch_dim_and_to(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    single = torch.tensor([[5, 6, 7, 8]])
    _, cache = model.run_with_cache(single)
    resid = cache["resid_pre", 1].clone()
    assert cache.remove_batch_dim() is cache
    assert cache.has_batch_dim is False
    assert torch.equal(cache["resid_pre", 1], resid[0])
    assert cache.remove_batch_dim()["resid_pre", 1].shape == (4, 64)  # idempotent
    assert cache.to("cpu")["resid_pre", 1].device.type == "cpu"
    _, batched = model.run_with_cache(torch.tensor([[5, 6], [7, 8]]))
    with pytest.raises(
        ValueError, match=r"remove_batch_dim needs batch size 1, but hook_embed has .*\(2, 2, 64\)"
    ):
        batched.remove_batch_dim()


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama", "tiny_neox"])
def test_accumulated_resid_logit_lens(request: pytest.FixtureRequest, fixture: str, tokens) -> None:
    tiny: TinyModel = request.getfixturevalue(fixture)
    model = HookedTransformer.from_pretrained(tiny.path)  # processed: ln_final has no weights
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    assert labels == [f"{i}_pre" for i in range(n)] + ["final_post"]
    assert resid.shape == (n + 1, 2, 12, model.cfg.d_model)
    final = cache["resid_post", -1]
    with torch.no_grad():
        torch.testing.assert_close(resid[-1], model.ln_final(final), atol=0, rtol=0)
    torch.testing.assert_close(resid[-1], cache["ln_final.hook_normalized"], atol=1e-6, rtol=0)
    torch.testing.assert_close(resid[-1] @ model.W_U, logits - model.b_U, atol=1e-5, rtol=0)
    # earlier entries are each normalised with their own scale (the logit lens)
    x = cache["resid_pre", 1]
    if model.cfg.normalization_type == "LNPre":
        x = x - x.mean(-1, keepdim=True)
    expected = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    torch.testing.assert_close(resid[1], expected, atol=1e-6, rtol=0)


def test_accumulated_resid_options(run) -> None:
    model, _, cache = run
    raw, labels = cache.accumulated_resid(return_labels=True)
    for i in range(model.cfg.n_layers):
        assert torch.equal(raw[i], cache["resid_pre", i])
    assert torch.equal(raw[-1], cache["resid_post", -1])
    with_mid, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert torch.equal(with_mid[1], cache["resid_mid", 0])
    # as in TransformerLens, `layer` is inclusive: the residual entering that layer is the last
    upto, labels = cache.accumulated_resid(layer=1, return_labels=True)
    assert labels == ["0_pre", "1_pre"] and upto.shape == (2, 2, 12, 64)
    assert torch.equal(upto, raw[:2])
    last_pos = cache.accumulated_resid(pos_slice=slice(-1, None))
    assert torch.equal(last_pos, raw[..., -1:, :])
    assert torch.equal(cache.accumulated_resid(pos_slice=-1), raw[..., -1, :])


def test_stack_activation(run) -> None:
    _, _, cache = run
    stacked = cache.stack_activation("pattern")
    assert stacked.shape == (2, 2, 4, 12, 12)
    assert torch.equal(stacked[1], cache["pattern", 1])
    assert cache.stack_activation("scale", sublayer_type="ln1").shape == (2, 2, 12, 1)
