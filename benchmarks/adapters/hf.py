"""The baseline: plain transformers with one attention implementation (eager or sdpa).

>>> from benchmarks.adapters.hf import HFAdapter
>>> HFAdapter.load_kinds
('hf',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.adapters.base import Adapter, Loaded, hf_out_proj_name, n_heads_d_head
from benchmarks.spec import ModelSpec

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor, nn


class HFAdapter(Adapter):
    """HF's model itself: the adapter wraps the model it is given (`load` does nothing)."""

    name = "hf"
    load_kinds = ("hf",)

    def __init__(
        self, spec: ModelSpec, path: Any, hf: Any, tok: Any, device: str, dtype: str = "float32"
    ) -> None:
        super().__init__(spec, path, hf, tok, device, dtype)
        self.model = hf

    @staticmethod
    def load_checkpoint(kind: str, spec: ModelSpec, path: str, device: str) -> Loaded:
        import torch
        from transformers import AutoModelForCausalLM

        dev = None if device == "cpu" else device
        obj = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=dev)
        return obj, obj.parameters

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model(tokens, use_cache=False).logits

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        _, d_head = n_heads_d_head(self.model)
        proj = self.model.get_submodule(hf_out_proj_name(self.model, layer))

        def zero_head(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0].clone()
            x[..., head * d_head : (head + 1) * d_head] = 0
            return (x, *args[1:])

        handle = proj.register_forward_pre_hook(zero_head)
        try:
            return self.model(tokens, use_cache=False).logits
        finally:
            handle.remove()

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        self.model.zero_grad(set_to_none=True)
        loss = self.model(tokens, labels=tokens, use_cache=False).loss
        loss.backward()
        return loss.detach()

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=self.tok.pad_token_id,
        )  # fmt: skip
        return out[:, ids.shape[1] :]
