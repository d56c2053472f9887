"""Shared fixtures: tiny random Hugging Face models, built offline once per session.

Each family fixture returns `TinyModel(path, hf_model, name)`: a directory written by
`save_pretrained` and the same weights as an eager-attention transformers model, the oracle. The
builders live in tests/_tiny.py and the family spec table in tests/_families.py; test modules
import them as `from tests._tiny import ...` (never from this file).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from tests._families import FAMILIES_ENV, selected_families
from tests._families import tiny_family as _tiny_family
from tests._tiny import (
    D_VOCAB,
    ENC_VOCAB,
    ENCODER_DECODERS,
    ENCODERS,
    TinyModel,
    build_tiny,
    gpt2_config,
    train_tokenizer,
)

# The suite checks processing itself: a processed load processes every time unless a test turns
# the processed-weights cache on in a directory of its own (`processed_cache_dir`), which also
# keeps the real models' entries out of the user's cache.
os.environ.setdefault("LMSCOPE_PROCESSED_CACHE", "0")


@pytest.fixture
def processed_cache_dir(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The processed-weights cache, on, in a temporary directory, for models of any size."""
    from lmscope.loading import processed_cache

    root = tmp_path / "processed"
    monkeypatch.setenv(processed_cache.ENV, "1")
    monkeypatch.setenv(processed_cache.DIR_ENV, str(root))
    monkeypatch.setattr(processed_cache, "MIN_BYTES", 0)
    return root


# -- which families the per-family suites run over (`make test-fast` passes --families=fast) -----
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--families",
        default=os.environ.get(FAMILIES_ENV, "all"),
        help="per-family suites run over: 'all' (default), 'fast' (tests/_families.py's FAST: "
        f"one family per feature) or comma-separated FAMILY_SPECS names; default ${FAMILIES_ENV}",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselects the tests of a `family(name)` param (tests._families.family_params) whose family
    `--families` leaves out."""
    keep = selected_families(config.getoption("--families"))
    if keep is None:
        return
    chosen, dropped = [], []
    for item in items:
        names = {mark.args[0] for mark in item.iter_markers("family")}
        (chosen if names <= keep else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = chosen


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyModel]:
    """`tiny_family(name)`: the tiny checkpoint of tests/_families.py's FAMILY_SPECS[name],
    built once per session (shared by the conformance suite and every family-specific test)."""
    return lambda name: _tiny_family(name, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("gpt2")


@pytest.fixture(scope="session")
def tiny_neox(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    """Pythia-style: parallel attention + MLP, partial rotary (half of d_head)."""
    return tiny_family("neox")


@pytest.fixture(scope="session")
def tiny_neox_sequential(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("neox_sequential")


@pytest.fixture(scope="session")
def tiny_neox_no_attn_bias(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    """GPT-NeoX with attention_bias=False: no query_key_value or dense biases in the checkpoint."""
    return tiny_family("neox_no_attn_bias")


@pytest.fixture(scope="session")
def tiny_llama(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    """GQA (2 key/value heads for 4 query heads), untied embeddings, no biases."""
    return tiny_family("llama_gqa")


@pytest.fixture(scope="session")
def tiny_llama_tied_bias(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    """Tied embeddings with attention and MLP biases (and GQA, so b_K/b_V are per kv head)."""
    return tiny_family("llama_tied_bias")


@pytest.fixture(scope="session")
def tiny_mistral(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("mistral_mqa")


FAMILY_FIXTURES = [
    "tiny_gpt2",
    "tiny_neox",
    "tiny_neox_sequential",
    "tiny_llama",
    "tiny_llama_tied_bias",
    "tiny_mistral",
]


@pytest.fixture(params=FAMILY_FIXTURES)
def tiny_model(request: pytest.FixtureRequest) -> TinyModel:
    """Each tiny family in turn (parametrised)."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    """A fixed [2, 12] batch of token ids (no padding)."""
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, D_VOCAB, (2, 12), generator=gen)


@pytest.fixture(scope="session")
def encoder_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    """Every tiny encoder and encoder-decoder, built on first use."""
    built: dict[str, TinyModel] = {}
    for name, (cls, config) in {**ENCODERS, **ENCODER_DECODERS}.items():
        built[name] = build_tiny(tmp_path_factory, f"enc_{name}", cls, config())
    return built


@pytest.fixture(params=sorted(ENCODERS))
def tiny_encoder(request: pytest.FixtureRequest, encoder_models: dict) -> TinyModel:
    return encoder_models[request.param]


@pytest.fixture(params=sorted(ENCODER_DECODERS))
def tiny_t5(request: pytest.FixtureRequest, encoder_models: dict) -> TinyModel:
    return encoder_models[request.param]


@pytest.fixture(scope="session")
def encoder_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [3, 9] (ids >= 2) and a right-padded mask; padded positions hold id 1 (RoBERTa's
    padding id, so its positions count as transformers counts them)."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(2, ENC_VOCAB, (3, 9), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    tokens[mask == 0] = 1
    return tokens, mask


# -- a real (trained, byte-level BPE) tokenizer -------------------------------------------------
@pytest.fixture(scope="session")
def tokenizer_no_bos() -> PreTrainedTokenizerFast:
    return train_tokenizer(add_bos=False)


@pytest.fixture(scope="session")
def tokenizer_bos() -> PreTrainedTokenizerFast:
    return train_tokenizer(add_bos=True)


@pytest.fixture(scope="session")
def tiny_gpt2_tok(
    tmp_path_factory: pytest.TempPathFactory, tokenizer_no_bos: PreTrainedTokenizerFast
) -> TinyModel:
    """A tiny GPT-2 whose directory also holds a trained GPT-2 style tokenizer (no BOS added)."""
    model = build_tiny(
        tmp_path_factory, "gpt2_tok", GPT2LMHeadModel, gpt2_config(len(tokenizer_no_bos))
    )
    tokenizer_no_bos.save_pretrained(model.path)
    return model


@pytest.fixture(scope="session")
def tiny_gpt2_tok_bos(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_gpt2_tok: TinyModel,
    tokenizer_bos: PreTrainedTokenizerFast,
) -> TinyModel:
    """The same weights as `tiny_gpt2_tok`, with a tokenizer whose post-processor adds BOS."""
    path = tmp_path_factory.mktemp("gpt2_tok_bos")
    for file in tiny_gpt2_tok.path.iterdir():
        if file.name in ("config.json", "generation_config.json") or file.suffix == ".safetensors":
            shutil.copy(file, path / file.name)
    tokenizer_bos.save_pretrained(path)
    return TinyModel(path, tiny_gpt2_tok.hf_model, "gpt2_tok_bos")


@pytest.fixture(scope="session")
def tiny_tok_model(tiny_gpt2_tok: TinyModel) -> Any:
    """lmscope's model of `tiny_gpt2_tok` (weights as stored, with its trained tokenizer), for
    tests that feed text; shared, so tests must leave it as they found it."""
    from lmscope import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok.path)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster with this machine's 2 CPUs, started once per session (slow to start)
    and shut down at its end; skips when Ray is not installed."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# One headless Chromium per session (Debian's `chromium`, driven by Playwright's Python API with
# the system binary; `make test` installs it when missing): the viz tests and the docs site's.
BROWSER_PATHS = ("/usr/bin/chromium", "chromium", "chromium-browser")


def _chromium() -> str:
    for name in BROWSER_PATHS:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "the browser tests need a headless Chromium: run `make test` (it installs Debian's chromium "
        "when /usr/bin/chromium is missing) or apt-get install chromium"
    )


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield chromium
        chromium.close()
