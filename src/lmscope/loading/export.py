"""Export: a HookedTransformer back to a Hugging Face checkpoint of its family, weights as they
are now (fine-tuned, ablated, or processed where HF can express it).

The family's weight map is read backwards: each storage parameter (already in the checkpoint's
own layout) is copied into its checkpoint tensor, or goes through its transform's inverse into
preallocated checkpoint tensors (`lmscope.loading.transforms`). The config.json is
the one the model was loaded from (`model.hf_config`); it must still describe the model, which
`_check_config` verifies by reading it again with the family's `config_from_hf`. What HF cannot
express is refused before any file is written: a config the model no longer matches, a weight
with no checkpoint tensor that is not zero (a folded bias), two weights that share one tensor
but differ, a transform with no inverse. Folded norms export as weight 1 / bias 0; a tied
unembedding that no longer equals the embedding exports untied.

Example:
    >>> model = HookedTransformer.from_pretrained_no_processing("smollm2-135m")
    >>> model.save_pretrained("smollm2-edited")   # AutoModelForCausalLM.from_pretrained loads it
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import Family, family_for
from lmscope.loading.pieces import view_name
from lmscope.loading.transforms import Transform

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from lmscope.model import HookedTransformer

__all__ = ["hf_checkpoint", "save_pretrained", "to_hf"]

# Config fields that do not change what the model computes (names, hook switches, tokenizer
# behaviour, numerics chosen at load) or that export handles itself (tied embeddings).
_NOT_COMPUTATION = frozenset(
    {
        "model_name",
        "original_architecture",
        "tokenizer_name",
        "use_attn_result",
        "use_split_qkv_input",
        "use_hook_mlp_in",
        "use_attn_in",
        "ungroup_grouped_query_attention",  # repeats k/v activations; the weights stay grouped
        "default_prepend_bos",
        "default_padding_side",
        "dtype",
        "device",
        "seed",
        "init_weights",
        "initializer_range",
        "from_checkpoint",
        "processing",
        "tie_word_embeddings",
    }
)
_FOLDED_NORMS = {"LN": "LNPre", "RMS": "RMSPre"}  # fold_ln: the norm's weights are 1 (and 0)
_FIX = "load the model with HookedTransformer.from_pretrained_no_processing to export it"


class _Conflict(ValueError):
    """Two model weights stored in one checkpoint tensor hold different values."""

    def __init__(self, names: tuple[str, str], tensor: str) -> None:
        self.names, self.tensor = names, tensor
        shown = [view_name(name) for name in names]
        super().__init__(
            f"{shown[0]} and {shown[1]} are both stored in the checkpoint tensor {tensor!r}, but "
            "the model holds different values in them, which HF cannot express: make them equal "
            f"(edit both), or {_FIX}"
        )


def hf_checkpoint(
    model: HookedTransformer, hf_config: dict[str, Any] | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The model as HF checkpoint tensors {name: CPU tensor in the model's dtype} and the
    config.json dict that describes them. `hf_config` defaults to the config the model was
    loaded from; a model built from a HookedTransformerConfig needs one passed.

    Example:
        >>> tensors, config = hf_checkpoint(model)
        >>> tensors["model.layers.0.self_attn.q_proj.weight"].shape
        torch.Size([576, 576])
    """
    hf = _source_config(model, hf_config)
    family = _family(hf)
    fields = _check_config(model, family, hf)
    tied = bool(fields.get("tie_word_embeddings"))
    try:
        tensors = _tensors(model, family, hf, fields, tied)
    except _Conflict as err:
        if not (tied and "unembed.weight" in err.names):
            raise
        tied = False  # the unembedding was edited apart from the embedding: give it its own head
        tensors = _tensors(model, family, hf, fields, tied)
    hf.update(tie_word_embeddings=tied, dtype=str(model.cfg.dtype).removeprefix("torch."))
    hf.pop("torch_dtype", None)
    hf["architectures"] = [_architecture(family, hf)]
    return tensors, hf


def save_pretrained(
    model: HookedTransformer, path: str | os.PathLike, hf_config: dict[str, Any] | None = None
) -> Path:
    """Write `config.json`, `model.safetensors` (and the tokenizer's files, when the model has a
    tokenizer) to the directory `path`, which `transformers.AutoModelForCausalLM.from_pretrained`
    and `HookedTransformer.from_pretrained` load. Returns the directory.

    Example:
        >>> save_pretrained(model, "out/")
        PosixPath('out')
    """
    from safetensors.torch import save_file

    path = Path(path)
    others = _other_weights(path)
    if others:
        raise FileExistsError(
            f"{path} already holds other weight files ({', '.join(others)}), which loaders "
            "would read beside the export; choose an empty directory or remove them"
        )
    tensors, hf = hf_checkpoint(model, hf_config)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(path)
    return path


