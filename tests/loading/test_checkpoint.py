"""Loading adopts checkpoint tensors without copying them, and that sharing is never visible:
parameters are private copy-on-write maps, so edits reach neither the file nor another parameter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmscope import HookedTransformer
from lmscope.loading.checkpoint import DirectoryCheckpoint
from tests.conftest import TinyModel


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def _is_file_map(t: torch.Tensor) -> bool:
    """A tensor from `_map_private` has a fixed-size storage that torch did not allocate."""
    return not t.untyped_storage().resizable()


def test_llama_weights_are_adopted_without_copies(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(str(tiny_llama.path))
    weights = [p for name, p in model.named_parameters() if "weight" in name or "W_" in name]
    assert weights and all(_is_file_map(p) for p in weights), [
        name for name, p in model.named_parameters() if not _is_file_map(p)
    ]
    hf = tiny_llama.hf_model
    torch.testing.assert_close(
        model.blocks[0].attn.q_weight, hf.model.layers[0].self_attn.q_proj.weight, atol=0, rtol=0
    )


def test_edits_and_processing_never_reach_the_file(tiny_llama: TinyModel) -> None:
    before = _digest(tiny_llama.path)
    model = HookedTransformer.from_pretrained_no_processing(str(tiny_llama.path))
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(0)
        model.W_E[3] = 7.0
    processed = HookedTransformer.from_pretrained(str(tiny_llama.path))  # folds in place
    assert _digest(tiny_llama.path) == before
    again = HookedTransformer.from_pretrained_no_processing(str(tiny_llama.path))
    assert again.blocks[0].attn.W_Q.abs().sum() > 0 and not torch.all(again.W_E[3] == 7.0)
    raw = tiny_llama.hf_model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(processed.blocks[0].attn.q_weight, raw)  # fold_ln wrote in place


def test_tied_embedding_and_unembedding_are_separate(tiny_llama_tied_bias: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(str(tiny_llama_tied_bias.path))
    torch.testing.assert_close(model.W_U, model.W_E.T, atol=0, rtol=0)
    with torch.no_grad():
        model.W_U.zero_()
    assert model.W_E.abs().sum() > 0  # the tied checkpoint tensor gave two private maps


def test_kept_tensors_do_not_alias_and_match_the_file(tiny_llama: TinyModel) -> None:
    checkpoint = DirectoryCheckpoint(tiny_llama.path)
    name = "model.embed_tokens.weight"
    a, b = checkpoint.get(name, keep=True), checkpoint.get(name, keep=True)
    reference = load_file(tiny_llama.path / "model.safetensors")[name]
    torch.testing.assert_close(a, reference, atol=0, rtol=0)
    a[0, 0] = 123.0
    assert b[0, 0] == reference[0, 0]
    assert checkpoint.get(name)[0, 0] == reference[0, 0]
