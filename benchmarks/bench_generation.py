"""Generation benchmark: tokens/s of greedy `generate`, lmscope against Hugging Face, same weights.

Both libraries load the same checkpoint: by default the embedded SmolLM2-135M GGUF (lmscope through
`HookedTransformer.from_pretrained_no_processing("smollm2-135m")`, HF through
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=torch.float32)`), or with
`--model DIR` a local directory written by `save_pretrained` (tokenizer included).

For each batch size (default 1 and 8; a batch of 8 uses 8 different prompts, left-padded) it
times 64 new greedy tokens with the KV cache: lmscope `generate(..., do_sample=False,
stop_at_eos=False)` against HF `generate(..., do_sample=False, min_new_tokens=64,
max_new_tokens=64)` (neither stops early). Each is called as a user calls it: HF's `generate`
runs under `torch.no_grad()`, lmscope's under `torch.inference_mode()` (as TransformerLens's);
`--inference-mode` wraps both calls in `torch.inference_mode()` instead. They run interleaved in
one process (warm-up rounds, then the median of repeats, each repeat calling both in turn, so
drift in machine load hits both alike). It prints absolute tokens/s (batch x new tokens / s,
wall clock), process CPU seconds, and the ratio lmscope / HF (above 1.0 = lmscope faster), and
checks that the tokens agree up to the first EOS (HF's `min_new_tokens` bans EOS, so later tokens
may legitimately differ). On a shared machine, pass `--threads 1`: the step is memory-bound, so a
second thread gains little and a contended one costs a lot.

Run (about 2 minutes on 2 cores with the defaults):
    .venv/bin/python benchmarks/bench_generation.py
    .venv/bin/python benchmarks/bench_generation.py --batch 1 --repeats 7
    .venv/bin/python benchmarks/bench_generation.py --model benchmarks/.cache/smollm2-135m
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def load_models(model: str | None) -> tuple[Any, Any, str]:
    """(lmscope model, HF model, description) on the same float32 weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmscope import HookedTransformer

    if model is None:
        from lmscope.loading.embedded import embedded_model_path

        p = embedded_model_path("smollm2-135m")
        hf = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
        lm = HookedTransformer.from_pretrained_no_processing("smollm2-135m")
        desc = f"smollm2-135m (embedded GGUF {p.name}, dequantised to float32)"
    else:
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        lm = HookedTransformer.from_pretrained_no_processing(model)
        desc = str(Path(model).resolve())
    hf.eval()
    lm.eval()
    return lm, hf, f"{desc}; HF attention: {hf.config._attn_implementation}"


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process CPU seconds per call: `warmup` untimed rounds, then `repeats` rounds
    calling each in turn. CPU time is less disturbed by other processes on a shared machine."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for round_idx in range(warmup + repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if round_idx >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def bench_batch(lm: Any, hf: Any, batch: int, args: argparse.Namespace) -> str:
    import torch

    prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
    tok = lm.tokenizer
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = args.new_tokens

    def run_lmscope() -> torch.Tensor:
        return lm.generate(
            ids,
            max_new_tokens=n,
            do_sample=False,
            stop_at_eos=False,
            attention_mask=mask,
            verbose=False,
        )

    def run_hf() -> torch.Tensor:
        return hf.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=tok.pad_token_id,
        )

    context = torch.inference_mode() if args.inference_mode else contextlib.nullcontext()
    with context:
        ours, theirs = run_lmscope(), run_hf()
        times, cpu = time_interleaved(
            {"lmscope": run_lmscope, "HF": run_hf}, args.warmup, args.repeats
        )
    assert ours.shape == theirs.shape == (batch, ids.shape[1] + n), (ours.shape, theirs.shape)
    new_ours, new_theirs = ours[:, ids.shape[1] :], theirs[:, ids.shape[1] :]
    agree = []
    for row_ours, row_theirs in zip(new_ours, new_theirs, strict=True):
        eos = (row_ours == tok.eos_token_id).nonzero()
        upto = int(eos[0]) if len(eos) else n  # HF bans EOS, so compare before it
        agree.append(torch.equal(row_ours[:upto], row_theirs[:upto]))
    med = {name: statistics.median(t) for name, t in times.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    tps = {name: batch * n / s for name, s in med.items()}
    lines = [
        f"\nbatch {batch} (prompt {ids.shape[1]} tokens{', left-padded' if batch > 1 else ''}), "
        f"{n} new tokens, median of {args.repeats}",
        f"{'':<10}{'median s':>10}{'min s':>9}{'tokens/s':>11}{'CPU s':>9}",
    ]
    for name, t in times.items():
        lines.append(
            f"{name:<10}{med[name]:>10.3f}{min(t):>9.3f}{tps[name]:>11.1f}{med_cpu[name]:>9.3f}"
        )
    lines.append(
        f"ratio lmscope/HF tokens/s: {tps['lmscope'] / tps['HF']:.3f}x (median wall), "
        f"{min(times['HF']) / min(times['lmscope']):.3f}x (best of each), "
        f"{med_cpu['HF'] / med_cpu['lmscope']:.3f}x (median CPU time); "
        f"greedy tokens agree up to EOS in {sum(agree)}/{batch} rows"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=None, help="a save_pretrained directory (default: embedded SmolLM2)"
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--inference-mode", action="store_true", help="wrap both calls in torch.inference_mode()"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    import transformers

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    lm, hf, desc = load_models(args.model)
    load = os.getloadavg()
    print("=" * 88)
    print("lmscope generation benchmark (greedy, KV cache)")
    print(
        f"machine: {platform.platform()} | cpu_count={os.cpu_count()} | torch {torch.__version__} "
        f"(threads={torch.get_num_threads()}) | transformers {transformers.__version__}"
    )
    print(f"model: {desc}")
    print(f"outer context: {'torch.inference_mode()' if args.inference_mode else 'none'}")
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("=" * 88)
    for batch in args.batch:
        print(bench_batch(lm, hf, batch, args), flush=True)
    load = os.getloadavg()
    print(f"\nload average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
