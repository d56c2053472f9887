"""TransformerLens 3.9, the last release with the classic `HookedTransformer` (in `.venv-bench-tl3`):
the same API as lmscope, around the HF eager model; SmolLM2 added to its list of names.

    >>> from benchmarks.adapters.tl3 import TL3Adapter
    >>> TL3Adapter.load_kinds
    ('tl3', 'tl3_no_processing')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.adapters.base import Loaded, torch_dtype
from benchmarks.adapters.lmscope import LmscopeAdapter
from benchmarks.spec import LOAD_KINDS, ModelSpec

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor


def register_tl3_name(repo_id: str) -> None:
    """TransformerLens 3.9 refuses names outside its list; SmolLM2 is a Llama it can convert."""
    from transformer_lens import loading_from_pretrained as loading

    if repo_id not in loading.OFFICIAL_MODEL_NAMES:
        loading.OFFICIAL_MODEL_NAMES.append(repo_id)


class TL3Adapter(LmscopeAdapter):
    """Classic HookedTransformer: the same API as lmscope (lmscope copies it)."""

    name = "tl3"
    load_kinds = LOAD_KINDS["tl3"]

    @staticmethod
    def import_library(spec: ModelSpec) -> None:
        import transformer_lens  # noqa: F401

        register_tl3_name(spec.repo_id)

    @staticmethod
    def load_checkpoint(kind: str, spec: ModelSpec, path: str, device: str) -> Loaded:
        import torch
        from transformer_lens import HookedTransformer

        name = spec.tl3_name or spec.repo_id
        load = getattr(
            HookedTransformer,
            "from_pretrained" if kind == "tl3" else "from_pretrained_no_processing",
        )
        obj = load(name, device=device, dtype=torch.float32)
        return obj, obj.parameters

    def version(self) -> str:
        from importlib.metadata import version

        return version("transformer-lens")

    def load(self) -> None:
        from transformer_lens import HookedTransformer

        register_tl3_name(self.spec.repo_id)
        self.model = HookedTransformer.from_pretrained_no_processing(
            self.spec.tl3_name or self.spec.repo_id,
            hf_model=self.hf,
            tokenizer=self.tok,
            device=self.device,
            dtype=torch_dtype(self.dtype),
        )
        self.model.eval()

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        # TL 3.9 takes no attention mask: give it the strings, left-padded by its own tokenizer.
        out = self.model.generate(
            prompts if len(prompts) > 1 else prompts[0], max_new_tokens=n, do_sample=False,
            stop_at_eos=False, verbose=False, prepend_bos=False, padding_side="left",
            use_past_kv_cache=True, return_type="tokens",
        )  # fmt: skip
        return out[:, -n:]
