"""Foundation benchmark: lmscope against Hugging Face transformers on the same weights, on CPU.

Both libraries read the same safetensors directory. The script prints a table of absolute times
and ratios (lmscope / HF), measured in one process with warm-up and the median of repeats
(contenders are run round-robin inside each repeat, so drift in machine load hits all alike):

1. forward, no hooks: `model(tokens)` against HF with `attn_implementation="sdpa"` and "eager"
   (`use_cache=False`), all under `torch.inference_mode()`;
2. `run_with_cache`, every hook (`names_filter=None`) and only `hook_resid_post`, against the
   same HF forward;
3. load: `HookedTransformer.from_pretrained_no_processing(dir)` and `from_pretrained(dir)` against
   `AutoModelForCausalLM.from_pretrained(dir)` (and HF model + `AutoTokenizer`, since lmscope
   loads the tokenizer too), each in a fresh subprocess. Load time is measured inside the
   subprocess after the imports (import time is reported separately); peak RSS growth is the
   peak RSS after loading (VmHWM, reset after the imports: `ru_maxrss` would inherit the
   parent's peak across exec) minus the RSS after imports, compared with the weights on disk.

Models: `smollm2-135m` (the embedded GGUF, dequantised to float32 once with HF and saved with
`save_pretrained`, tokenizer included) or `gpt2-random` (a GPT-2-small-sized random
GPT2LMHeadModel built offline from a config, no tokenizer). Converted checkpoints are cached in
`--cache-dir` (default `benchmarks/.cache`) and reused.

Run (about 2-3 minutes on 2 cores with the defaults):
    .venv/bin/python benchmarks/bench_foundation.py
    .venv/bin/python benchmarks/bench_foundation.py --model gpt2-random --repeats 7 --warmup 2
    .venv/bin/python benchmarks/bench_foundation.py --skip-load --batch 1 --seq 512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS = ("smollm2-135m", "gpt2-random")
LOAD_KINDS = ("hf", "hf+tokenizer", "lmscope_no_processing", "lmscope")
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"


# -- checkpoint preparation ---------------------------------------------------------------------------
def prepare_checkpoint(model: str, cache_dir: Path) -> Path:
    """A `save_pretrained` directory (float32 safetensors) for `model`, built once and reused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = cache_dir / model
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
        hf.save_pretrained(out)
        tok.save_pretrained(out)
    elif model == "gpt2-random":
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config())  # GPT-2 small: 12 layers, d_model 768, 50257 tokens
        hf.save_pretrained(out)
    else:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
    done.write_text("ok\n")
    return out


