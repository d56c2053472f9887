"""lmscope.sae.train: top-k and L1 SAEs recover a known sparse dictionary, train from a harvest
folder (BOS position left out, metadata from the manifest), resample dead features and give them
ghost gradients, and refuse what they cannot train on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lmscope
from lmscope import SAE, HookedTransformer, HookedTransformerConfig
from lmscope.sae import Activations, SAETrainConfig, evaluate, train
from lmscope.sae.training import _forward, _ghost_loss, _resample

D_IN, N_TRUE = 32, 96


def sparse_data(n: int, seed: int) -> torch.Tensor:
    """Sums of 3 of 96 fixed unit directions with random positive weights, plus an offset."""
    dictionary = torch.randn(N_TRUE, D_IN, generator=torch.Generator().manual_seed(0))
    dictionary /= dictionary.norm(dim=-1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, N_TRUE, (n, 3), generator=gen)
    weights = torch.rand(n, 3, generator=gen) * 2 + 0.5
    return torch.einsum("nk,nkd->nd", weights, dictionary[idx]) + 0.3


def _cfg(**kw: object) -> SAETrainConfig:
    base = dict(d_sae=192, k=3, batch_size=512, lr=3e-3, training_tokens=300 * 512, verbose=False)
    return SAETrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_topk_and_l1_saes_explain_held_out_sparse_data(tmp_path: Path) -> None:
    data, held_out = sparse_data(40_000, 1), sparse_data(5_000, 2)
    topk = train(data, _cfg(), metadata={"hook_name": "x"}, save_path=str(tmp_path / "topk"))
    scores = evaluate(topk, held_out)
    assert scores["explained_variance"] > 0.85 and scores["l0"] <= 3
    assert topk.cfg.normalize_activations == "none"  # the input scaling is folded in
    back = SAE.load_from_disk(tmp_path / "topk")
    torch.testing.assert_close(back.encode(held_out[:10]), topk.encode(held_out[:10]))
    l1 = train(data, _cfg(arch="standard", l1_coefficient=1.0, training_tokens=600 * 512))
    scores = evaluate(l1, held_out)
    assert scores["explained_variance"] > 0.8 and scores["l0"] < 20  # 3 true features a token


def test_trains_from_a_harvest_without_the_bos_position(tmp_path: Path) -> None:
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=D_IN, n_ctx=16, d_head=8, n_heads=4, d_vocab=60
    )
    model = HookedTransformer(cfg)
    tokens = torch.randint(0, 60, (64, 16), generator=torch.Generator().manual_seed(0))
    hook = "blocks.0.hook_resid_post"
    h = lmscope.harvest(model, tokens, hooks=[hook], out=tmp_path / "h", seq_len=16, verbose=False)
    acts = Activations(h, hook)
    assert len(acts) == 64 * 15 and acts.d_in == D_IN
    sae = train(h, _cfg(d_sae=64, k=4, training_tokens=20 * 512), hook=hook)
    assert sae.cfg.metadata.hook_name == hook and sae.cfg.metadata.context_size == 16
    assert sae.cfg.metadata.model_name == model.cfg.model_name
    assert evaluate(sae, h, hook=hook)["n_tokens"] == 64 * 15
    with pytest.raises(ValueError, match="name the harvested hook"):
        train(h, _cfg())


def test_resampling_reinitialises_dead_features_from_badly_explained_inputs() -> None:
    sae = train(sparse_data(2048, 1), _cfg(training_tokens=512))
    optimizer = torch.optim.Adam([sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec])
    x = sparse_data(512, 3)
    recon, *_ = _forward(sae, x, _cfg())
    recon.pow(2).sum().backward()
    optimizer.step()
    dead = torch.zeros(192, dtype=torch.bool)
    dead[:10] = True
    kept = sae.W_dec[10:].detach().clone()
    assert _resample(sae, optimizer, x, recon.detach(), dead) == 10
    rows = sae.W_dec[:10].detach()
    torch.testing.assert_close(rows.norm(dim=-1), torch.ones(10))
    inputs = (x - sae.b_dec).detach()
    inputs = inputs / inputs.norm(dim=-1, keepdim=True)
    assert (rows @ inputs.T).max(dim=-1).values.min() > 0.999  # each row is an input's direction
    torch.testing.assert_close(sae.W_dec[10:], kept)
    assert float(optimizer.state[sae.W_dec]["exp_avg"][:10].abs().sum()) == 0


def test_ghost_grads_reach_dead_features() -> None:
    """Features that never make the top k get no gradient from the reconstruction; ghost
    gradients (their exp'd pre-activations explaining the residual) train them."""
    data, cfg = sparse_data(512, 1), _cfg(d_sae=64, k=2)
    sae = train(sparse_data(4096, 1), _cfg(d_sae=64, k=2, training_tokens=512))
    with torch.no_grad():
        sae.b_enc[:8] += 100.0  # features 0..7 always win: 8.. are dead
    recon, pre, fired, _ = _forward(sae, data, cfg)
    assert not fired[8:].any()
    mse = (recon - data).pow(2).sum(-1).mean()
    mse.backward(retain_graph=True)
    assert float(sae.W_enc.grad[:, 8:].abs().sum()) == 0
    sae.zero_grad()
    _ghost_loss(sae, data, recon, pre, ~fired, mse).backward()
    assert float(sae.W_enc.grad[:, 8:].abs().sum()) > 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="trains \\('topk', 'standard'\\) SAEs, not 'gated'"):
        SAETrainConfig(d_sae=8, arch="gated")
    with pytest.raises(ValueError, match=r"float tensor \[n, d_in\]"):
        train(torch.zeros(10, dtype=torch.long), _cfg())
    with pytest.raises(TypeError, match="train on a harvest"):
        train([1.0, 2.0], _cfg())
