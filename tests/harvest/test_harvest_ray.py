"""engine="ray": the same shards, manifest and reducer results as one process, from two Ray
Data actors on a local Ray cluster (conftest's `ray_cluster`, started once per test session)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harvest_helpers import HOOKS, corpus

import lmscope
from lmscope.harvest import MeanVar, TopK, ray_engine

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data")  # Ray's own
KWARGS: dict[str, Any] = dict(
    hooks=HOOKS, seq_len=16, batch_size=4, shard_tokens=16 * 12, verbose=False,
    reducers={HOOKS[0]: [MeanVar(), TopK(k=3)]}, save_activations=True,
)  # fmt: skip


@pytest.mark.timeout(240)
def test_two_ray_workers_write_what_one_process_writes(
    tiny_tok_model: Any, tmp_path: Path, ray_cluster: Any
) -> None:
    texts = corpus(150)
    local = lmscope.harvest(tiny_tok_model, texts, out=tmp_path / "local", **KWARGS)
    # stall_timeout_s: if Ray ever cannot schedule the pipeline, fail with a message, not hang
    distributed = lmscope.harvest(
        tiny_tok_model, texts, out=tmp_path / "ray", engine="ray", workers=2,
        stall_timeout_s=120, **KWARGS,
    )  # fmt: skip
    assert len(local.shards) >= 4
    assert distributed.manifest["shards"] == local.manifest["shards"]  # same files, same SHA-256
    assert distributed.manifest["reduced"] == local.manifest["reduced"]
    assert distributed.manifest["tokens"] == local.manifest["tokens"]
    distributed.verify()


def test_actors_that_would_starve_the_read_task_are_refused(
    tiny_tok_model: Any, tmp_path: Path, ray_cluster: Any
) -> None:
    """Two 1-CPU actors on 2 CPUs leave Ray Data's read task no CPU (the pipeline would wait
    forever): refused before starting, with the fix."""
    with pytest.raises(ValueError, match=r"ray_num_cpus=0.5, or start Ray with more CPUs"):
        lmscope.harvest(
            tiny_tok_model, corpus(30), out=tmp_path, engine="ray", ray_num_cpus=1.0, **KWARGS
        )


class _StalledDataset:
    """A Ray Data pipeline that never yields a row (what the starved pipeline does): its
    iter_rows blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        self.release.wait()
        return iter(())


@pytest.mark.timeout(60)
def test_a_stalled_pipeline_times_out_with_a_message(ray_cluster: Any) -> None:
    """Were the pipeline to stall anyway, stall_timeout_s ends the wait with a message (a real
    stall is not run here: its abandoned executor would fail noisily at Ray's shutdown)."""
    stalled = _StalledDataset()
    try:
        with pytest.raises(
            TimeoutError, match=r"no shard in 2 s \(the cluster has 2 CPUs.*ray_num_cpus=0.5"
        ):
            ray_engine._drain(ray_cluster, stalled, lambda record: None, None, stall_timeout_s=2)
    finally:
        stalled.release.set()
