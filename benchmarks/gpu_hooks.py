"""Issue 21's GPU figures: hooked and cached runs against HF's forward where small models are
launch-bound, and a 144-head patching sweep against TransformerLens 3.9.

    PYTHONPATH=src python3 benchmarks/gpu_hooks.py --out $OUT          # a CUDA machine, < 4 min
    PYTHONPATH=src python3 benchmarks/gpu_hooks.py --device cpu --quick --out /tmp/gpu-hooks

Needs torch, transformers, safetensors, jaxtyping, einops and tqdm; no network. GGUF support
(`gguf`) is not needed (a stand-in module is registered when it is missing) and TransformerLens
rows run only when `import transformer_lens` works (and its patching, which needs pandas).

Models: random weights (seeded), built offline from transformers configs, saved once to a
temporary directory that HF (eager and sdpa attention) and lmscope (no processing) load:
GPT-2 small's shape (12 layers, d_model 768, 12 heads, 50257 tokens) and SmolLM2-135M's (30
layers, d_model 576, 9 heads / 3 key-value heads, d_mlp 1536, 49152 tokens, tied embeddings).
`--quick`: 2-layer versions (d_model 64), on 2 x 16 tokens, compiled with Dynamo's eager backend.

Rows, batch 4 x 128 tokens, float32, under `torch.inference_mode()` except the backward ones:
HF forward (eager, sdpa); lmscope forward; run_with_cache() of every activation (eager,
compile=True, compile="reduce-overhead" = CUDA graphs), of resid_post only; forward + backward
(HF: loss.backward(); lmscope: the same, and run_with_cache(incl_bwd=True)); on the GPT-2 shape a
patching sweep of every head's output (lmscope.patching.get_act_patch_attn_head_out_all_pos,
12 x 12 heads; eager and compiled) against TransformerLens 3.9's. Each forward row is a ratio
over the faster HF forward, backward rows over the faster HF forward + backward.

Timing: CUDA events around `--calls` calls (wall clock with a synchronize on the CPU), after
warm-up calls; the contenders take turns in each of `--repeats` rounds; the median round.
Kernel launches per run come from torch.profiler (CUDA runtime launch calls; on the CPU, aten
operations). The eager rows of both shapes run first; then the compiled rows (each timed beside
HF's forward measured again), each skipped, with the reason, when it could not finish within
`--budget-s` seconds (compiling GPT-2 small takes tens of seconds).

Writes `gpu_hooks.json` to `--out` after every step (a run killed by a timeout keeps what it
measured) and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import json
import os
import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__" and not __package__:  # a script (a bare GPU machine): the benchmarks
    sys.path[0:1] = [str(BENCH_DIR.parent / "src"), str(BENCH_DIR.parent)]  # package and lmscope

try:  # lmscope imports its GGUF reader eagerly; these models never need it
    import gguf  # noqa: F401
except ImportError:
    _stub = types.ModuleType("gguf")
    _stub.__spec__ = importlib.machinery.ModuleSpec("gguf", None)
    sys.modules["gguf"] = _stub

from benchmarks.hook_overhead import count_ops  # noqa: E402
from lmscope import HookedTransformer, patching  # noqa: E402

TARGETS = {"cache_all": 1.15, "fwd_bwd_cache": 1.3, "sweep_vs_tl": 3.0}
LAUNCHES = {
    "cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
    "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync",
}  # fmt: skip


# -- models -----------------------------------------------------------------------------------------
def hf_configs(quick: bool) -> dict[str, Any]:
    """The transformers configs of the two shapes (tiny with `quick`).

    Example:
        >>> hf_configs(quick=True)["gpt2"].n_layer
        2
    """
    from transformers import GPT2Config, LlamaConfig

    if quick:
        return {
            "gpt2": GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=64),
            "smollm2": LlamaConfig(
                hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=1000, tie_word_embeddings=True,
                max_position_embeddings=64,
            ),
        }  # fmt: skip
    return {
        "gpt2": GPT2Config(n_ctx=1024),  # GPT-2 small
        "smollm2": LlamaConfig(
            hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
            intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
            max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        ),  # SmolLM2-135M
    }  # fmt: skip


@contextlib.contextmanager
def built(name: str, config: Any, device: str) -> Iterator[dict[str, Any]]:
    """HF (eager, sdpa) and lmscope models of `config` with the same seeded random weights,
    loaded from one temporary checkpoint; deleted on exit."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix=f"gpu-hooks-{name}-") as tmp:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(tmp)
        del model
        models: dict[str, Any] = {
            f"hf_{impl}": AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float32, attn_implementation=impl
            )
            .to(device)
            .eval()
            for impl in ("eager", "sdpa")
        }
        models["lmscope"] = HookedTransformer.from_pretrained_no_processing(
            tmp, device=device, verbose=False
        ).eval()
        yield models
    models.clear()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# -- timing -----------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], calls: int, device: str) -> float:
    """Seconds per call of `calls` calls (CUDA events on a GPU)."""
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    begin = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - begin) / calls


