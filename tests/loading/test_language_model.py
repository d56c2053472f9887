"""The language model of a multimodal checkpoint (lmscope.loading.language_model): a tiny random
`Qwen3_5ForConditionalGeneration` (vision tower and language model) written offline loads as its
text model (and so does a tiny `Gemma4ForConditionalGeneration`), whose logits equal the multimodal model's on text, with the vision tensors left
unread; the same tensors stored in the older llava layout (`language_model.model.*`) load the
same; a misnamed text tensor or an unsupported language model is refused. Tiny random
`Gemma3ForConditionalGeneration` and `Llama4ForConditionalGeneration` load the same way, from
both layouts.
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
from tests._families import FAMILY_SPECS, gemma4_adjust, qwen3_5_config
from tests._tiny import D_VOCAB as VOCAB
from tests._tiny import SEED, perturb_norms, randomise

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


# -- Gemma 3 and Llama 4: the hub's other multimodal families -------------------------------------
def _gemma3() -> tr.Gemma3ForConditionalGeneration:
    """Gemma 3 text (the conformance suite's tiny spec, final soft-cap included) with a SigLIP
    tower; transformers' composite model ties its head (tie_word_embeddings True)."""
    vision = tr.SiglipVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=4,
    )  # fmt: skip
    config = tr.Gemma3Config(
        text_config=FAMILY_SPECS["gemma3"].config().to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
    )
    return _random_multimodal(tr.Gemma3ForConditionalGeneration, config, "gemma3")


def _llama4() -> tr.Llama4ForConditionalGeneration:
    """Llama 4 text (the suite's tiny spec: chunked and NoPE layers, experts) with a vision
    tower; untied, as the hub's checkpoints."""
    vision = tr.Llama4VisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=4, vision_output_dim=16, projector_input_dim=16,
        projector_output_dim=16,
    )  # fmt: skip
    config = tr.Llama4Config(
        text_config=FAMILY_SPECS["llama4"].config().to_dict(), vision_config=vision.to_dict()
    )
    return _random_multimodal(tr.Llama4ForConditionalGeneration, config, "llama4")


def _random_multimodal(cls, config, family: str) -> tr.PreTrainedModel:
    """`cls(config)` redrawn as tests/_tiny.py draws the text `family` (its spec's norms), with
    eager attention and experts."""
    for part in (config, config.text_config):
        part._attn_implementation = "eager"
        part._experts_implementation = "eager"
    torch.manual_seed(SEED)
    hf = cls(config)
    randomise(hf)
    perturb_norms(hf, FAMILY_SPECS[family].norms)  # the vision tower's too: unread here
    return hf.eval()


@torch.no_grad()
def _text_logits(hf: tr.PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
    """The multimodal model's logits on text. transformers 5.24's Llama4ForConditionalGeneration
    forward raises (AttributeError: 'MoeCausalLMOutputWithPast' has no 'image_outputs') after
    computing them, so for Llama 4 they are its language model's, which is what that forward runs
    on text (its input embeddings are the language model's)."""
    if isinstance(hf, tr.Llama4ForConditionalGeneration):
        return hf.language_model(tokens).logits
    return hf(tokens).logits


def _to_transformers5(name: str) -> str:
    """The llava layout's names (what transformers 5.24 saves for Gemma 3 and Llama 4) in
    transformers 5's (Qwen3.5's) layout."""
    if name.startswith("language_model.model."):
        return "model.language_model." + name.removeprefix("language_model.model.")
    return name.removeprefix("language_model.")  # language_model.lm_head -> lm_head


@pytest.fixture(scope="module", params=["gemma3", "llama4"])
def other_family(request, tmp_path_factory: pytest.TempPathFactory):
    hf = {"gemma3": _gemma3, "llama4": _llama4}[request.param]()
    path = tmp_path_factory.mktemp(f"{request.param}_vl")
    hf.save_pretrained(path)
    return request.param, path, hf


@pytest.mark.parametrize("layout", ["llava", "transformers5"])
@torch.no_grad()
def test_gemma3_and_llama4_multimodal_checkpoints_load_as_their_language_model(
    other_family, layout: str, tokens, tmp_path: Path
) -> None:
    """Both layouts the view reads give the multimodal model's text logits to 1e-5; the vision
    tower and projector are left unread. Gemma 3's composite model applies no final soft-cap
    (its text config's 3.0 is cleared), unlike Gemma3ForCausalLM."""
    name, path, hf = other_family
    stored = DirectoryCheckpoint(path).tensor_names()
    assert any(n.startswith("language_model.model.") for n in stored)  # what transformers saves
    if layout == "transformers5":
        _rewrite(path, tmp_path / "t5", _to_transformers5)
        path = tmp_path / "t5"
    view = language_model_view(DirectoryCheckpoint(path))
    assert isinstance(view, LanguageModelCheckpoint)
    assert view.left_out and not any("language_model" in n for n in view.left_out)
    model = HookedTransformer.from_pretrained_no_processing(path)
    causal = {"gemma3": "Gemma3ForCausalLM", "llama4": "Llama4ForCausalLM"}[name]
    assert model.cfg.original_architecture == causal
    assert model.cfg.tie_word_embeddings is (name == "gemma3")
    if name == "gemma3":
        assert hf.config.text_config.final_logit_softcapping == 3.0
        assert model.cfg.output_logits_soft_cap <= 0  # as Gemma3ForConditionalGeneration
    torch.testing.assert_close(model(tokens), _text_logits(hf, tokens), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["gemma4", "gemma4_moe"])
@torch.no_grad()
def test_gemma4_multimodal_model_loads_as_its_language_model(tmp_path: Path, name: str) -> None:
    """The hub's Gemma 4 checkpoints are Gemma4ForConditionalGeneration: a tiny one (vision tower,
    tied head, the language model with every Gemma 4 feature on, or the 26B-A4B's experts beside
    each MLP) loads as Gemma4ForCausalLM and its logits equal the multimodal model's on text."""
    vision = tr.Gemma4VisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, patch_size=4, position_embedding_size=16,
    )  # fmt: skip
    config = tr.Gemma4Config(
        text_config=FAMILY_SPECS[name].config().to_dict(),
        vision_config=vision.to_dict(),
        audio_config=None,
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    if name == "gemma4_moe":
        config.text_config._experts_implementation = "eager"
    torch.manual_seed(SEED)
    hf = tr.Gemma4ForConditionalGeneration(config)
    randomise(hf)
    gemma4_adjust(hf.model.language_model)
    hf.eval().save_pretrained(tmp_path)
    view = language_model_view(DirectoryCheckpoint(tmp_path))
    assert view.hf_config["architectures"] == ["Gemma4ForCausalLM"]
    assert view.left_out and all(
        n.startswith(("model.vision_tower.", "model.embed_vision.")) for n in view.left_out
    )
    model = HookedTransformer.from_pretrained_no_processing(tmp_path)
    if name == "gemma4":
        assert model.cfg.kv_source_layers == [None, None, 0, 1]
        assert model.cfg.d_per_layer_input == 6
    else:  # the fused experts, read through the language model's names
        assert model.cfg.moe_beside_mlp and model.cfg.num_experts == 5
    tokens = torch.randint(3, VOCAB, (2, 13), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(tokens), hf(input_ids=tokens).logits, atol=ATOL, rtol=0)
