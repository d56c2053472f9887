"""The language model of a multimodal checkpoint (lmscope.loading.language_model): a tiny random
`Qwen3_5ForConditionalGeneration` (vision tower and language model) written offline loads as its
text model, whose logits equal the multimodal model's on text, with the vision tensors left
unread; the same tensors stored in the older llava layout (`language_model.model.*`) load the
same; a misnamed text tensor or an unsupported language model is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tr
from safetensors.torch import load_file, save_file

from lmscope import HookedTransformer
from lmscope.errors import CheckpointError
from lmscope.loading.checkpoint import DirectoryCheckpoint
from lmscope.loading.language_model import LanguageModelCheckpoint, language_model_view
from tests.loading.test_family_qwen3_5 import VOCAB, qwen3_5_config

try:  # the shared builders (moving from tests/conftest.py to tests/_tiny.py)
    from tests._tiny import SEED, randomise
except ImportError:
    from conftest import SEED
    from conftest import _randomise as randomise

ATOL = 1e-5


def _multimodal(tie: bool) -> tr.Qwen3_5ForConditionalGeneration:
    vision = tr.Qwen3_5VisionConfig(
        depth=1, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=40,
        patch_size=4, num_position_embeddings=16,
    )  # fmt: skip
    config = tr.Qwen3_5Config(
        text_config=qwen3_5_config(tie_word_embeddings=tie).to_dict(),
        vision_config=vision.to_dict(),
        tie_word_embeddings=tie,
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    hf = tr.Qwen3_5ForConditionalGeneration(config)
    randomise(hf)
    with torch.no_grad():
        for name, param in hf.named_parameters():  # (1 + w) norms drawn around 0
            if param.ndim == 1 and "norm" in name and "linear_attn.norm" not in name:
                param.sub_(1.0)
    return hf.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tr.PreTrainedModel]:
    hf = _multimodal(tie=False)
    path = tmp_path_factory.mktemp("qwen3_5_vl")
    hf.save_pretrained(path)
    return path, hf


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))


def test_the_view_is_the_language_model(tiny) -> None:
    path, _ = tiny
    view = language_model_view(DirectoryCheckpoint(path))
    assert isinstance(view, LanguageModelCheckpoint)
    assert view.hf_config["architectures"] == ["Qwen3_5ForCausalLM"]
    assert view.hf_config["model_type"] == "qwen3_5_text"
    assert "model.embed_tokens.weight" in view.tensor_names()
    assert "lm_head.weight" in view.tensor_names()
    assert view.left_out and all(n.startswith("model.visual.") for n in view.left_out)
    stored = view.inner.get("model.language_model.layers.0.linear_attn.A_log")
    assert torch.equal(view.get("model.layers.0.linear_attn.A_log"), stored)
    text_only = DirectoryCheckpoint(path)
    text_only.hf_config = {**text_only.hf_config, "architectures": ["Qwen3_5ForCausalLM"]}
    assert language_model_view(text_only) is text_only  # only ...ForConditionalGeneration


@torch.no_grad()
def test_logits_match_the_multimodal_model(tiny, tokens) -> None:
    path, hf = tiny
    model = HookedTransformer.from_pretrained_no_processing(path)
    assert model.cfg.original_architecture == "Qwen3_5ForCausalLM"
    assert model.cfg.default_prepend_bos is False  # Qwen's tokenizers have no BOS
    assert model.cfg.layer_types == ["linear", "global", "linear"]
    expected = hf(tokens).logits
    torch.testing.assert_close(model(tokens), expected, atol=ATOL, rtol=0)
    processed = HookedTransformer.from_pretrained(path)
    torch.testing.assert_close(
        processed(tokens).log_softmax(-1), expected.log_softmax(-1), atol=1e-4, rtol=0
    )
    # an in-memory multimodal model (hf_model=) reads through the same view
    again = HookedTransformer.from_pretrained_no_processing("qwen3.5-tiny", hf_model=hf)
    torch.testing.assert_close(again(tokens), expected, atol=ATOL, rtol=0)


@torch.no_grad()
def test_tied_multimodal_model(tmp_path: Path, tokens) -> None:
    hf = _multimodal(tie=True)
    hf.save_pretrained(tmp_path)
    model = HookedTransformer.from_pretrained_no_processing(tmp_path)
    assert torch.equal(model.W_U, model.W_E.T)  # the composite config's tying
    torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=ATOL, rtol=0)


def _rewrite(src: Path, dst: Path, rename) -> None:
    """Copy a single-file checkpoint with its tensors renamed (None: dropped)."""
    dst.mkdir()
    tensors = load_file(src / "model.safetensors")
    renamed = {rename(n): t for n, t in tensors.items() if rename(n) is not None}
    save_file(renamed, dst / "model.safetensors", metadata={"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())


@torch.no_grad()
def test_llava_layout_loads_the_same(tiny, tokens, tmp_path: Path) -> None:
    path, hf = tiny

    def llava(name: str) -> str:
        if name.startswith("model.language_model."):
            return "language_model.model." + name.removeprefix("model.language_model.")
        return "language_model." + name if name.startswith("lm_head.") else name

    _rewrite(path, tmp_path / "llava", llava)
    model = HookedTransformer.from_pretrained_no_processing(tmp_path / "llava")
    torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=ATOL, rtol=0)


def test_an_unread_text_tensor_is_refused(tiny, tmp_path: Path) -> None:
    path, _ = tiny
    stray = "model.language_model.layers.0.linear_attn.extra.weight"

    def add_stray(name: str) -> str:
        return stray if name == "model.language_model.norm.weight" else name

    _rewrite(path, tmp_path / "stray", add_stray)
    with pytest.raises(Exception, match="norm.weight"):
        HookedTransformer.from_pretrained_no_processing(tmp_path / "stray")


def test_an_unsupported_language_model_is_refused(tiny, tmp_path: Path) -> None:
    path, _ = tiny
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["FancyForConditionalGeneration"],
                "model_type": "fancy",
                "text_config": {"model_type": "fancy_text"},
            }
        )
    )
    (tmp_path / "model.safetensors").write_bytes((path / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="'fancy_text'.*not an architecture lmscope"):
        HookedTransformer.from_pretrained_no_processing(tmp_path)
