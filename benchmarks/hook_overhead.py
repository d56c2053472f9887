"""Hook dispatch overhead on CPU: what a hooked or cached run costs beyond a plain forward when the
tensor work is nil, and how many operations each run issues (issue 21's stand-in for GPU launch
counts, which follow the same Python and the same ops).

    .venv/bin/python benchmarks/hook_overhead.py                 # overhead, op counts, compiled
    .venv/bin/python benchmarks/hook_overhead.py --no-compile    # without the compiled rows
    .venv/bin/python benchmarks/hook_overhead.py --smollm2       # + SmolLM2 parity against HF

Models: 12 layers, d_model 64 (4 heads of 16), random weights, built in process: "gpt2" (LayerNorm,
learned positions, GELU) and "llama" (RMSNorm, rotary, GQA 4/2 heads, gated SiLU MLP).

- Overhead: milliseconds per run of the calling thread's CPU time (so the other processes of a
  shared machine count less), on 1 x 16 tokens, 1 thread, each contender the minimum over
  `--rounds` rounds of `--calls` calls, the contenders interleaved within every round. The
  overhead is a row minus the forward of the same grad mode; the target for `run_with_cache()`
  of every hook point is <= 0.3 ms. Under `torch.inference_mode()` (as benchmarks/run.py times)
  and with autograd on (parameters require grad, as after loading): there the cached run's
  hooked norms and attention also build the autograd graph of their step-by-step values.
- Ops per run: torch.profiler counts, on 4 x 32 tokens, the aten operations that do work (leaf
  ops, without views and other metadata-only ops): each is a kernel launch on a GPU. A compiled
  run is counted as its aten calls plus the kernels Inductor generated for its graph.
- `--smollm2`: the forward and cache rows of benchmarks/run.py on the embedded SmolLM2-135M
  (4 x 128 tokens, float32, 1 thread as benchmarks/run.py's figures), against HF's forward
  (eager and sdpa) loaded from the same checkpoint: the median of `--smollm2-rounds`
  interleaved rounds of the thread's CPU time (with more `--threads`, whose work the calling
  thread's time leaves out, read the ratios with care).

Results print as tables and go to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
if __name__ == "__main__" and not __package__:  # a script: the benchmarks package and lmscope from
    sys.path[0:1] = [str(BENCH_DIR.parent / "src"), str(BENCH_DIR.parent)]  # the root, not here

from lmscope import HookedTransformer, HookedTransformerConfig  # noqa: E402

TARGET_MS = 0.3

# Operations that only make views or read metadata: no kernel on a GPU.
METADATA_OPS = {
    "aten::view", "aten::as_strided", "aten::_reshape_alias", "aten::reshape", "aten::transpose",
    "aten::t", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
    "aten::permute", "aten::detach", "aten::alias", "aten::empty", "aten::empty_strided",
    "aten::empty_like", "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view",
    "aten::lift_fresh", "aten::result_type", "aten::split", "aten::unbind", "aten::narrow",
    "aten::view_as", "aten::unflatten", "aten::flatten", "aten::split_with_sizes", "detach",
    "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::to", "aten::contiguous",
    "aten::set_", "aten::_has_compatible_shallow_copy_type", "aten::stride", "aten::size",
}  # fmt: skip


def small_config(family: str, n_layers: int = 12, d_model: int = 64) -> HookedTransformerConfig:
    """The benchmark's small model: "gpt2" (LayerNorm, learned positions) or "llama" (RMSNorm,
    rotary, GQA, gated MLP); d_head 16.

    Example:
        >>> small_config("llama", n_layers=2).n_key_value_heads
        2
    """
    n_heads = d_model // 16
    base = dict(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=16, d_mlp=4 * d_model,
        d_vocab=128, n_ctx=64,
    )  # fmt: skip
    if family == "gpt2":
        base.update(act_fn="gelu", normalization_type="LN")
    elif family == "llama":
        base.update(
            act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
            gated_mlp=True, n_key_value_heads=max(1, n_heads // 2), rotary_dim=16,
        )  # fmt: skip
    else:
        raise ValueError(f"family must be 'gpt2' or 'llama', got {family!r}")
    return HookedTransformerConfig(**base)


def build(family: str, n_layers: int = 12, d_model: int = 64) -> HookedTransformer:
    """A random-weight model of `small_config(family, ...)` (seeded)."""
    torch.manual_seed(0)
    model = HookedTransformer(small_config(family, n_layers, d_model))
    model.init_weights()
    return model.eval()


def time_interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int, calls: int, warmup: int = 20
) -> dict[str, float]:
    """Milliseconds of thread CPU time per call of each function: the minimum over `rounds`
    rounds of `calls` calls, the functions taking turns inside every round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.thread_time()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.thread_time() - start) / calls * 1e3)
    return best


