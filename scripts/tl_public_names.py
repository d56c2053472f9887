"""Write tests/compat/tl_public_names.json: TransformerLens's public module paths and names.

Run once with a Python that has TransformerLens installed (the tests read the JSON, since CI has
no TransformerLens):

    /work/tl3/bin/python scripts/tl_public_names.py

A module's public names are its `__all__`, what it defines at top level (functions, classes,
assignments) and, for a package, what it re-exports from TransformerLens; names starting with `_`
are left out. Packages of the bridge and the training/SAE/encoder-decoder parts are skipped as a
whole (docs/migration.md says why); they are listed in the JSON's "skipped" so the list is honest.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import json
import pkgutil
import types
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "compat" / "tl_public_names.json"
SKIPPED = (
    "benchmarks",
    "conversion_utils",
    "factories",
    "lit",
    "model_bridge",
    "pretrained",
    "tools",
)
TL2_PATHS = {  # module paths of TransformerLens 2.x that 3.x dropped and notebooks still import
    "HookedTransformerConfig": ["HookedTransformerConfig"],
    "past_key_value_caching": [
        "HookedTransformerKeyValueCache",
        "HookedTransformerKeyValueCacheEntry",
    ],
}


def _defined(mod: types.ModuleType) -> set[str]:
    """Names a module binds at top level by def, class or assignment."""
    names: set[str] = set()
    for node in ast.parse(inspect.getsource(mod)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _reexported(mod: types.ModuleType) -> set[str]:
    """Names a package binds to TransformerLens objects or submodules."""
    names = set()
    for name, obj in vars(mod).items():
        origin = (
            obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", "")
        )
        if isinstance(origin, str) and origin.startswith("transformer_lens."):
            names.add(name)
    return names


def public_names(mod: types.ModuleType) -> list[str]:
    """The public names of one TransformerLens module, sorted."""
    names = set(getattr(mod, "__all__", None) or ()) | _defined(mod)
    if hasattr(mod, "__path__"):
        names |= _reexported(mod)
    return sorted(n for n in names if not n.startswith("_") and hasattr(mod, n))


def main() -> None:
    """Walk transformer_lens and write the JSON."""
    warnings.simplefilter("ignore")
    import transformer_lens as tl

    modules = {"": public_names(tl)}
    for info in pkgutil.walk_packages(tl.__path__, "transformer_lens."):
        path = info.name.removeprefix("transformer_lens.")
        if path.split(".")[0] not in SKIPPED:
            modules[path] = public_names(importlib.import_module(info.name))
    modules.update(TL2_PATHS)
    data = {
        "transformer_lens_version": importlib.metadata.version("transformer_lens"),
        "skipped": list(SKIPPED),
        "modules": dict(sorted(modules.items())),
    }
    OUT.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{OUT}: {len(modules)} modules, {sum(map(len, modules.values()))} names")


if __name__ == "__main__":
    main()
