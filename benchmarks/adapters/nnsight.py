"""nnsight's `LanguageModel(repo_id, dispatch=True)` (in `.venv-bench`): every workload written as
an nnsight user writes it, inside `model.trace`.

    >>> from benchmarks.adapters.nnsight import NnsightAdapter
    >>> NnsightAdapter.load_kinds
    ('nnsight',)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.adapters.base import (
    Adapter,
    Loaded,
    hf_layer_prefix,
    hf_out_proj_name,
    n_heads_d_head,
    next_token_loss,
    torch_dtype,
)
from benchmarks.spec import LOAD_KINDS, ModelSpec

if TYPE_CHECKING:
    from jaxtyping import Int
    from torch import Tensor


class NnsightAdapter(Adapter):
    name = "nnsight"
    load_kinds = LOAD_KINDS["nnsight"]

    @staticmethod
    def import_library(spec: ModelSpec) -> None:
        from nnsight import LanguageModel  # noqa: F401

    @staticmethod
    def load_checkpoint(kind: str, spec: ModelSpec, path: str, device: str) -> Loaded:
        import torch
        from nnsight import LanguageModel

        dev = None if device == "cpu" else device
        obj = LanguageModel(spec.repo_id, dispatch=True, dtype=torch.float32, device_map=dev)
        return obj, obj._module.parameters

    def version(self) -> str:
        import nnsight

        return nnsight.__version__

    def load(self) -> None:
        import warnings

        import torch
        from nnsight import LanguageModel

        dev = None if self.device == "cpu" else self.device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = LanguageModel(
                self.spec.repo_id, dispatch=True, dtype=torch_dtype(self.dtype), device_map=dev
            )
        self.model._module.eval()
        # Execution order of every module (nnsight refuses out-of-order reads), recorded once
        # with plain forward hooks on the HF baseline, which has the same module tree.
        order: list[str] = []
        handles = [
            module.register_forward_hook(lambda *_, name=name: order.append(name))
            for name, module in self.hf.named_modules()
            if name
        ]
        try:
            with torch.inference_mode():
                self.hf(torch.zeros(1, 4, dtype=torch.long, device=self.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self.order = list(dict.fromkeys(order))  # a module called twice is saved once
        self.layer_names = [f"{hf_layer_prefix(self.hf)}.{i}" for i in range(self.n_layers)]

    def envoy(self, name: str) -> Any:
        obj = self.model
        for part in name.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        with self.model.trace(tokens):
            out = self.model.output.save()
        return out.logits

    # Values made inside a trace block reach the caller only through `.save()`d names or
    # containers made before the block, hence the lists created outside.
    def cache_all(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        saved: list[Any] = []
        with self.model.trace(tokens):
            for name in self.order:
                saved.append(self.envoy(name).output.save())
            out = self.model.output.save()
        return out.logits, dict(zip(self.order, saved, strict=True))

    def cache_resid_post(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        saved: list[Any] = []
        with self.model.trace(tokens):
            for name in self.layer_names:
                saved.append(self.envoy(name).output.save())
            out = self.model.output.save()
        return out.logits, saved

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        _, d_head = n_heads_d_head(self.hf)
        proj = self.envoy(hf_out_proj_name(self.hf, layer))
        with self.model.trace(tokens):
            x = proj.input
            x[..., head * d_head : (head + 1) * d_head] = 0
            out = self.model.output.save()
        return out.logits

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        self.model._module.zero_grad(set_to_none=True)
        grads: list[Any] = []
        with self.model.trace(tokens):
            outs = []
            for name in self.layer_names:
                o = self.envoy(name).output
                outs.append(o[0] if isinstance(o, tuple) else o)
            loss = next_token_loss(self.model.output.logits, tokens)
            with loss.backward():
                for o in reversed(outs):  # gradients arrive in reverse order
                    grads.append(o.grad.save())
        return grads

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            {"input_ids": ids, "attention_mask": mask}, do_sample=False, max_new_tokens=n,
            min_new_tokens=n, pad_token_id=self.tok.pad_token_id,
        )  # fmt: skip
        return out[:, -n:]
