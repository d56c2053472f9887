"""Big-checkpoint load benchmark: time and peak memory of loading a >= 2 GB Llama-shaped checkpoint
in its own dtype (bfloat16, and float32), processed and unprocessed, against HF.

    .venv/bin/python benchmarks/big_load.py                      # bfloat16 and float32, 3 repeats
    .venv/bin/python benchmarks/big_load.py --dtypes bfloat16 --repeats 1   # a quicker look

The script writes a synthetic checkpoint (TinyLlama's shape: d_model 2048, 22 layers, GQA 32/4
heads, d_mlp 5632, 32,000 tokens, untied: 1.1 B parameters, 2.2 GB in bfloat16, 4.4 GB in float32)
as one safetensors file in a temporary directory under /tmp, streaming tensor by tensor, and
deletes it afterwards. Each load runs in a fresh subprocess (after an untimed HF load that warms
the page cache), interleaved with the HF baseline, `--repeats` times; the figures are medians.

- load + read: `from_pretrained` then one read of every parameter (HF and lmscope without
  processing map the file and read a page only when it is first used), after the imports;
  the ratio is over HF's `AutoModelForCausalLM.from_pretrained(dir, dtype=...)` + read.
- peak RSS growth: VmHWM (reset after the imports) minus the RSS after the imports, over the
  bytes of the loaded parameters.

Results go to benchmarks/results/big_load.json, and docs/benchmarks.md is re-rendered with them
(benchmarks/render.py renders the section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if (
    __name__ == "__main__" and not __package__
):  # `python benchmarks/big_load.py`: import the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # from the root, not benchmarks/

from benchmarks.checkpoints import with_bytecode  # noqa: E402
from benchmarks.orchestrate import load_results  # noqa: E402
from benchmarks.probes import (  # noqa: E402
    machine_info,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    warm_lazy_imports,
)
from benchmarks.render import render  # noqa: E402
from benchmarks.spec import (  # noqa: E402
    BIG_LOAD_JSON,
    BIG_LOAD_LABELS,
    BIG_LOAD_TARGETS,
    DOC_MD,
    PROCESSED_CACHE_ENV,
)

BENCH_DIR = Path(__file__).resolve().parent
SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
}
# Llama 3 8B's shape (8.0 B parameters, 16 GB in bfloat16), for a GPU machine: --shape llama3-8b
SHAPES = {
    "tinyllama": SHAPE,
    "llama3-8b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
    },
}
_ST_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


KINDS = tuple(BIG_LOAD_LABELS)  # "hf", then the lmscope loads


def llama_tensors(shape: dict[str, int]) -> Iterator[tuple[str, list[int]]]:
    """(name, shape) of every tensor of a Llama checkpoint with `shape`, in file order."""
    d, f, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    yield "model.embed_tokens.weight", [v, d]
    for layer in range(shape["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", [d]
        yield p + "self_attn.q_proj.weight", [d, d]
        yield p + "self_attn.k_proj.weight", [kv, d]
        yield p + "self_attn.v_proj.weight", [kv, d]
        yield p + "self_attn.o_proj.weight", [d, d]
        yield p + "post_attention_layernorm.weight", [d]
        yield p + "mlp.gate_proj.weight", [f, d]
        yield p + "mlp.up_proj.weight", [f, d]
        yield p + "mlp.down_proj.weight", [d, f]
    yield "model.norm.weight", [d]
    yield "lm_head.weight", [v, d]


def write_checkpoint(
    path: Path, dtype_name: str, shape: dict[str, int], seed: int = 0, device: str = "cpu"
) -> int:
    """Write config.json and a model.safetensors of seeded random weights (matrices N(0, 0.02),
    norm weights 1 + N(0, 0.1)) in `dtype_name`, one tensor at a time; returns the file's bytes.
    The values are drawn on `device` (a GPU draws an 8B checkpoint's in a second)."""
    import torch

    dtype = getattr(torch, dtype_name)
    tensors = list(llama_tensors(shape))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in tensors:
        size = dtype.itemsize
        for n in dims:
            size *= n
        header[name] = {
            "dtype": _ST_DTYPES[dtype_name],
            "shape": dims,
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    generator = torch.Generator(device).manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "model.safetensors", "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for _, dims in tensors:
            values = torch.randn(dims, generator=generator, device=device)
            values = 1.0 + 0.1 * values if len(dims) == 1 else values.mul_(0.02)
            f.write(values.to(dtype).cpu().view(torch.uint8).numpy().tobytes())
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **shape,
        "head_dim": shape["hidden_size"] // shape["num_attention_heads"],
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return (path / "model.safetensors").stat().st_size


def worker(
    kind: str, path: str, dtype_name: str, threads: int, device: str = "cpu"
) -> dict[str, Any]:
    """In a fresh interpreter: import, load once (onto `device`), read every parameter once;
    times, host RSS and, on a GPU, its peak allocated memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmscope import HookedTransformer

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    warm_lazy_imports(path)
    rss_after_import = rss_bytes()
    reset_peak_rss()
    cuda = device.startswith("cuda")
    if cuda:
        torch.zeros(1, device=device)  # the CUDA context, outside the timings
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    if kind == "hf":
        on = {"device_map": device} if cuda else {}
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **on)
    elif kind == "copy":  # the floor of any load that writes every weight to fresh memory
        from safetensors.torch import load_file

        # pread: into fresh memory (safetensors' default backend maps the file, as HF does)
        model = load_file(Path(path) / "model.safetensors", device=device, backend="pread")
    elif kind in ("lmscope", "lmscope_first", "lmscope_keeps"):  # (see LOAD_KINDS)
        model = HookedTransformer.from_pretrained(path, dtype=dtype, device=device)
    else:
        model = HookedTransformer.from_pretrained_no_processing(path, dtype=dtype, device=device)
    if cuda:
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - start
    peak_load = peak_rss_bytes()
    params = list(model.values() if isinstance(model, dict) else model.parameters())
    start = time.perf_counter()
    with torch.inference_mode():  # in slices: a half-precision sum would upcast a whole copy
        checksum = sum(
            float(part.sum(dtype=torch.float32))
            for p in params
            for part in p.split(max(1, 2**20 // max(1, p[0].numel())) if p.ndim > 1 else 2**20)
        )
    touch_s = time.perf_counter() - start
    gpu = {"gpu_peak": torch.cuda.max_memory_allocated(device)} if cuda else {}
    return {
        **gpu,
        "kind": kind,
        "load_s": load_s,
        "touch_s": touch_s,
        "rss_growth": peak_load - rss_after_import,
        "rss_growth_touch": peak_rss_bytes() - rss_after_import,
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "dtypes": sorted({str(p.dtype) for p in params}),
        "checksum": checksum,
    }


def run_worker(
    kind: str,
    path: Path,
    dtype_name: str,
    threads: int,
    device: str = "cpu",
    kept: Path | None = None,
) -> dict[str, Any]:
    """One load in a fresh interpreter; `kept`: the directory of lmscope's processed-weights
    cache (default: the user's)."""
    cmd = [sys.executable, __file__, "--_worker", kind, "--_path", str(path)]
    cmd += ["--dtypes", dtype_name, "--threads", str(threads), "--device", device]
    env = with_bytecode(dict(os.environ), BENCH_DIR / ".cache")
    if kept is not None:
        env[PROCESSED_CACHE_ENV] = str(kept)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        return {"kind": kind, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_dtype(
    dtype_name: str, repeats: int, threads: int, shape: dict[str, int], device: str = "cpu"
) -> dict[str, Any]:
    """Write the checkpoint, load it `repeats` times per kind (interleaved), delete it; medians."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="lmscope-big-load-") as tmp:
        path = Path(tmp) / dtype_name
        start = time.perf_counter()
        disk = write_checkpoint(path, dtype_name, shape, device=device)
        print(
            f"  wrote {disk / 2**30:.2f} GiB in {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        run_worker("hf", path, dtype_name, threads, device)  # untimed: warms the page cache
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
        for _ in range(repeats):
            # each round's processed-weights cache starts empty: the first processed load notes
            # the checkpoint, the second keeps its processed weights, the third maps them (one
            # entry on disk at a time)
            with tempfile.TemporaryDirectory(dir=tmp, prefix="kept-") as kept:
                for kind in KINDS:
                    runs[kind].append(
                        run_worker(kind, path, dtype_name, threads, device, Path(kept))
                    )
                    print(f"  {kind}: {_brief(runs[kind][-1])}", file=sys.stderr, flush=True)
    out: dict[str, Any] = {
        "weights_bytes": disk,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "kinds": {},
    }
    for kind, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out["kinds"][kind] = {"error": rs[0]["error"]}
            continue
        out["kinds"][kind] = {
            "load_s": statistics.median(r["load_s"] for r in ok),
            "load_touch_s": statistics.median(r["load_s"] + r["touch_s"] for r in ok),
            "rss_growth": statistics.median(r["rss_growth"] for r in ok),
            "rss_growth_touch": statistics.median(r["rss_growth_touch"] for r in ok),
            "param_bytes": ok[0]["param_bytes"],
            "dtypes": ok[0]["dtypes"],
            "runs": len(ok),
        }
        if "gpu_peak" in ok[0]:
            out["kinds"][kind]["gpu_peak"] = statistics.median(r["gpu_peak"] for r in ok)
    return out


def _brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"]
    gpu = f", GPU peak {r['gpu_peak'] / r['param_bytes']:.3f}x" if "gpu_peak" in r else ""
    return (
        f"load {r['load_s']:.2f} s + read {r['touch_s']:.2f} s, peak RSS growth "
        f"{r['rss_growth_touch'] / r['param_bytes']:.3f}x the weights{gpu}"
    )


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per lmscope kind: load + read time over HF's, peak RSS growth over the loaded weights."""
    kinds = result["kinds"]
    hf = kinds.get("hf", {}).get("load_touch_s")
    out = {}
    for kind in BIG_LOAD_TARGETS:
        k = kinds.get(kind, {})
        if "error" in k or not k or not hf:
            continue
        out[kind] = {
            "time": k["load_touch_s"] / hf,
            "memory": k.get("gpu_peak", k["rss_growth_touch"]) / k["param_bytes"],
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dtypes", nargs="+", default=["bfloat16", "float32"], choices=list(_ST_DTYPES)
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", choices=list(SHAPES), default="tinyllama")
    parser.add_argument("--layers", type=int, help="override the shape's number of layers")
    parser.add_argument(
        "--device", default="cpu", help="load onto this device (cuda: memory is the GPU's peak)"
    )
    parser.add_argument("--out", type=Path, default=None, help="the JSON's path")
    parser.add_argument(
        "--no-render", action="store_true", help="do not re-render docs/benchmarks.md"
    )
    parser.add_argument("--_worker", dest="worker", help=argparse.SUPPRESS)
    parser.add_argument("--_path", dest="path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.path, args.dtypes[0], args.threads, args.device)))
        return
    shape = dict(SHAPES[args.shape])
    if args.layers is not None:
        shape["num_hidden_layers"] = args.layers
    doc: dict[str, Any] = {
        "machine": machine_info(args.device),
        "device": args.device,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "shape": shape,
        "repeats": args.repeats,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "checkpoints": {},
    }
    for dtype_name in args.dtypes:
        print(f"== {dtype_name} checkpoint", file=sys.stderr, flush=True)
        result = bench_dtype(dtype_name, args.repeats, args.threads, shape, args.device)
        doc["checkpoints"][dtype_name] = result
        for kind, r in ratios(result).items():
            time_target, memory_target = BIG_LOAD_TARGETS[kind]
            wanted = "no target" if time_target is None else f"target <= {time_target}x"
            print(
                f"{dtype_name} {kind}: load + read {r['time']:.2f}x HF ({wanted}), "
                f"peak {'GPU memory' if args.device != 'cpu' else 'RSS growth'} "
                f"{r['memory']:.3f}x the weights (target <= {memory_target}x)"
            )
    out = args.out or BIG_LOAD_JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if not args.no_render and args.out is None:
        DOC_MD.write_text(render(load_results()))
        print(f"wrote {DOC_MD}", file=sys.stderr)


if __name__ == "__main__":
    main()
