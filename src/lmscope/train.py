"""Training a HookedTransformer on next-token prediction: TransformerLens's `train` and
`HookedTransformerTrainConfig`, with safe checkpoints and exact resumption.

`lmscope.train` is this module and is also callable: `lmscope.train(model, config, dataset)` calls
`lmscope.train.train` (TransformerLens's path `transformer_lens.train.train` works too).

What TransformerLens does, lmscope does: Adam (AdamW with weight decay) or SGD with momentum,
linear warmup from 0 over `warmup_steps`, gradient clipping, a shuffled pass over the dataset per
epoch (the last batch may be short), `max_steps` per epoch, printing every `print_every` steps,
wandb only when `wandb=True` (imported only then). Different, on purpose:
- checkpoints are directories (`save_dir/step_{n}`, every `save_every` optimizer steps and at the
  end) of safetensors + JSON, never pickles: `config.json` + `model.safetensors` (load with
  `HookedTransformer.from_pretrained(dir)`), `optimizer.safetensors` + `training_state.json`;
- `train(..., resume_from=dir)` continues a run from such a checkpoint (weights, optimizer state,
  position in the data) and ends where the uninterrupted run would: each epoch's order is drawn
  from `seed` and the epoch alone;
- `max_steps` stops an epoch after exactly `max_steps` steps (TransformerLens: one more);
- a progress bar shows on a terminal (`verbose=False`: none).

Example:
    >>> cfg = HookedTransformerTrainConfig(num_epochs=1, batch_size=32, lr=1e-3, save_dir="runs")
    >>> model = lmscope.train(model, cfg, tokens)          # tokens: [n_seqs, seq_len] ids
    >>> model = lmscope.train(model, cfg, tokens, resume_from="runs/step_100")
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Int
from safetensors.torch import load, load_file, save
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lmscope import compat
from lmscope.errors import CheckpointError
from lmscope.loading.families.lmscope_checkpoint import (
    WEIGHTS_FILE,
    config_to_json,
    is_lmscope_checkpoint,
    save_checkpoint,
)
from lmscope.progress import progress_bar
from lmscope.utils import get_device

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training_state.json"
OPTIMIZERS = ("Adam", "AdamW", "SGD")
# Settings a resumed run must share with the run it continues (they decide the data order and
# what the optimizer state means).
_SAME_ON_RESUME = ("batch_size", "seed", "optimizer_name", "momentum", "weight_decay")
# Config fields that do not change what the saved weights mean.
_NOT_ARCHITECTURE = (
    "model_name",
    "seed",
    "init_mode",
    "initializer_range",
    "tokenizer_name",
    "original_architecture",
    "default_prepend_bos",
    "default_padding_side",
)


@dataclass
class HookedTransformerTrainConfig:
    """Training hyperparameters (TransformerLens's fields and defaults, plus `verbose`).

    num_epochs, batch_size; lr; seed (weights are not re-drawn: it seeds the data order);
    momentum (SGD); max_grad_norm (clip the gradient norm); weight_decay (AdamW when set with
    Adam); optimizer_name ("Adam", "AdamW", "SGD"); device (default: the best available);
    warmup_steps (linear from 0); save_every (steps between checkpoints; needs save_dir);
    save_dir; wandb, wandb_project_name; print_every (print the loss every n steps; None: never);
    max_steps (steps per epoch at most); verbose (progress bar on a terminal).

    Example:
        >>> HookedTransformerTrainConfig(num_epochs=2, batch_size=16, lr=3e-4, warmup_steps=100)
    """

    num_epochs: int
    batch_size: int
    lr: float = 1e-3
    seed: int = 0
    momentum: float = 0.0
    max_grad_norm: float | None = None
    weight_decay: float | None = None
    optimizer_name: str = "Adam"
    device: str | torch.device | None = None
    warmup_steps: int = 0
    save_every: int | None = None
    save_dir: str | None = None
    wandb: bool = False
    wandb_project_name: str | None = None
    print_every: int | None = 50
    max_steps: int | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.optimizer_name not in OPTIMIZERS:
            raise ValueError(
                f"Optimizer {self.optimizer_name} not supported; choose one of {OPTIMIZERS}"
            )
        for name in ("num_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.save_every is not None and self.save_dir is None:
            raise ValueError("save_every needs save_dir (where the checkpoints go)")


class _TokenRows(Dataset):
    """A [n_seqs, seq_len] tensor of token ids as TransformerLens's dataset rows {"tokens": row}."""

    def __init__(self, tokens: Int[Tensor, "n_seqs seq_len"]) -> None:
        if tokens.ndim != 2 or tokens.is_floating_point():
            raise ValueError(
                f"a token tensor for training must be integer ids [n_seqs, seq_len], got "
                f"{tokens.dtype} of shape {tuple(tokens.shape)}"
            )
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"tokens": self.tokens[i]}


