"""`harvest`: dataset -> packed tokens -> activations -> shards + manifest, resumable.

The run keeps `manifest.json` in the output folder up to date: the arguments that define the
harvest, the model's name and weights hash, the tokens file, and one record per finished shard
(its sequences and tokens, files, SHA-256). Each file is written under a temporary name and
renamed when complete, and the manifest is rewritten (atomically) after each shard, so a run
killed at any point restarts, with the same arguments, from the last complete shard.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lmscope.harvest import data, store
from lmscope.harvest.reader import Harvest, open_tokens
from lmscope.harvest.reducers import Reducer
from lmscope.harvest.store import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    REDUCED_FILE,
    TOKENS_FILE,
    HarvestDirectoryError,
)
from lmscope.harvest.work import (
    REDUCER_DIR,
    SHARDS_DIR,
    Plan,
    check_hooks,
    merge_states,
    run_shard,
    stop_layer,
    write_shard,
)
from lmscope.version import __version__

ENGINES = ("local", "ray")
_PROGRESS_DELAY_S = 2.0


def _dtype_name(dtype: torch.dtype | str | None, model: Any) -> str:
    if dtype is None:
        return str(model.cfg.dtype).removeprefix("torch.")
    name = str(dtype).removeprefix("torch.")
    if (
        not isinstance(getattr(torch, name, None), torch.dtype)
        or not getattr(torch, name).is_floating_point
    ):
        raise ValueError(
            f"dtype {dtype!r} is not a floating torch dtype; pass e.g. torch.float32, "
            "torch.bfloat16 or 'float16'"
        )
    return name


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and bytes, in order): what
    identifies the weights a harvest was made with.

    Example:
        >>> weights_sha256(model)[:12]
    """
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(store._raw_bytes(t))
    return digest.hexdigest()


def _reducer_specs(
    reducers: Sequence[Reducer] | dict[str, Sequence[Reducer]] | None, hooks: tuple[str, ...]
) -> tuple[tuple[str, tuple[dict[str, Any], ...]], ...]:
    if reducers is None:
        return ()
    per_hook = reducers if isinstance(reducers, dict) else {h: reducers for h in hooks}
    specs = []
    for hook, rs in per_hook.items():
        if hook not in hooks:
            raise ValueError(f"reducers name hook {hook!r}, which is not in hooks {list(hooks)}")
        keys = [r.key for r in rs]
        if not all(isinstance(r, Reducer) for r in rs):
            raise ValueError(
                "reducers must be lmscope.harvest reducers (MeanVar(), Covariance(), TopK(), "
                f"Histogram()); got {[type(r).__name__ for r in rs]}"
            )
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"two reducers on {hook} share the name {keys}; give one a name=... to tell them apart"
            )
        specs.append((hook, tuple(r.spec() for r in rs)))
    return tuple(specs)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _bar(total: int, initial: int, desc: str, verbose: bool) -> tqdm:
    shown = verbose and sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="tok",
        unit_scale=True,
        file=sys.stderr,
        disable=not shown,
        delay=_PROGRESS_DELAY_S,
    )


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two harvests' arguments, one phrase each."""
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        if key == "dataset":
            out.append("dataset: another one, or its files changed (size or modification time)")
        elif key == "model_weights_sha256":
            out.append("model: other weights")
        else:
            out.append(f"{key}: {new.get(key)!r} now, {old.get(key)!r} there")
    return out


def _open_manifest(
    out: Path, arguments: dict[str, Any], model_info: dict[str, Any], dataset: dict[str, Any]
) -> dict[str, Any]:
    """The folder's manifest, after checking it records these arguments; a new one for a new
    or empty folder."""
    path = out / MANIFEST
    if path.exists():
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise HarvestDirectoryError(f"{path} is not an lmscope harvest manifest")
        diff = _differences(manifest["arguments"], arguments)
        if diff:
            raise HarvestDirectoryError(
                f"out={str(out)!r} holds a harvest made with other arguments ({'; '.join(diff)}); "
                "pass the same arguments to resume it, or choose another out folder"
            )
        return manifest
    leftovers = [p.name for p in out.iterdir() if not p.name.endswith(store.TMP_SUFFIX)]
    if leftovers:
        raise HarvestDirectoryError(
            f"out={str(out)!r} is not empty and holds no {MANIFEST} (it has {sorted(leftovers)[:5]}); "
            "harvest writes into a new or empty folder, or resumes one it made"
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "lmscope_version": __version__,
        "created": _now(),
        "arguments": arguments,
        "model": model_info,
        "dataset": dataset,
        "tokens": None,
        "shards": [],
        "complete": False,
    }
    store.write_json(path, manifest)
    return manifest


