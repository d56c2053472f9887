"""HookedSAETransformer: SAEs spliced at a hook with SAELens's API and semantics, the error term,
hooks on SAE features, feature attribution with lmscope's attribution tools, clear errors."""

from __future__ import annotations

import pytest
import torch
from test_sae import make_sae

from lmscope import HookedSAETransformer, HookedTransformerConfig
from lmscope.analysis.attribution import corrupted_activations_and_grads
from tests._tiny import TinyModel

CFG = dict(n_layers=2, d_model=16, n_ctx=12, d_head=4, n_heads=4, d_vocab=40, act_fn="gelu", seed=0)
HOOK = "blocks.0.hook_resid_post"
SAE_HOOKS = ["hook_sae_acts_post", "hook_sae_acts_pre", "hook_sae_input", "hook_sae_output"]
SAE_HOOKS.append("hook_sae_recons")


@pytest.fixture
def model() -> HookedSAETransformer:
    return HookedSAETransformer(HookedTransformerConfig(**CFG))


TOKENS = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(2))


def _sae(hook: str = HOOK, **kw: object):
    sae = make_sae("topk", k=4, **kw)
    sae.cfg.metadata = type(sae.cfg.metadata)(hook_name=hook, model_name="tiny")
    return sae


def test_splice_replaces_the_activation_by_the_reconstruction(model: HookedSAETransformer) -> None:
    sae = _sae()
    _, clean = model.run_with_cache(TOKENS, names_filter=HOOK)
    recon = sae.decode(sae.encode(clean[HOOK]))
    replaced = model.run_with_hooks(TOKENS, fwd_hooks=[(HOOK, lambda x, hook: recon)])
    torch.testing.assert_close(model.run_with_saes(TOKENS, saes=[sae]), replaced, atol=1e-6, rtol=0)
    logits, cache = model.run_with_cache_with_saes(TOKENS, saes=[sae])
    assert sorted(k for k in cache.keys() if ".hook_sae_" in k) == [
        f"{HOOK}.{h}" for h in sorted(SAE_HOOKS)
    ]
    assert HOOK not in cache.keys()  # the SAE stands there (SAELens's semantics)
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_input"], clean[HOOK])
    torch.testing.assert_close(cache[f"{HOOK}.hook_sae_acts_post"], sae.encode(clean[HOOK]))
    assert model.acts_to_saes == {} and HOOK in model.hook_dict  # reset after the call


def test_error_term_leaves_the_output_yet_feature_edits_and_gradients_pass(
    model: HookedSAETransformer,
) -> None:
    base = model(TOKENS)
    sae = _sae()
    model.add_sae(sae, use_error_term=True)
    torch.testing.assert_close(model(TOKENS), base, atol=1e-5, rtol=0)
    ablate = [(f"{HOOK}.hook_sae_acts_post", lambda a, hook: a * 0)]
    assert (model.run_with_hooks(TOKENS, fwd_hooks=ablate) - base).abs().max() > 1e-3
    _, cache = model.run_with_cache(TOKENS, names_filter=lambda n: "hook_sae_error" in n)
    assert list(cache.keys()) == [f"{HOOK}.hook_sae_error"]
    model.reset_saes()
    assert model.acts_to_saes == {} and HOOK in model.hook_dict
    torch.testing.assert_close(model(TOKENS), base, atol=0, rtol=0)


def test_feature_attribution_matches_exact_feature_patching(model: HookedSAETransformer) -> None:
    """attribution patching through the SAE (lmscope.analysis.attribution) estimates the effect
    of patching each feature's clean activation into the corrupted run."""
    sae = _sae(HOOK)
    clean, corrupted = TOKENS[:1], TOKENS[1:]
    answer = 7

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, answer]

    model.add_sae(sae, use_error_term=True)
    name = f"{HOOK}.hook_sae_acts_post"
    _, clean_cache = model.run_with_cache(clean, names_filter=name)
    acts, grads, base = corrupted_activations_and_grads(model, corrupted, metric, [name])
    delta = clean_cache[name] - acts[name]  # [1, pos, d_sae]
    estimate = (delta * grads[name]).sum(dim=(0, 1))
    exact = torch.zeros(sae.cfg.d_sae)
    for f in range(sae.cfg.d_sae):

        def patch(a: torch.Tensor, hook: object, f: int = f) -> torch.Tensor:
            a[..., f] = clean_cache[name][..., f]
            return a

        with torch.no_grad():
            exact[f] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])) - base
    moved = delta.abs().sum(dim=(0, 1)) > 0
    assert moved.sum() >= 4
    assert torch.corrcoef(torch.stack([estimate[moved], exact[moved]]))[0, 1] > 0.95


def test_saes_context_restores_what_was_attached(model: HookedSAETransformer) -> None:
    first, second = _sae(seed=1), _sae(seed=2)
    model.add_sae(first)
    with model.saes(saes=[second]):
        assert model.acts_to_saes[HOOK] is second
    assert model.acts_to_saes[HOOK] is first
    model.add_sae(second)  # replaces
    assert model.acts_to_saes == {HOOK: second}
    other = _sae("blocks.1.hook_resid_pre")
    model.add_sae(other)
    model.reset_saes(HOOK)
    assert model.acts_to_saes == {"blocks.1.hook_resid_pre": other}
    assert first.hook_sae_input.name == "hook_sae_input"  # its own names again once removed


def test_from_pretrained_gives_a_hooked_sae_transformer(tiny_gpt2: TinyModel) -> None:
    model = HookedSAETransformer.from_pretrained_no_processing(tiny_gpt2.path)
    assert isinstance(model, HookedSAETransformer)
    sae = make_sae("standard", d_in=model.cfg.d_model)
    sae.cfg.metadata = type(sae.cfg.metadata)(hook_name="blocks.1.hook_resid_pre")
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 6))
    torch.testing.assert_close(
        model.run_with_saes(tokens, saes=[sae], use_error_term=True),
        model(tokens),
        atol=1e-5,
        rtol=0,
    )


def test_an_sae_for_another_model_or_hook_is_refused(model: HookedSAETransformer) -> None:
    with pytest.raises(
        ValueError, match=r"'blocks.0.hook_resid_pots' is not a hook point.*Did you mean"
    ):
        model.add_sae(_sae("blocks.0.hook_resid_pots"))
    wide = make_sae("standard", d_in=32)
    wide.cfg.metadata = type(wide.cfg.metadata)(hook_name=HOOK, model_name="gpt2")
    with pytest.raises(
        ValueError, match=r"d_in=32 values, but blocks.0.hook_resid_post carries 16.*gpt2"
    ):
        model.add_sae(wide)
    nameless = make_sae("standard")
    nameless.cfg.metadata = type(nameless.cfg.metadata)()
    with pytest.raises(ValueError, match="names no hook"):
        model.run_with_saes(TOKENS, saes=[nameless])
    odd = make_sae("standard", d_in=16)
    odd.cfg.metadata = type(odd.cfg.metadata)(hook_name="blocks.0.attn.hook_pattern")
    with pytest.raises(ValueError, match="d_in=16, but the activation has 9"):
        model.run_with_saes(TOKENS, saes=[odd])
    assert model.acts_to_saes == {} and "blocks.0.attn.hook_pattern" in model.hook_dict
