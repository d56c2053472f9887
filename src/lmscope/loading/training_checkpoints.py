"""Intermediate training checkpoints: TransformerLens's `checkpoint_index` / `checkpoint_value`
as Hugging Face hub revisions.

Pythia keeps its checkpoints as branches of its hub repos: step 1000 is revision `step1000`. The
steps are those EleutherAI published (log-spaced to 512, then every 1000 to 143000; the `-v0`
models only every 1000), as TransformerLens lists them. Fetching a revision needs the network
once; offline, an uncached revision fails with the hub's cache error.

Example:
    >>> checkpoint_revision("EleutherAI/pythia-70m", checkpoint_value=1000)
    ('step1000', 1000)
"""

from __future__ import annotations

PYTHIA_STEPS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512) + tuple(
    range(1000, 143_001, 1000)
)
PYTHIA_V0_STEPS: tuple[int, ...] = tuple(range(1000, 143_001, 1000))


def checkpoint_steps(hub_id: str) -> tuple[int, ...]:
    """The training steps `hub_id` has checkpoints for (ValueError for a model without any).

    Example:
        >>> checkpoint_steps("EleutherAI/pythia-70m")[:4]
        (0, 1, 2, 4)
    """
    if hub_id.startswith("EleutherAI/pythia"):
        return PYTHIA_V0_STEPS if "-v0" in hub_id else PYTHIA_STEPS
    raise ValueError(
        f"{hub_id!r} has no intermediate training checkpoints that lmscope knows of "
        "(checkpoint_index/checkpoint_value work for the Pythia models, EleutherAI/pythia-*); "
        "drop checkpoint_index/checkpoint_value, or pass revision= naming a branch of the repo"
    )


def checkpoint_revision(
    hub_id: str,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
) -> tuple[str, int]:
    """The hub revision and step of a training checkpoint chosen by its index in
    `checkpoint_steps(hub_id)` or by its step (`checkpoint_value`); the index wins when both
    are given, as in TransformerLens.

    Example:
        >>> checkpoint_revision("EleutherAI/pythia-70m", checkpoint_index=-1)
        ('step143000', 143000)
    """
    steps = checkpoint_steps(hub_id)
    if checkpoint_index is not None:
        if not isinstance(checkpoint_index, int) or not -len(steps) <= checkpoint_index < len(
            steps
        ):
            raise ValueError(
                f"checkpoint_index must be an int in [0, {len(steps)}) for {hub_id} "
                f"({len(steps)} checkpoints), got {checkpoint_index!r}"
            )
        step = steps[checkpoint_index]
    else:
        if checkpoint_value not in steps:
            raise ValueError(
                f"{hub_id} has no checkpoint at step {checkpoint_value!r}; its steps are "
                f"{list(steps[:12])} ... {steps[-1]} (every 1000 after 1000)"
            )
        step = int(checkpoint_value)
    return f"step{step}", step
