"""lmscope.SAE: each architecture computes SAELens's formulas, round-trips SAELens's on-disk
format, and refuses files that do not describe it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmscope import SAE
from lmscope.sae import SAEConfig


def make_sae(arch: str, d_in: int = 16, d_sae: int = 40, seed: int = 0, **extra: object) -> SAE:
    """An SAE of `arch` with random weights and biases (positive thresholds for JumpReLU)."""
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, arch=arch, metadata={"hook_name": "h"}, **extra)  # type: ignore[arg-type]
    sae = SAE(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.4 if name.startswith("W") else 0.2))
        if arch == "jumprelu":
            sae.threshold.abs_()
    return sae


X = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))


def test_standard_topk_jumprelu_gated_formulas() -> None:
    s = make_sae("standard")
    pre = (X - s.b_dec) @ s.W_enc + s.b_enc
    torch.testing.assert_close(s.encode(X), pre.relu())
    torch.testing.assert_close(s.decode(s.encode(X)), pre.relu() @ s.W_dec + s.b_dec)

    t = make_sae("topk", k=5)
    acts = t.encode(X)
    assert int((acts != 0).sum(-1).max()) <= 5
    pre = (X - t.b_dec) @ t.W_enc + t.b_enc
    kept = pre.topk(5, dim=-1).values.relu()
    torch.testing.assert_close(
        acts.sort(-1, descending=True).values[..., :5], kept.sort(-1, descending=True).values
    )

    j = make_sae("jumprelu")
    pre = (X - j.b_dec) @ j.W_enc + j.b_enc
    torch.testing.assert_close(j.encode(X), pre.relu() * (pre > j.threshold))

    g = make_sae("gated")
    x = X - g.b_dec
    gate = (x @ g.W_enc + g.b_gate) > 0
    mag = (x @ (g.W_enc * g.r_mag.exp()) + g.b_mag).relu()
    torch.testing.assert_close(g.encode(X), gate * mag)
    assert not hasattr(g, "b_enc")


def test_hooks_see_and_edit_each_stage() -> None:
    sae = make_sae("standard")
    _, cache = sae.run_with_cache(X)
    assert sorted(cache) == [
        "hook_sae_acts_post",
        "hook_sae_acts_pre",
        "hook_sae_input",
        "hook_sae_output",
        "hook_sae_recons",
    ]
    torch.testing.assert_close(cache["hook_sae_acts_post"], sae.encode(X))
    out = sae.run_with_hooks(X, fwd_hooks=[("hook_sae_acts_post", lambda acts, hook: acts * 0)])
    torch.testing.assert_close(out, sae.b_dec.expand_as(out))


def test_error_term_gives_back_the_input_yet_feature_edits_show() -> None:
    sae = make_sae("topk", k=4)
    sae.use_error_term = True
    torch.testing.assert_close(sae(X), X, atol=1e-6, rtol=0)
    ablated = sae.run_with_hooks(X, fwd_hooks=[("hook_sae_acts_post", lambda a, hook: a * 0)])
    recon = sae.decode(sae.encode(X))
    torch.testing.assert_close(ablated, X - (recon - sae.b_dec), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "gated"])
def test_save_and_load_round_trip_in_saelens_format(arch: str, tmp_path: Path) -> None:
    sae = make_sae(arch, **({"k": 6} if arch == "topk" else {}))
    weights, cfg = sae.save_model(tmp_path)
    assert (weights.name, cfg.name) == ("sae_weights.safetensors", "cfg.json")
    d = json.loads(cfg.read_text())
    assert d["architecture"] == arch and d["metadata"]["hook_name"] == "h"
    assert d["metadata"]["sae_lens_version"].startswith("6")
    assert sorted(load_file(weights)) == sorted(n for n, _ in sae.named_parameters())
    back = SAE.load_from_disk(tmp_path)
    torch.testing.assert_close(back.encode(X), sae.encode(X), atol=0, rtol=0)
    assert back.cfg.to_dict() == sae.cfg.to_dict()


def test_fold_decoder_norms_keeps_the_reconstruction() -> None:
    for arch in ("standard", "jumprelu", "gated"):
        sae = make_sae(arch)
        before = sae.decode(sae.encode(X))
        sae.fold_W_dec_norm()
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(40))
        torch.testing.assert_close(sae.decode(sae.encode(X)), before, atol=1e-5, rtol=1e-5)
    with pytest.raises(NotImplementedError, match="rescale_acts_by_decoder_norm"):
        make_sae("topk", k=3).fold_W_dec_norm()


def test_reads_pre_6_saelens_configs(tmp_path: Path) -> None:
    """SAELens before 6.0 kept the metadata at the top level (hook_point) and top-k as an
    activation function."""
    sae = make_sae("topk", k=5)
    save_file(
        {k: v.detach() for k, v in sae.state_dict().items()}, tmp_path / "sae_weights.safetensors"
    )
    old = {
        "d_in": 16, "d_sae": 40, "dtype": "float32", "device": "cpu", "hook_point": "blocks.3.hook_resid_pre",
        "model_name": "gpt2", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5},
        "normalize_activations": False, "apply_b_dec_to_input": True, "sae_lens_training_version": "3.5.0",
    }  # fmt: skip
    (tmp_path / "cfg.json").write_text(json.dumps(old))
    back = SAE.load_from_disk(tmp_path)
    assert back.cfg.arch == "topk" and back.cfg.k == 5
    assert back.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"
    assert back.cfg.metadata.model_name == "gpt2" and back.cfg.normalize_activations == "none"
    torch.testing.assert_close(back.encode(X), sae.encode(X))


def test_bad_files_and_configs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"lacks \['cfg.json', 'sae_weights.safetensors'\]"):
        SAE.load_from_disk(tmp_path)
    make_sae("standard").save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_in": 32}))
    with pytest.raises(ValueError, match="the weights do not belong to cfg.json"):
        SAE.load_from_disk(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matching_pursuit"}))
    with pytest.raises(ValueError, match="'matching_pursuit' is not supported"):
        SAE.load_from_disk(tmp_path)
    with pytest.raises(ValueError, match="d_in=16, but the activation has 8"):
        make_sae("standard").encode(torch.randn(2, 8))
    with pytest.raises(ValueError, match="1 <= k <= d_sae=40"):
        SAEConfig(d_in=16, d_sae=40, arch="topk", k=50)
