"""Builders of tiny random Hugging Face checkpoints and other shared test helpers (no fixtures).

Every test module imports them one way: `from tests._tiny import build_tiny, TinyModel, ...`.
The pytest fixtures that use them (session-built models, tokenizers, the browser) live in
tests/conftest.py; the family spec table of the conformance suite lives in tests/_families.py.

`build_tiny` writes a checkpoint with `save_pretrained` (what `HookedTransformer.from_pretrained`
reads) and keeps the same weights as an eager-attention transformers model, the oracle. Weights
are redrawn at a larger scale than HF's initialiser (and biases and norm weights are made
non-trivial) so attention patterns are peaked and every bias and norm weight actually matters: a
mapping bug cannot hide behind zeros and ones.

    >>> tiny = build_tiny(tmp_path_factory, "gpt2", GPT2LMHeadModel, gpt2_config())
    >>> HookedTransformer.from_pretrained_no_processing(tiny.path)(tokens)  # == tiny.hf_model(...)
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import pytest
import torch
import transformers as T
from jaxtyping import Float, Int
from torch import Tensor
from transformers import (
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
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


@dataclass(frozen=True)
class TinyModel:
    """A checkpoint directory and the transformers model holding the same weights."""

    path: Path
    hf_model: PreTrainedModel
    name: str


@torch.no_grad()
def randomise(model: PreTrainedModel, std: float = 0.12) -> None:
    """Redraw every parameter: matrices N(0, std), biases N(0, 0.1), norm weights 1 + N(0, 0.2).

    >>> randomise(GPT2LMHeadModel(gpt2_config()))
    """
    for name, param in model.named_parameters():
        if param.ndim >= 2:
            param.normal_(0.0, std)
        elif name.endswith("weight"):  # 1-D weights are norm weights
            param.copy_(1.0 + 0.2 * torch.randn_like(param))
        else:
            param.normal_(0.0, 0.1)


NormWeights = Literal["w", "1+w"]
"""How a family's norms apply their stored weight: `x_hat * w` (most families) or
`x_hat * (1 + w)` (Gemma 1-3, Nemotron's LayerNorm1P)."""


@torch.no_grad()
def perturb_norms(model: PreTrainedModel, norms: NormWeights) -> None:
    """Make every norm's gain 1 + N(0, 0.2), whichever way the family applies its weight:
    `randomise` draws the stored weights around 1, right for `x_hat * w`; for `x_hat * (1 + w)`
    they are moved to around 0 (around 1 they would double every sublayer's output).

    >>> perturb_norms(GemmaForCausalLM(config), "1+w")
    """
    if norms == "1+w":
        for pname, param in model.named_parameters():
            if param.ndim == 1 and "norm" in pname and pname.endswith("weight"):
                param.sub_(1.0)


@torch.no_grad()
def _router_buffers(model: PreTrainedModel) -> None:
    """DeepSeek-style routers' choice bias is a buffer: drawn N(0, 0.3) so it steers the choice."""
    for bname, buffer in model.named_buffers():
        if bname.endswith("e_score_correction_bias"):
            buffer.normal_(0.0, 0.3)


def build_tiny(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    model_cls: type[PreTrainedModel],
    config: Any,
    *,
    norms: NormWeights = "w",
    adjust: Callable[[PreTrainedModel], None] | None = None,
) -> TinyModel:
    """A tiny random checkpoint of `model_cls(config)` saved under a fresh tmp dir, with HF's
    eager attention (and eager per-expert loop for mixtures of experts) as the oracle. `norms`
    says how the family applies its norm weights (`perturb_norms`); `adjust` redraws what a
    family needs beyond that (tests/_families.py's `FamilySpec.adjust`).

    >>> tiny = build_tiny(tmp_path_factory, "llama", LlamaForCausalLM, llama_config())
    """
    config._attn_implementation = "eager"
    if getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None):
        config._experts_implementation = "eager"
    torch.manual_seed(SEED)
    model = model_cls(config)
    randomise(model)
    _router_buffers(model)
    perturb_norms(model, norms)
    if adjust is not None:
        with torch.no_grad():
            adjust(model)
    model.eval()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return TinyModel(path, model, name)


CACHED_SLACK = 1.5  # a recurrent family's cached decode: how far past transformers' own gap


