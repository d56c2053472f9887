"""Regenerate the model table and the stored registry figures.

    python scripts/make_model_table.py          # writes docs/models.md and configs/figures.json
    python scripts/make_model_table.py --check  # exits 1 if either is stale (what CI checks)

Figures come from the vendored config.json files run through lmscope's family adapters
(lmscope.loading.registry.compute_models); see that module for the rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmscope.loading.registry import FIGURES_FILE, compute_models, figures_json, models_markdown

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "models.md"


def outputs() -> dict[Path, str]:
    models = compute_models()
    return {TABLE: models_markdown(models), FIGURES_FILE: figures_json(models)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
    for path in stale:
        print(
            f"{'stale' if args.check else 'wrote'}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
        )
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
