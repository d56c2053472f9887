"""from_pretrained with TransformerLens 3.9's arguments: first_n_layers, move_to_device,
checkpoint_index/checkpoint_value (Pythia hub revisions), default_padding_side, hf_model,
tokenizer, torch_dtype, refactor_factored_attn_matrices, and the BOS default per architecture."""

from __future__ import annotations

import huggingface_hub
import pytest
import torch

from lmscope import HookedTransformer
from lmscope.loading import registry
from lmscope.loading.training_checkpoints import PYTHIA_STEPS, checkpoint_revision
from tests._tiny import TinyModel, fake_hub_cache


def test_first_n_layers_loads_the_first_blocks(tiny_llama: TinyModel, tokens) -> None:
    """The first n blocks, with embeddings, final norm and unembedding: its logits are the full
    model's final norm and unembedding applied after n blocks."""
    full = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)
    one = HookedTransformer.from_pretrained_no_processing(tiny_llama.path, first_n_layers=1)
    assert one.cfg.n_layers == 1 and len(one.blocks) == 1
    assert torch.equal(one.W_Q[0], full.W_Q[0]) and torch.equal(one.W_U, full.W_U)
    with torch.no_grad():
        expected = full.unembed(full.ln_final(full(tokens, stop_at_layer=1)))
        torch.testing.assert_close(one(tokens), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad", [0, 3, -1])
def test_first_n_layers_out_of_range_is_refused(tiny_llama: TinyModel, bad: int) -> None:
    with pytest.raises(ValueError, match=r"first_n_layers must lie in \[1, 2\]"):
        HookedTransformer.from_pretrained_no_processing(tiny_llama.path, first_n_layers=bad)


def test_checkpoint_value_and_index_name_pythia_revisions() -> None:
    assert checkpoint_revision("EleutherAI/pythia-70m", checkpoint_value=1000) == (
        "step1000",
        1000,
    )
    assert checkpoint_revision("EleutherAI/pythia-70m", checkpoint_index=3) == ("step4", 4)
    assert checkpoint_revision("EleutherAI/pythia-70m-v0", checkpoint_index=0) == (
        "step1000",
        1000,
    )
    assert len(PYTHIA_STEPS) == 154 and PYTHIA_STEPS[-1] == 143_000
    with pytest.raises(ValueError, match="no checkpoint at step 1500"):
        checkpoint_revision("EleutherAI/pythia-70m", checkpoint_value=1500)
    with pytest.raises(ValueError, match="checkpoint_index must be an int in"):
        checkpoint_revision("EleutherAI/pythia-70m", checkpoint_index=154)


def test_checkpoint_value_loads_that_hub_revision(tiny_neox: TinyModel, tmp_path, monkeypatch):
    """checkpoint_value=1000 of pythia-70m reads the hub revision step1000 (from the cache,
    offline); a revision that is not cached is the hub's clear offline error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake_hub_cache(tmp_path, "EleutherAI/pythia-70m", tiny_neox.path, revision="step1000")
    model = HookedTransformer.from_pretrained_no_processing(
        "pythia-70m", checkpoint_value=1000, cache_dir=tmp_path
    )
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens), tiny_neox.hf_model(tokens).logits, atol=1e-4, rtol=0
        )
    with pytest.raises(OSError, match="not in the local cache"):
        HookedTransformer.from_pretrained("pythia-70m", checkpoint_index=5, cache_dir=tmp_path)


def test_checkpoint_arguments_are_refused_where_they_mean_nothing(tiny_llama: TinyModel):
    with pytest.raises(ValueError, match="no intermediate training checkpoints"):
        HookedTransformer.from_pretrained(str(tiny_llama.path), checkpoint_index=1)
    with pytest.raises(ValueError, match="aliases"):
        HookedTransformer.from_pretrained("pythia-70m", checkpoint_value=1, checkpoint_label=1)
    with pytest.raises(ValueError, match="both choose the revision"):
        HookedTransformer.from_pretrained("pythia-70m", checkpoint_value=1, revision="main")


def test_hf_model_is_read_without_files(tiny_gpt2: TinyModel, tokens) -> None:
    """An HF model in memory: the same logits as the oracle, weights copied (an edit of the
    lmscope model leaves the HF model alone), and processing applies as usual."""
    hf = tiny_gpt2.hf_model
    before = hf.transformer.wte.weight.clone()
    model = HookedTransformer.from_pretrained("not-a-file/anywhere", hf_model=hf)
    plain = HookedTransformer.from_pretrained_no_processing("no/where", hf_model=hf)
    with torch.no_grad():
        expected = torch.log_softmax(hf(tokens).logits, -1)
        torch.testing.assert_close(
            torch.log_softmax(model(tokens), -1), expected, atol=1e-4, rtol=0
        )
        torch.testing.assert_close(plain(tokens), hf(tokens).logits, atol=1e-5, rtol=0)
        plain.W_E.zero_()
    assert torch.equal(hf.transformer.wte.weight, before)
    assert model.cfg.original_architecture == "GPT2LMHeadModel"


def test_move_to_device_false_records_the_device(tiny_llama: TinyModel, monkeypatch) -> None:
    """The device is recorded in cfg.device and the move left to
    move_model_modules_to_device, which moves every part there."""
    moves: list[tuple] = []
    real_to = HookedTransformer.to
    monkeypatch.setattr(HookedTransformer, "to", lambda self, *a, **k: moves.append(a) or self)
    model = HookedTransformer.from_pretrained_no_processing(
        tiny_llama.path, device="cpu", move_to_device=False
    )
    assert model.cfg.device == "cpu" and moves == []
    monkeypatch.setattr(HookedTransformer, "to", real_to)
    model.cfg.device = "meta"  # a device this machine surely has, to see the move
    assert model.move_model_modules_to_device() is model
    assert {p.device.type for p in model.parameters()} == {"meta"}
    with pytest.raises(ValueError, match="move_to_device=False cannot spread"):
        HookedTransformer.from_pretrained(tiny_llama.path, n_devices=2, move_to_device=False)


def test_default_padding_side_and_tokenizer(tiny_gpt2_tok: TinyModel, tokenizer_bos) -> None:
    model = HookedTransformer.from_pretrained_no_processing(
        tiny_gpt2_tok.path, default_padding_side="left", tokenizer=tokenizer_bos
    )
    assert model.tokenizer is tokenizer_bos and model.cfg.default_padding_side == "left"
    tokens = model.to_tokens(["Hello world! Hello there", "The cat"], prepend_bos=False)
    assert tokens[1, 0] == tokenizer_bos.pad_token_id and tokens[1, -1] != tokens[1, 0]
    with pytest.raises(ValueError, match="default_padding_side must be 'left' or 'right'"):
        HookedTransformer.from_pretrained(tiny_gpt2_tok.path, default_padding_side="middle")


def test_torch_dtype_and_quantization_flags(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(
        tiny_llama.path, torch_dtype=torch.bfloat16
    )
    assert model.W_Q.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="load_in_8bit is not supported"):
        HookedTransformer.from_pretrained(tiny_llama.path, load_in_8bit=True)


def test_refactor_factored_attn_matrices_keeps_the_log_probs(tiny_gpt2: TinyModel, tokens):
    plain = HookedTransformer.from_pretrained(tiny_gpt2.path)
    refactored = HookedTransformer.from_pretrained(
        tiny_gpt2.path, refactor_factored_attn_matrices=True
    )
    assert refactored.cfg.processing["refactor_factored_attn_matrices"] is True
    with torch.no_grad():
        torch.testing.assert_close(refactored(tokens), plain(tokens), atol=1e-4, rtol=0)
    assert not torch.allclose(refactored.W_V, plain.W_V)


@pytest.mark.parametrize(
    ("fixture", "bos"), [("tiny_gpt2", True), ("tiny_llama", True), ("tiny_neox", False)]
)
def test_bos_default_per_architecture(request, fixture: str, bos: bool) -> None:
    """TransformerLens prepends BOS unless its model table says otherwise (GPT-NeoX/Pythia,
    BLOOM, Qwen, Phi-1/2); an explicit default_prepend_bos wins."""
    path = request.getfixturevalue(fixture).path
    assert HookedTransformer.from_pretrained(path).cfg.default_prepend_bos is bos
    forced = HookedTransformer.from_pretrained(path, default_prepend_bos=not bos)
    assert forced.cfg.default_prepend_bos is (not bos)
    rows = {m.alias: m.default_prepend_bos for m in registry.list_models()}
    assert rows["smollm2-135m"] and rows["gpt2"] and rows["gemma-3-270m-gguf"]
    assert not rows["pythia-70m"] and not rows["qwen3-0.6b"] and not rows["phi-2"]
    assert rows["phi-3-mini-4k"]  # Phi-3 is not in TransformerLens's False list


def test_embedded_smollm2_loss_on_a_short_string_is_real() -> None:
    """With BOS, "Hi" has a predicted position, so the loss is a number, not nan."""
    model = HookedTransformer.from_pretrained("smollm2-135m", first_n_layers=1, verbose=False)
    assert model.cfg.default_prepend_bos is True
    loss = model("Hi", return_type="loss")
    assert torch.isfinite(loss) and loss.item() > 0
