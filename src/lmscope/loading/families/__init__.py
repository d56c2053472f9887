"""Architecture families: each maps a Hugging Face checkpoint onto lmscope's layout.

A family is data: `config_from_hf(hf_config) -> dict` of HookedTransformerConfig fields, and
`weight_map(cfg, hf_config) -> {our TransformerLens name: source}` where a source is a checkpoint tensor name,
or `(transform, name, ...)` whose transform (a `lmscope.loading.transforms.Transform`, which also
knows its inverse, so `lmscope.loading.export` reads the same table backwards) turns those tensors
into our layout. Transforms that several families share live in `lmscope.loading.transforms`. Adding a family is one file in this package that defines
`FAMILY = Family(...)` (or `FAMILIES = [...]`); it is discovered automatically.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lmscope.config import HookedTransformerConfig
from lmscope.loading.transforms import HeadsBias, HeadsIn, HeadsOut, Transpose

Source = str | tuple  # "name" or (Transform, "name", ...)
WeightMap = dict[str, Source]


@dataclass(frozen=True)
class Family:
    """One architecture family: which HF `architectures` it reads and how."""

    name: str
    architectures: tuple[str, ...]
    config_from_hf: Callable[[dict[str, Any]], dict[str, Any]]
    weight_map: Callable[[HookedTransformerConfig, dict[str, Any]], WeightMap]


def heads_in(n_heads: int) -> HeadsIn:
    """[n_heads * d_head, d_model] -> [n_heads, d_model, d_head] (W_Q, W_K, W_V)."""
    return HeadsIn(n_heads)


def heads_out(n_heads: int) -> HeadsOut:
    """[d_model, n_heads * d_head] -> [n_heads, d_head, d_model] (W_O)."""
    return HeadsOut(n_heads)


def heads_bias(n_heads: int) -> HeadsBias:
    """[n_heads * d_head] -> [n_heads, d_head]."""
    return HeadsBias(n_heads)


transpose = Transpose()  # nn.Linear [out, in] -> [in, out] (W_in, W_out, W_U)


# -- shared config readers ---------------------------------------------------------------------------
def rope_settings(hf: dict[str, Any]) -> dict[str, Any]:
    """rotary_base, rope_scaling and the rotary fraction from either transformers 5
    `rope_parameters` or the older top-level keys (rope_theta, rope_scaling, rotary_pct, ...)."""
    params = dict(hf.get("rope_parameters") or {})
    legacy = hf.get("rope_scaling") or {}
    base = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    fraction = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0))
    )
    kind = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    scaling = {
        **legacy,
        **{k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")},
    }
    scaling["rope_type"] = kind
    return {
        "rotary_base": float(base),
        "rope_scaling": None if kind == "default" else scaling,
        "fraction": fraction,
    }


@functools.cache
def _families() -> list[Family]:
    """Every module in this package that defines `FAMILY` (or `FAMILIES`), found at first use."""
    found: list[Family] = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found += getattr(module, "FAMILIES", [getattr(module, "FAMILY", None)])
    return [fam for fam in found if fam is not None]


def supported_architectures() -> list[str]:
    """Every HF `architectures` entry lmscope can load."""
    return sorted(arch for fam in _families() for arch in fam.architectures)


def family_for(hf_config: dict[str, Any]) -> Family:
    """The family that reads a checkpoint with this config.json (clear error if none)."""
    archs = hf_config.get("architectures") or []
    for fam in _families():
        if any(arch in fam.architectures for arch in archs):
            return fam
    model_type = hf_config.get("model_type")
    for fam in _families():
        # model_type only decides when the config names no architecture: a named head that no
        # family reads (GPT2ForSequenceClassification, ...) must not load as a language model.
        if not archs and model_type is not None and model_type == fam.name:
            return fam
    supported = supported_architectures()
    close = [m for a in archs for m in difflib.get_close_matches(a, supported, n=3, cutoff=0.6)]
    hint = f" Closest supported: {', '.join(close)}." if close else ""
    raise ValueError(
        f"architecture {archs or model_type!r} is not supported by lmscope.{hint} "
        f"Supported architectures: {', '.join(supported)}"
    )
