"""Start-up benchmark of the embedded GGUF models: how long `from_pretrained` and the first
`to_tokens` take on the first load of a GGUF file (which fills lmscope's GGUF cache) and on the
loads after it (which read the cache), against reading the GGUF every time (`gguf_cache=False`,
the behaviour before the cache).

    .venv/bin/python benchmarks/gguf_start.py                    # smollm2-135m, 3 repeats
    .venv/bin/python benchmarks/gguf_start.py --model gemma-3-270m-gguf --repeats 1

Every measurement runs in a fresh Python process (imports excluded from the timings), with
`LMSCOPE_CACHE` pointing at a temporary directory that starts empty for each repeat:

- `uncached`: `from_pretrained(model, gguf_cache=False)`, then `to_tokens` (the baseline);
- `first`: `from_pretrained(model)` with an empty cache (reads the GGUF, writes the entry);
- `second`: `from_pretrained(model)` again, in a new process (reads the entry).

The figures are medians over `--repeats`; ratios are over the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
import torch
from lmscope import HookedTransformer
model_name, cached = sys.argv[1], sys.argv[2] == "1"
start = time.perf_counter()
model = HookedTransformer.from_pretrained(model_name, gguf_cache=cached, verbose=False)
loaded = time.perf_counter()
tokens = model.to_tokens("The capital of France is")
tokenized = time.perf_counter()
with torch.no_grad():
    top = model.to_string(model(tokens)[0, -1].argmax())
print(json.dumps({"load": loaded - start, "to_tokens": tokenized - loaded, "top": top}))
"""


def run_child(model: str, cached: bool, cache: Path) -> dict[str, float | str]:
    """One load + first to_tokens in a fresh interpreter with LMSCOPE_CACHE=`cache`."""
    env = {**os.environ, "LMSCOPE_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("LMSCOPE_GGUF_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, model, "1" if cached else "0"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(model: str, repeats: int) -> dict[str, dict[str, float]]:
    """Median load and first to_tokens seconds of the uncached, first and second loads."""
    runs: dict[str, list[dict[str, float | str]]] = {"uncached": [], "first": [], "second": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="lmscope-gguf-bench-") as folder:
            cache = Path(folder)
            runs["uncached"].append(run_child(model, False, cache))
            runs["first"].append(run_child(model, True, cache))
            runs["second"].append(run_child(model, True, cache))
    tops = {str(r["top"]) for rs in runs.values() for r in rs}
    if len(tops) != 1:
        raise AssertionError(f"the loads disagree on the next token: {tops}")
    return {
        kind: {key: statistics.median(float(r[key]) for r in rs) for key in ("load", "to_tokens")}
        for kind, rs in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = measure(args.model, args.repeats)
    base = figures["uncached"]
    print(f"{args.model}: median of {args.repeats}, seconds (ratio over uncached)")
    print(f"{'':10} {'from_pretrained':>22} {'first to_tokens':>22}")
    for kind, row in figures.items():
        cells = [f"{row[k]:8.2f} s ({row[k] / base[k]:5.2f}x)" for k in ("load", "to_tokens")]
        print(f"{kind:10} {cells[0]:>22} {cells[1]:>22}")


if __name__ == "__main__":
    main()
