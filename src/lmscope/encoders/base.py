"""What HookedEncoder and HookedEncoderDecoder share: the config, a lazily loaded tokenizer,
random initialisation, ActivationCache results, and inputs checked as the decoder checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.encoders.config import EncoderConfig
from lmscope.hooks import HookedRootModule
from lmscope.tokens import check_attention_mask, check_attention_mask_values, check_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from lmscope.cache import ActivationCache
    from lmscope.config import HookedTransformerConfig
    from lmscope.factored_matrix import FactoredMatrix

TextInput = str | Sequence[str]


class EncoderModel(HookedRootModule):
    """Base of the encoder models: `cfg`, `tokenizer`, `init_weights`, `run_with_cache` returning
    an ActivationCache, and the `cpu` / `cuda` / `mps` / `to` moves of TransformerLens."""

    cfg: EncoderConfig

    def _init_common(
        self,
        cfg: HookedTransformerConfig | dict[str, Any],
        tokenizer: PreTrainedTokenizerBase | None,
    ) -> EncoderConfig:
        """Set `cfg` and the tokenizer slots (call before building layers)."""
        self.cfg = EncoderConfig.wrap(cfg)
        self._tokenizer: PreTrainedTokenizerBase | None = tokenizer
        self._tokenizer_loader: Callable[[], PreTrainedTokenizerBase] | None = None
        self.hf_config: dict[str, Any] | None = None  # the config.json a loaded model read
        return self.cfg

    def _finish_init(self, move_to_device: bool) -> None:
        if self.cfg.init_weights:
            self.init_weights()
        if move_to_device and self.cfg.device is not None:
            self.to(self.cfg.device)
        self.setup()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The Hugging Face tokenizer (loaded on first use for a loaded model; None if none)."""
        if self._tokenizer is None and self._tokenizer_loader is not None:
            self._tokenizer, self._tokenizer_loader = self._tokenizer_loader(), None
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self._tokenizer, self._tokenizer_loader = tokenizer, None

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Attach a Hugging Face tokenizer.

        Example:
            >>> model.set_tokenizer(AutoTokenizer.from_pretrained(path))
        """
        self.tokenizer = tokenizer

    def set_tokenizer_loader(self, load: Callable[[], PreTrainedTokenizerBase]) -> None:
        """Attach a tokenizer that `load()` builds on first use of `model.tokenizer`."""
        self._tokenizer, self._tokenizer_loader = None, load

    def _require_tokenizer(self, why: str = "text input") -> PreTrainedTokenizerBase:
        tok = self.tokenizer
        if tok is None:
            raise ValueError(
                f"{why} needs a tokenizer, and this model has none: pass token ids, or call "
                "model.set_tokenizer(tokenizer)"
            )
        return tok

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    def init_weights(self) -> None:
        """Random normal weights (std `cfg.initializer_range`), zero biases, unit norm weights."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        for name, param in self.named_parameters():
            if name.endswith(("weight", "W_E", "W_pos", "W_token_type")):
                nn.init.normal_(param, std=self.cfg.initializer_range)

    def _make_cache(self, cache: dict[str, Tensor]) -> ActivationCache:
        from lmscope.cache import ActivationCache

        return ActivationCache(cache, self)  # type: ignore[arg-type]

    def run_with_cache(
        self, *model_args: Any, remove_batch_dim: bool = False, **kwargs: Any
    ) -> tuple[Any, Any]:
        """`HookedRootModule.run_with_cache`; the cache knows it lost its batch dimension.

        Example:
            >>> out, cache = model.run_with_cache(tokens)
            >>> cache["blocks.0.attn.hook_pattern"].shape     # [batch, head, q_pos, k_pos]
        """
        out, cache = super().run_with_cache(
            *model_args, remove_batch_dim=remove_batch_dim, **kwargs
        )
        if hasattr(cache, "has_batch_dim"):
            cache.has_batch_dim = not remove_batch_dim
        return out, cache

    def to(self, *args: Any, print_details: bool = True, **kwargs: Any) -> EncoderModel:
        """`nn.Module.to`; `cfg.device` and `cfg.dtype` follow the parameters.
        `print_details` (TransformerLens's) is accepted and prints nothing."""
        super().to(*args, **kwargs)
        self.cfg.dtype = self.W_E.dtype
        if self.cfg.device is not None or self.W_E.device.type != "cpu":
            self.cfg.device = str(self.W_E.device)
        return self

    def mps(self) -> EncoderModel:
        """Move the model to Apple's GPU."""
        return self.to("mps")

    # -- inputs ----------------------------------------------------------------------------------
    def _tokens(self, input: Any) -> Int[Tensor, "batch pos"]:
        return check_token_ids(input, self.cfg.d_vocab, self.W_E.device)

    def _mask(
        self, mask: Any, tokens: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"]
    ) -> Tensor | None:
        """The attention mask as a long tensor on the model's device (None when all ones)."""
        if mask is None:
            return None
        mask = check_attention_mask(mask, tuple(tokens.shape[:2]), self.W_E.device)
        return None if check_attention_mask_values(mask) else mask

    def _stack(self, blocks: Iterable[nn.Module], get: Callable[[nn.Module], Tensor]) -> Tensor:
        return torch.stack([get(block) for block in blocks], dim=0)

    @property
    def QK(self) -> FactoredMatrix:
        """Each self-attention head's W_Q W_K^T as a FactoredMatrix [layer, head, d_model,
        d_model] (a T5's encoder layers, then its decoder layers).

        Example:
            >>> model.QK.AB.shape
        """
        from lmscope.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """Each self-attention head's W_V W_O as a FactoredMatrix [layer, head, d_model, d_model]."""
        from lmscope.factored_matrix import FactoredMatrix

        return FactoredMatrix(self.W_V, self.W_O)


def is_text(input: Any) -> bool:
    """Whether `input` is a string or a non-empty sequence of strings."""
    return isinstance(input, str) or (
        isinstance(input, (list, tuple)) and bool(input) and isinstance(input[0], (str, tuple))
    )
