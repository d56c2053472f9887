"""benchmarks/hook_overhead.py on a 2-layer model: every row is timed and the ops are counted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

HOOK_OVERHEAD_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "hook_overhead.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lmscope_bench_hook_overhead", HOOK_OVERHEAD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_rows_and_op_counts(tmp_path: Path) -> None:
    argv = ["--families", "llama", "--layers", "2", "--rounds", "1", "--calls", "2"]
    doc = _script().main([*argv, "--no-compile", "--out", str(tmp_path / "h.json")])
    entry = doc["families"]["llama"]
    assert set(entry["ms"]) == {"inference_mode", "autograd"}
    assert all(ms > 0 for rows in entry["ms"].values() for ms in rows.values())
    ops = entry["ops_per_run"]
    assert ops["run_with_cache() all"] > ops["forward"] > 10
    assert (tmp_path / "h.json").exists()