def weights_bytes(path: Path) -> int:
    """Size on disk of the checkpoint's safetensors files."""
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# -- timing -------------------------------------------------------------------------------------------
def time_round_robin(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per call for each function: `warmup` untimed rounds, then `repeats` timed rounds,
    each round calling every function once in turn."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_idx in range(warmup + repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            del out
            if round_idx >= warmup:
                times[name].append(elapsed)
    return times


@dataclass
class Row:
    """One table line: a case, its median and min seconds, and ratios against baselines."""

    case: str
    median_s: float
    min_s: float
    ratios: dict[str, float]


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_header(args: argparse.Namespace) -> str:
    import torch
    import transformers

    import lmscope

    lines = [
        "=" * 96,
        "lmscope foundation benchmark (CPU)",
        f"machine : {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpu_count={os.cpu_count()} | python {platform.python_version()}",
        f"torch {torch.__version__} (threads={torch.get_num_threads()}, "
        f"interop={torch.get_num_interop_threads()}) | transformers {transformers.__version__} | "
        f"lmscope {getattr(lmscope, '__version__', '?')}",
        f"load average at start: {_loadavg()} (anything near or above the core count makes the "
        "timings noisy: compare min columns then)",
        f"model={args.model} batch={args.batch} seq={args.seq} warmup={args.warmup} "
        f"repeats={args.repeats} load_repeats={args.load_repeats} (median reported)",
        "=" * 96,
    ]
    return "\n".join(lines)


def format_rows(title: str, rows: list[Row], ratio_names: list[str]) -> str:
    head = f"{'case':<44}{'median ms':>11}{'min ms':>10}" + "".join(f"{n:>15}" for n in ratio_names)
    lines = [f"\n{title}", head, "-" * len(head)]
    for r in rows:
        ratios = "".join(
            f"{r.ratios[n]:>14.3f}x" if n in r.ratios else f"{'':>15}" for n in ratio_names
        )
        lines.append(f"{r.case:<44}{r.median_s * 1e3:>11.1f}{r.min_s * 1e3:>10.1f}{ratios}")
    return "\n".join(lines)


# -- forward and run_with_cache -------------------------------------------------------------------------
def bench_forward(path: Path, args: argparse.Namespace) -> str:
    """Sections 1 and 2: forward without hooks and run_with_cache, against HF sdpa and eager."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmscope import HookedTransformer

    hf = {
        impl: AutoModelForCausalLM.from_pretrained(
            path, attn_implementation=impl, dtype=torch.float32
        ).eval()
        for impl in ("sdpa", "eager")
    }
    lm = HookedTransformer.from_pretrained_no_processing(str(path))
    lm.eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, lm.cfg.d_vocab, (args.batch, args.seq), generator=gen)

    def resid_post(name: str) -> bool:
        return name.endswith("hook_resid_post")

    with torch.inference_mode():
        ref = hf["sdpa"](tokens, use_cache=False).logits
        diff = (lm(tokens) - ref).abs().max().item()
        diff_cache = (lm.run_with_cache(tokens)[0] - ref).abs().max().item()
        fns: dict[str, Callable[[], Any]] = {
            "HF sdpa": lambda: hf["sdpa"](tokens, use_cache=False).logits,
            "HF eager": lambda: hf["eager"](tokens, use_cache=False).logits,
            "lmscope model(tokens)": lambda: lm(tokens),
            "lmscope run_with_cache (all hooks)": lambda: lm.run_with_cache(tokens),
            "lmscope run_with_cache (resid_post)": lambda: lm.run_with_cache(
                tokens, names_filter=resid_post
            ),
        }
        times = time_round_robin(fns, args.warmup, args.repeats)
        n_cached = len(lm.run_with_cache(tokens)[1])

    med = {name: statistics.median(t) for name, t in times.items()}
    best_hf = min(med["HF sdpa"], med["HF eager"])
    rows = []
    for name, t in times.items():
        ratios = {}
        if name.startswith("lmscope"):
            ratios = {
                "vs HF sdpa": med[name] / med["HF sdpa"],
                "vs best HF": med[name] / best_hf,
                "min/min sdpa": min(t) / min(times["HF sdpa"]),
            }
        rows.append(Row(name, med[name], min(t), ratios))
    tokens_per_s = args.batch * args.seq / med["lmscope model(tokens)"]
    out = [
        format_rows(
            f"[1+2] forward and run_with_cache, {args.batch} x {args.seq} tokens, inference_mode",
            rows,
            ["vs HF sdpa", "vs best HF", "min/min sdpa"],
        ),
        f"check: max|lmscope - HF sdpa| logits = {diff:.2e} (forward), {diff_cache:.2e} "
        f"(run_with_cache); cache(all) holds {n_cached} tensors; "
        f"lmscope forward = {tokens_per_s:,.0f} tokens/s",
    ]
    return "\n".join(out)


# -- load (fresh subprocesses) --------------------------------------------------------------------------
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
    """Peak RSS of this process. VmHWM, not ru_maxrss: after fork/vfork + exec, ru_maxrss keeps
    the parent's peak (the benchmark process holding three models), which would hide ours."""
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
    model modules, the tokenizer class): both libraries pay it once, and it is not loading."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    _ = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path))]
    tok_config = Path(path) / "tokenizer_config.json"
    if tok_config.exists():
        tokenizer_class_from_name(json.loads(tok_config.read_text()).get("tokenizer_class") or "")


def load_worker(kind: str, path: str, threads: int) -> None:
    """Runs in a fresh interpreter: import, then load once; prints one JSON line of measurements.

    After loading, every parameter is read once ("touch"): HF maps the safetensors file and reads
    a page only when it is first used, lmscope copies every weight while loading, so load + touch
    compares the same work done.
    """
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmscope.loading  # noqa: F401
    from lmscope import HookedTransformer

    torch.set_num_threads(threads)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    _warm_lazy_imports(path)
    t_lazy = time.perf_counter() - t0
    rss_after_import = _rss_bytes()
    _reset_peak_rss()
    t1 = time.perf_counter()
    if kind == "hf":
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    elif kind == "hf+tokenizer":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.tokenizer = AutoTokenizer.from_pretrained(path)
    elif kind == "lmscope_no_processing":
        model = HookedTransformer.from_pretrained_no_processing(path)
    elif kind == "lmscope":
        model = HookedTransformer.from_pretrained(path)
    else:
        raise ValueError(kind)
    t_load = time.perf_counter() - t1
    peak = _peak_rss_bytes()
    t2 = time.perf_counter()
    with torch.inference_mode():
        total = sum(float(p.sum()) for p in model.parameters())
    t_touch = time.perf_counter() - t2
    peak_touch = _peak_rss_bytes()
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "kind": kind,
        "import_s": t_import,
        "lazy_import_s": t_lazy,
        "load_s": t_load,
        "touch_s": t_touch,
        "rss_after_import": rss_after_import,
        "peak_rss": peak,
        "peak_rss_touch": peak_touch,
        "n_params": n_params,
        "checksum": total,
    }
    print(json.dumps(result))


