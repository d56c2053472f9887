"""Caching a subset of activations (names_filter, stop_at_layer) gives the same bits as the same
activation in a full run_with_cache: which points are hooked never changes a computed value (the
fused norm and SDPA outputs go on; the hooks see step-by-step values computed on the side)."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer
from tests._tiny import TinyModel

FAMILIES = ["tiny_gpt2", "tiny_llama", "tiny_neox"]  # LN + learned pos; RMS + GQA; parallel


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))


def _load(request: pytest.FixtureRequest, fixture: str, processed: bool) -> HookedTransformer:
    tiny: TinyModel = request.getfixturevalue(fixture)
    if processed:
        return HookedTransformer.from_pretrained(tiny.path)
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


def _assert_subsets_equal_full(model: HookedTransformer, tokens: torch.Tensor, **kwargs) -> int:
    _, full = model.run_with_cache(tokens, **kwargs)
    for name in full.keys():
        _, one = model.run_with_cache(tokens, names_filter=name, **kwargs)
        assert torch.equal(one[name], full[name]), name
    return len(full.keys())


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "no_processing"])
@pytest.mark.parametrize("fixture", FAMILIES)
def test_each_activation_alone_equals_the_full_cache(
    request: pytest.FixtureRequest, fixture: str, processed: bool, tokens: torch.Tensor
) -> None:
    model = _load(request, fixture, processed)
    n = _assert_subsets_equal_full(model, tokens)
    assert n == len(model.hook_dict) - 6 * model.cfg.n_layers  # all but the flag-gated points
    # and under autograd (parameters require grad): still the same bits, no_grad or not
    with torch.no_grad():
        _, plain = model.run_with_cache(tokens)
    _, graded = model.run_with_cache(tokens, names_filter=lambda name: "pattern" in name)
    assert all(torch.equal(graded[k], plain[k]) for k in graded.keys())


@pytest.mark.parametrize("fixture", FAMILIES)
def test_stop_at_layer_and_every_flag(
    request: pytest.FixtureRequest, fixture: str, tokens: torch.Tensor
) -> None:
    model = _load(request, fixture, processed=False)
    _, full = model.run_with_cache(tokens)
    _, first = model.run_with_cache(tokens, stop_at_layer=1)
    assert first.keys() and all(k.startswith(("hook_", "blocks.0.")) for k in first.keys())
    for name in first.keys():
        assert torch.equal(first[name], full[name]), name
    _assert_subsets_equal_full(model, tokens, stop_at_layer=1)
    for setter in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"):
        getattr(model, setter)(True)
    assert _assert_subsets_equal_full(model, tokens) == len(model.hook_dict) - model.cfg.n_layers


def test_hooked_and_unhooked_logits_are_identical(
    request: pytest.FixtureRequest, tokens: torch.Tensor
) -> None:
    model = _load(request, "tiny_llama", processed=True)
    plain = model(tokens)
    cached, _ = model.run_with_cache(tokens)
    assert torch.equal(cached, plain)


def test_edits_still_take_effect(request: pytest.FixtureRequest, tokens: torch.Tensor) -> None:
    """A hook that edits scores, pattern or a norm's scale changes what follows (the step-by-step
    path runs then), in place or by returning a new tensor."""
    model = _load(request, "tiny_gpt2", processed=False)
    _, plain = model.run_with_cache(tokens)
    z = "blocks.0.attn.hook_z"

    def uniform(pattern: torch.Tensor, hook) -> torch.Tensor:
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    def zero_head_0(pattern: torch.Tensor, hook) -> None:
        pattern[:, 0] = 0.0

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)]):
        _, edited = model.run_with_cache(tokens, names_filter=[z, "blocks.0.hook_resid_pre"])
    v = plain["blocks.0.attn.hook_v"]
    mean_v = v.cumsum(1) / torch.arange(1, v.shape[1] + 1)[None, :, None, None]
    torch.testing.assert_close(edited[z], mean_v, atol=1e-6, rtol=1e-5)
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", zero_head_0)]):
        _, zeroed = model.run_with_cache(tokens, names_filter=z)
    assert torch.equal(zeroed[z][:, :, 0], torch.zeros_like(zeroed[z][:, :, 0]))
    torch.testing.assert_close(zeroed[z][:, :, 1:], plain[z][:, :, 1:], atol=1e-6, rtol=1e-5)

    def double_scale(scale: torch.Tensor, hook) -> None:
        scale.mul_(2.0)

    with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_scale", double_scale)]):
        _, halved = model.run_with_cache(tokens, names_filter="blocks.0.ln1.hook_normalized")
    ln = model.blocks[0].ln1
    expected = (plain["blocks.0.ln1.hook_normalized"] - ln.b) / 2 + ln.b
    torch.testing.assert_close(
        halved["blocks.0.ln1.hook_normalized"], expected, atol=1e-6, rtol=1e-5
    )


def test_gradients_reach_hooked_intermediates(
    request: pytest.FixtureRequest, tokens: torch.Tensor
) -> None:
    """The output carries the fused numbers but gradients flow through the hooked pattern and
    scale: autograd.grad on a stored pattern equals a backward hook's gradient, and the
    parameters' gradients match the unhooked run's."""
    model = _load(request, "tiny_llama", processed=False)
    names = ["blocks.1.attn.hook_pattern", "blocks.0.ln2.hook_scale"]
    stored: dict[str, torch.Tensor] = {}
    loss = model.run_with_hooks(
        tokens,
        return_type="loss",
        fwd_hooks=[(n, lambda x, hook: stored.__setitem__(hook.name, x)) for n in names],
    )
    by_autograd = torch.autograd.grad(loss, [stored[n] for n in names])
    _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=names)
    for name, grad in zip(names, by_autograd, strict=True):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(cache[name + "_grad"], grad, atol=1e-7, rtol=1e-6)
    hooked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model(tokens, return_type="loss").backward()
    for n, p in model.named_parameters():
        if n in hooked:
            torch.testing.assert_close(hooked[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)


@pytest.mark.parametrize("processed", [True, False], ids=["processed", "no_processing"])
@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_inference_mode_subsets_logits_and_edits(
    request: pytest.FixtureRequest, fixture: str, processed: bool, tokens: torch.Tensor
) -> None:
    """Under inference_mode (no version counters on inference tensors) the hooked norms and
    attention take their values from the fused kernels: every subset still equals the full
    cache, the cached logits equal the forward's, and in-place edits still take effect."""
    model = _load(request, fixture, processed)
    with torch.inference_mode():
        n = _assert_subsets_equal_full(model, tokens)
        assert n == len(model.hook_dict) - 6 * model.cfg.n_layers
        cached, full = model.run_with_cache(tokens)
        assert torch.equal(cached, model(tokens))

        def zero_head_0(pattern: torch.Tensor, hook) -> None:
            pattern[:, 0] = 0.0

        def double_scale(scale: torch.Tensor, hook) -> None:
            scale.mul_(2.0)

        z = "blocks.0.attn.hook_z"
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", zero_head_0)]):
            _, zeroed = model.run_with_cache(tokens, names_filter=z)
        assert torch.equal(zeroed[z][:, :, 0], torch.zeros_like(zeroed[z][:, :, 0]))
        torch.testing.assert_close(zeroed[z][:, :, 1:], full[z][:, :, 1:], atol=1e-6, rtol=1e-5)
        with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_scale", double_scale)]):
            halved = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")[0]
        assert (halved - cached).abs().max() > 1e-3


def test_caching_under_autograd_keeps_the_forwards_graph(
    request: pytest.FixtureRequest, tokens: torch.Tensor
) -> None:
    """With caching hooks alone (they store detached values), a cached run under autograd takes
    the fused kernels' path: the same loss bits and the same parameter gradients as a plain
    forward, and no hooked intermediate records a graph of its own."""
    model = _load(request, "tiny_llama", processed=False)
    loss, cache = model.run_with_cache(tokens, return_type="loss")
    assert not any(t.requires_grad for t in cache.values())
    loss.backward()
    cached = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    plain = model(tokens, return_type="loss")
    plain.backward()
    assert torch.equal(loss, plain)
    for name, param in model.named_parameters():
        assert torch.equal(cached[name], param.grad), name