def to_hf(
    model: HookedTransformer, hf_config: dict[str, Any] | None = None, **kwargs: Any
) -> PreTrainedModel:
    """The model as a transformers model of its family (in eval mode, in the model's dtype),
    built from `hf_checkpoint` without writing files. `kwargs` go to transformers'
    `from_pretrained` (e.g. `attn_implementation="eager"`).

    Example:
        >>> hf_model = to_hf(model)
        >>> hf_model(tokens).logits   # equals model(tokens)
    """
    import transformers
    from transformers import AutoConfig

    tensors, hf = hf_checkpoint(model, hf_config)
    settings = {k: v for k, v in hf.items() if k != "model_type"}
    config = AutoConfig.for_model(hf["model_type"], **settings)
    model_class = getattr(transformers, hf["architectures"][0])
    hf_model, info = model_class.from_pretrained(
        None,
        config=config,
        state_dict=tensors,
        dtype=model.cfg.dtype,
        output_loading_info=True,
        **kwargs,
    )
    missing = [
        k for k in info["missing_keys"] if not (hf["tie_word_embeddings"] and "lm_head" in k)
    ]
    problems = {
        "missing": missing,
        "unexpected": info["unexpected_keys"],
        "mismatched": info["mismatched_keys"],
    }
    if any(problems.values()):
        raise RuntimeError(
            f"transformers did not take the exported tensors as they are: {problems}"
        )
    return hf_model.eval()


