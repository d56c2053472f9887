"""TransformerLens 4.3's `TransformerBridge` around its own HF eager model (in `.venv-bench`).

>>> from benchmarks.adapters.tl4 import TL4Adapter
>>> TL4Adapter.load_kinds
('tl4',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.adapters.base import Loaded, torch_dtype
from benchmarks.adapters.lmscope import LmscopeAdapter
from benchmarks.spec import LOAD_KINDS, ModelSpec

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor


class TL4Adapter(LmscopeAdapter):
    """TransformerLens 4 TransformerBridge around its own HF eager model."""

    name = "tl4"
    load_kinds = LOAD_KINDS["tl4"]

    @staticmethod
    def import_library(spec: ModelSpec) -> None:
        from transformer_lens.model_bridge import TransformerBridge  # noqa: F401

    @staticmethod
    def load_checkpoint(kind: str, spec: ModelSpec, path: str, device: str) -> Loaded:
        import torch
        from transformer_lens.model_bridge import TransformerBridge

        obj = TransformerBridge.boot_transformers(spec.repo_id, device=device, dtype=torch.float32)
        return obj, obj.parameters

    def version(self) -> str:
        from importlib.metadata import version

        return version("transformer-lens")

    def load(self) -> None:
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM

        # A copy of its own: the bridge wraps the HF modules it is given, which would put its
        # hook points into the HF baseline's forward.
        hf = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=torch_dtype(self.dtype), attn_implementation="eager"
        ).to(self.device)
        self.model = TransformerBridge.boot_transformers(
            self.spec.repo_id, hf_model=hf, tokenizer=self.tok, device=self.device
        )
        self.model.eval()

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            ids, max_new_tokens=n, do_sample=False, stop_at_eos=False, attention_mask=mask,
            verbose=False, use_past_kv_cache=True, return_type="tokens",
        )  # fmt: skip
        return out[:, -n:]
