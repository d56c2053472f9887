"""Training a sparse autoencoder on stored activations: `lmscope.sae.train`.

Activations come from a harvest folder (`lmscope.harvest.open(DIR)` and a hook name, read shard
by shard, memory-mapped) or an in-memory tensor ([n, d_in] or [n, seq, d_in]). The recipe is
SAELens's where it has one:
- inputs scaled by one constant so their mean norm is sqrt(d_in) ("expected_average_only_in"),
  folded into the weights at the end, so the saved SAE takes raw activations;
- b_dec starts at the activations' mean, decoder rows at norm `decoder_init_norm` (0.1), the
  encoder at the decoder's transpose; decoder rows are kept at unit norm after each step (their
  gradient's component along the row removed first), so L1 and top-k see comparable features;
- "topk": the k largest pre-activations (ReLU'd) are kept; the decoder is a weighted sum of k
  rows (an embedding bag), so a step costs the dense encoder and a sparse decoder;
  "standard": ReLU with an L1 penalty (`l1_coefficient`, warmed up over `l1_warm_up_steps`);
- dead features (no activation in `dead_feature_window` steps) are resampled every
  `resample_every` steps from the inputs the SAE reconstructs worst (Anthropic's recipe:
  decoder row = the input's direction, encoder = 0.2 x the mean live encoder norm, Adam state
  reset), and/or get ghost gradients (`ghost_grads=True`: their exp'd pre-activations are
  trained to explain the residual error);
- Adam, lr warmup and a linear decay to 0 over the last `lr_decay_steps`.

`evaluate(sae, activations)` gives the explained variance, L0 and dead fraction of held-out
activations. A progress bar shows the loss, L0 and dead features on a terminal.

Example:
    >>> h = lmscope.harvest.open("acts")
    >>> cfg = SAETrainConfig(d_sae=4608, k=32, training_tokens=2_000_000)
    >>> sae = lmscope.sae.train(h, cfg, hook="blocks.15.hook_resid_post")
    >>> lmscope.sae.evaluate(sae, held_out)["explained_variance"]
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lmscope.progress import progress_bar
from lmscope.sae.config import SAEConfig, SAEMetadata
from lmscope.sae.sae import SAE

ARCHS = ("topk", "standard")


@dataclass
class SAETrainConfig:
    """How to train an SAE (see the module docstring for the recipe).

    Example:
        >>> SAETrainConfig(d_sae=4096, arch="topk", k=32, training_tokens=10_000_000)
    """

    d_sae: int
    arch: str = "topk"
    k: int = 32  # topk
    l1_coefficient: float = 5.0  # standard
    l1_warm_up_steps: int = 0
    lr: float = 4e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_warm_up_steps: int = 0
    lr_decay_steps: int = 0
    batch_size: int = 4096  # tokens per step
    training_tokens: int | None = None  # default: one pass over the activations
    normalize_activations: bool = True
    decoder_init_norm: float = 0.1
    dead_feature_window: int = 200  # steps without firing after which a feature is dead
    resample_every: int | None = None  # steps between resamplings of dead features
    ghost_grads: bool = False
    skip_first_position: bool = True  # a harvest's BOS position (see docs/sae.md)
    seed: int = 0
    device: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"lmscope.sae.train trains {ARCHS} SAEs, not {self.arch!r}")
        if self.arch == "topk" and not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if self.batch_size < 1 or self.d_sae < 1:
            raise ValueError("batch_size and d_sae must be >= 1")


# -- where the activations come from ------------------------------------------------------------
class Activations:
    """Token activation vectors [*, d_in] from a tensor or a harvest (hook), served as shuffled
    batches; a harvest is read one shard at a time (memory-mapped), mixing `buffer_shards`
    shards per buffer. With `skip_first_position`, position 0 of each sequence (BOS) is left out
    (for 3-D inputs: [seq, pos, d]).

    Example:
        >>> acts = Activations(lmscope.harvest.open("acts"), "blocks.15.hook_resid_post")
        >>> acts.d_in, len(acts)
    """

    def __init__(
        self,
        source: Any,
        hook: str | None = None,
        skip_first_position: bool = True,
        buffer_shards: int = 2,
    ) -> None:
        self.skip = skip_first_position
        self.buffer_shards = buffer_shards
        self.hook = hook
        self.meta: dict[str, Any] = {}
        if isinstance(source, Tensor):
            if source.ndim not in (2, 3) or not source.is_floating_point():
                raise ValueError(
                    "activations must be a float tensor [n, d_in] or [n_seqs, seq_len, d_in], "
                    f"got {source.dtype} of shape {tuple(source.shape)}"
                )
            self._parts = [source]
        elif hasattr(source, "iter_shards") and hasattr(source, "manifest"):
            if hook is None:
                raise ValueError(f"name the harvested hook to train on: one of {source.hooks}")
            self._parts = list(source.iter_shards(hook))  # KeyError names the harvested hooks
            if not self._parts:
                raise ValueError(f"{source.folder} has no complete shard of raw activations yet")
            args = source.manifest["arguments"]
            self.meta = {
                "hook_name": hook,
                "model_name": source.manifest.get("model", {}).get("name"),
                "context_size": args.get("seq_len"),
                "prepend_bos": args.get("prepend_bos"),
                "dataset_path": str(source.folder),
            }
        else:
            raise TypeError(
                "train on a harvest (lmscope.harvest.open(DIR)) with hook=..., or on a tensor of "
                f"activations; got {type(source).__name__}"
            )
        self.d_in = int(self._parts[0].shape[-1])

    def _tokens(self, part: Tensor) -> Tensor:
        if part.ndim == 3:
            part = part[:, 1:] if self.skip else part
            part = part.reshape(-1, part.shape[-1])
        return part

    def __len__(self) -> int:
        return sum(self._tokens(p[:1]).shape[0] * p.shape[0] for p in self._parts)

    def mean_and_norm(self, max_tokens: int = 200_000) -> tuple[Tensor, float]:
        """The mean vector and the mean norm of (up to `max_tokens` of) the activations."""
        total, norms, count = torch.zeros(self.d_in, dtype=torch.float64), 0.0, 0
        for part in self._parts:
            x = self._tokens(part)[: max_tokens - count].double()
            total += x.sum(0)
            norms += float(x.norm(dim=-1).sum())
            count += x.shape[0]
            if count >= max_tokens:
                break
        return (total / count).float(), norms / count

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Endless shuffled float32 batches of token vectors, epoch after epoch."""
        while True:
            order = torch.randperm(len(self._parts), generator=generator).tolist()
            for start in range(0, len(order), self.buffer_shards):
                group = [
                    self._tokens(self._parts[i]) for i in order[start : start + self.buffer_shards]
                ]
                buffer = torch.cat(group).float() if len(group) > 1 else group[0].float()
                perm = torch.randperm(buffer.shape[0], generator=generator)
                for i in range(0, buffer.shape[0] - batch_size + 1, batch_size):
                    yield buffer[perm[i : i + batch_size]]


