"""Write tests/compat/tl_init_stds.json: the std of every weight TransformerLens 3.9 draws for
each `init_mode`, with and without an explicit `initializer_range`, on one config (the tests
compare lmscope's draws with these, statistically, since CI has no TransformerLens):

    /work/tl3/bin/python scripts/tl_init_stds.py
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

OUT = Path(__file__).resolve().parents[1] / "tests" / "compat" / "tl_init_stds.json"
CONFIG = dict(n_layers=2, d_model=128, n_ctx=64, d_head=16, n_heads=8, d_vocab=300, act_fn="gelu")
MODES = ("gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "muP")
RANGES = (-1.0, 0.5)  # -1: TransformerLens's default (0.8 / sqrt(d_model) for gpt2, else 1)


def main() -> None:
    stds: dict[str, dict[str, float]] = {}
    for mode in MODES:
        for initializer_range in RANGES:
            cfg = HookedTransformerConfig(
                **CONFIG, init_mode=mode, initializer_range=initializer_range, seed=0
            )
            model = HookedTransformer(cfg)
            stds[f"{mode}:{initializer_range}"] = {
                name: float(p.detach().std())
                for name, p in model.named_parameters()
                if "W_" in name
            }
    doc = {
        "transformer_lens_version": importlib.metadata.version("transformer-lens"),
        "torch_version": torch.__version__,
        "config": CONFIG,
        "stds": stds,
    }
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
