"""Loading adopts checkpoint tensors without copying them, and that sharing is never visible:
parameters are private copy-on-write maps, so edits reach neither the file nor another parameter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmscope import HookedTransformer
from lmscope.loading import _adopt
from lmscope.loading.checkpoint import DirectoryCheckpoint
from lmscope.loading.transforms import Chain, Part, Transpose
from tests._tiny import TinyModel


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


def test_gpt2_conv1d_weights_are_adopted_as_strided_views(tiny_gpt2: TinyModel) -> None:
    """Conv1D stores [in, out] and fuses q, k, v: the parameters become transposed (and, for
    q/k/v, strided) views of the file map, with HF's values and HF's logits."""
    model = HookedTransformer.from_pretrained_no_processing(str(tiny_gpt2.path))
    weights = [p for name, p in model.named_parameters() if "weight" in name or "W_" in name]
    assert weights and all(_is_file_map(p) for p in weights)
    attn, hf_attn = model.blocks[0].attn, tiny_gpt2.hf_model.transformer.h[0].attn
    assert not attn.q_weight.is_contiguous()  # a column block of c_attn, transposed
    d = model.cfg.d_model
    torch.testing.assert_close(attn.q_weight, hf_attn.c_attn.weight[:, :d].T, atol=0, rtol=0)
    torch.testing.assert_close(attn.v_weight, hf_attn.c_attn.weight[:, 2 * d :].T, atol=0, rtol=0)
    torch.testing.assert_close(
        model.blocks[0].mlp.W_in,
        tiny_gpt2.hf_model.transformer.h[0].mlp.c_fc.weight,
        atol=0,
        rtol=0,
    )
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7))
    with torch.no_grad():
        expected = tiny_gpt2.hf_model(tokens).logits
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=0)
        # an edit of one strided parameter changes only it, and not the file
        before = _digest(tiny_gpt2.path)
        model.blocks[0].attn.W_Q.zero_()
        assert attn.k_weight.abs().sum() > 0 and attn.v_weight.abs().sum() > 0
    assert _digest(tiny_gpt2.path) == before


def test_processed_loads_adopt_only_the_weights_processing_leaves(tiny_llama: TinyModel) -> None:
    """RMSNorm: fold_ln rewrites the norms' readers (q, k, v, the MLP's gate and in, W_U) and
    value-bias folding b_O, which get fresh memory; W_E, W_O and W_out stay as stored and are
    adopted, as an unprocessed load adopts them."""
    model = HookedTransformer.from_pretrained(str(tiny_llama.path))
    mapped = {name for name, p in model.named_parameters() if _is_file_map(p)}
    layers = range(model.cfg.n_layers)
    kept = [f"blocks.{i}.{name}" for i in layers for name in ("attn.o_weight", "mlp.out_weight")]
    assert mapped == {"embed.W_E", *kept}
    raw = HookedTransformer.from_pretrained_no_processing(str(tiny_llama.path))
    assert torch.equal(model.blocks[1].mlp.out_weight, raw.blocks[1].mlp.out_weight)


def test_get_out_reads_the_file_and_refuses_another_shape(tiny_llama: TinyModel) -> None:
    checkpoint = DirectoryCheckpoint(tiny_llama.path)
    name = "model.layers.0.mlp.up_proj.weight"
    reference = load_file(tiny_llama.path / "model.safetensors")[name]
    out = torch.full_like(reference, float("nan"))
    assert checkpoint.get(name, out=out) is out
    torch.testing.assert_close(out, reference, atol=0, rtol=0)
    as_double = torch.empty(reference.shape, dtype=torch.float64)  # not the file's dtype: copied
    torch.testing.assert_close(checkpoint.get(name, out=as_double), reference.double())
    with pytest.raises(ValueError, match=r"up_proj.weight.*has shape .* the model expects"):
        checkpoint.get(name, out=torch.empty(reference.shape[0] + 1, reference.shape[1]))


def test_adopt_takes_views_and_refuses_overlap() -> None:
    """The weight map gives a parameter its checkpoint tensor in the parameter's own layout, so
    a view of the file (a Conv1D's k column block, transposed) becomes the parameter as it is."""
    fused = torch.arange(48.0).view(4, 12)  # a Conv1D c_attn [in, 3 * out]: k is columns 6..11
    k_block = Chain((Part(1, 6, 12, 12), Transpose()))(fused)  # k_weight [out, in]
    param = torch.nn.Parameter(torch.empty(6, 4))
    assert _adopt(param, k_block)
    assert param.stride() == (1, 12)
    assert param.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
    torch.testing.assert_close(param.data, fused[:, 6:].T, atol=0, rtol=0)
    fresh = torch.nn.Parameter(torch.empty(6, 4))
    assert not _adopt(fresh, torch.zeros(1).expand(6, 4))  # overlapping elements
    assert not _adopt(fresh, k_block.double())  # another dtype: read and cast instead
