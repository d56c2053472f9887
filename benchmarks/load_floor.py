"""The floor under a processed load on this machine: what writing the processed weights into
fresh memory costs alone, beside HF's load + read and lmscope's processed load + read.

    .venv/bin/python benchmarks/load_floor.py                  # smollm2-135m and gpt2-random
    .venv/bin/python benchmarks/load_floor.py --models gpt2-random --repeats 5

Processing (fold_ln, centring, value-bias folding) rewrites most weights, so a processed model
holds them in fresh anonymous memory, where HF maps the checkpoint file and never writes it. The
kernel zeroes and maps a fresh page on its first write, on this VM at several times the cost of
writing the same page again. Each row runs in a fresh interpreter (as loads do; benchmarks/loads.py
measures the same loads in benchmarks/run.py), `--repeats` times interleaved; figures are medians:

- HF and lmscope: load + one read of every weight, after the imports, and the anonymous memory
  (RssAnon) the loaded model holds (`benchmarks.loads.load_worker`, as benchmarks/run.py's
  loads): for lmscope, the bytes processing wrote.
- first write: a fresh process fills that many bytes of new memory once (`torch.empty(...).fill_`)
  and then again; the first fill is the page faults plus the write, the second the write alone.

The floor ratio is (first write + HF's read of every weight) / (HF's load + read): a processed
load must at least write its weights once into fresh memory and read the checkpoint once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python benchmarks/load_floor.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.checkpoints import prepare_checkpoint, worker_env  # noqa: E402
from benchmarks.probes import loadavg  # noqa: E402
from benchmarks.spec import Settings  # noqa: E402


def worker(kind: str, model: str, path: str, nbytes: int) -> dict[str, Any]:
    """One measurement in this (fresh) interpreter: a load kind, or the first-write probe."""
    import torch

    torch.set_num_threads(1)
    if kind == "first_write":
        t0 = time.perf_counter()
        block = torch.empty(nbytes, dtype=torch.uint8)
        block.fill_(1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        block.fill_(2)
        return {"first_s": first, "again_s": time.perf_counter() - t0}
    from benchmarks.loads import load_worker

    return load_worker(kind, model, path, 1, "cpu")


def run(kind: str, model: str, path: Path, nbytes: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_worker", kind, "--models", model, "--_path", str(path)]
    cmd += ["--_bytes", str(nbytes)]
    env = worker_env(model, Settings(model=model, threads=1))  # as benchmarks/run.py's loads
    env["LMSCOPE_PROCESSED_CACHE"] = "0"  # the processing itself, never weights kept before
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(model: str, repeats: int) -> dict[str, float]:
    path = prepare_checkpoint(model)
    rows: dict[str, list[dict[str, Any]]] = {"hf": [], "lmscope": [], "first_write": []}
    for _ in range(repeats):
        rows["hf"].append(run("hf", model, path))
        rows["lmscope"].append(run("lmscope", model, path))
        written = rows["lmscope"][-1]["anon_growth"]
        rows["first_write"].append(run("first_write", model, path, written))

    def med(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[kind])

    hf_total = med("hf", "load_s") + med("hf", "touch_s")
    ours = med("lmscope", "load_s") + med("lmscope", "touch_s")
    floor = med("first_write", "first_s") + med("hf", "touch_s")
    return {
        "hf_load_read_s": hf_total,
        "processed_load_read_s": ours,
        "processed_ratio": ours / hf_total,
        "written_mib": med("lmscope", "anon_growth") / 2**20,
        "first_write_s": med("first_write", "first_s"),
        "write_again_s": med("first_write", "again_s"),
        "floor_ratio": floor / hf_total,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gpt2-random"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    parser.add_argument("--_path", dest="path", help=argparse.SUPPRESS)
    parser.add_argument("--_bytes", dest="nbytes", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.models[0], args.path, args.nbytes)))
        return
    print(f"load average at the start: {loadavg()}")
    for model in args.models:
        r = measure(model, args.repeats)
        print(
            f"{model}: HF load + read {r['hf_load_read_s']:.3f} s; lmscope processed "
            f"{r['processed_load_read_s']:.3f} s ({r['processed_ratio']:.2f}x HF), writing "
            f"{r['written_mib']:.0f} MiB of fresh memory; a first write of that much takes "
            f"{r['first_write_s']:.3f} s (again: {r['write_again_s']:.3f} s), so a processed "
            f"load is at least {r['floor_ratio']:.2f}x HF here"
        )


if __name__ == "__main__":
    main()
