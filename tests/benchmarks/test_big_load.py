"""The big-checkpoint benchmark (benchmarks/big_load.py) on a tiny shape: the checkpoint it writes
is a valid Llama checkpoint that transformers and lmscope both load to the same logits, its worker
measures a load, and the section rendered into docs/benchmarks.md judges its targets."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from benchmarks.render import render_big_load

TINY = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
}


@pytest.fixture(scope="module")
def big_load() -> ModuleType:
    """benchmarks/big_load.py, a module of the benchmarks package."""
    from benchmarks import big_load

    return big_load


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_written_checkpoint_loads_in_transformers_and_lmscope(
    big_load: ModuleType, tmp_path: Path, dtype: str
) -> None:
    from transformers import AutoModelForCausalLM

    from lmscope import HookedTransformer

    size = big_load.write_checkpoint(tmp_path, dtype, TINY)
    tensors = list(big_load.llama_tensors(TINY))
    data = sum(torch.Size(shape).numel() for _, shape in tensors) * getattr(torch, dtype).itemsize
    assert data < size < data + 2**16  # the tensors and a header
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)  # exact from bf16
    ours = HookedTransformer.from_pretrained_no_processing(tmp_path, dtype=getattr(torch, dtype))
    down = hf.model.layers[1].mlp.down_proj.weight
    assert torch.equal(ours.blocks[1].mlp.out_weight.float(), down)
    tokens = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(ours.float()(tokens), hf(tokens).logits, atol=1e-5, rtol=0)


def test_worker_measures_a_processed_load(big_load: ModuleType, tmp_path: Path) -> None:
    big_load.write_checkpoint(tmp_path, "bfloat16", TINY)
    result = big_load.worker("lmscope", str(tmp_path), "bfloat16", threads=1)
    from lmscope import HookedTransformer

    model = HookedTransformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert result["dtypes"] == ["torch.bfloat16"]
    assert result["param_bytes"] == sum(2 * p.numel() for p in model.parameters())
    assert result["load_s"] > 0 and result["touch_s"] > 0
    assert result["rss_growth_touch"] >= result["rss_growth"]  # VmHWM only grows
    assert result["checksum"] == pytest.approx(
        sum(float(p.detach().float().sum()) for p in model.parameters()), rel=1e-3
    )


def _doc(hf_s: float, processed_s: float, growth: float) -> dict[str, Any]:
    kind = {"load_s": 0.1, "rss_growth": 0, "param_bytes": 100}
    kinds = {
        "hf": {**kind, "load_touch_s": hf_s, "rss_growth_touch": 100},
        "lmscope": {**kind, "load_touch_s": processed_s, "rss_growth_touch": growth * 100},
        "lmscope_no_processing": {**kind, "load_touch_s": 0.5 * hf_s, "rss_growth_touch": 100},
    }
    return {
        "shape": TINY,
        "machine": {"cpu": "cpu", "cpu_count": 2, "torch": "2", "transformers": "5"},
        "repeats": 3,
        "date": "today",
        "loadavg_start": [0.0, 0.0, 0.0],
        "checkpoints": {"bfloat16": {"weights_bytes": 2**31, "kinds": kinds}},
    }


def test_rendered_section_judges_the_targets(big_load: ModuleType) -> None:
    text = "\n".join(render_big_load(_doc(hf_s=1.0, processed_s=2.5, growth=1.10)))
    assert "| bfloat16: load + read, lmscope `HookedTransformer.from_pretrained" in text
    assert "| 2.500x | **missed** |" in text  # processed time over HF's
    assert "| 1.100x | hold |" in text  # processed peak RSS over the weights (<= 1.15x)
    assert "| 0.500x | hold |" in text  # unprocessed time (<= 0.6x)
    assert text.count("| hold |") == 3 and text.count("**missed**") == 1
