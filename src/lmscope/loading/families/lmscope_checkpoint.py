"""lmscope's own checkpoints: a model of any HookedTransformerConfig (one no Hugging Face
architecture describes: attention-only, no norms, ...), as `lmscope.train` saves it.

A checkpoint directory holds `config.json` ({"architectures": ["HookedTransformer"], "model_type":
"lmscope", "hooked_transformer_config": {the config's fields}}) and `model.safetensors`: the
model's `named_weights()`, i.e. TransformerLens's state-dict names and layouts (`blocks.0.attn.W_Q`
[head, d_model, d_head], ...). `HookedTransformer.from_pretrained(dir)` reads it through this
family like any other checkpoint (with weight processing unless `from_pretrained_no_processing`),
and the tensors load into a TransformerLens model with `load_state_dict(..., strict=False)`.

Example:
    >>> save_checkpoint(model, "ckpt")
    >>> HookedTransformer.from_pretrained_no_processing("ckpt")    # the same weights
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, WeightMap

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer

ARCHITECTURE = "HookedTransformer"
MODEL_TYPE = "lmscope"
CONFIG_KEY = "hooked_transformer_config"
WEIGHTS_FILE = "model.safetensors"
# Fields that describe where and how a model was last run, not what it is.
_NOT_SAVED = ("device", "dtype", "from_checkpoint", "init_weights")


def config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The config's fields as JSON values (what config.json stores), without the runtime ones
    (device, dtype, ...)."""
    fields = dataclasses.asdict(cfg)
    return {k: v for k, v in fields.items() if k not in _NOT_SAVED}


def read_config(hf: dict[str, Any]) -> dict[str, Any]:
    """HookedTransformerConfig fields from an lmscope config.json."""
    fields = hf.get(CONFIG_KEY)
    if not isinstance(fields, dict):
        raise ValueError(f"an lmscope checkpoint's config.json needs a {CONFIG_KEY!r} object")
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"config fields {unknown} are unknown to this lmscope version (saved by a newer one?)"
        )
    return dict(fields)


def weight_names(cfg: HookedTransformerConfig) -> list[str]:
    """The TransformerLens names of a model of `cfg`'s weights (built on the meta device)."""
    from lmscope.model import HookedTransformer

    with torch.device("meta"):
        model = HookedTransformer(dataclasses.replace(cfg, init_weights=False, device=None))
    return list(model.named_weights())


def weight_map(cfg: HookedTransformerConfig, hf: dict[str, Any]) -> WeightMap:
    """Each weight view reads the tensor of its own name."""
    return {name: name for name in weight_names(cfg)}


def save_checkpoint(
    model: HookedTransformer, path: str | os.PathLike, extra_files: dict[str, bytes] | None = None
) -> Path:
    """Write `model` as an lmscope checkpoint directory (config.json, model.safetensors, the
    tokenizer's files if it has one, and `extra_files` {name: bytes}). The directory is written
    beside its final name and renamed into place, so a kill leaves the old checkpoint or the new
    one, never a part. Returns the path.

    Example:
        >>> save_checkpoint(model, "runs/step_1000")
    """
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tensors = {
        n: v.detach().to("cpu", copy=True).contiguous() for n, v in model.named_weights().items()
    }
    save_file(tensors, partial / WEIGHTS_FILE, metadata={"format": "pt", "layout": "lmscope"})
    config = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE}
    config[CONFIG_KEY] = config_to_json(model.cfg)
    (partial / "config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(partial)
    for name, data in (extra_files or {}).items():
        (partial / name).write_bytes(data)
    if path.exists():
        shutil.rmtree(path)
    os.replace(partial, path)
    return path


def is_lmscope_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding an lmscope checkpoint's config.json."""
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


FAMILY = Family(
    name=MODEL_TYPE,
    architectures=(ARCHITECTURE,),
    read_config=read_config,
    weight_map=weight_map,
    config_keys=frozenset({CONFIG_KEY}),
)