def _tokenize(
    out: Path,
    source: data.Source,
    tokenizer: Any,
    seq_len: int,
    column: str,
    prepend_bos: bool,
    verbose: bool,
    fsync: bool,
) -> dict[str, Any]:
    """Pack the dataset into `tokens.safetensors` ([n_seqs, seq_len] int32) and describe it."""
    raw = out / ("tokens.bin" + store.TMP_SUFFIX)
    n_rows = 0
    with open(raw, "wb") as f, _bar(0, 0, "tokenising", verbose) as bar:
        for rows in data.pack(source, tokenizer, seq_len, column, prepend_bos):
            f.write(memoryview(data.as_int32(rows)))
            n_rows += rows.shape[0]
            bar.update(rows.numel())
    if n_rows == 0:
        raw.unlink()
        raise data.DatasetError(
            f"{source.description} makes no sequence of seq_len={seq_len} tokens; pass more "
            "text or a smaller seq_len"
        )
    shape = (n_rows, seq_len)
    sha, size = store.write_safetensors_from_raw(
        out / TOKENS_FILE, "tokens", torch.int32, shape, raw, fsync=fsync
    )
    return {
        "file": TOKENS_FILE,
        "n_seqs": n_rows,
        "seq_len": seq_len,
        "n_tokens": n_rows * seq_len,
        "sha256": sha,
        "bytes": size,
    }


def _present(out: Path, record: dict[str, Any]) -> bool:
    for file, size in (("file", "bytes"), ("reducer_file", "reducer_bytes")):
        if file in record:
            path = out / record[file]
            if not path.is_file() or path.stat().st_size != record[size]:
                return False
    return True


