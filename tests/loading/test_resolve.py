"""Name resolution: aliases, hub ids through the huggingface_hub cache layout, local paths."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lmscope import HookedTransformer
from lmscope.loading import MODEL_ALIASES, open_checkpoint
from lmscope.loading.checkpoint import DirectoryCheckpoint
from lmscope.loading.gguf import GGUFCheckpoint
from tests._tiny import fake_hub_cache


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    return path, model


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_id_loads_from_cache_offline(tmp_path, tiny_llama_dir, offline):
    path, hf = tiny_llama_dir
    fake_hub_cache(tmp_path, "someorg/tiny-llama", path)
    model = HookedTransformer.from_pretrained_no_processing(
        "someorg/tiny-llama", cache_dir=tmp_path
    )
    tokens = torch.randint(0, 96, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_alias_resolves_to_its_hub_id(tmp_path, tiny_llama_dir, offline):
    path, _ = tiny_llama_dir
    assert MODEL_ALIASES["llama-3.2-1b"] == "meta-llama/Llama-3.2-1B"
    snapshot = fake_hub_cache(tmp_path, "meta-llama/Llama-3.2-1B", path)
    checkpoint = open_checkpoint("Llama-3.2-1B", cache_dir=tmp_path)  # aliases ignore case
    assert isinstance(checkpoint, DirectoryCheckpoint)
    assert checkpoint.path == snapshot


def test_uncached_hub_id_offline_says_what_to_do(tmp_path, offline):
    with pytest.raises(OSError, match="not in the local cache"):
        open_checkpoint("someorg/not-downloaded", cache_dir=tmp_path)


@pytest.mark.slow  # opens the embedded SmolLM2 GGUF twice (~4 s on 2 cores)
def test_local_directory_and_gguf_file(tiny_llama_dir):
    path, _ = tiny_llama_dir
    assert isinstance(open_checkpoint(path), DirectoryCheckpoint)
    assert isinstance(open_checkpoint(str(path)), DirectoryCheckpoint)
    assert isinstance(open_checkpoint("smollm2-135m"), GGUFCheckpoint)
    assert isinstance(open_checkpoint("SmolLM2-135M"), GGUFCheckpoint)
