"""Bad input to the encoders gets a clear error naming the problem and the fix: checkpoints passed
to the wrong model class, token types a model does not have, heads a checkpoint lacks, config
attributes the adapters do not implement."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmscope import HookedEncoder, HookedEncoderDecoder, HookedTransformer
from lmscope.errors import CheckpointError, MissingTensorError
from tests._tiny import TinyModel
from tests._unchecked import unchecked


def _copy(tiny: TinyModel, tmp_path: Path, **config: object) -> Path:
    path = tmp_path / tiny.name
    shutil.copytree(tiny.path, path)
    hf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**hf, **config}))
    return path


def test_wrong_model_class_is_named(encoder_models, tiny_llama: TinyModel) -> None:
    with pytest.raises(CheckpointError, match="decoder-only.*HookedTransformer.from_pretrained"):
        HookedEncoder.from_pretrained(tiny_llama.path)
    with pytest.raises(CheckpointError, match="HookedEncoderDecoder.from_pretrained"):
        HookedEncoder.from_pretrained(encoder_models["t5"].path)
    with pytest.raises(CheckpointError, match="loaded by lmscope.HookedEncoder, not"):
        HookedEncoderDecoder.from_pretrained(encoder_models["bert"].path)
    for name, cls in (("bert_mlm", "HookedEncoder"), ("t5", "HookedEncoderDecoder")):
        with pytest.raises(CheckpointError, match=f"encoder.*{cls}.from_pretrained"):
            HookedTransformer.from_pretrained(encoder_models[name].path)


def test_unsupported_encoder_architecture(encoder_models, tmp_path: Path) -> None:
    path = _copy(encoder_models["bert"], tmp_path, architectures=["BertForTokenClassification"])
    with pytest.raises(CheckpointError, match="not one lmscope's HookedEncoder loads.*BertModel"):
        HookedEncoder.from_pretrained(path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("is_decoder", True),
        ("position_embedding_type", "relative_key"),
        ("add_cross_attention", True),
    ],
)
def test_unimplemented_config_is_refused(encoder_models, tmp_path: Path, key, value) -> None:
    path = _copy(encoder_models["bert"], tmp_path, **{key: value})
    with pytest.raises(CheckpointError, match=key):
        HookedEncoder.from_pretrained(path)


def test_missing_token_type_vocab(encoder_models, tmp_path: Path) -> None:
    """A config with token types whose checkpoint lacks their embedding."""
    path = _copy(encoder_models["bert"], tmp_path)
    weights = load_file(path / "model.safetensors")
    del weights["embeddings.token_type_embeddings.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MissingTensorError, match="token_type_embeddings"):
        HookedEncoder.from_pretrained(path)


def test_token_types_outside_the_vocab(encoder_models, encoder_inputs) -> None:
    tokens, mask = encoder_inputs
    ones = torch.ones_like(tokens)
    roberta = HookedEncoder.from_pretrained(encoder_models["roberta"].path)
    with unchecked(), pytest.raises(ValueError, match="RoBERTa has no sentence B type"):
        roberta(tokens, token_type_ids=ones, attention_mask=mask)
    distil = HookedEncoder.from_pretrained(encoder_models["distilbert"].path)
    with (
        unchecked(),
        pytest.raises(ValueError, match="no token type embeddings.*drop token_type_ids"),
    ):
        distil(tokens, token_type_ids=ones)
    distil(tokens, token_type_ids=torch.zeros_like(tokens))  # what a tokenizer gives: fine
    bert = HookedEncoder.from_pretrained(encoder_models["bert_mlm"].path)
    with unchecked(), pytest.raises(ValueError, match="ids from 3 to 3.*type_vocab_size=3"):
        bert(tokens, token_type_ids=ones * 3)
    with (
        unchecked(),
        pytest.raises(ValueError, match="token_type_ids must be integer ids of the tokens' shape"),
    ):
        bert(tokens, token_type_ids=ones[:, :4])


def test_heads_the_checkpoint_lacks(encoder_models, encoder_inputs) -> None:
    tokens, _ = encoder_inputs
    headless = HookedEncoder.from_pretrained(encoder_models["bert"].path)
    assert headless(tokens).shape == (3, 9, 30)  # default: the hidden states
    with (
        unchecked(),
        pytest.raises(ValueError, match="needs an MLM head.*return_type='embeddings'"),
    ):
        headless(tokens, return_type="logits")
    mlm = HookedEncoder.from_pretrained(encoder_models["bert_mlm"].path)
    with unchecked(), pytest.raises(ValueError, match="needs a pooler"):
        mlm(tokens, return_type="pooled")
    with unchecked(), pytest.raises(ValueError, match="attention_mask has shape"):
        mlm(tokens, attention_mask=torch.ones(3, 4, dtype=torch.long))
    with unchecked(), pytest.raises(ValueError, match="n_ctx"):
        mlm(torch.full((1, 30), 5))
