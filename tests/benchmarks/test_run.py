"""The benchmark suite (benchmarks/run.py): its lmscope worker in --quick mode on a tiny random
GPT-2, end to end (load subprocesses included), and the renderer of docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run() -> ModuleType:
    """benchmarks/run.py, imported by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("lmscope_bench_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def worker_doc(run: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cache = tmp_path_factory.mktemp("bench-cache")
    run.prepare_checkpoint("gpt2-tiny", cache)
    argv = ["--quick", "--models", "gpt2-tiny", "--device", "cpu", "--threads", "1"]
    args = run.parse_args([*argv, "--cache-dir", str(cache)])
    return run.run_tool("lmscope", run.settings_from(args, "gpt2-tiny"))


def test_worker_measures_every_workload(run: ModuleType, worker_doc: dict[str, Any]) -> None:
    assert "error" not in worker_doc, worker_doc.get("error")
    assert worker_doc["errors"] == {}
    for workload in run.WORKLOADS:
        stats = run.tool_stats(worker_doc, workload)
        assert stats is not None and "error" not in stats, (workload, stats)
        assert stats["median_s"] > 0, workload
        hf, _ = run.hf_best(worker_doc, workload)
        assert hf is not None and hf > 0, workload
    for workload in ("generate_b1", "generate_b8"):
        assert run.tool_stats(worker_doc, workload)["tokens_per_s"] > 0
    loads = worker_doc["load"]["kinds"]
    for kind in ("hf", "lmscope"):
        assert loads[kind]["load_s"] > 0 and loads[kind]["load_touch_s"] > 0, loads[kind]
    assert worker_doc["load"]["weights_bytes"] > 0
    assert worker_doc["cache_memory"]["bytes"] > 0 and worker_doc["cache_memory"]["tensors"] > 0


def test_worker_checks_lmscope_against_hf(worker_doc: dict[str, Any]) -> None:
    checks = worker_doc["checks"]
    for key in ("forward", "cache_all", "ablate_head_vs_hf"):
        assert checks[f"max_abs_logit_diff_{key}"] < 1e-4, (key, checks)
    for batch in (1, 8):
        agree = checks[f"generate_b{batch}_agree"]
        assert agree["rows_agree"] == agree["rows"] == batch, agree


def test_render_has_every_workload_and_targets(run: ModuleType, worker_doc: dict[str, Any]) -> None:
    merged = run.merge_results({}, [worker_doc])
    md = run.render(merged)
    assert "### Targets (lmscope)" in md
    assert "| target | measured | |" in md
    assert "hold" in md or "missed" in md
    assert "| workload | HF in lmscope's process | lmscope |" in md
    for label in run.WORKLOAD_LABELS.values():
        assert f"| {label} |" in md, label
    assert "peak RSS growth" in md and "full cache (every activation)" in md


def test_merge_keeps_other_tools(run: ModuleType, worker_doc: dict[str, Any]) -> None:
    other = {"tool": "tl3", "model": "gpt2-tiny", "device": "cpu", "error": "worker exited 1"}
    merged = run.merge_results(run.merge_results({}, [worker_doc]), [other])
    rerun = run.merge_results(merged, [worker_doc])
    assert set(rerun["results"]["cpu"]["gpt2-tiny"]) == {"lmscope", "tl3"}
    assert "failed: worker exited 1" in run.render(rerun)