def run_load_worker(kind: str, path: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_load-worker", kind]
    cmd += ["--_path", str(path), "--threads", str(threads)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"load worker {kind} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def bench_load(path: Path, args: argparse.Namespace) -> str:
    """Section 3: load time and peak RSS growth, each load in a fresh subprocess."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in LOAD_KINDS}
    run_load_worker("hf", path, args.threads)  # untimed: warms the page cache and .pyc files
    for _ in range(args.load_repeats):
        for kind in LOAD_KINDS:
            runs[kind].append(run_load_worker(kind, path, args.threads))

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    def med_of(kind: str, fn: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(fn(r) for r in runs[kind])

    disk = weights_bytes(path)
    mib = 2**20
    hf_load, hf_tok_load = med("hf", "load_s"), med("hf+tokenizer", "load_s")
    hf_touch = med_of("hf", lambda r: r["load_s"] + r["touch_s"])
    head = (
        f"{'case':<40}{'load s':>8}{'min s':>7}{'vs HF':>8}{'vs HF+tok':>10}"
        f"{'+touch s':>9}{'vs HF':>8}{'peak MiB':>9}{'/disk':>7}{'+touch MiB':>11}{'params M':>9}"
    )
    lines = [
        f"\n[3] load from {path} ({disk / mib:.0f} MiB safetensors), "
        f"fresh subprocess each, median of {args.load_repeats}",
        head,
        "-" * len(head),
    ]
    labels = {
        "hf": "HF AutoModelForCausalLM",
        "hf+tokenizer": "HF AutoModelForCausalLM + AutoTokenizer",
        "lmscope_no_processing": "lmscope from_pretrained_no_processing",
        "lmscope": "lmscope from_pretrained (processed)",
    }
    for kind in LOAD_KINDS:
        load = med(kind, "load_s")
        touch = med_of(kind, lambda r: r["load_s"] + r["touch_s"])
        grow = med_of(kind, lambda r: r["peak_rss"] - r["rss_after_import"])
        grow_touch = med_of(kind, lambda r: r["peak_rss_touch"] - r["rss_after_import"])
        lines.append(
            f"{labels[kind]:<40}{load:>8.3f}{min(r['load_s'] for r in runs[kind]):>7.3f}"
            f"{load / hf_load:>7.2f}x{load / hf_tok_load:>9.2f}x{touch:>9.3f}"
            f"{touch / hf_touch:>7.2f}x{grow / mib:>9.0f}{grow / disk:>6.2f}x"
            f"{grow_touch / mib:>11.0f}{runs[kind][0]['n_params'] / 1e6:>9.1f}"
        )
    lines += [
        "load s: inside the subprocess, after imports (torch+transformers+lmscope "
        f"{med('hf', 'import_s'):.2f}s) and transformers' lazy config/model/tokenizer imports "
        f"({med('hf', 'lazy_import_s'):.2f}s), both paid before timing.",
        "+touch: load plus one read of every parameter (HF maps the file and reads pages on first "
        "use). peak MiB: peak RSS (VmHWM, reset after imports) after load minus RSS after imports; "
        "+touch MiB: the same after the read.",
        f"subprocess wall incl. interpreter start and imports: HF {med('hf', 'wall_s'):.2f}s, "
        f"lmscope {med('lmscope', 'wall_s'):.2f}s",
    ]
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--load-repeats", type=int, default=3, help="subprocess loads per case")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--_load-worker", dest="load_worker", help=argparse.SUPPRESS)
    parser.add_argument("--_path", dest="path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if args.load_worker:
        load_worker(args.load_worker, args.path, args.threads)
        return
    import torch

    torch.set_num_threads(args.threads)
    print(machine_header(args), flush=True)
    start = time.perf_counter()
    path = prepare_checkpoint(args.model, args.cache_dir)
    print(f"checkpoint: {path} (ready in {time.perf_counter() - start:.1f}s)", flush=True)
    if not args.skip_forward:
        print(bench_forward(path, args), flush=True)
    if not args.skip_load:
        print(bench_load(path, args), flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f}s; load average at end: {_loadavg()}")


if __name__ == "__main__":
    main()
