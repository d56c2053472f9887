"""Weights each device holds when an 8B model is spread (`n_devices`, `device_map="auto"`),
against the whole model on one device. The model is built on the meta device (sizes, no data),
so this runs anywhere in a second: `.venv/bin/python benchmarks/device_memory.py`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmscope import HookedTransformer
from lmscope.config import HookedTransformerConfig
from lmscope.devices import auto_plan, split_blocks, unit_sizes
from lmscope.loading.families import family_for

CONFIGS = Path(__file__).resolve().parents[1] / "src/lmscope/loading/configs"
GB = 1e9


def per_device(sizes: dict[str, int], plan: dict[str, torch.device]) -> dict[str, int]:
    """Bytes of weights on each device of `plan`."""
    out: dict[str, int] = {}
    for name, device in plan.items():
        out[str(device)] = out.get(str(device), 0) + sizes[name]
    return out


def main() -> None:
    for name in ["meta-llama--Llama-3.1-8B", "Qwen--Qwen3-8B"]:
        hf = json.loads((CONFIGS / f"{name}.json").read_text())
        fields = family_for(hf).config_from_hf(hf)
        fields.update(init_weights=False, dtype=torch.bfloat16)
        with torch.device("meta"):
            model = HookedTransformer(HookedTransformerConfig(**fields))
        sizes = unit_sizes(model)
        total = sum(sizes.values())
        print(f"{name} bfloat16: {total / GB:.2f} GB of weights on one device")
        plans = {f"n_devices={n}": split_blocks(model.cfg.n_layers, [torch.device("cuda", i)
                 for i in range(n)]) for n in (2, 4)}  # fmt: skip
        for free in (12, 24):
            plans[f"auto, {free} GB free"] = auto_plan(sizes, {torch.device("cuda:0"): free * GB})
        for label, plan in plans.items():
            shares = ", ".join(
                f"{dev} {b / GB:.2f} GB ({b / total:.2f}x)"
                for dev, b in per_device(sizes, plan).items()
            )
            print(f"  {label}: {shares}")


if __name__ == "__main__":
    main()
