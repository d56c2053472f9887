"""An already-loaded `transformers` model as a checkpoint: `from_pretrained(name, hf_model=m)`
reads its config and its state_dict, and no file.

Example:
    >>> hf = AutoModelForCausalLM.from_pretrained("gpt2")
    >>> model = HookedTransformer.from_pretrained("gpt2", hf_model=hf)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.errors import CheckpointError
from lmscope.loading.checkpoint import copy_checked, resolve_key

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class HFModelCheckpoint:
    """The tensors of an in-memory HF model under their state_dict names. Weights are copied
    into the lmscope model (`keep=True` hands out a copy), so the two never share memory."""

    reads_into = False

    def __init__(self, hf_model: PreTrainedModel) -> None:
        config = getattr(hf_model, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            raise TypeError(
                f"hf_model must be a transformers PreTrainedModel (with a .config), got "
                f"{type(hf_model).__name__}"
            )
        self.hf_config: dict[str, Any] = config.to_dict()
        if not self.hf_config.get("architectures"):  # a model built from a config, never saved
            self.hf_config["architectures"] = [type(hf_model).__name__]
        quant = self.hf_config.get("quantization_config")
        if quant:
            raise CheckpointError(
                f"hf_model is quantized ({quant.get('quant_method', quant)}); lmscope reads "
                "float weights: load the HF model without quantization"
            )
        self.path = Path(f"<hf_model {type(hf_model).__name__}>")
        self.config_file = self.path / "config"
        self._tensors: dict[str, torch.Tensor] = dict(hf_model.state_dict())

    def __repr__(self) -> str:
        return f"HFModelCheckpoint({self.path.name}, tensors={len(self._tensors)})"

    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def resolve(self, name: str) -> str:
        """The state_dict key for `name` (the base-model prefix, "transformer.", may differ)."""
        return resolve_key(name, self._tensors, "hf_model's state_dict")

    def unread_tensors(self, used: set[str]) -> list[str]:
        return [key for key in self._tensors if key not in used]

    def file_of(self, name: str) -> Path:
        return self.path

    def n_elements(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    def get(self, name: str, keep: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        tensor = self._tensors[self.resolve(name)].detach()
        if not tensor.is_floating_point():
            raise CheckpointError(f"hf_model tensor {name!r} is {tensor.dtype}, not a float")
        if out is not None:
            return copy_checked(name, tensor, out)
        return tensor.clone() if keep else tensor

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        return None