def round_robin(
    fns: dict[str, Callable[[], Any]], repeats: int, calls: int, warmup: int, device: str
) -> dict[str, float]:
    """Median seconds per call of each function, the functions taking turns in every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, calls, device))
    return {name: statistics.median(t) for name, t in times.items()}


def launches(fn: Callable[[], Any], device: str) -> int:
    """Kernel launches (CUDA runtime calls) of one call of `fn`; aten ops on the CPU."""
    if not device.startswith("cuda"):
        return count_ops(fn)
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync(device)
    return sum(1 for e in prof.events() if e.name in LAUNCHES)


# -- the benchmark ----------------------------------------------------------------------------------
class Budget:
    """Seconds left for optional (compiled) rows."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds
        self.skipped: dict[str, str] = {}

    def spent(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, row: str, needs: float) -> bool:
        if self.spent() + needs <= self.seconds:
            return True
        self.skipped[row] = f"skipped: {self.spent():.0f} s spent, about {needs:.0f} s more needed"
        print(f"  {row}: {self.skipped[row]}", flush=True)
        return False


def eager_rows(models: dict[str, Any], tokens: torch.Tensor, args: argparse.Namespace) -> dict:
    """Forward, cached and backward rows of one model shape (eager), launch counts and checks."""
    lms: HookedTransformer = models["lmscope"]
    device = args.device

    def resid_post(name: str) -> bool:
        return name.endswith("hook_resid_post")

    out: dict[str, Any] = {"seconds": {}, "launches": {}, "checks": {}, "baseline_s": {}}
    with torch.inference_mode():
        fwd = hf_forwards(models, tokens)
        fwd["forward"] = lambda: lms(tokens)
        fwd["cache_all"] = lambda: lms.run_with_cache(tokens)
        fwd["cache_resid_post"] = lambda: lms.run_with_cache(tokens, names_filter=resid_post)
        reference = models["hf_eager"](tokens, use_cache=False).logits
        out["checks"]["forward_max_abs_diff"] = (lms(tokens) - reference).abs().max().item()
        cached, _ = lms.run_with_cache(tokens)
        out["checks"]["cache_all_max_abs_diff"] = (cached - reference).abs().max().item()
        out["seconds"].update(round_robin(fwd, args.repeats, args.calls, args.warmup, device))
        for row in ("forward", "cache_all", "hf_sdpa"):
            out["launches"][row] = launches(fwd[row], device)

    def hf_fwd_bwd(m: Any) -> None:
        m.zero_grad(set_to_none=True)
        m(tokens, labels=tokens, use_cache=False).loss.backward()

    def lms_fwd_bwd() -> None:
        lms.zero_grad(set_to_none=True)
        lms(tokens, return_type="loss").backward()

    def lms_fwd_bwd_cache() -> None:
        lms.zero_grad(set_to_none=True)
        lms.run_with_cache(tokens, return_type="loss", incl_bwd=True)

    bwd: dict[str, Callable[[], Any]] = {
        f"{name}_fwd_bwd": (lambda m=m: hf_fwd_bwd(m))
        for name, m in models.items()
        if name.startswith("hf_")
    }
    bwd["fwd_bwd"] = lms_fwd_bwd
    bwd["fwd_bwd_cache"] = lms_fwd_bwd_cache
    calls = max(1, args.calls // 2)
    out["seconds"].update(round_robin(bwd, args.repeats, calls, args.warmup, device))
    for model in models.values():
        model.zero_grad(set_to_none=True)
    return out


def hf_forwards(models: dict[str, Any], tokens: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """HF's forwards (eager and sdpa attention), the baseline of every forward row."""
    return {
        name: (lambda m=m: m(tokens, use_cache=False).logits)
        for name, m in models.items()
        if name.startswith("hf_")
    }


def compiled_row(
    models: dict[str, Any],
    tokens: torch.Tensor,
    args: argparse.Namespace,
    row: str,
    option: Any,
    result: dict[str, Any],
) -> None:
    """Compile `run_with_cache(compile=option)` (the first calls), check it against the eager
    cache, then time it against HF's forwards measured again beside it (`baseline_s`)."""
    lms: HookedTransformer = models["lmscope"]
    start = time.perf_counter()
    with torch.inference_mode():
        cached, _ = lms.run_with_cache(tokens)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lms.run_with_cache(tokens, compile=option)
            logits, _ = lms.run_with_cache(tokens, compile=option)  # a CUDA graph records
        result["checks"][f"{row}_compile_s"] = round(time.perf_counter() - start, 1)
        result["checks"][f"{row}_max_abs_diff"] = (logits - cached).abs().max().item()
        if caught:
            result["checks"][f"{row}_warnings"] = [str(w.message)[:300] for w in caught]
        fns = hf_forwards(models, tokens)
        fns[row] = lambda: lms.run_with_cache(tokens, compile=option)
        times = round_robin(fns, args.repeats, args.calls, args.warmup, args.device)
        result["launches"][row] = launches(fns[row], args.device)
    result["seconds"][row] = times[row]
    result["baseline_s"][row] = min(t for name, t in times.items() if name.startswith("hf_"))


def tl_model(hf: Any, device: str) -> Any:
    """TransformerLens 3.9's HookedTransformer of GPT-2 shape `hf` with its weights."""
    from transformer_lens import HookedTransformer as TLHookedTransformer
    from transformer_lens import HookedTransformerConfig as TLConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf.config
    cfg = TLConfig(
        n_layers=c.n_layer, d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
        d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new",
        normalization_type="LN", device=device, default_prepend_bos=False,
    )  # fmt: skip
    model = TLHookedTransformer(cfg)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False,
    )  # fmt: skip
    return model.eval()


class Sweep:
    """The patching sweep over every head's output (GPT-2 shape): its inputs and metric."""

    def __init__(self, lms: HookedTransformer, tokens: torch.Tensor) -> None:
        self.lms, self.corrupted = lms, tokens.roll(1, dims=-1)
        self.answer, self.wrong = tokens[:, -1], (tokens[:, -1] + 1) % lms.cfg.d_vocab
        self.rows = torch.arange(tokens.shape[0], device=tokens.device)
        with torch.inference_mode():
            _, self.clean = lms.run_with_cache(tokens)
        self.tokens = tokens
        self.eager: torch.Tensor | None = None  # the eager sweep's result, once run

    def metric(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits[self.rows, -1, self.answer] - logits[self.rows, -1, self.wrong]).mean()

    def run(self, compile: Any = False) -> torch.Tensor:
        return patching.get_act_patch_attn_head_out_all_pos(
            self.lms, self.corrupted, self.clean, self.metric, compile=compile
        )


def sweep_rows(
    models: dict[str, Any], sweep: Sweep, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    """lmscope's eager sweep against TransformerLens 3.9's (when importable)."""
    checks = result["checks"]
    checks["heads"] = sweep.lms.cfg.n_layers * sweep.lms.cfg.n_heads
    sweeps: dict[str, Callable[[], Any]] = {"sweep": sweep.run}
    sweep.eager = sweep.run()
    try:
        import transformer_lens.patching as tl_patching

        tl = tl_model(models["hf_eager"], args.device)
        with torch.inference_mode():
            _, tl_clean = tl.run_with_cache(sweep.tokens)
        sweeps["tl_sweep"] = lambda: tl_patching.get_act_patch_attn_head_out_all_pos(
            tl, sweep.corrupted, tl_clean, sweep.metric
        )
        tl_result = sweeps["tl_sweep"]().to(sweep.eager.device)
        checks["tl_sweep_max_abs_diff"] = (tl_result - sweep.eager).abs().max().item()
    except Exception as exc:  # not installed, or its pandas
        checks["tl_sweep"] = f"skipped: {type(exc).__name__}: {exc}"[:300]
        print(f"  TransformerLens sweep {checks['tl_sweep']}", flush=True)
    result["seconds"].update(round_robin(sweeps, args.sweep_repeats, 1, 1, args.device))


def sweep_compiled_row(sweep: Sweep, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The sweep with compile=...: checked against the eager sweep, timed beside it."""
    option = compile_option(args)
    start = time.perf_counter()
    got = sweep.run(option)
    result["checks"]["sweep_compiled_compile_s"] = round(time.perf_counter() - start, 1)
    result["checks"]["sweep_compiled_max_abs_diff"] = (got - sweep.eager).abs().max().item()
    times = round_robin(
        {"sweep": sweep.run, "sweep_compiled": lambda: sweep.run(option)},
        args.sweep_repeats, 1, 1, args.device,
    )  # fmt: skip
    result["seconds"]["sweep_compiled"] = times["sweep_compiled"]
    result["baseline_s"]["sweep_compiled"] = times["sweep"]


def compile_option(args: argparse.Namespace) -> Any:
    """compile=True (Inductor), or the backend `--compile-backend` names."""
    return True if args.compile_backend == "inductor" else {"backend": args.compile_backend}


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """Each row over its baseline: forward rows over the faster HF forward (compiled rows over
    the one timed beside them), backward rows over the faster HF forward + backward; TL's sweep
    over lmscope's (a speed-up)."""
    s, own = result["seconds"], result.get("baseline_s", {})
    out: dict[str, float] = {}
    hf = min(s.get("hf_eager", float("inf")), s.get("hf_sdpa", float("inf")))
    hf_bwd = min(s.get("hf_eager_fwd_bwd", float("inf")), s.get("hf_sdpa_fwd_bwd", float("inf")))
    for row, t in s.items():
        if row.startswith("hf_") or row.startswith(("sweep", "tl_sweep")):
            continue
        out[row] = t / own.get(row, hf_bwd if "bwd" in row else hf)
    if "tl_sweep" in s:
        out["tl_over_sweep"] = s["tl_sweep"] / s["sweep"]
        if "sweep_compiled" in s:  # the compiled sweep over the eager one timed beside it
            eager_again = own.get("sweep_compiled", s["sweep"])
            out["tl_over_sweep_compiled"] = (
                s["tl_sweep"] / s["sweep"] * eager_again / s["sweep_compiled"]
            )
    return out


def print_table(name: str, result: dict[str, Any]) -> None:
    print(f"\n{name}: seconds per call, ratio over HF (sweeps: TransformerLens over lmscope)")
    r = result["ratios"]
    for row, t in result["seconds"].items():
        extra = f"  {r[row]:.2f}x" if row in r else ""
        launch = result.get("launches", {}).get(row)
        extra += f"  {launch} launches" if launch is not None else ""
        print(f"  {row:24s} {t * 1e3:9.2f} ms{extra}")
    for row, v in r.items():
        if row.startswith("tl_over_"):
            print(f"  {row:24s} {v:.2f}x (target >= {TARGETS['sweep_vs_tl']}x)")
    for key, value in result.get("checks", {}).items():
        print(f"  check {key}: {value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-out"), help="folder for the JSON")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke test")
    parser.add_argument("--models", nargs="+", default=["gpt2", "smollm2"])
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; quick 1)")
    parser.add_argument("--calls", type=int, default=None, help="calls per round (10; quick 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls (3; quick 1)")
    parser.add_argument("--sweep-repeats", type=int, default=None, help="sweep rounds (3)")
    parser.add_argument(
        "--budget-s", type=float, default=180.0, help="no compiled row starts after this"
    )
    parser.add_argument(
        "--compile-cost", type=float, default=None, help="seconds a compiled row may take (60)"
    )
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (inductor; quick: eager)"
    )
    args = parser.parse_args(argv)
    q = args.quick
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.repeats = args.repeats or (1 if q else 5)
    args.calls = args.calls or (1 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.sweep_repeats = args.sweep_repeats or (1 if q else 3)
    args.compile_cost = args.compile_cost if args.compile_cost is not None else (5 if q else 60)
    args.compile_backend = args.compile_backend or ("eager" if q else "inductor")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    budget = Budget(args.budget_s)
    batch, seq = (2, 16) if args.quick else (4, 128)
    doc: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "batch": batch,
        "seq": seq,
        "quick": args.quick,
        "compile_backend": args.compile_backend,
        "targets": TARGETS,
        "models": {},
        "skipped": budget.skipped,
    }
    print(f"device {doc['device']}, torch {doc['torch']}, {batch} x {seq} tokens", flush=True)
    configs = hf_configs(args.quick)
    with contextlib.ExitStack() as stack:
        models, tokens, results = {}, {}, doc["models"]
        for name in args.models:  # eager rows first, both shapes; compiled rows while time lasts
            models[name] = stack.enter_context(built(name, configs[name], args.device))
            gen = torch.Generator().manual_seed(1)
            vocab = models[name]["lmscope"].cfg.d_vocab
            tokens[name] = torch.randint(0, vocab, (batch, seq), generator=gen).to(args.device)
            print(f"{name}: built after {budget.spent():.0f} s; timing", flush=True)
            results[name] = eager_rows(models[name], tokens[name], args)
            write(doc, args.out, budget)
        sweep = None
        if "gpt2" in models:
            sweep = Sweep(models["gpt2"]["lmscope"], tokens["gpt2"])
            sweep_rows(models["gpt2"], sweep, args, results["gpt2"])
            write(doc, args.out, budget)
        graphs = "reduce-overhead" if args.compile_backend == "inductor" else None
        plan = [
            ("gpt2", "cache_all_compiled", compile_option(args)),
            ("smollm2", "cache_all_compiled", compile_option(args)),
            ("gpt2", "cache_all_cudagraphs", graphs),
            ("gpt2", "sweep_compiled", None),
            ("smollm2", "cache_all_cudagraphs", graphs),
        ]
        for name, row, option in plan:
            if name not in models or (option is None and row != "sweep_compiled"):
                continue
            if not budget.allows(f"{name}/{row}", args.compile_cost):
                continue
            print(f"{name}: {row} after {budget.spent():.0f} s", flush=True)
            if row == "sweep_compiled":
                sweep_compiled_row(sweep, args, results[name])
            else:
                compiled_row(models[name], tokens[name], args, row, option, results[name])
            write(doc, args.out, budget)
    for name, result in results.items():
        print_table(name, result)
    path = write(doc, args.out, budget)
    print(f"\nwrote {path} after {doc['seconds_total']} s", flush=True)
    return doc


def write(doc: dict[str, Any], out: Path, budget: Budget) -> Path:
    """Write the JSON as it stands (after every step: a killed run keeps what it measured)."""
    for result in doc["models"].values():
        result["ratios"] = ratios(result)
    doc["seconds_total"] = round(budget.spent(), 1)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_hooks.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    main()
