"""Export back to Hugging Face: every family round-trips (load -> save_pretrained -> transformers
loads -> the original model's logits, and the original tensors bit for bit), edited weights export
as edited, processed weights export where HF can express them, and what it cannot is refused
before any file is written. The tiny checkpoints are the family table of tests/test_dtypes.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_dtypes import FAMILIES, FAMILY_PARAMS
from transformers import AutoModelForCausalLM

from lmscope import HookedTransformer, HookedTransformerConfig
from tests._tiny import TinyModel

ATOL = 1e-5  # lmscope's float32 tolerance against transformers


def _hf_load(path: Path, **kwargs: object) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", experts_implementation="eager", **kwargs
    ).eval()


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


@pytest.fixture(params=FAMILY_PARAMS)
def family(request: pytest.FixtureRequest) -> TinyModel:
    return FAMILIES[request.param](request)


@torch.no_grad()
def test_every_family_round_trips_through_transformers(
    family: TinyModel, tokens: torch.Tensor, tmp_path: Path
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(family.path)
    model.save_pretrained(tmp_path)
    exported, original = _tensors(tmp_path), _tensors(family.path)
    shared = set(exported) & set(original)
    assert len(shared) >= len(original) - 1  # all but a tied model's duplicate lm_head.weight
    for name in shared:
        if "embed_positions" in name:  # OPT: rows before its position offset are never read
            assert torch.equal(exported[name][2:], original[name][2:]), name
        else:
            assert torch.equal(exported[name], original[name]), name
    got = _hf_load(tmp_path)(tokens).logits
    torch.testing.assert_close(got, family.hf_model(tokens).logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_an_ablated_head_exports_as_ablated(tiny_llama: TinyModel, tokens: torch.Tensor) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    model.blocks[0].attn.W_O[1] = 0.0  # zero-ablate L0H1 in the weights
    ablated = model(tokens)
    assert (ablated - tiny_llama.hf_model(tokens).logits).abs().max() > 1e-2
    got = model.to_hf(attn_implementation="eager")(tokens).logits
    torch.testing.assert_close(got, ablated, atol=ATOL, rtol=0)


@torch.no_grad()
def test_an_unembedding_edited_apart_from_its_tied_embedding_exports_untied(
    tiny_gpt2: TinyModel, tokens: torch.Tensor, tmp_path: Path
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    model.unembed.W_U[:, 5] *= 2.0
    model.save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text()
    assert '"tie_word_embeddings": false' in config
    assert "lm_head.weight" in _tensors(tmp_path)
    torch.testing.assert_close(_hf_load(tmp_path)(tokens).logits, model(tokens), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["llama", "phi"])  # an RMSNorm and a LayerNorm family
@torch.no_grad()
def test_processed_weights_export_with_unit_norms(
    name: str, request: pytest.FixtureRequest, tokens: torch.Tensor
) -> None:
    tiny = FAMILIES[name](request)
    model = HookedTransformer.from_pretrained(tiny.path)  # fold_ln, centring, value biases
    assert model.cfg.normalization_type in ("LNPre", "RMSPre")
    got = model.to_hf(attn_implementation="eager")(tokens).logits
    torch.testing.assert_close(got, model(tokens), atol=ATOL, rtol=0)
    expected = tiny.hf_model(tokens).logits  # centred unembedding: equal log-probs
    torch.testing.assert_close(got.log_softmax(-1), expected.log_softmax(-1), atol=ATOL, rtol=0)


def test_bfloat16_exports_bfloat16(tiny_llama: TinyModel, tmp_path: Path) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path, dtype="bfloat16")
    model.save_pretrained(tmp_path)
    exported, original = _tensors(tmp_path), _tensors(tiny_llama.path)
    assert {t.dtype for t in exported.values()} == {torch.bfloat16}
    assert all(torch.equal(exported[k], original[k].bfloat16()) for k in original)
    assert _hf_load(tmp_path).dtype == torch.bfloat16


def test_saved_directory_reloads_in_lmscope_with_its_tokenizer(
    tiny_gpt2_tok: TinyModel, tmp_path: Path
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok.path)
    model.save_pretrained(tmp_path)
    again = HookedTransformer.from_pretrained_no_processing(tmp_path)
    text = "The capital of France is Paris"
    assert torch.equal(again.to_tokens(text), model.to_tokens(text))
    with torch.no_grad():
        assert torch.equal(again(text), model(text))


@pytest.mark.parametrize(
    ("name", "load", "message"),
    [
        ("gpt2", {}, "cannot export unembed.b_U: .* not 0 .*fold_ln"),
        ("qwen2", {}, "cannot export blocks.0.attn.b_O: .*fold_value_biases"),
        ("gptj", {}, "cannot export blocks.0.attn.b_Q: GPTJForCausalLM has no tensor"),
        ("llama", {"n_ctx": 32, "fold_ln": False}, "no longer matches .* n_ctx=32"),
    ],
)
def test_what_hf_cannot_express_is_refused_before_writing(
    name: str, load: dict, message: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model = HookedTransformer.from_pretrained(FAMILIES[name](request).path, **load)
    with pytest.raises(ValueError, match=message):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_projected_opt_embeddings_are_refused(
    tiny_family: Callable[[str], TinyModel], tmp_path: Path
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_family("opt_proj").path)
    with pytest.raises(ValueError, match="cannot export embed.W_E: .*cannot be undone"):
        model.save_pretrained(tmp_path / "out")


def test_a_model_built_from_a_config_needs_an_hf_config(tmp_path: Path) -> None:
    cfg = HookedTransformerConfig(d_model=16, n_layers=1, n_ctx=8, d_vocab=10, n_heads=2)
    with pytest.raises(ValueError, match="not loaded from a checkpoint.*pass hf_config="):
        HookedTransformer(cfg).save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_directory_with_other_weights_is_refused(tiny_gpt2: TinyModel, tmp_path: Path) -> None:
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    with pytest.raises(FileExistsError, match="model-00001-of-00002.safetensors"):
        model.save_pretrained(tmp_path)


def test_one_of_two_weights_sharing_a_tensor_edited_alone_is_refused(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(FAMILIES["phi"](request).path)
    with torch.no_grad():
        model.blocks[0].ln1.w[0] += 1.0  # Phi's ln1 and ln2 are one LayerNorm, input_layernorm
    with pytest.raises(ValueError, match="blocks.0.ln1.w and blocks.0.ln2.w are both stored"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
