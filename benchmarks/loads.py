"""Loads, each timed in a fresh interpreter (`run.py --_load-worker KIND`): import, then load once,
then read every weight once; times and peak RSS growth. `bench_load` interleaves a tool's kinds with
HF's and keeps the medians.

    >>> from benchmarks.loads import load_kinds
    >>> load_kinds("lmscope", quick=False)
    ('hf', 'lmscope_first', 'lmscope_keeps', 'lmscope', 'lmscope_no_processing')
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.adapters import adapter_for_load
from benchmarks.checkpoints import weights_bytes, worker_env
from benchmarks.probes import (
    anon_rss_bytes,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    warm_lazy_imports,
)
from benchmarks.spec import LOAD_KINDS, MODELS, PROCESSED_CACHE_ENV, RUN_PY, Settings
from benchmarks.timing import sync


def load_worker(kind: str, model: str, path: str, threads: int, device: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: import, then load once. Load time is measured after the
    imports (import time is reported apart); peak RSS growth is VmHWM (reset after the imports)
    minus the RSS after imports. After loading, every parameter is read once ("touch"): HF maps
    the safetensors file and may read a page only when it is first used. `anon_growth` is the
    anonymous memory the loaded model holds then (the bytes the load wrote, not file pages)."""
    spec = MODELS[model]
    adapter = adapter_for_load(kind)
    t0 = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM  # noqa: F401

    adapter.import_library(spec)
    torch.set_num_threads(threads)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm_lazy_imports(path)
    t_lazy = time.perf_counter() - t0
    rss_after_import, anon_after_import = rss_bytes(), anon_rss_bytes()
    reset_peak_rss()
    t1 = time.perf_counter()
    obj, params = adapter.load_checkpoint(kind, spec, path, device)
    sync(device)
    t_load = time.perf_counter() - t1
    peak = peak_rss_bytes()
    t2 = time.perf_counter()
    with torch.inference_mode():
        checksum = sum(float(p.sum()) for p in params())
    sync(device)
    t_touch = time.perf_counter() - t2
    anon_growth = anon_rss_bytes() - anon_after_import  # (the model is alive)
    return {
        "kind": kind,
        "import_s": t_import,
        "lazy_import_s": t_lazy,
        "load_s": t_load,
        "touch_s": t_touch,
        "rss_after_import": rss_after_import,
        "peak_rss": peak,
        "peak_rss_touch": peak_rss_bytes(),
        "anon_growth": anon_growth,
        "n_params": sum(p.numel() for p in params()),
        "checksum": checksum,
    }


def run_load_subprocess(
    kind: str, settings: Settings, path: Path, kept: Path | None = None
) -> dict[str, Any]:
    """One load of `kind` in a fresh interpreter (this one's), its result or error line. `kept`:
    the directory of lmscope's processed-weights cache (default: the user's)."""
    cmd = [sys.executable, str(RUN_PY), "--_load-worker", kind]
    cmd += ["--models", settings.model, "--_path", str(path), "--threads", str(settings.threads)]
    cmd += ["--device", settings.device, "--cache-dir", str(settings.cache_dir)]
    env = worker_env(settings.model, settings)
    if kept is not None:
        env[PROCESSED_CACHE_ENV] = str(kept)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"kind": kind, "error": proc.stderr.strip().splitlines()[-1][:300]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def load_kinds(tool: str, quick: bool) -> tuple[str, ...]:
    """HF's load and `tool`'s (only its first in a quick run)."""
    kinds = ("hf",) + LOAD_KINDS[tool]
    return kinds[:2] if quick else kinds


def bench_load(tool: str, settings: Settings, path: Path) -> dict[str, Any]:
    """Load kinds of `tool` and HF, each in a fresh subprocess, interleaved; medians."""
    kinds = load_kinds(tool, settings.quick)
    if not settings.quick:
        run_load_subprocess("hf", settings, path)  # untimed: warms the page cache and .pyc files
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(settings.load_repeats):
        # each round's processed-weights cache starts empty: lmscope's first processed load
        # notes the checkpoint, the second keeps its processed weights, the third maps them
        with tempfile.TemporaryDirectory(dir=settings.cache_dir, prefix="kept-") as kept:
            for kind in kinds:
                print(f"  load {kind} ...", file=sys.stderr, flush=True)
                runs[kind].append(run_load_subprocess(kind, settings, path, Path(kept)))
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