def _as_activations(source: Any, hook: str | None, skip: bool) -> Activations:
    return source if isinstance(source, Activations) else Activations(source, hook, skip)


# -- the training step --------------------------------------------------------------------------
def _forward(
    sae: SAE, x: Tensor, cfg: SAETrainConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(reconstruction, pre-activations, active-feature mask, feature activations for L1)."""
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if cfg.arch == "topk":
        values, indices = torch.topk(pre, cfg.k, dim=-1, sorted=False)
        values = values.relu()
        recon = F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum")
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[values > 0]] = True
        return recon + sae.b_dec, pre, fired, None
    acts = pre.relu()
    return acts @ sae.W_dec + sae.b_dec, pre, (acts > 0).any(0), acts


def _ghost_loss(
    sae: SAE, x: Tensor, recon: Tensor, pre: Tensor, dead: Tensor, mse: Tensor
) -> Tensor:
    """Ghost gradients: the dead features' exp(pre-activation) outputs, scaled to half the
    residual's norm, trained to explain the residual, weighted like the MSE."""
    residual = (x - recon).detach()
    ghost = pre[:, dead].exp() @ sae.W_dec[dead]
    scale = residual.norm(dim=-1, keepdim=True) / (1e-6 + 2 * ghost.norm(dim=-1, keepdim=True))
    ghost = ghost * scale.detach()
    ghost_mse = (ghost - residual).pow(2).sum(-1).mean()
    return ghost_mse * (mse / (ghost_mse + 1e-6)).detach()


@torch.no_grad()
def _normalise_decoder(sae: SAE) -> None:
    sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8)


