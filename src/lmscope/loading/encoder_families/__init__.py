"""Encoder and encoder-decoder families: BERT-style encoders (HookedEncoder) and T5
(HookedEncoderDecoder), mapped onto lmscope's layout as the decoder families are
(`lmscope.loading.families.Family`: a config reader, the HF config keys it handles, and a weight
map from TransformerLens names to checkpoint tensors).

They live apart from the decoder families so `HookedTransformer.from_pretrained` never builds a
decoder from an encoder checkpoint; each family names the model class that loads it (`MODEL`),
and a checkpoint passed to the wrong class is refused with the right one named.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from lmscope.loading.families import Family

ENCODER = "HookedEncoder"
ENCODER_DECODER = "HookedEncoderDecoder"


@functools.cache
def _families() -> list[tuple[Family, str]]:
    """(family, model class name) of every module here that defines `FAMILIES` and `MODEL`."""
    found: list[tuple[Family, str]] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += [(fam, module.MODEL) for fam in module.FAMILIES]
        _OUTPUT_HEADS.update(module.OUTPUT_HEADS)
    return found


_OUTPUT_HEADS: dict[str, tuple[str, str]] = {}


def output_head(family: Family) -> tuple[str, str] | None:
    """(the family's own output head tensor, the embedding a tied model reads instead), or None
    for a family without an output head."""
    _families()
    return _OUTPUT_HEADS.get(family.name)


def supported_architectures(model_class: str) -> list[str]:
    """The HF `architectures` entries the class named `model_class` loads.

    Example:
        >>> supported_architectures("HookedEncoderDecoder")
        ['T5ForConditionalGeneration']
    """
    return sorted(a for fam, cls in _families() if cls == model_class for a in fam.architectures)


def encoder_family_for(hf_config: dict[str, Any]) -> tuple[Family, str] | None:
    """The encoder family of a checkpoint's config.json and the model class that loads it (None
    when no encoder family reads it)."""
    archs = hf_config.get("architectures") or []
    for fam, cls in _families():
        if any(arch in fam.architectures for arch in archs):
            return fam, cls
    model_type = hf_config.get("model_type")
    for fam, cls in _families():
        if not archs and model_type == fam.name:
            return fam, cls
    return None
