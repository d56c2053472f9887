"""Each benchmark model written once as a Hugging Face hub cache under
`benchmarks/.cache/hub/<model>/` (`models--ORG--NAME/snapshots/<rev>/` with `refs/main`), so every
tool resolves its config, weights and tokenizer offline by repo id, and the environment its workers
run in.

    >>> from benchmarks.checkpoints import prepare_checkpoint
    >>> path = prepare_checkpoint("gpt2-tiny", Path("/tmp/bench-cache"))  # built once, reused
    >>> sorted(p.name for p in path.glob("*.json"))[:1]
    ['config.json']
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from benchmarks.spec import DEFAULT_CACHE, MODELS, Settings


def hub_dir(model: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The HF_HUB_CACHE directory holding `model` (one per model: gpt2-random and gpt2-tiny both
    live under GPT-2's repo id)."""
    return cache_dir / "hub" / model


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def snapshot_dir(model: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The snapshot folder of `model` (a fixed revision derived from its name)."""
    spec = MODELS[model]
    rev = hashlib.sha1(f"lmscope-bench/{model}/1".encode()).hexdigest()
    return hub_dir(model, cache_dir) / _repo_folder(spec.repo_id) / "snapshots" / rev


def synthetic_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer over `vocab_size` tokens "t0".."t{n-2}" plus "<|endoftext|>" (the
    last id, GPT-2's EOS), for random models that have no tokenizer offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab[eos] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token=eos))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos
    )


def prepare_checkpoint(model: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The snapshot directory of `model` in its hub cache (float32 safetensors, config, tokenizer),
    built once and reused. Also writes `refs/main` and the alias repo folders."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    spec = MODELS[model]
    out = snapshot_dir(model, cache_dir)
    done = out / ".complete"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if model == "smollm2-135m":
        from lmscope.loading.embedded import embedded_model_path

        p = embedded_model_path("smollm2-135m")
        gguf = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        # A GGUF-loaded model refuses save_pretrained: rebuild it plain from its dequantised weights.
        config = gguf.config
        del config.quantization_config
        hf = type(gguf)(config)
        hf.load_state_dict(gguf.state_dict())
    elif model in ("gpt2-random", "gpt2-tiny"):
        torch.manual_seed(0)
        if model == "gpt2-random":
            # GPT-2 small: 12 layers, d_model 768, 50257 tokens. n_ctx is in the real GPT-2 config
            # (TransformerLens 3.9 reads it); transformers 5 no longer sets it by default.
            config = GPT2Config(n_ctx=1024)
        else:
            config = GPT2Config(
                vocab_size=1000, n_positions=256, n_ctx=256, n_embd=64, n_layer=2, n_head=4,
                bos_token_id=999, eos_token_id=999,
            )  # fmt: skip
        hf = GPT2LMHeadModel(config)
        tok = synthetic_tokenizer(config.vocab_size)
    else:
        raise ValueError(f"unknown model {model!r}; choose from {sorted(MODELS)}")
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    repo = out.parent.parent
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(out.name)
    for alias in spec.aliases:
        link = repo.parent / _repo_folder(alias)
        if not link.exists():
            link.symlink_to(repo.name)
    done.write_text("ok\n")
    return out


def weights_bytes(path: Path) -> int:
    """Size on disk of the checkpoint's safetensors files."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def with_bytecode(env: dict[str, str], cache_dir: Path) -> dict[str, str]:
    """`env` with Python's bytecode cached (under `cache_dir/pycache`), as for an installed
    package, whose bytecode pip compiles: run from a checkout under PYTHONDONTWRITEBYTECODE, a
    worker would compile lmscope's modules in every load (~20 ms of SmolLM2's 0.1 s) while the
    other tools' site-packages have theirs."""
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(cache_dir / "pycache"))
    return env


def worker_env(model: str, settings: Settings) -> dict[str, str]:
    """The environment of a worker or load subprocess: offline, `model`'s hub cache, threads."""
    env = with_bytecode(dict(os.environ), Path(settings.cache_dir))
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_CACHE=str(hub_dir(model, settings.cache_dir)),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS=str(settings.threads),
        MKL_NUM_THREADS=str(settings.threads),
        PYTHONWARNINGS="ignore",
    )
    return env