def harvest(
    model: Any,
    dataset: Any,
    hooks: Sequence[str],
    out: str | Path,
    *,
    batch_size: int = 8,
    seq_len: int = 128,
    dtype: torch.dtype | str | None = None,
    shard_tokens: int = 65536,
    reducers: Sequence[Reducer] | dict[str, Sequence[Reducer]] | None = None,
    save_activations: bool | None = None,
    column: str = "text",
    prepend_bos: bool = True,
    engine: str = "local",
    workers: int = 2,
    ray_num_cpus: float | None = None,
    ray_num_gpus: float | None = None,
    stall_timeout_s: float | None = None,
    fsync: bool = False,
    verbose: bool = True,
) -> Harvest:
    """Run `model` over a dataset and store the activations at `hooks` (or reducers' statistics
    of them) in `out`: sharded safetensors plus `manifest.json`. Killed and run again with the
    same arguments, it goes on from the last complete shard. Returns `lmscope.harvest.open(out)`.

    Args:
        model: a HookedTransformer, or a name/path for `HookedTransformer.from_pretrained`.
        dataset: a .txt/.jsonl/.parquet file, a folder of them, a datasets `save_to_disk`
            folder, a `datasets.Dataset`, a list of strings, or a [n_seqs, seq_len] token tensor.
        hooks: hook point names; the forward stops after the last block they need.
        batch_size, seq_len: sequences per forward pass and tokens per sequence (BOS included).
        dtype: storage dtype of the activations (default: the model's).
        shard_tokens: tokens per shard (rounded down to whole sequences).
        reducers: statistics to compute (`MeanVar()`, `Covariance()`, `TopK()`,
            `Histogram()`), for every hook (a list) or per hook (a dict). With reducers the raw
            activations are not stored unless save_activations=True.
        column: the text field of .jsonl/.parquet files and datasets.
        prepend_bos: put BOS first in each sequence (TransformerLens packing).
        engine: "local" (this process) or "ray" (Ray Data, `workers` model replicas; see
            docs/harvest.md for clusters and GPUs).
        ray_num_cpus / ray_num_gpus: resources per Ray worker (default: 1 GPU each when the
            cluster has GPUs, else 0.5 CPU each).
        stall_timeout_s: with Ray, give up (TimeoutError) when no shard finishes for this long.
        fsync: wait for every file to reach the disk before renaming it into place (survives
            power cuts and OS crashes, not only killed processes; slower where the disk is the
            bottleneck).

    Example:
        >>> h = lmscope.harvest(model, "corpus.jsonl", hooks=["blocks.0.hook_resid_post"],
        ...                     out="acts", seq_len=128, shard_tokens=2**16)
        >>> h.read("blocks.0.hook_resid_post").shape
    """
    _check_sizes(engine, batch_size, seq_len, workers, shard_tokens)
    if isinstance(hooks, str):
        hooks = [hooks]
    hooks = tuple(dict.fromkeys(hooks))
    specs = _reducer_specs(reducers, hooks)
    keep = save_activations if save_activations is not None else reducers is None
    if not keep and not specs:
        raise ValueError("save_activations=False with no reducers would store nothing")
    source = data.resolve(dataset)
    model_name = model if isinstance(model, str) else None
    if isinstance(model, str):
        from lmscope.model import HookedTransformer

        model = HookedTransformer.from_pretrained(model, verbose=verbose)
    check_hooks(model, hooks, {h for h, _ in specs})
    if seq_len > model.cfg.n_ctx:
        raise ValueError(
            f"seq_len={seq_len} is longer than the model's context n_ctx={model.cfg.n_ctx}"
        )
    dtype_name = _dtype_name(dtype, model)
    weights = weights_sha256(model)
    arguments = {
        "model_weights_sha256": weights,
        "dataset": source.fingerprint,
        "column": column if source.kind != "tokens" else None,
        "hooks": list(hooks),
        "dtype": dtype_name,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "shard_tokens": shard_tokens,
        "prepend_bos": prepend_bos if source.kind != "tokens" else None,
        "reducers": {h: list(s) for h, s in specs},
        "save_activations": keep,
    }
    model_info = {
        "name": model.cfg.model_name,
        "weights_sha256": weights,
        "n_layers": model.cfg.n_layers,
        "d_model": model.cfg.d_model,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset_info = {"description": source.description, "fingerprint": source.fingerprint}
    manifest = _open_manifest(out, arguments, model_info, dataset_info)
    store.remove_temporaries(out)
    if manifest["tokens"] is None:
        manifest["tokens"] = _tokenize(
            out, source, model.tokenizer, seq_len, column, prepend_bos, verbose, fsync
        )
        store.write_json(out / MANIFEST, manifest, fsync=fsync)
    tokens = open_tokens(out / TOKENS_FILE)
    plan = Plan(
        hooks=hooks,
        dtype=dtype_name,
        seq_len=seq_len,
        batch_size=batch_size,
        rows_per_shard=shard_tokens // seq_len,
        n_seqs=manifest["tokens"]["n_seqs"],
        stop_at_layer=stop_layer(hooks, model),
        reducers=specs,
        save_activations=keep,
        fsync=fsync,
    )
    manifest["n_shards"] = plan.n_shards
    manifest["stop_at_layer"] = plan.stop_at_layer
    done = {r["id"]: r for r in manifest["shards"] if _present(out, r)}
    pending = [s for s in range(plan.n_shards) if s not in done]
    for folder, used in ((SHARDS_DIR, keep), (REDUCER_DIR, bool(specs))):
        if used:
            (out / folder).mkdir(exist_ok=True)

    def on_record(record: dict[str, Any]) -> None:
        done[record["id"]] = record
        manifest["shards"] = [done[s] for s in sorted(done)]
        manifest["updated"] = _now()
        if "shapes" in record:
            manifest["shapes"] = record["shapes"]
        store.write_json(out / MANIFEST, manifest, fsync=fsync)

    total = plan.n_seqs * seq_len
    initial = sum(r["tokens"][1] - r["tokens"][0] for r in done.values())
    with _bar(total, initial, f"harvest ({engine})", verbose) as bar:
        if engine == "ray":
            from lmscope.harvest.ray_engine import run_ray

            run_ray(
                model_name or model,
                plan,
                out,
                pending,
                on_record,
                bar,
                workers=workers,
                num_cpus=ray_num_cpus,
                num_gpus=ray_num_gpus,
                stall_timeout_s=stall_timeout_s,
                verbose=verbose,
            )
        else:
            run_local(model, plan, tokens, out, pending, on_record, bar.update)
    if specs and "reduced" not in manifest:
        manifest["reduced"] = _merge_reducers(out, plan, [done[s] for s in sorted(done)])
    manifest["complete"] = True
    manifest["updated"] = _now()
    store.write_json(out / MANIFEST, manifest, fsync=fsync)
    return Harvest(out)


def _check_sizes(
    engine: str, batch_size: int, seq_len: int, workers: int, shard_tokens: int
) -> None:
    """A ValueError naming the first of these arguments that harvest cannot use."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    for label, value, low in (
        ("batch_size", batch_size, 1),
        ("seq_len", seq_len, 2),
        ("workers", workers, 1),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
    if not isinstance(shard_tokens, int) or shard_tokens < seq_len:
        raise ValueError(
            f"shard_tokens={shard_tokens!r} holds no whole sequence of seq_len={seq_len}; "
            f"pass shard_tokens >= {seq_len}"
        )


def _merge_reducers(out: Path, plan: Plan, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge every shard's reducer states (in shard order) into reduced.safetensors; returns
    its manifest entry."""
    states = [store.mmap_safetensors(out / r["reducer_file"]) for r in records]
    merged = merge_states(plan, states)
    sha, size = store.write_safetensors(out / REDUCED_FILE, merged, fsync=plan.fsync)
    return {"file": REDUCED_FILE, "sha256": sha, "bytes": size}


def run_local(
    model: Any,
    plan: Plan,
    tokens: torch.Tensor,
    out: Path,
    pending: list[int],
    on_record: Callable[[dict[str, Any]], None],
    on_batch: Callable[[int], Any] | None = None,
) -> None:
    """Run the pending shards in this process: each shard's forward passes overlap the
    previous shard's write (one writer thread; at most two shards in memory)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmscope-harvest-writer") as pool:
        writing: Future[dict[str, Any]] | None = None
        for shard in pending:
            result = run_shard(model, plan, tokens, shard, on_batch)
            if writing is not None:
                on_record(writing.result())
            writing = pool.submit(write_shard, out, plan, result)
        if writing is not None:
            on_record(writing.result())