def overhead_rows(
    model: HookedTransformer, tokens: torch.Tensor, rounds: int, calls: int, compile: Any
) -> dict[str, dict[str, float]]:
    """{grad mode: {row: ms per run}} for the forward and the hooked/cached runs."""

    def resid_post(name: str) -> bool:
        return name.endswith("hook_resid_post")

    def ablate(z: torch.Tensor, hook: Any) -> None:
        z[:, :, 0] = 0.0

    out: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        rows = {
            "forward": lambda: model(tokens),
            "run_with_cache() all": lambda: model.run_with_cache(tokens),
            "run_with_cache(resid_post)": lambda: model.run_with_cache(
                tokens, names_filter=resid_post
            ),
            "run_with_hooks(1 head ablation)": lambda: model.run_with_hooks(
                tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate)]
            ),
        }
        if compile:
            model.run_with_cache(tokens, compile=compile)  # compiles once, untimed
            rows["run_with_cache() all, compile=True"] = lambda: model.run_with_cache(
                tokens, compile=compile
            )
        out["inference_mode"] = time_interleaved(rows, rounds, calls)

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        model(tokens, return_type="loss").backward()

    def cache_bwd() -> None:
        model.zero_grad(set_to_none=True)
        model.run_with_cache(tokens, return_type="loss", incl_bwd=True)

    rows = {
        "forward": lambda: model(tokens),
        "run_with_cache() all": lambda: model.run_with_cache(tokens),
        "forward + backward": fwd_bwd,
        "run_with_cache(incl_bwd=True) all": cache_bwd,
    }
    out["autograd"] = time_interleaved(rows, max(3, rounds // 2), max(5, calls // 2))
    return out


def count_ops(fn: Callable[[], Any]) -> int:
    """How many aten operations that do work (leaf ops, no views or metadata) one call of `fn`
    runs, by torch.profiler (after one untimed call).

    Example:
        >>> count_ops(lambda: model(tokens))      # 154 for the 12-layer "gpt2" on 4 x 32 tokens
    """
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def works(e: Any) -> bool:
        return e.name.startswith("aten::") and e.name not in METADATA_OPS

    # an op that does work itself: none of its children does work (they would be counted)
    return sum(1 for e in prof.events() if works(e) and not any(map(works, e.cpu_children)))


def op_counts(model: HookedTransformer, tokens: torch.Tensor, compile: Any) -> dict[str, Any]:
    """Operations that do work per run (see the module docstring), by run kind."""
    count = count_ops
    result: dict[str, Any] = {}
    with torch.inference_mode():
        result["forward"] = count(lambda: model(tokens))
        result["run_with_cache() all"] = count(lambda: model.run_with_cache(tokens))
        if compile:
            from torch._inductor import metrics

            torch._dynamo.reset()
            model.__dict__.pop("_compiled_forwards", None)
            metrics.reset()
            model.run_with_cache(tokens, compile=compile)
            kernels = metrics.generated_kernel_count
            aten = count(lambda: model.run_with_cache(tokens, compile=compile))
            result["run_with_cache() all, compile=True"] = aten + kernels
            result["compiled: aten calls + Inductor kernels"] = f"{aten} + {kernels}"
    return result


def machine() -> dict[str, Any]:
    """benchmarks/run.py's machine description, with the load average and the date."""
    from benchmarks.probes import machine_info

    info = machine_info("cpu")
    info["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    info["date"] = dt.datetime.now().isoformat(timespec="seconds")
    return info


def smollm2_rows(rounds: int, threads: int) -> dict[str, Any]:
    """benchmarks/run.py's forward and cache rows on SmolLM2-135M against HF's forward."""
    from transformers import AutoModelForCausalLM

    from benchmarks.checkpoints import prepare_checkpoint

    path = prepare_checkpoint("smollm2-135m")
    torch.set_num_threads(threads)
    hf = {
        impl: AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation=impl
        ).eval()
        for impl in ("eager", "sdpa")
    }
    model = HookedTransformer.from_pretrained_no_processing(str(path)).eval()
    tokens = torch.randint(
        0, model.cfg.d_vocab, (4, 128), generator=torch.Generator().manual_seed(0)
    )
    fns: dict[str, Callable[[], Any]] = {
        f"HF forward ({impl})": (lambda m=m: m(tokens, use_cache=False).logits)
        for impl, m in hf.items()
    }
    fns["lmscope forward"] = lambda: model(tokens)
    fns["run_with_cache() all"] = lambda: model.run_with_cache(tokens)
    fns["run_with_cache(resid_post)"] = lambda: model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith("hook_resid_post")
    )
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        ref = hf["eager"](tokens, use_cache=False).logits
        diff = (model(tokens) - ref).abs().max().item()
        cached, _ = model.run_with_cache(tokens)
        diff_cache = (cached - ref).abs().max().item()
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.thread_time()
                fn()
                times[name].append(time.thread_time() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    hf_best = min(medians["HF forward (eager)"], medians["HF forward (sdpa)"])
    return {
        "seconds": medians,
        "ratio_vs_hf": {name: t / hf_best for name, t in medians.items()},
        "max_abs_logit_diff": {"forward": diff, "run_with_cache": diff_cache},
        "threads": threads,
        "rounds": rounds,
    }


def print_overhead(family: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{family}: ms per run (1 x 16 tokens), overhead = row - forward")
    for mode, times in rows.items():
        base = times["forward"]
        if mode == "autograd":
            base_bwd = times["forward + backward"]
        print(f"  [{mode}]")
        for name, ms in times.items():
            ref = base_bwd if mode == "autograd" and "bwd" in name else base
            extra = "" if name in ("forward", "forward + backward") else f"  +{ms - ref:.3f}"
            flag = ""
            if mode == "inference_mode" and name == "run_with_cache() all":
                flag = (
                    f"  (target <= {TARGET_MS} ms: {'met' if ms - ref <= TARGET_MS else 'missed'})"
                )
            print(f"    {name:40s} {ms:7.3f}{extra}{flag}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled rows")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend of the compiled rows"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the op counts")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2 parity rows against HF")
    parser.add_argument("--smollm2-rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads of the SmolLM2 rows")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "hook_overhead.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    warnings.simplefilter("ignore", FutureWarning)
    torch.set_num_threads(1)
    doc: dict[str, Any] = {"machine": machine(), "target_ms": TARGET_MS, "families": {}}
    compile: Any = None
    if not args.no_compile:
        compile = True if args.compile_backend == "inductor" else {"backend": args.compile_backend}
        doc["compile_backend"] = args.compile_backend
    print(f"machine: {doc['machine']}")
    for family in args.families:
        model = build(family, args.layers, args.d_model)
        gen = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, model.cfg.d_vocab, (1, 16), generator=gen)
        rows = overhead_rows(model, tokens, args.rounds, args.calls, compile)
        entry: dict[str, Any] = {"ms": rows, "hook_points": len(model.hook_dict)}
        inf = rows["inference_mode"]
        entry["cache_all_overhead_ms"] = inf["run_with_cache() all"] - inf["forward"]
        print_overhead(family, rows)
        if not args.no_profile:
            batch = torch.randint(0, model.cfg.d_vocab, (4, 32), generator=gen)
            entry["ops_per_run"] = op_counts(model, batch, compile)
            print("  ops per run (4 x 32 tokens):")
            for name, n in entry["ops_per_run"].items():
                print(f"    {name:40s} {n}")
        doc["families"][family] = entry
    if args.smollm2:
        torch.set_num_threads(args.threads)
        doc["smollm2"] = smollm2_rows(args.smollm2_rounds, args.threads)
        print(f"\nSmolLM2-135M, 4 x 128 tokens, {args.threads} thread(s), median CPU seconds:")
        for name, s in doc["smollm2"]["seconds"].items():
            print(f"  {name:30s} {s:7.3f}  {doc['smollm2']['ratio_vs_hf'][name]:.2f}x HF")
        print(f"  max |logit diff| vs HF eager: {doc['smollm2']['max_abs_logit_diff']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
