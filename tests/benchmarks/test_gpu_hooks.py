"""benchmarks/gpu_hooks.py in its --quick CPU mode (tiny GPT-2 shape, Dynamo's eager backend), so
the script the GPU machine runs cannot rot: every row is measured, the checks hold."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType


def _script() -> ModuleType:
    from benchmarks import gpu_hooks

    return gpu_hooks


def test_quick_mode_measures_every_row(tmp_path: Path) -> None:
    doc = _script().main(["--device", "cpu", "--quick", "--models", "gpt2", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_hooks.json").read_text())["models"].keys() == {"gpt2"}
    result = doc["models"]["gpt2"]
    for row in (
        "hf_eager", "hf_sdpa", "forward", "cache_all", "cache_resid_post", "cache_all_compiled",
        "fwd_bwd", "fwd_bwd_cache", "sweep", "sweep_compiled",
    ):  # fmt: skip
        assert result["seconds"][row] > 0, row
    assert result["ratios"]["cache_all"] > 0 and result["ratios"]["fwd_bwd_cache"] > 0
    checks = result["checks"]
    for key in ("forward", "cache_all", "cache_all_compiled", "sweep_compiled"):
        assert checks[f"{key}_max_abs_diff"] < 1e-5, (key, checks)
    assert "cache_all_compiled_warnings" not in checks
    assert result["launches"]["cache_all"] > result["launches"]["forward"] > 0
    assert checks["heads"] == 8 and doc["skipped"] == {}
