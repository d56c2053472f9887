"""The interface every tool's adapter implements (one workload per method), and the Hugging Face
module paths the adapters share.

    >>> from benchmarks.adapters.base import Adapter
    >>> [m for m in ("forward", "cache_all", "generate") if hasattr(Adapter, m)]
    ['forward', 'cache_all', 'generate']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.spec import ModelSpec

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor

# What a load returns: the loaded object, and how to iterate its parameters (to read each once).
Loaded = tuple[Any, Callable[[], Iterator[Any]]]


def hf_layers(hf: Any) -> Any:
    """The decoder layers (a ModuleList) of a Llama-style or GPT-2 causal LM."""
    base = getattr(hf, hf.base_model_prefix)
    return base.layers if hasattr(base, "layers") else base.h


def hf_layer_prefix(hf: Any) -> str:
    """Module path of the decoder layers' list (`model.layers`, `transformer.h`)."""
    base = getattr(hf, hf.base_model_prefix)
    return f"{hf.base_model_prefix}.{'layers' if hasattr(base, 'layers') else 'h'}"


def hf_out_proj_name(hf: Any, layer: int) -> str:
    """Module path of the attention output projection (its input holds the heads' outputs)."""
    block = hf_layers(hf)[layer]
    attn_name = "self_attn" if hasattr(block, "self_attn") else "attn"
    proj = "o_proj" if hasattr(getattr(block, attn_name), "o_proj") else "c_proj"
    return f"{hf_layer_prefix(hf)}.{layer}.{attn_name}.{proj}"


def n_heads_d_head(hf: Any) -> tuple[int, int]:
    """(heads, head size) from an HF config of either naming."""
    c = hf.config
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    d_model = getattr(c, "hidden_size", None) or c.n_embd
    return n_heads, getattr(c, "head_dim", None) or d_model // n_heads


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Any:
    """Mean next-token cross-entropy."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


def torch_dtype(name: str) -> Any:
    """`torch.<name>` ("float32", "bfloat16", ...)."""
    import torch

    return getattr(torch, name)


class Adapter:
    """One tool on one model, in one dtype. Every workload method runs once and returns what it
    computed. The class also owns the tool's loads, timed in fresh subprocesses (`loads.py`)."""

    name = "?"
    load_kinds: tuple[str, ...] = ()  # the load kinds of this tool (besides HF's)

    def __init__(
        self, spec: ModelSpec, path: Path, hf: Any, tok: Any, device: str, dtype: str = "float32"
    ) -> None:
        self.spec, self.path, self.hf, self.tok, self.device = spec, path, hf, tok, device
        self.dtype = dtype
        self.n_layers = len(hf_layers(hf))

    @staticmethod
    def import_library(spec: ModelSpec) -> None:
        """Import the tool (in a load subprocess, timed apart from the load)."""

    @staticmethod
    def load_checkpoint(kind: str, spec: ModelSpec, path: str, device: str) -> Loaded:
        """Load kind `kind` of the checkpoint at `path` (float32), as a user of the tool would."""
        raise NotImplementedError

    def version(self) -> str:
        return "?"

    def load(self) -> None:
        raise NotImplementedError

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def cache_all(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def cache_resid_post(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        raise NotImplementedError

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        """Greedy, KV cache, exactly `n` new tokens; returns the new tokens only."""
        raise NotImplementedError

    def no_grad_context(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        return torch.inference_mode()

    def zero_grad(self) -> None:
        pass
