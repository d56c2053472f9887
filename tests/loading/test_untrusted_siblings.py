"""Files beside a checkpoint never take part unasked: a GGUF's tokenizer comes from the GGUF
alone, and tokenizer code shipped with a checkpoint runs only with trust_remote_code=True, never
after a terminal prompt."""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest

from lmscope import HookedTransformer
from lmscope.errors import RemoteCodeError
from lmscope.loading import checkpoint as checkpoint_module
from lmscope.loading.checkpoint import load_tokenizer
from lmscope.loading.embedded import embedded_model_path
from lmscope.loading.gguf import read_gguf
from tests._tiny import TinyModel

PROMPT = "The capital of France is"


def _evil_code(folder: Path, marker: Path) -> None:
    """A tokenizer module that writes `marker` when imported, named by an auto_map."""
    (folder / "evil_tokenizer.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}})
    )


@pytest.fixture
def no_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> str:
        raise AssertionError("transformers asked on the terminal whether to run code")

    monkeypatch.setattr(builtins, "input", refuse)


@pytest.mark.slow
def test_gguf_tokenizer_ignores_sibling_files(
    tmp_path: Path, tiny_gpt2_tok: TinyModel, no_prompt: None
) -> None:
    """Another model's tokenizer.json and a remote-code tokenizer_config.json beside the GGUF
    change nothing: same token ids as the GGUF alone, and the code never runs."""
    real = embedded_model_path("smollm2-135m")
    clean = read_gguf(real).tokenizer_loader()()
    folder = tmp_path / "polluted"
    folder.mkdir()
    (folder / real.name).symlink_to(real)
    shutil.copy(tiny_gpt2_tok.path / "tokenizer.json", folder / "tokenizer.json")
    marker = tmp_path / "RAN"
    _evil_code(folder, marker)
    tokenizer = read_gguf(folder / real.name).tokenizer_loader()()
    assert len(tokenizer) == len(clean) == 49152
    assert tokenizer(PROMPT)["input_ids"] == clean(PROMPT)["input_ids"]
    assert tokenizer.decode(clean(PROMPT)["input_ids"]) == PROMPT
    assert not marker.exists()


def test_remote_tokenizer_is_refused_at_load_and_tokenizer_argument_bypasses_it(
    tmp_path: Path, tiny_gpt2_tok: TinyModel, tokenizer_no_bos, no_prompt: None
) -> None:
    path = tmp_path / "model"
    shutil.copytree(tiny_gpt2_tok.path, path)
    marker = tmp_path / "RAN"
    _evil_code(path, marker)
    with pytest.raises(RemoteCodeError, match=r"tokenizer_config\.json: .*trust_remote_code=True"):
        HookedTransformer.from_pretrained_no_processing(path)
    model = HookedTransformer.from_pretrained_no_processing(path, tokenizer=tokenizer_no_bos)
    assert model.tokenizer is tokenizer_no_bos
    assert not marker.exists()


def test_transformers_refusal_becomes_remote_code_error(
    tmp_path: Path, tiny_gpt2_tok: TinyModel, no_prompt: None
) -> None:
    """Past lmscope's own check, transformers gets trust_remote_code=False (never None, which
    prompts on a terminal) and its refusal is a RemoteCodeError: here the config names no
    architecture transformers knows, so only the remote code could build the tokenizer."""
    path = tmp_path / "model"
    shutil.copytree(tiny_gpt2_tok.path, path)
    (path / "config.json").write_text(json.dumps({"model_type": "evil-unknown"}))
    marker = tmp_path / "RAN"
    _evil_code(path, marker)
    with pytest.raises(RemoteCodeError, match="trust_remote_code=True"):
        load_tokenizer(str(path), trust_remote_code=False)
    assert not marker.exists()


def test_every_tokenizer_load_passes_trust_remote_code_as_a_bool(
    tiny_gpt2_tok: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    real = checkpoint_module.load_tokenizer

    def spy(path: str, **kwargs: object):
        seen.append(kwargs.get("trust_remote_code"))
        return real(path, **kwargs)

    monkeypatch.setattr(checkpoint_module, "load_tokenizer", spy)
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok.path)
    assert model.tokenizer is not None
    assert seen == [False]
