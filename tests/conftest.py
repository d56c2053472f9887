"""Shared fixtures: tiny random Hugging Face models, built offline once per session.

Each family fixture returns `TinyModel(path, hf_model)`: a directory written by `save_pretrained`
(what `HookedTransformer.from_pretrained(path)` reads) and the same weights as an eager-attention
transformers model, the oracle. Weights are redrawn at a larger scale than HF's initialiser (and
biases and norm weights are made non-trivial) so attention patterns are peaked and every bias and
norm weight actually matters: a mapping bug cannot hide behind zeros and ones.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import transformers as T
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

D_MODEL = 64
N_LAYERS = 2
N_HEADS = 4
D_VOCAB = 128
N_CTX = 64
SEED = 0

TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Hello world! Hello there, general Kenobi.",
    "Interpretability research looks inside neural networks to see how they compute.",
    "1 2 3 4 5 6 7 8 9 10 11 12",
]


def fake_hub_cache(
    cache: Path,
    repo_id: str,
    files_from: Path | None = None,
    revision: str = "main",
    commit: str = "0123456789abcdef0123456789abcdef01234567",
) -> Path:
    """Lay out `files_from` (or nothing) as huggingface_hub caches `repo_id` at branch or
    revision `revision`; returns the snapshot folder, so the hub code runs offline on it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files_from.iterdir() if files_from is not None else ():
        shutil.copy(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@dataclass(frozen=True)
class TinyModel:
    """A checkpoint directory and the transformers model holding the same weights."""

    path: Path
    hf_model: PreTrainedModel
    name: str


@torch.no_grad()
def _randomise(model: PreTrainedModel, std: float = 0.12) -> None:
    """Redraw every parameter: matrices N(0, std), biases N(0, 0.1), norm weights 1 + N(0, 0.2)."""
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, std)
        elif name.endswith("weight"):  # 1-D weights are norm weights
            param.copy_(1.0 + 0.2 * torch.randn_like(param))
        else:
            param.normal_(0.0, 0.1)


def build_tiny(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    model_cls: type[PreTrainedModel],
    config: Any,
) -> TinyModel:
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = model_cls(config)
    _randomise(model)
    model.eval()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return TinyModel(path, model, name)


def gpt2_config(vocab_size: int = D_VOCAB) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=N_CTX,
        n_embd=D_MODEL,
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )


def neox_config(parallel: bool, **kwargs: Any) -> GPTNeoXConfig:
    return GPTNeoXConfig(
        **kwargs,
        vocab_size=D_VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        intermediate_size=4 * D_MODEL,
        max_position_embeddings=N_CTX,
        use_parallel_residual=parallel,
        rope_parameters={
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
        },
        attn_implementation="eager",
    )


def llama_config(**kwargs: Any) -> LlamaConfig:
    base = dict(
        vocab_size=D_VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=3 * D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_HEADS,
        max_position_embeddings=N_CTX,
        attn_implementation="eager",
    )
    base.update(kwargs)
    return LlamaConfig(**base)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny(tmp_path_factory, "gpt2", GPT2LMHeadModel, gpt2_config())


@pytest.fixture(scope="session")
def tiny_neox(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Pythia-style: parallel attention + MLP, partial rotary (half of d_head)."""
    return build_tiny(tmp_path_factory, "neox", GPTNeoXForCausalLM, neox_config(parallel=True))


@pytest.fixture(scope="session")
def tiny_neox_sequential(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_tiny(
        tmp_path_factory, "neox_sequential", GPTNeoXForCausalLM, neox_config(parallel=False)
    )


@pytest.fixture(scope="session")
def tiny_neox_no_attn_bias(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """GPT-NeoX with attention_bias=False: no query_key_value or dense biases in the checkpoint."""
    config = neox_config(parallel=True, attention_bias=False)
    return build_tiny(tmp_path_factory, "neox_no_attn_bias", GPTNeoXForCausalLM, config)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """GQA (2 key/value heads for 4 query heads), untied embeddings, no biases."""
    config = llama_config(num_key_value_heads=2, tie_word_embeddings=False)
    return build_tiny(tmp_path_factory, "llama", LlamaForCausalLM, config)


@pytest.fixture(scope="session")
def tiny_llama_tied_bias(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Tied embeddings with attention and MLP biases (and GQA, so b_K/b_V are per kv head)."""
    config = llama_config(
        num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, mlp_bias=True
    )
    return build_tiny(tmp_path_factory, "llama_tied_bias", LlamaForCausalLM, config)


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    config = MistralConfig(
        vocab_size=D_VOCAB,
        hidden_size=D_MODEL,
        intermediate_size=3 * D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=1,
        max_position_embeddings=N_CTX,
        sliding_window=None,
        attn_implementation="eager",
    )
    return build_tiny(tmp_path_factory, "mistral", MistralForCausalLM, config)


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


# -- encoders and encoder-decoders (tests/encoders) --------------------------------------------
# Tiny random checkpoints (odd sizes, perturbed norms and biases) written by transformers, one per
# supported architecture; one parametrised parity suite runs over them.
ENC_VOCAB = 61


def _enc_bert(**kw: Any) -> T.BertConfig:
    return T.BertConfig(
        vocab_size=ENC_VOCAB, hidden_size=30, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=24, type_vocab_size=3, **kw,
    )  # fmt: skip


def _enc_t5(**kw: Any) -> T.T5Config:
    return T.T5Config(
        vocab_size=ENC_VOCAB, d_model=30, d_kv=7, d_ff=37, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=12,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **kw,
    )  # fmt: skip


# name -> (transformers class, config factory); one parametrised parity suite runs over them
ENCODERS: dict[str, tuple[type, Callable[[], Any]]] = {
    "bert": (T.BertModel, _enc_bert),
    "bert_mlm": (T.BertForMaskedLM, _enc_bert),
    "bert_pretraining": (T.BertForPreTraining, lambda: _enc_bert(hidden_act="gelu_new")),
    "roberta": (
        T.RobertaForMaskedLM,
        lambda: T.RobertaConfig(
            vocab_size=ENC_VOCAB,
            hidden_size=30,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=37,
            max_position_embeddings=26,
            type_vocab_size=1,
            pad_token_id=1,
        ),
    ),
    "distilbert": (
        T.DistilBertForMaskedLM,
        lambda: T.DistilBertConfig(
            vocab_size=ENC_VOCAB,
            dim=30,
            n_layers=2,
            n_heads=3,
            hidden_dim=37,
            max_position_embeddings=24,
        ),
    ),
}
ENCODER_DECODERS: dict[str, tuple[type, Callable[[], Any]]] = {
    "t5": (T.T5ForConditionalGeneration, lambda: _enc_t5(num_decoder_layers=3)),
    "t5_v11": (
        T.T5ForConditionalGeneration,
        lambda: _enc_t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    ),
}


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
def train_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained offline on TRAINING_TEXT.

    With `add_bos` its post-processor prepends `<|endoftext|>` (like Llama tokenizers prepend
    `<s>`); without it, like GPT-2, the tokenizer adds nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    bos_id = tok.token_to_id("<|endoftext|>")
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A",
            pair="<|endoftext|> $A <|endoftext|> $B",
            special_tokens=[("<|endoftext|>", bos_id)],
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


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


def load_script(path: Path, name: str) -> ModuleType:
    """A script that is not a package module (benchmarks/*.py), imported by path and registered
    as `name` in sys.modules (dataclasses look their module up by name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


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