def _as_dataset(
    dataset: Dataset | Sequence[Mapping[str, Tensor]] | Tensor,
) -> Dataset | Sequence[Mapping[str, Tensor]]:
    if isinstance(dataset, Tensor):
        return _TokenRows(dataset)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            "train needs a map-style dataset (len and indexing) whose items are {'tokens': ids} "
            f"or a [n_seqs, seq_len] tensor of ids, got {type(dataset).__name__}"
        )
    return dataset


def _tokens_of(batch: Any) -> Tensor:
    if isinstance(batch, dict):
        if "tokens" not in batch:
            raise KeyError(
                f"dataset items have no 'tokens' (they have {sorted(batch)}); train reads "
                "item['tokens'], as TransformerLens does (tokenize_and_concatenate makes them)"
            )
        return batch["tokens"]
    if isinstance(batch, Tensor):
        return batch
    raise TypeError(f"dataset items must be dicts with 'tokens' or tensors, got {type(batch)}")


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the dataset's rows in `epoch` (1-based): a permutation drawn from `seed` and
    the epoch alone, so a resumed run sees the rows an uninterrupted one would.

    Example:
        >>> epoch_order(5, seed=0, epoch=1)
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def _make_optimizer(model: torch.nn.Module, config: HookedTransformerTrainConfig) -> Any:
    params = list(model.parameters())
    if config.optimizer_name in ("Adam", "AdamW"):
        if config.weight_decay is not None:  # Adam's weight decay is L2; AdamW decouples it
            return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        return torch.optim.Adam(params, lr=config.lr)
    return torch.optim.SGD(
        params, lr=config.lr, weight_decay=config.weight_decay or 0.0, momentum=config.momentum
    )


@dataclass
class _Progress:
    """Where a run is: optimizer steps taken, the epoch (1-based) and batches done in it."""

    step: int = 0
    epoch: int = 1
    batch_in_epoch: int = 0
    samples: int = 0


def _steps_per_epoch(n: int, config: HookedTransformerTrainConfig) -> int:
    steps = math.ceil(n / config.batch_size)
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def _batches(
    dataset: Dataset | Sequence[Mapping[str, Tensor]],
    config: HookedTransformerTrainConfig,
    progress: _Progress,
) -> Iterator[Tensor]:
    """The remaining batches of the current epoch, from `progress.batch_in_epoch` on."""
    order = epoch_order(len(dataset), config.seed, progress.epoch)  # type: ignore[arg-type]
    start = progress.batch_in_epoch * config.batch_size
    stop = _steps_per_epoch(len(order), config) * config.batch_size
    indices = order[start:stop].tolist()
    if isinstance(dataset, _TokenRows):
        for i in range(0, len(indices), config.batch_size):
            yield dataset.tokens[indices[i : i + config.batch_size]]
        return
    for batch in DataLoader(dataset, batch_size=config.batch_size, sampler=indices):
        yield _tokens_of(batch)


def _save(
    model: HookedTransformer,
    optimizer: Any,
    config: HookedTransformerTrainConfig,
    progress: _Progress,
    path: Path,
) -> Path:
    """A checkpoint: the model (config.json, model.safetensors), the optimizer's tensors
    (optimizer.safetensors) and everything else as JSON (training_state.json)."""
    opt = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    state = {
        "progress": dataclasses.asdict(progress),
        "train_config": {k: str(v) if k == "device" else v for k, v in vars(config).items()},
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
    }
    files = {OPTIMIZER_FILE: save(tensors), STATE_FILE: json.dumps(state, indent=1).encode()}
    return save_checkpoint(model, path, extra_files=files)


def _config_differences(saved: dict[str, Any], model: HookedTransformer) -> list[str]:
    ours = config_to_json(model.cfg)
    keys = sorted((set(saved) | set(ours)) - set(_NOT_ARCHITECTURE))
    return [
        f"{k}: {saved.get(k)!r} there, {ours.get(k)!r} here"
        for k in keys
        if saved.get(k) != ours.get(k)
    ]


def _resume(
    model: HookedTransformer, optimizer: Any, config: HookedTransformerTrainConfig, path: Path
) -> _Progress:
    """Load a checkpoint's weights, optimizer state and progress into this run."""
    if not is_lmscope_checkpoint(path) or not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a training checkpoint of lmscope.train (config.json of an lmscope "
            f"checkpoint and {STATE_FILE}); pass a save_dir/step_N directory"
        )
    hf = json.loads((path / "config.json").read_text())
    different = _config_differences(hf["hooked_transformer_config"], model)
    if different:
        raise CheckpointError(
            f"{path} was saved from another architecture than the model being trained "
            f"({'; '.join(different[:6])}); resume with the model it was saved from: "
            f"HookedTransformer.from_pretrained_no_processing({str(path)!r})"
        )
    state = json.loads((path / STATE_FILE).read_text())
    saved = state["train_config"]
    changed = [
        f"{k}={saved.get(k)!r} there, {getattr(config, k)!r} here"
        for k in _SAME_ON_RESUME
        if saved.get(k) != getattr(config, k)
    ]
    if changed:
        raise ValueError(
            f"resuming from {path} needs the settings it was trained with ({'; '.join(changed)}): "
            "they decide the data order and what the optimizer state means"
        )
    weights = load_file(path / WEIGHTS_FILE)
    views = model.named_weights()
    if set(weights) != set(views):
        raise CheckpointError(
            f"{path / WEIGHTS_FILE} holds other weights than this model: "
            f"{sorted(set(weights) ^ set(views))[:5]}"
        )
    with torch.no_grad():
        for name, view in views.items():
            view.copy_(weights[name])
    tensors = load((path / OPTIMIZER_FILE).read_bytes())
    entries: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        entries.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer_scalars"].items():
        entries.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": entries, "param_groups": state["param_groups"]})
    return _Progress(**state["progress"])


