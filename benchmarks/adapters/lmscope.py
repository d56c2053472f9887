"""lmscope: `HookedTransformer.from_pretrained_no_processing(dir)` (weights as stored, so logits
equal HF's), and its processed and unprocessed loads.

    >>> from benchmarks.adapters.lmscope import LmscopeAdapter
    >>> LmscopeAdapter.load_kinds
    ('lmscope', 'lmscope_no_processing')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.adapters.base import Adapter, Loaded, torch_dtype
from benchmarks.spec import LOAD_KINDS, ModelSpec

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor


class LmscopeAdapter(Adapter):
    name = "lmscope"
    load_kinds = LOAD_KINDS["lmscope"]

    @staticmethod
    def import_library(spec: ModelSpec) -> None:
        import lmscope  # noqa: F401

    @staticmethod
    def load_checkpoint(kind: str, spec: ModelSpec, path: str, device: str) -> Loaded:
        from lmscope import HookedTransformer

        dev = None if device == "cpu" else device
        if kind in ("lmscope", "lmscope_first", "lmscope_keeps"):  # (see LOAD_KINDS)
            obj = HookedTransformer.from_pretrained(path, device=dev)
        else:
            obj = HookedTransformer.from_pretrained_no_processing(path, device=dev)
        return obj, obj.parameters

    def version(self) -> str:
        import lmscope

        return getattr(lmscope, "__version__", "?")

    def load(self) -> None:
        from lmscope import HookedTransformer

        dev = None if self.device == "cpu" else self.device
        dtype = {} if self.dtype == "float32" else {"dtype": torch_dtype(self.dtype)}
        self.model = HookedTransformer.from_pretrained_no_processing(
            str(self.path), device=dev, **dtype
        )
        self.model.eval()

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model(tokens)

    def cache_all(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model.run_with_cache(tokens)

    def cache_resid_post(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("hook_resid_post")
        )

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        def zero(z: Tensor, hook: Any) -> Tensor:
            z[:, :, head] = 0
            return z

        return self.model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        self.model.zero_grad(set_to_none=True)
        return self.model.run_with_cache(tokens, return_type="loss", incl_bwd=True)

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            ids, max_new_tokens=n, do_sample=False, stop_at_eos=False, attention_mask=mask,
            verbose=False, return_type="tokens",
        )  # fmt: skip
        return out[:, ids.shape[1] :]