@torch.no_grad()
def _project_decoder_grad(sae: SAE) -> None:
    """Remove each decoder row's gradient component along the row (unit-norm rows)."""
    if sae.W_dec.grad is None:
        return
    rows = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    sae.W_dec.grad -= (sae.W_dec.grad * rows).sum(-1, keepdim=True) * rows


@torch.no_grad()
def _resample(sae: SAE, optimizer: Any, x: Tensor, recon: Tensor, dead: Tensor) -> int:
    """Re-initialise dead features from the inputs reconstructed worst (sampled in proportion to
    their squared error); returns how many were resampled."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    loss = (x - recon).pow(2).sum(-1)
    picks = torch.multinomial(loss / loss.sum(), n_dead, replacement=n_dead > len(loss))
    directions = x[picks] - sae.b_dec
    directions /= directions.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    idx = dead.nonzero().squeeze(-1)
    sae.W_dec[idx] = directions
    sae.W_enc[:, idx] = directions.T * enc_norm * 0.2
    sae.b_enc[idx] = 0.0
    for param, dims in ((sae.W_dec, 0), (sae.W_enc, 1), (sae.b_enc, 0)):
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value.index_fill_(dims, idx, 0.0)
    return n_dead


def _lr_factor(step: int, total: int, cfg: SAETrainConfig) -> float:
    warm = min(1.0, (step + 1) / cfg.lr_warm_up_steps) if cfg.lr_warm_up_steps else 1.0
    if cfg.lr_decay_steps and step >= total - cfg.lr_decay_steps:
        return warm * (total - step) / cfg.lr_decay_steps
    return warm


def train(
    activations: Any,
    config: SAETrainConfig,
    *,
    hook: str | None = None,
    metadata: dict[str, Any] | None = None,
    save_path: str | None = None,
) -> SAE:
    """Train an SAE on `activations` (a harvest with `hook`, a tensor, or `Activations`) and
    return it (in SAELens's inference form: raw activations in, `normalize_activations` "none").
    `metadata` adds to what the harvest tells (hook_name, model_name, context_size, ...);
    `save_path` saves it there in SAELens's format.

    Example:
        >>> sae = train(torch.randn(100_000, 64), SAETrainConfig(d_sae=512, k=16),
        ...             metadata={"hook_name": "blocks.0.hook_resid_post"})
    """
    cfg = config
    data = _as_activations(activations, hook, cfg.skip_first_position)
    device = torch.device(cfg.device) if cfg.device else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    mean, mean_norm = data.mean_and_norm()
    scale = data.d_in**0.5 / mean_norm if cfg.normalize_activations else 1.0
    meta = {**data.meta, **(metadata or {})}
    arch_fields: dict[str, Any] = {"k": cfg.k} if cfg.arch == "topk" else {}
    sae_cfg = SAEConfig(
        d_in=data.d_in, d_sae=cfg.d_sae, arch=cfg.arch, metadata=SAEMetadata(**meta), **arch_fields
    )
    sae = SAE(sae_cfg).to(device)
    with torch.no_grad():
        sae.W_dec.mul_(cfg.decoder_init_norm / sae.W_dec.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean.to(device) * scale)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    tokens = cfg.training_tokens if cfg.training_tokens is not None else len(data)
    total = max(1, tokens // cfg.batch_size)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=device)
    generator = torch.Generator().manual_seed(cfg.seed)
    batches = data.batches(cfg.batch_size, generator)
    with progress_bar(total, "training SAE", cfg.verbose, "step") as bar:
        for step in range(total):
            x = next(batches).to(device) * scale
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, total, cfg)
            recon, pre, fired, acts = _forward(sae, x, cfg)
            mse = (recon - x).pow(2).sum(-1).mean()
            loss = mse
            if acts is not None:
                warm = min(1.0, (step + 1) / cfg.l1_warm_up_steps) if cfg.l1_warm_up_steps else 1.0
                loss = loss + cfg.l1_coefficient * warm * acts.sum(-1).mean()
            since_fired = torch.where(fired, 0, since_fired + 1)
            dead = since_fired >= cfg.dead_feature_window
            if cfg.ghost_grads and dead.any():
                loss = loss + _ghost_loss(sae, x, recon, pre, dead, mse)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _project_decoder_grad(sae)
            optimizer.step()
            _normalise_decoder(sae)
            if cfg.resample_every and (step + 1) % cfg.resample_every == 0 and step + 1 < total:
                if _resample(sae, optimizer, x, recon.detach(), dead):
                    since_fired[dead] = 0
            bar.update()
            if step % 10 == 0:
                l0 = cfg.k if acts is None else float((acts > 0).sum(-1).float().mean())
                bar.set_postfix(
                    mse=f"{mse.item():.3g}", l0=f"{l0:.3g}", dead=int(dead.sum()), refresh=False
                )
    optimizer.zero_grad(set_to_none=True)
    _fold_scale(sae, scale)
    sae.eval()
    if save_path is not None:
        sae.save_model(save_path)
    return sae


@torch.no_grad()
def _fold_scale(sae: SAE, scale: float) -> None:
    """Make the SAE take raw activations: it was trained on activations * scale (SAELens's
    `fold_activation_norm_scaling_factor`)."""
    sae.W_enc *= scale
    sae.W_dec /= scale
    sae.b_dec /= scale
    sae.cfg.normalize_activations = "none"


@torch.no_grad()
def evaluate(
    sae: SAE,
    activations: Any,
    hook: str | None = None,
    batch_size: int = 8192,
    skip_first_position: bool = True,
) -> dict[str, float]:
    """How well `sae` reconstructs `activations` (a harvest with `hook`, or a tensor):
    explained_variance = 1 - sum |x - sae(x)|² / sum |x - mean(x)|² over all tokens; l0, the mean
    number of active features per token; dead_fraction, the share of features active on no
    token; mse per token; n_tokens.

    Example:
        >>> evaluate(sae, held_out)["explained_variance"]
    """
    data = _as_activations(activations, hook, skip_first_position)
    mean, _ = data.mean_and_norm(max_tokens=len(data))
    device = sae.W_dec.device
    sse = sst = l0 = 0.0
    n = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=device)
    for part in data._parts:
        tokens = data._tokens(part)
        for i in range(0, tokens.shape[0], batch_size):
            x = tokens[i : i + batch_size].to(device, torch.float32)
            acts = sae.encode(x)
            recon = sae.decode(acts)
            sse += float((x - recon).double().pow(2).sum())
            sst += float((x - mean.to(device)).double().pow(2).sum())
            active = acts > 0
            l0 += float(active.sum())
            fired |= active.any(0)
            n += x.shape[0]
    return {
        "explained_variance": 1 - sse / sst,
        "l0": l0 / n,
        "dead_fraction": 1 - float(fired.float().mean()),
        "mse": sse / n,
        "n_tokens": float(n),
    }


__all__ = ["Activations", "SAETrainConfig", "evaluate", "train"]
