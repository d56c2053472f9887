"""The Ray engine: the same unit of work (`run_shard` + `write_shard`, a pure function of a
shard id) on a Ray Data pipeline, one model replica per actor.

`ray.data.from_items(shard ids).map_batches(ShardWorker, batch_size=1, compute=ActorPoolStrategy)`
gives each actor shard ids; it runs them and writes the shard files into the output folder
itself (on a multi-node cluster that folder must be one every node sees, e.g. NFS), and the
driver records each finished shard in the manifest as its record streams back. With GPUs in the
cluster each actor takes one (`num_gpus=1`) and runs its model there; without, each takes
half a CPU by default, so that Ray Data's read task still finds a CPU on a small machine.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmscope.harvest.reader import open_tokens
from lmscope.harvest.store import TOKENS_FILE
from lmscope.harvest.work import Plan, run_shard, write_shard

DEFAULT_CPU_PER_ACTOR = 0.5


def import_ray() -> Any:
    """`ray` and `ray.data`, or an ImportError saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError(
            "engine='ray' needs Ray with Ray Data: pip install 'lmscope[ray]' "
            "(or pip install 'ray[data]'); engine='local' runs without it"
        ) from None
    return ray


class ShardWorker:
    """A Ray Data actor holding one model replica; called with a batch of shard ids, it runs
    and writes each shard and returns the manifest records (JSON strings)."""

    def __init__(self, model: Any, plan: Plan, out: str, threads: int) -> None:
        import ray

        if isinstance(model, ray.ObjectRef):
            model = ray.get(model)
        if isinstance(model, str):
            from lmscope.model import HookedTransformer

            model = HookedTransformer.from_pretrained(model, verbose=False)
        torch.set_num_threads(threads)
        if torch.cuda.is_available() and ray.get_gpu_ids():
            model = model.to("cuda")
        self.model, self.plan, self.out = model.eval(), plan, Path(out)
        self.tokens = open_tokens(self.out / TOKENS_FILE)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = []
        for shard in batch["shard"].tolist():
            result = run_shard(self.model, self.plan, self.tokens, int(shard))
            records.append(json.dumps(write_shard(self.out, self.plan, result)))
        return {"record": np.array(records, dtype=object)}


def check_resources(ray: Any, workers: int, num_cpus: float, num_gpus: float) -> None:
    """A ValueError when the actors would take every CPU of the cluster, leaving none for
    Ray Data's read task: the pipeline would then wait forever (seen with Ray 2.60)."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if workers * num_cpus + 1 > cpus:
        raise ValueError(
            f"{workers} Ray workers of {num_cpus} CPU each leave less than one of the cluster's "
            f"{cpus:g} CPUs for Ray Data's read task, so the pipeline would never start; pass "
            f"fewer workers, ray_num_cpus={max(0.1, (cpus - 1) / workers):.2g}, or start Ray with "
            "more CPUs (ray.init(num_cpus=...))"
        )


def run_ray(
    model: Any,
    plan: Plan,
    out: Path,
    pending: list[int],
    on_record: Callable[[dict[str, Any]], None],
    bar: Any,
    *,
    workers: int = 2,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    stall_timeout_s: float | None = None,
    verbose: bool = True,
) -> None:
    """Run the pending shards on Ray (see the module docstring); starts a local Ray if none is
    connected (`ray.init(address=...)` first to use a cluster)."""
    ray = import_ray()
    if not pending:
        return
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    gpus = ray.cluster_resources().get("GPU", 0)
    if num_gpus is None:
        num_gpus = 1.0 if gpus >= 1 else 0.0
    if num_cpus is None:
        num_cpus = 1.0 if num_gpus else DEFAULT_CPU_PER_ACTOR
    if not num_gpus:
        check_resources(ray, workers, num_cpus, num_gpus)
    if not isinstance(model, str):  # one copy in the object store, read by every actor
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        model = ray.put(model if on_cpu else copy.deepcopy(model).to("cpu"))
    ds = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
    ds = ds.map_batches(
        ShardWorker,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        fn_constructor_args=(model, plan, str(out), max(1, int(num_cpus))),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    context, logger = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
    bars, level = context.enable_progress_bars, logger.level
    context.enable_progress_bars = verbose  # lmscope's bar counts tokens; Ray's counts blocks
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        _drain(ray, ds, on_record, bar, stall_timeout_s)
    finally:
        context.enable_progress_bars, _ = bars, logger.setLevel(level)


def _drain(
    ray: Any,
    ds: Any,
    on_record: Callable[[dict[str, Any]], None],
    bar: Any,
    stall_timeout_s: float | None,
) -> None:
    """Run the pipeline, handing each shard record to `on_record` as it arrives; a
    TimeoutError when none arrives for `stall_timeout_s`."""
    records: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for row in ds.iter_rows():
                records.put(json.loads(row["record"]))
        except BaseException as err:  # handed to the driver thread
            records.put(err)
        records.put(None)

    threading.Thread(target=pump, name="lmscope-harvest-ray", daemon=True).start()
    last = time.monotonic()
    while True:
        try:
            item = records.get(timeout=1.0)
        except queue.Empty:
            if stall_timeout_s is not None and time.monotonic() - last > stall_timeout_s:
                cpus = ray.cluster_resources().get("CPU", 0)
                free = ray.available_resources().get("CPU", 0)
                raise TimeoutError(
                    f"Ray finished no shard in {stall_timeout_s:g} s (the cluster has {cpus:g} "
                    f"CPUs, {free:g} free): the actors or Ray Data's read task may be waiting "
                    "for resources; give actors "
                    "fewer CPUs (ray_num_cpus=0.5) or start Ray with more. Finished shards are "
                    "kept: run again to resume"
                ) from None
            continue
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        last = time.monotonic()
        on_record(item)
        bar.update(item["tokens"][1] - item["tokens"][0])
