"""lmscope.train: TransformerLens's train() and HookedTransformerTrainConfig, safetensors + JSON
checkpoints that from_pretrained loads, and resumption that ends where the uninterrupted run ends."""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest
import torch

import lmscope
from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.errors import CheckpointError
from lmscope.train import HookedTransformerTrainConfig, epoch_order, train
from tests._unchecked import unchecked

CFG = dict(n_layers=2, d_model=32, n_ctx=16, d_head=8, n_heads=4, d_vocab=50, act_fn="gelu", seed=0)
# TransformerLens 3.9's HookedTransformerTrainConfig fields and defaults (transformer_lens/train.py)
TL_FIELDS = {
    "num_epochs": dataclasses.MISSING,
    "batch_size": dataclasses.MISSING,
    "lr": 1e-3,
    "seed": 0,
    "momentum": 0.0,
    "max_grad_norm": None,
    "weight_decay": None,
    "optimizer_name": "Adam",
    "device": None,
    "warmup_steps": 0,
    "save_every": None,
    "save_dir": None,
    "wandb": False,
    "wandb_project_name": None,
    "print_every": 50,
    "max_steps": None,
}


def _model(**overrides: object) -> HookedTransformer:
    return HookedTransformer(HookedTransformerConfig(**{**CFG, **overrides}))


def _data(n: int = 40) -> torch.Tensor:
    return torch.randint(0, 50, (n, 16), generator=torch.Generator().manual_seed(3))


def _config(tmp_path: Path, **kw: object) -> HookedTransformerTrainConfig:
    base = dict(num_epochs=2, batch_size=8, print_every=None, device="cpu", verbose=False)
    return HookedTransformerTrainConfig(**{**base, "save_dir": str(tmp_path), **kw})


def test_config_has_transformer_lens_fields_and_defaults() -> None:
    ours = {f.name: f.default for f in dataclasses.fields(HookedTransformerTrainConfig)}
    assert {k: ours[k] for k in TL_FIELDS} == TL_FIELDS
    assert set(ours) - set(TL_FIELDS) == {"verbose"}


def test_module_is_callable_and_has_transformer_lens_path() -> None:
    import lmscope.train as module

    assert module is lmscope.train and callable(lmscope.train)
    assert (
        module.train is train
        and module.HookedTransformerTrainConfig is HookedTransformerTrainConfig
    )


def test_training_lowers_the_loss_and_returns_the_model(tmp_path: Path) -> None:
    model, data = _model(), _data()
    before = float(model(data, return_type="loss").detach())
    out = lmscope.train(model, _config(tmp_path, num_epochs=5, lr=1e-2, save_dir=None), data)
    assert out is model
    assert float(model(data, return_type="loss").detach()) < before - 0.5


def test_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path: Path) -> None:
    """AdamW with weight decay, warmup and clipping: weights and optimizer state round-trip
    exactly through safetensors + JSON, and each epoch's data order depends on seed and epoch."""
    kw = dict(save_every=3, warmup_steps=4, weight_decay=0.01, max_grad_norm=0.5, lr=3e-3)
    straight = train(_model(), _config(tmp_path / "a", **kw), _data())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "step_10",
        "step_3",
        "step_6",
        "step_9",
    ]  # 5 batches (the last short) per epoch, 2 epochs; the end is saved too
    step = tmp_path / "a" / "step_6"  # mid-epoch 2
    assert sorted(p.name for p in step.iterdir()) == [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "training_state.json",
    ]
    state = json.loads((step / "training_state.json").read_text())
    assert state["progress"] == {"step": 6, "epoch": 2, "batch_in_epoch": 1, "samples": 48}
    resumed = train(_model(seed=5), _config(tmp_path / "b", **kw), _data(), resume_from=step)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_checkpoint_loads_with_from_pretrained(tmp_path: Path) -> None:
    model = train(_model(), _config(tmp_path, num_epochs=1), _data())
    tokens = _data(3)
    loaded = HookedTransformer.from_pretrained_no_processing(tmp_path / "step_5", verbose=False)
    torch.testing.assert_close(loaded(tokens), model(tokens), atol=0, rtol=0)
    processed = HookedTransformer.from_pretrained(str(tmp_path / "step_5"), verbose=False)
    torch.testing.assert_close(
        processed(tokens).log_softmax(-1), model(tokens).log_softmax(-1), atol=1e-5, rtol=0
    )


