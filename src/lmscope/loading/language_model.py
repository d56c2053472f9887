"""The language model of a multimodal checkpoint (`...ForConditionalGeneration`: text and vision).

Qwen3.5, Gemma 3 and Llama 4 publish their models as `Qwen3_5ForConditionalGeneration`,
`Gemma3ForConditionalGeneration`, `Llama4ForConditionalGeneration`: a vision tower, a projector
and a language model whose config is nested (`text_config`) and whose tensors sit under a prefix.
`language_model_view` shows such a checkpoint as the causal language model inside it, which the
text family (`Qwen3_5ForCausalLM`, ...) then loads like any other checkpoint:

- the config is `text_config`, with the causal-LM architecture, and the composite config's
  `tie_word_embeddings` (the composite model's tying is what transformers applies); a text-config
  setting the composite model never applies is cleared (`COMPOSITE_IGNORES`: transformers'
  `Gemma3ForConditionalGeneration` has no final logit soft-cap, which its `Gemma3ForCausalLM` has);
- the tensors are the language model's, named as the causal LM names them: `model.X` is stored
  as `model.language_model.X` (transformers 5's layout) or `language_model.model.X` (the older
  llava layout, with the head at `language_model.lm_head`);
- every other tensor (vision tower, projector, Qwen's multi-token-prediction `mtp.*` layers) is
  left unread on purpose (`left_out`), as `first_n_layers` leaves the blocks it drops; each
  tensor under the language model's prefix must still be read, so a misnamed text weight fails.

The loaded model is the text model alone: `save_pretrained` writes it as the causal LM.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.errors import CheckpointError, MissingTensorError
from lmscope.loading.checkpoint import Checkpoint, resolve_key

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["LanguageModelCheckpoint", "language_model_view"]

_MULTIMODAL_SUFFIX = "ForConditionalGeneration"
# (where the causal LM's `model.` lies, where its `lm_head.` lies), as checkpoints store them
LAYOUTS: tuple[tuple[str, str], ...] = (
    ("model.language_model.", "lm_head."),  # transformers 5 (Qwen3.5, re-saved Gemma 3)
    ("language_model.model.", "language_model.lm_head."),  # llava style (Gemma 3, Llama 4 hub)
)

# text-config settings a composite model's forward never applies (transformers 5.24), cleared so
# the text model computes what the checkpoint's own class does: AutoModelForCausalLM loads a
# Gemma 3 checkpoint as Gemma3ForConditionalGeneration, whose logits are not soft-capped
COMPOSITE_IGNORES: dict[str, tuple[str, ...]] = {
    "Gemma3ForConditionalGeneration": ("final_logit_softcapping",),
}


class LanguageModelCheckpoint:
    """A multimodal checkpoint seen as the causal language model inside it (see the module
    docstring). Tensor names are the causal LM's (`model.layers.0...`, `lm_head.weight`).

    Example:
        >>> view = LanguageModelCheckpoint(checkpoint, text_config, LAYOUTS[0])
        >>> view.get("model.embed_tokens.weight")  # model.language_model.embed_tokens.weight
    """

    def __init__(
        self, inner: Checkpoint, hf_config: dict[str, Any], layout: tuple[str, str]
    ) -> None:
        self.inner = inner
        self.hf_config = hf_config
        self.path: Path = inner.path
        self.config_file: Path = inner.config_file
        self.reads_into: bool = inner.reads_into
        body, head = layout
        self._stored: dict[str, str] = {}  # causal-LM name -> stored name
        left_out: list[str] = []
        for name in inner.tensor_names():
            if name.startswith(body):
                self._stored["model." + name.removeprefix(body)] = name
            elif name.startswith(head):
                self._stored["lm_head." + name.removeprefix(head)] = name
            else:
                left_out.append(name)
        self.left_out: tuple[str, ...] = tuple(left_out)

    def __repr__(self) -> str:
        return f"LanguageModelCheckpoint({self.inner!r}, tensors={len(self._stored)})"

    def tensor_names(self) -> list[str]:
        return list(self._stored)

    def resolve(self, name: str) -> str:
        return resolve_key(name, self._stored, f"the language model of {self.path}")

    def unread_tensors(self, used: set[str]) -> list[str]:
        return [name for name in self._stored if name not in used]

    def file_of(self, name: str) -> Path:
        return self.inner.file_of(self._stored[self.resolve(name)])

    def n_elements(self) -> int:
        return self.inner.n_elements()  # vision included: an upper bound is all `_check_fits` needs

    def get(self, name: str, keep: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner.get(self._stored[self.resolve(name)], keep=keep, out=out)

    def tokenizer_loader(self) -> Callable[[], PreTrainedTokenizerBase] | None:
        return self.inner.tokenizer_loader()


def is_multimodal(hf_config: dict[str, Any]) -> bool:
    """Whether a config.json describes a `...ForConditionalGeneration` model with a nested
    `text_config` (T5's ForConditionalGeneration has none: it is an encoder-decoder)."""
    archs = hf_config.get("architectures") or []
    return isinstance(hf_config.get("text_config"), dict) and any(
        str(arch).endswith(_MULTIMODAL_SUFFIX) for arch in archs
    )


def text_config(hf_config: dict[str, Any]) -> dict[str, Any]:
    """The causal language model's config.json inside a multimodal one: `text_config`, with
    the causal-LM architecture lmscope reads (`XForConditionalGeneration` -> `XForCausalLM`,
    else the family named by the text config's `model_type`) and the composite config's
    `tie_word_embeddings` when it states one; the settings the composite model ignores
    (`COMPOSITE_IGNORES`) are cleared.

    Example:
        >>> text_config({"architectures": ["Qwen3_5ForConditionalGeneration"],
        ...              "tie_word_embeddings": True,
        ...              "text_config": {"model_type": "qwen3_5_text"}})["architectures"]
        ['Qwen3_5ForCausalLM']
    """
    from lmscope.loading.families import family_for, supported_architectures

    outer = hf_config["architectures"][0]
    text = dict(hf_config["text_config"])
    model_type = text.get("model_type")
    candidate = outer.removesuffix(_MULTIMODAL_SUFFIX) + "ForCausalLM"
    if candidate not in supported_architectures():
        try:  # a family named by the text model's type
            candidate = family_for({"model_type": model_type}).architectures[0]
        except ValueError:
            raise ValueError(
                f"{outer} is a multimodal checkpoint whose language model ({model_type!r}, "
                f"{candidate} or the like in transformers) is not an architecture lmscope "
                f"supports: supported are {', '.join(supported_architectures())}"
            ) from None
    text["architectures"] = [candidate]
    if "tie_word_embeddings" in hf_config:
        text["tie_word_embeddings"] = hf_config["tie_word_embeddings"]
    for key in COMPOSITE_IGNORES.get(outer, ()):
        text[key] = None
    return text


def _layout(checkpoint: Checkpoint) -> tuple[str, str]:
    """The layout whose language-model prefix the checkpoint's tensors use."""
    names = checkpoint.tensor_names()
    for layout in LAYOUTS:
        if any(name.startswith(layout[0]) for name in names):
            return layout
    raise MissingTensorError(
        f"{checkpoint.path}: a multimodal checkpoint, but no tensor lies under a language-model "
        f"prefix lmscope knows ({', '.join(body for body, _ in LAYOUTS)}); it holds tensors "
        f"such as {names[:4]}"
    )


def language_model_view(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint itself, or, for a multimodal one (`is_multimodal`), its language model
    (`LanguageModelCheckpoint`). A multimodal checkpoint whose language model is no supported
    family is a CheckpointError naming it.

    Example:
        >>> view = language_model_view(DirectoryCheckpoint("Qwen3.5-0.8B"))
        >>> view.hf_config["architectures"]  # view.left_out: the vision tower's tensors
        ['Qwen3_5ForCausalLM']
    """
    if not is_multimodal(checkpoint.hf_config):
        return checkpoint
    try:
        config = text_config(checkpoint.hf_config)
    except ValueError as err:
        raise CheckpointError(f"{checkpoint.config_file}: {err}") from None
    return LanguageModelCheckpoint(checkpoint, config, _layout(checkpoint))
