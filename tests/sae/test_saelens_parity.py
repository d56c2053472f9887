"""Parity with SAELens (sae-lens from PyPI, in the .venv-sae environment `make test` builds, since
it depends on TransformerLens): SAELens reads the SAEs lmscope saves and computes the same
features (<= 1e-6), lmscope reads SAELens's files, and a model with an SAE spliced in gives
SAELens's HookedSAETransformer's logits and SAE hooks on the same weights (the model itself agrees
with TransformerLens to ~1e-6 in float32)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv-sae" / "bin" / "python"


@pytest.fixture(scope="module")
def diffs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    if not PYTHON.exists():
        pytest.fail(
            f"{PYTHON} is missing: build the SAELens environment with `make .venv-sae/.sae`"
        )
    out = tmp_path_factory.mktemp("saelens")
    script = Path(__file__).with_name("saelens_parity.py")
    run = subprocess.run(
        [str(PYTHON), str(script), str(out)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_saelens_reads_an_sae_lmscope_trained(diffs: dict[str, float]) -> None:
    assert diffs["trained.encode"] <= 1e-6 and diffs["trained.decode"] <= 1e-6


CASES = ["standard", "topk", "topk_rescaled", "jumprelu", "gated", "layer_norm_no_bdec", "hook_z"]


@pytest.mark.parametrize("case", CASES)
def test_saelens_reads_our_sae_and_computes_the_same(diffs: dict[str, float], case: str) -> None:
    assert diffs[f"{case}.encode"] <= 1e-6
    assert diffs[f"{case}.decode"] <= 1e-6
    assert diffs[f"{case}.active_features_differ"] == 0
    assert diffs[f"{case}.saelens_file_encode"] <= 1e-6  # and we read SAELens's own file


@pytest.mark.parametrize("case", CASES)
def test_spliced_run_equals_saelens_hooked_sae_transformer(
    diffs: dict[str, float], case: str
) -> None:
    assert diffs[f"{case}.same_activations.acts"] <= 1e-6  # SAELens's SAE on our spliced input
    for tag in ("spliced", "spliced_error"):
        assert diffs[f"{case}.{tag}.logits"] <= 1e-5
        assert diffs[f"{case}.{tag}.sae_hooks"] <= 1e-5
        assert diffs[f"{case}.{tag}.n_sae_hooks"] == (6 if tag == "spliced_error" else 5)
    assert diffs["model_logits"] <= 1e-5