def _wandb(config: HookedTransformerTrainConfig) -> Any:
    """The wandb module, imported only when `config.wandb` asks for it (None otherwise)."""
    if not config.wandb:
        return None
    try:
        wandb = importlib.import_module("wandb")
    except ImportError:
        raise ImportError("wandb=True needs wandb: pip install wandb") from None
    wandb.init(project=config.wandb_project_name or "easy-transformer", config=vars(config))
    return wandb


def train(
    model: HookedTransformer,
    config: HookedTransformerTrainConfig,
    dataset: Dataset | Sequence[Mapping[str, Tensor]] | Int[Tensor, "n_seqs seq_len"],
    *,
    resume_from: str | Path | None = None,
) -> HookedTransformer:
    """Train `model` on next-token prediction over `dataset` (items {"tokens": ids}, as
    TransformerLens's `tokenize_and_concatenate` makes them, or a [n_seqs, seq_len] tensor of
    ids); returns the model. `resume_from` continues from a checkpoint of an earlier run of the
    same settings (see the module's docstring).

    Example:
        >>> cfg = HookedTransformerTrainConfig(num_epochs=1, batch_size=8, print_every=None)
        >>> model = train(model, cfg, torch.randint(0, model.cfg.d_vocab, (64, 32)))
    """
    dataset = _as_dataset(dataset)
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("the dataset is empty")
    device = torch.device(config.device) if config.device is not None else get_device()
    torch.manual_seed(config.seed)
    model.to(device)
    model.train()
    optimizer = _make_optimizer(model, config)
    progress = _Progress()
    if resume_from is not None:
        progress = _resume(model, optimizer, config, Path(resume_from))
    wandb = _wandb(config)
    per_epoch = _steps_per_epoch(n, config)
    total = per_epoch * config.num_epochs
    saved_at = progress.step if resume_from is not None else -1
    with progress_bar(total, "training", config.verbose, "step", initial=progress.step) as bar:
        while progress.epoch <= config.num_epochs:
            for tokens in _batches(dataset, config, progress):
                loss = _step(model, optimizer, config, tokens.to(device), progress.step)
                progress.step += 1
                progress.batch_in_epoch += 1
                progress.samples += tokens.shape[0]
                bar.update()
                value = loss.item()
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                if wandb is not None:
                    wandb.log(
                        {"train_loss": value, "samples": progress.samples, "epoch": progress.epoch}
                    )
                if config.print_every is not None and progress.step % config.print_every == 0:
                    bar.write(
                        f"Epoch {progress.epoch} Samples {progress.samples} Step {progress.step} "
                        f"Loss {value}"
                    )
                if config.save_every is not None and progress.step % config.save_every == 0:
                    _save_at(model, optimizer, config, progress)
                    saved_at = progress.step
            progress.epoch += 1
            progress.batch_in_epoch = 0
    if config.save_dir is not None and saved_at != progress.step:
        _save_at(model, optimizer, config, progress)
    return model


def _save_at(
    model: HookedTransformer, optimizer: Any, config: HookedTransformerTrainConfig, p: _Progress
) -> Path:
    """Save to save_dir/step_{n} (a checkpoint at the end of an epoch resumes at the next)."""
    return _save(model, optimizer, config, p, Path(config.save_dir) / f"step_{p.step}")  # type: ignore[arg-type]


def _step(
    model: HookedTransformer,
    optimizer: Any,
    config: HookedTransformerTrainConfig,
    tokens: Tensor,
    step: int,
) -> Tensor:
    """One optimizer step on a batch; the learning rate warms up linearly from 0 (as
    TransformerLens's LambdaLR: step `s` uses lr * min(1, s / warmup_steps))."""
    factor = min(1.0, step / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    for group in optimizer.param_groups:
        group["lr"] = config.lr * factor
    loss = model(tokens, return_type="loss")
    loss.backward()
    if config.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


__all__ = ["HookedTransformerTrainConfig", "epoch_order", "train"]

compat.make_module_callable(__name__, train)
