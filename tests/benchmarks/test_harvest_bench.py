"""The harvesting benchmark (benchmarks/harvest.py) compares like with like: its by-hand loop
writes the same activations as lmscope.harvest, and its section of docs/benchmarks.md judges
the target."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import lmscope
from benchmarks.render import render_harvest


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    from benchmarks import harvest

    return harvest


def test_by_hand_writes_what_harvest_writes(
    bench: ModuleType, tiny_tok_model: Any, tmp_path: Path
) -> None:
    tokens = torch.randint(0, 300, (10, 16))
    hooks = ["blocks.1.hook_resid_post"]
    bench.by_hand(tiny_tok_model, tokens, hooks, tmp_path / "hand", batch=3, shard_rows=4)
    h = lmscope.harvest(
        tiny_tok_model, tokens, hooks=hooks, out=tmp_path / "h", seq_len=16, batch_size=3,
        shard_tokens=64, verbose=False,
    )  # fmt: skip
    for i in range(3):
        hand = load_file(str(tmp_path / "hand" / f"shard-{i:05d}.safetensors"))
        assert torch.equal(hand[hooks[0]], h.shard(i)[hooks[0]])


def test_section_judges_the_target() -> None:
    case = {
        "hooks": ["blocks.5.hook_resid_post"], "stop_at_layer": 6,
        "tokens_per_s": {"by_hand": 100.0, "harvest": 250.0}, "speedup": 2.5,
        "bytes_per_token": 2308.8, "ideal_bytes_per_token": 2304.0,
    }  # fmt: skip
    doc = {
        "machine": {"cpu": "x", "cpu_count": 2, "torch": "2", "torch_threads": 2},
        "model": "m", "n_layers": 30, "tokens": 4096, "seq_len": 128, "batch": 8,
        "shard_tokens": 512, "repeats": 2, "date": "d", "loadavg_start": [0], "loadavg_end": [0],
        "cases": {"early": case, "last": {**case, "speedup": 0.9}},
        "ray": {"hooks": ["h"], "workers": 2, "tokens_per_s": {"ray": 50.0, "local": 100.0}, "speedup": 0.5},
    }  # fmt: skip
    text = "\n".join(render_harvest(doc))
    assert "| 100 tok/s | 250 tok/s | 2.50x (hold) | 2308.8 | 2304 |" in text
    assert "0.90x (**missed**)" in text and "50 tok/s against `engine='local'` 100 tok/s" in text