@torch.no_grad()
def hf_chunked_logits(
    hf_model: PreTrainedModel, tokens: Int[Tensor, "batch pos"], bounds: list[int]
) -> Float[Tensor, "batch pos vocab"]:
    """transformers' logits for `tokens` fed as the chunks `bounds[i]:bounds[i + 1]` through its
    own cache (a prompt, single tokens, then chunks: the decode the KV-cache checks run).

    >>> hf_chunked_logits(tiny.hf_model, tokens, [0, 7, 8, tokens.shape[1]]).shape
    torch.Size([2, 70, 128])
    """
    cache = T.DynamicCache(config=hf_model.config)
    return torch.cat(
        [hf_model(tokens[:, a:b], cache=cache, use_cache=True).logits for a, b in pairwise(bounds)],
        dim=1,
    )


@torch.no_grad()
def recurrent_cached_atol(
    hf_model: PreTrainedModel, tokens: Int[Tensor, "batch pos"], bounds: list[int], atol: float
) -> tuple[float, str]:
    """The tolerance of a recurrent family's cached decode (Qwen3.5, Qwen3-Next): `atol`, or
    `CACHED_SLACK` x transformers' own cached-vs-uncached gap on the same tokens, chunks and
    threads if that is larger (as tests/test_dtypes.py bounds half precision by transformers'
    own error), and the measurement, for the assertion message.

    Why: the gated delta-net's readout is `S^T q`, a sum that can cancel to near 0 (in the
    tiny checkpoints some (position, head) rows have rms 5e-5 to 4e-4 while v's rms is 0.07),
    and the gated RMSNorm multiplies it by 1 / sqrt(ms + eps), up to 1e3: a 1-ulp difference in
    the projections, which depends on the call's shape and the thread count, reaches the logits
    as ~1e-5, in transformers as in lmscope. A better-conditioned draw does not remove it: with
    the convolution variance-preserving (weights N(0, 1/taps): v rms 0.45, readout rms 0.05)
    such rows remain (rms 2e-4) and transformers' own gap is 1.3e-5 to 2.1e-5.

    >>> atol, why = recurrent_cached_atol(tiny.hf_model, tokens, [0, 7, 8, 70], atol=1e-5)
    >>> torch.testing.assert_close(ours, full, atol=atol, rtol=0, msg=lambda m: f"{m}\n{why}")
    """
    gap = (hf_chunked_logits(hf_model, tokens, bounds) - hf_model(tokens).logits).abs().max()
    why = (
        f"max({atol:.3g}, {CACHED_SLACK} x transformers' own cached-vs-uncached gap "
        f"{gap.item():.3g}), {torch.get_num_threads()} threads"
    )
    return max(atol, CACHED_SLACK * gap.item()), why


def gpt2_config(vocab_size: int = D_VOCAB) -> GPT2Config:
    """A 2-layer GPT-2 config of the tiny sizes.

    >>> gpt2_config().n_embd
    64
    """
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
    """A Pythia-style config (rotary on half of d_head), parallel or sequential blocks.

    >>> neox_config(parallel=True).use_parallel_residual
    True
    """
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
    """A Llama config of the tiny sizes; `kwargs` override any field.

    >>> llama_config(num_key_value_heads=2).num_key_value_heads
    2
    """
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


def mistral_config(**kwargs: Any) -> T.MistralConfig:
    """A Mistral config of the tiny sizes (multi-query, no window); `kwargs` override any field.

    >>> mistral_config().num_key_value_heads
    1
    """
    base = dict(
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
    base.update(kwargs)
    return T.MistralConfig(**base)


def fake_hub_cache(
    cache: Path,
    repo_id: str,
    files_from: Path | None = None,
    revision: str = "main",
    commit: str = "0123456789abcdef0123456789abcdef01234567",
) -> Path:
    """Lay out `files_from` (or nothing) as huggingface_hub caches `repo_id` at branch or
    revision `revision`; returns the snapshot folder, so the hub code runs offline on it.

    >>> snapshot = fake_hub_cache(tmp_path, "org/repo", tiny.path)
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in files_from.iterdir() if files_from is not None else ():
        shutil.copy(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


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


# -- a real (trained, byte-level BPE) tokenizer -------------------------------------------------
def train_tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained offline on TRAINING_TEXT.

    With `add_bos` its post-processor prepends `<|endoftext|>` (like Llama tokenizers prepend
    `<s>`); without it, like GPT-2, the tokenizer adds nothing.

    >>> train_tokenizer(add_bos=False)("Hello world").input_ids
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


def load_script(path: Path, name: str) -> ModuleType:
    """A script that is not a package module (benchmarks/*.py), imported by path and registered
    as `name` in sys.modules (dataclasses look their module up by name).

    >>> bench = load_script(Path("benchmarks/hook_overhead.py"), "bench_hook_overhead")
    """
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
