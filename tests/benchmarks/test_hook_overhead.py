"""benchmarks/hook_overhead.py on a 2-layer model: every row is timed and the ops are counted."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


def _script() -> ModuleType:
    from benchmarks import hook_overhead

    return hook_overhead


def test_rows_and_op_counts(tmp_path: Path) -> None:
    argv = ["--families", "llama", "--layers", "2", "--rounds", "1", "--calls", "2"]
    doc = _script().main([*argv, "--no-compile", "--out", str(tmp_path / "h.json")])
    entry = doc["families"]["llama"]
    assert set(entry["ms"]) == {"inference_mode", "autograd"}
    assert all(ms > 0 for rows in entry["ms"].values() for ms in rows.values())
    ops = entry["ops_per_run"]
    assert ops["run_with_cache() all"] > ops["forward"] > 10
    assert (tmp_path / "h.json").exists()
