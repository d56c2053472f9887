"""Activation-harvesting benchmark: `lmscope.harvest` against the same run by hand
(`run_with_cache` in a loop, each shard saved with `safetensors.torch.save_file`), Ray with 2
workers against 1 process, and the bytes written per token against the ideal.

    .venv/bin/python benchmarks/harvest.py                  # the embedded SmolLM2, 3 repeats
    .venv/bin/python benchmarks/harvest.py --tokens 2048 --repeats 1 --no-ray   # a quicker look

The text is this repository's own documentation (README.md and docs/*.md), packed once into
[n, seq_len] rows; every contender gets the same token rows, batches and shards, so only the
harvesting differs. Timings are end to end (harvest includes hashing the weights, the manifest,
fsync and renames; by hand includes its `save_file` calls), interleaved round-robin, medians of
`--repeats`; ratios are tokens/s over the by-hand loop's, measured in this process.

- `harvest` vs by hand, for a hook early in the model (where `stop_at_layer` skips the blocks
  after it) and for one in the last block (where it cannot: only the write path differs);
- `engine="ray"` with 2 workers (0.5 CPU and one torch thread each) vs `engine="local"` with the
  process's torch threads (2), Ray started before the timing (its actors' start is included);
- bytes per token: every file harvest wrote (shards, tokens, manifest) over the tokens, against
  the activations' own bytes.

Results go to benchmarks/results/harvest.json, and docs/benchmarks.md is re-rendered with them
(benchmarks/render.py renders the section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __name__ == "__main__" and not __package__:  # `python benchmarks/harvest.py`: import the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # from the root, not benchmarks/

from benchmarks.orchestrate import load_results  # noqa: E402
from benchmarks.probes import machine_info  # noqa: E402
from benchmarks.render import render  # noqa: E402
from benchmarks.spec import DOC_MD  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results" / "harvest.json"


def corpus_tokens(model: Any, n_tokens: int, seq_len: int) -> torch.Tensor:
    """[n, seq_len] rows packed from the repository's docs (TransformerLens packing), the first
    n_tokens // seq_len of them."""
    from lmscope.utils import tokenize_and_concatenate

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    texts = [p.read_text() for p in pages]
    rows = tokenize_and_concatenate(texts, model.tokenizer, max_length=seq_len)
    need = n_tokens // seq_len
    if len(rows) < need:
        raise SystemExit(f"the docs hold {len(rows) * seq_len} tokens; ask for fewer --tokens")
    return rows[:need]


def by_hand(
    model: Any, tokens: torch.Tensor, hooks: list[str], out: Path, batch: int, shard_rows: int
) -> None:
    """What users write today: run_with_cache per batch, activations gathered and each shard
    saved with safetensors."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    for shard, lo in enumerate(range(0, len(tokens), shard_rows)):
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
        for b in range(lo, min(lo + shard_rows, len(tokens)), batch):
            rows = tokens[b : min(b + batch, lo + shard_rows)]
            with torch.inference_mode():
                _, cache = model.run_with_cache(rows, names_filter=hooks)
            for h in hooks:
                parts[h].append(cache[h].cpu())
        save_file(
            {h: torch.cat(p) for h, p in parts.items()}, str(out / f"shard-{shard:05d}.safetensors")
        )


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_robin(
    contenders: dict[str, Callable[[Path], Any]], repeats: int, scratch: Path
) -> dict[str, float]:
    """Median seconds of each contender, interleaved; each run writes into a fresh folder."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(repeats + 1):  # round 0 warms up
        for name, fn in contenders.items():
            out = scratch / f"{name}-{r}"
            seconds = timed(lambda fn=fn, out=out: fn(out))
            if r:
                times[name].append(seconds)
            shutil.rmtree(out, ignore_errors=True)
    return {name: statistics.median(ts) for name, ts in times.items()}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shard-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument(
        "--no-render", action="store_true", help="do not re-render docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import lmscope
    from lmscope import HookedTransformer

    load_start = os.getloadavg()
    model = HookedTransformer.from_pretrained(args.model, verbose=False)
    tokens = corpus_tokens(model, args.tokens, args.seq_len)
    n_tokens = tokens.numel()
    shard_rows = args.shard_tokens // args.seq_len
    n_layers = model.cfg.n_layers
    cases = {
        "early": [f"blocks.{n_layers // 6}.hook_resid_post"],
        "last": [f"blocks.{n_layers - 1}.hook_resid_post", f"blocks.{n_layers - 1}.mlp.hook_post"],
    }
    doc: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info("cpu"),
        "model": model.cfg.model_name,
        "n_layers": n_layers,
        "tokens": n_tokens,
        "seq_len": args.seq_len,
        "batch": args.batch,
        "shard_tokens": args.shard_tokens,
        "repeats": args.repeats,
        "loadavg_start": [round(x, 2) for x in load_start],
        "cases": {},
    }
    kw = dict(
        seq_len=args.seq_len, batch_size=args.batch, shard_tokens=args.shard_tokens, verbose=False
    )
    with tempfile.TemporaryDirectory(prefix="lmscope-bench-harvest-") as tmp:
        scratch = Path(tmp)
        for case, hooks in cases.items():
            print(f"== {case}: {hooks}", file=sys.stderr, flush=True)
            contenders = {
                "by_hand": lambda out, hooks=hooks: by_hand(
                    model, tokens, hooks, out, args.batch, shard_rows
                ),
                "harvest": lambda out, hooks=hooks: lmscope.harvest(
                    model, tokens, hooks=hooks, out=out, **kw
                ),
            }
            seconds = round_robin(contenders, args.repeats, scratch)
            h = lmscope.harvest(model, tokens, hooks=hooks, out=scratch / f"{case}-bytes", **kw)
            ideal = (
                sum(torch.Size(s).numel() * 4 for s in h.manifest["shapes"].values()) / args.seq_len
            )
            shards = sum(s["bytes"] for s in h.shards)
            doc["cases"][case] = {
                "hooks": hooks,
                "stop_at_layer": h.manifest["stop_at_layer"],
                "seconds": seconds,
                "tokens_per_s": {k: n_tokens / v for k, v in seconds.items()},
                "speedup": seconds["by_hand"] / seconds["harvest"],
                "bytes_per_token": folder_bytes(h.folder) / n_tokens,
                "shard_bytes_per_token": shards / n_tokens,
                "ideal_bytes_per_token": ideal,
            }
            print(json.dumps(doc["cases"][case], indent=1), file=sys.stderr)
        if not args.no_ray:
            import ray

            hooks = cases["early"]
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            contenders = {
                "local": lambda out: lmscope.harvest(model, tokens, hooks=hooks, out=out, **kw),
                "ray": lambda out: lmscope.harvest(
                    model, tokens, hooks=hooks, out=out, engine="ray", workers=2, **kw
                ),
            }
            seconds = round_robin(contenders, args.repeats, scratch)
            ray.shutdown()
            doc["ray"] = {
                "hooks": hooks,
                "workers": 2,
                "seconds": seconds,
                "tokens_per_s": {k: n_tokens / v for k, v in seconds.items()},
                "speedup": seconds["local"] / seconds["ray"],
            }
            print(json.dumps(doc["ray"], indent=1), file=sys.stderr)
    doc["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {RESULTS}", file=sys.stderr)
    if not args.no_render:
        DOC_MD.write_text(render(load_results()))
        print(f"wrote {DOC_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