def _source_config(model: HookedTransformer, hf_config: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of the HF config to export under (given, else the one the model was loaded from)."""
    if hf_config is None:
        hf_config = getattr(model, "hf_config", None)
    if hf_config is None:
        raise ValueError(
            "this model was not loaded from a checkpoint, so there is no HF config.json to export "
            "it under; pass hf_config= a config.json dict of its family (e.g. "
            "transformers.LlamaConfig(...).to_dict()) that describes it"
        )
    if hasattr(hf_config, "to_dict"):
        hf_config = hf_config.to_dict()
    return json.loads(json.dumps(hf_config))  # a deep copy that is sure to be valid JSON


def _family(hf: dict[str, Any]) -> Family:
    try:
        return family_for(hf)
    except ValueError as err:
        raise ValueError(f"cannot export: {err}") from None


def _architecture(family: Family, hf: dict[str, Any]) -> str:
    """The family's causal-LM class: the config's own when it is one (Llama or Mistral), else
    the family's (a base-model checkpoint such as GPT2Model exports with its LM head)."""
    heads = [a for a in family.architectures if a.endswith(("ForCausalLM", "LMHeadModel"))]
    own = [a for a in hf.get("architectures") or [] if a in heads]
    return (own or heads)[0]


def _check_config(model: HookedTransformer, family: Family, hf: dict[str, Any]) -> dict[str, Any]:
    """The family's config fields for `hf`, refusing when the model computes something else
    (config overrides at load, a changed field): HF would run another model."""
    try:
        fields = family.config_from_hf(hf)
        expected = HookedTransformerConfig(**{**fields, "init_weights": False})
    except (KeyError, TypeError, ValueError, NotImplementedError) as err:
        raise ValueError(
            f"cannot export: the HF config is not a usable {family.name} config ({err})"
        ) from None
    differ = []
    for field in dataclasses.fields(HookedTransformerConfig):
        name = field.name
        ours, theirs = getattr(model.cfg, name), getattr(expected, name)
        if name in _NOT_COMPUTATION or ours == theirs:
            continue
        if name == "normalization_type" and ours == _FOLDED_NORMS.get(theirs):
            continue
        differ.append(f"{name}={ours!r} (the config gives {theirs!r})")
    if differ:
        raise ValueError(
            f"cannot export: the model no longer matches its {family.name} config.json, so HF would "
            f"run a different model: {', '.join(differ)}. Load it without those overrides, or pass "
            "hf_config= a config.json dict that gives these values"
        )
    return fields


def _tensors(
    model: HookedTransformer,
    family: Family,
    hf: dict[str, Any],
    fields: dict[str, Any],
    tied: bool,
) -> dict[str, Tensor]:
    """Every checkpoint tensor, written from the model's parameters (copied, or through the
    inverse transforms)."""
    cfg = HookedTransformerConfig(**{**fields, "init_weights": False, "tie_word_embeddings": tied})
    weight_map = family.weight_map(cfg, {**hf, "tie_word_embeddings": tied})
    params = dict(model.named_parameters())
    _check_unmapped(params, weight_map, hf)
    writers: dict[str, int] = {}
    for source in weight_map.values():
        for name in _names(source)[1]:
            writers[name] = writers.get(name, 0) + 1
    tensors: dict[str, Tensor] = {}
    written: dict[str, tuple[Tensor, str]] = {}  # shared tensors: which elements are set, by whom
    with torch.no_grad():
        for ours, source in weight_map.items():
            transform, names = _names(source)
            value = params.get(ours)
            if value is None:  # a norm folded away by fold_ln: weight 1, bias 0
                value = _folded_norm(ours, model)
            value = value.detach()
            shapes = transform.source_shapes(value.shape) if transform else [tuple(value.shape)]
            outs = []
            for name, shape in zip(names, shapes, strict=True):
                if name not in tensors:
                    tensors[name] = torch.zeros(shape, dtype=value.dtype)
                outs.append(tensors[name])
            if writers[names[0]] == 1:
                _write(transform, value, outs)
            else:
                _write_shared(ours, transform, value, names[0], outs[0], written)
    return tensors


def _names(source: Any) -> tuple[Transform | None, list[str]]:
    if isinstance(source, str):
        return None, [source]
    return source[0], list(source[1:])


def _write(transform: Transform | None, value: Tensor, outs: list[Tensor]) -> None:
    if transform is None:
        outs[0].copy_(value)
    else:
        transform.inverse(value, *outs)


def _write_shared(
    ours: str,
    transform: Transform | None,
    value: Tensor,
    name: str,
    out: Tensor,
    written: dict[str, tuple[Tensor, str]],
) -> None:
    """Write `value` into its part of `out`, a tensor other weights write too (a fused q/k/v,
    a norm two branches read, a tied embedding): where one was written already, the values must
    agree to the dtype's rounding (Gemma's scaled embedding comes back divided)."""
    region = torch.zeros_like(out)
    _write(transform, torch.full_like(value, float("nan")), [region])
    region = region.isnan()
    fresh = torch.zeros_like(out)
    _write(transform, value, [fresh])
    done, by = written.get(name, (torch.zeros_like(region), ""))
    both = region & done
    if both.any():
        eps = torch.finfo(out.dtype).eps
        if not torch.allclose(out[both].double(), fresh[both].double(), rtol=2 * eps, atol=0.0):
            raise _Conflict((by, ours), name)
    out[region] = fresh[region]
    written[name] = (done | region, by or ours)


def _folded_norm(ours: str, model: HookedTransformer) -> Tensor:
    """The weights or bias (zeros) of a norm that fold_ln folded into its readers: weights that
    apply 1, so 0 where the norm adds 1 to its weight (Gemma's `1 + w`)."""
    size, dtype = model.cfg.d_model, model.cfg.dtype
    if not ours.endswith(".w"):
        return torch.zeros(size, dtype=dtype)
    offset = getattr(model.get_submodule(ours.rsplit(".", 1)[0]), "weight_offset", 0.0)
    return torch.full((size,), 1.0 - offset, dtype=dtype)


def _check_unmapped(
    params: dict[str, Tensor], weight_map: dict[str, Any], hf: dict[str, Any]
) -> None:
    """Refuse, before any work, a transform with no inverse and a model weight with no
    checkpoint tensor that is not at its default (a bias 0, a norm weight 1)."""
    for ours, source in weight_map.items():
        transform, names = _names(source)
        if ours in params and transform is not None and not transform.invertible:
            raise ValueError(
                f"cannot export {view_name(ours)}: it was computed from {', '.join(names)} by "
                f"{transform}, which cannot be undone, so this checkpoint layout cannot be "
                "written back"
            )
    arch = (hf.get("architectures") or [hf.get("model_type")])[0]
    for ours, param in params.items():
        if ours in weight_map:
            continue
        norm_weight = ours.endswith(".w")
        default = 1.0 if norm_weight else 0.0
        if bool((param == default).all()):
            continue
        why = {
            "unembed.b_U": " (fold_ln folds the final norm's bias into it)",
            "b_O": " (fold_value_biases moves b_V into it)",
        }
        hint = next((v for k, v in why.items() if ours.endswith(k)), "")
        raise ValueError(
            f"cannot export {view_name(ours)}: {arch} has no tensor for it, and it is not "
            f"{default:g}{hint}, so HF would compute something else; {_FIX}"
        )


def _other_weights(path: Path) -> list[str]:
    """Weight files in `path` that an export would not overwrite."""
    if not path.is_dir():
        return []
    found = [*path.glob("*.safetensors"), *path.glob("*.bin"), *path.glob("*.index.json")]
    return sorted(p.name for p in found if p.name != "model.safetensors")
