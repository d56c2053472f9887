"""ActivationCache: the activations of one run, indexed by hook name or TransformerLens shorthand.

Example:
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
    >>> cache["pattern", 0]                     # == cache["blocks.0.attn.hook_pattern"]
    >>> resid, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.utils import get_act_name

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer


class ActivationCache:
    """A dict of hook name -> activation, plus the model that produced it (for analysis)."""

    def __init__(
        self, cache_dict: dict[str, Tensor], model: HookedTransformer, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    # -- dict behaviour ------------------------------------------------------------------------
    def _key(self, key: str | tuple) -> str:
        if isinstance(key, str):
            name = key if key in self.cache_dict else get_act_name(key)
        else:
            name_part, layer, *rest = key
            if layer is not None and layer < 0:
                layer += self.model.cfg.n_layers
            name = get_act_name(name_part, layer, rest[0] if rest else None)
        if name not in self.cache_dict:
            import difflib

            close = difflib.get_close_matches(name, self.cache_dict.keys(), n=5, cutoff=0.6)
            hint = f" Close names in this cache: {', '.join(close)}." if close else ""
            raise KeyError(
                f"{name!r} is not in this cache ({len(self.cache_dict)} activations).{hint} "
                "Was it excluded by names_filter?"
            )
        return name

    def __getitem__(self, key: str | tuple) -> Tensor:
        return self.cache_dict[self._key(key)]

    def __contains__(self, key: object) -> bool:
        try:
            self._key(key)  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError):
            return False
        return True

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self):  # noqa: ANN201 - dict view
        return self.cache_dict.keys()

    def values(self):  # noqa: ANN201
        return self.cache_dict.values()

    def items(self):  # noqa: ANN201
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self.cache_dict)[:8]}..."

    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every activation to `device` (in place; returns self)."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        return self

    def remove_batch_dim(self) -> ActivationCache:
        """Drop a batch dimension of size 1 from every activation (in place; returns self)."""
        if not self.has_batch_dim:
            return self
        for name, t in self.cache_dict.items():
            if t.shape[0] != 1:
                raise ValueError(
                    f"remove_batch_dim needs batch size 1, but {name} has batch {t.shape[0]}"
                )
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    # -- residual-stream analysis -----------------------------------------------------------
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: int | slice | None = None,
        return_labels: bool = False,
    ) -> Float[Tensor, "layers_covered *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before each layer up to `layer` (default: all, plus the final one).

        With `apply_ln`, each is passed through the final norm with its own scale recomputed, the
        logit lens (TransformerLens reuses the final layer's cached scale instead).
        """
        n = self.model.cfg.n_layers
        layer = n if layer is None else (layer + n + 1 if layer < 0 else layer)
        stack, labels = [], []
        for i in range(layer):
            stack.append(self[f"blocks.{i}.hook_resid_pre"])
            labels.append(f"{i}_pre")
            if incl_mid and f"blocks.{i}.hook_resid_mid" in self.cache_dict:
                stack.append(self[f"blocks.{i}.hook_resid_mid"])
                labels.append(f"{i}_mid")
        if layer == n:
            stack.append(self[f"blocks.{n - 1}.hook_resid_post"])
            labels.append("final_post")
        resid = torch.stack(stack, dim=0)
        if pos_slice is not None:
            resid = resid[..., pos_slice, :]  # an int position drops the pos dimension
        if apply_ln:
            resid = self.apply_ln_to_stack(resid)
        return (resid, labels) if return_labels else resid

    def apply_ln_to_stack(
        self, residual_stack: Float[Tensor, "... d_model"]
    ) -> Float[Tensor, "... d_model"]:
        """Apply the final norm to each residual in the stack, recomputing its own scale."""
        ln = getattr(self.model, "ln_final", None)
        if ln is None:
            return residual_stack
        saved = (ln.hook_scale._fwd, ln.hook_normalized._fwd)
        ln.hook_scale._fwd, ln.hook_normalized._fwd = [], []
        try:
            return ln(residual_stack)
        finally:
            ln.hook_scale._fwd, ln.hook_normalized._fwd = saved

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Tensor:
        """One activation from every layer (up to `layer`, exclusive) stacked on a new dim 0."""
        n = self.model.cfg.n_layers if layer == -1 else layer
        return torch.stack(
            [self[get_act_name(activation_name, i, sublayer_type)] for i in range(n)], dim=0
        )