def test_a_checkpoint_whose_config_is_not_its_weights_is_refused(tmp_path: Path) -> None:
    train(_model(), _config(tmp_path, num_epochs=1), _data())
    step = tmp_path / "step_5"
    config = json.loads((step / "config.json").read_text())
    config["hooked_transformer_config"]["d_model"] = 64
    (step / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"embed.W_E: the checkpoint gives shape \(50, 32\), the model expects \(50, 64\)",
    ):
        HookedTransformer.from_pretrained_no_processing(step, verbose=False)
    config["hooked_transformer_config"] = {**config["hooked_transformer_config"], "d_modl": 32}
    (step / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"\['d_modl'\] are unknown"):
        HookedTransformer.from_pretrained_no_processing(step, verbose=False)


def test_warmup_starts_at_zero_as_transformer_lens(tmp_path: Path) -> None:
    """TransformerLens's LambdaLR gives the first step lr * 0 / warmup_steps = 0."""
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(
        model, _config(tmp_path, num_epochs=1, max_steps=1, warmup_steps=10, save_dir=None), _data()
    )
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, before[name], atol=0, rtol=0, msg=name)


def test_max_steps_caps_each_epoch_and_items_may_be_dicts(tmp_path: Path) -> None:
    rows = [{"tokens": t} for t in _data()]  # TransformerLens's dataset items
    train(
        _model(),
        _config(tmp_path, num_epochs=3, max_steps=2, optimizer_name="SGD", momentum=0.9),
        rows,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["step_6"]
    assert epoch_order(40, 0, 1).tolist() != epoch_order(40, 0, 2).tolist()


def test_resume_refuses_another_architecture_or_other_settings(tmp_path: Path) -> None:
    train(_model(), _config(tmp_path, num_epochs=1), _data())
    step = tmp_path / "step_5"
    with pytest.raises(CheckpointError, match=r"another architecture.*n_layers: 2 there, 3 here"):
        train(_model(n_layers=3), _config(tmp_path / "x"), _data(), resume_from=step)
    with pytest.raises(ValueError, match="batch_size=8 there, 4 here"):
        train(_model(), _config(tmp_path / "x", batch_size=4), _data(), resume_from=step)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(_model(), _config(tmp_path / "x"), _data(), resume_from=tmp_path)


def test_bad_settings_and_data_are_refused(tmp_path: Path) -> None:
    with unchecked(), pytest.raises(ValueError, match="Optimizer Lion not supported"):
        HookedTransformerTrainConfig(num_epochs=1, batch_size=2, optimizer_name="Lion")
    with unchecked(), pytest.raises(ValueError, match="save_every needs save_dir"):
        HookedTransformerTrainConfig(num_epochs=1, batch_size=2, save_every=10)
    with unchecked(), pytest.raises(KeyError, match="no 'tokens'"):
        train(_model(), _config(tmp_path), [{"ids": t} for t in _data()])
    with unchecked(), pytest.raises(ValueError, match="integer ids"):
        train(_model(), _config(tmp_path), torch.rand(4, 16))


def test_wandb_is_used_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb is not a dependency: it is imported by name only with wandb=True (here a stand-in
    module records the calls; without wandb installed, wandb=True says how to get it)."""
    calls: list[tuple[str, dict]] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw))  # type: ignore[attr-defined]
    fake.log = lambda values: calls.append(("log", values))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    train(_model(), _config(tmp_path, num_epochs=1, save_dir=None), _data(16))
    assert calls == []
    train(_model(), _config(tmp_path, num_epochs=1, save_dir=None, wandb=True), _data(16))
    assert calls[0][0] == "init" and calls[0][1]["project"] == "easy-transformer"
    assert [c[1]["samples"] for c in calls[1:]] == [8, 16]
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        train(_model(), _config(tmp_path, num_epochs=1, wandb=True), _data(16))
