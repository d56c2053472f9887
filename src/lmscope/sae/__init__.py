"""Sparse autoencoders: SAELens's `SAE` (standard, top-k, JumpReLU, gated; its on-disk format),
`HookedSAETransformer` (splice SAEs into a model's forward pass, SAELens's API) and `train` (train
an SAE on activations from `lmscope.harvest` or a tensor). docs/sae.md has the guide.

Example:
    >>> sae = lmscope.SAE.load_from_disk("my_sae")
    >>> model = lmscope.HookedSAETransformer.from_pretrained("smollm2-135m")
    >>> logits = model.run_with_saes("Hello", saes=[sae], use_error_term=True)
"""

from __future__ import annotations

from lmscope.sae.config import SAEConfig, SAEMetadata
from lmscope.sae.hooked import HookedSAETransformer
from lmscope.sae.sae import SAE
from lmscope.sae.training import Activations, SAETrainConfig, evaluate, train

__all__ = [
    "SAE",
    "Activations",
    "HookedSAETransformer",
    "SAEConfig",
    "SAEMetadata",
    "SAETrainConfig",
    "evaluate",
    "train",
]
