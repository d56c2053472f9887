"""Write tests/compat/tl_signatures.json: the signatures of TransformerLens 3.9's public methods and
functions that notebooks call, so tests/compat/test_signatures.py can check that lmscope accepts
the same calls (parameter names, positional order, simple defaults). Run with a Python that has
TransformerLens installed (CI has none, so the JSON is committed):

    /work/tl3/bin/python scripts/tl_signatures.py
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "tests" / "compat" / "tl_signatures.json"
# (module, class or None for the module's functions)
TARGETS = [
    ("transformer_lens", "HookedTransformer"),
    ("transformer_lens", "ActivationCache"),
    ("transformer_lens", "FactoredMatrix"),
    ("transformer_lens.hook_points", "HookPoint"),
    ("transformer_lens.hook_points", "HookedRootModule"),
    ("transformer_lens.utils", None),
    ("transformer_lens.patching", None),
    ("transformer_lens.evals", None),
    ("transformer_lens.head_detector", None),
]
SIMPLE = (type(None), bool, int, float, str)


def describe(fn: Any) -> list[dict[str, Any]] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = []
    for p in sig.parameters.values():
        entry: dict[str, Any] = {"name": p.name, "kind": p.kind.name}
        if p.default is not inspect.Parameter.empty:
            entry["default"] = p.default if isinstance(p.default, SIMPLE) else repr(p.default)
            entry["simple"] = isinstance(p.default, SIMPLE)
        params.append(entry)
    return params


def members(module_name: str, cls_name: str | None) -> dict[str, Any]:
    module = importlib.import_module(module_name)
    out: dict[str, Any] = {}
    if cls_name is None:
        for name, obj in vars(module).items():
            if name.startswith("_") or not inspect.isfunction(obj):
                continue
            if obj.__module__ != module.__name__:
                continue
            sig = describe(obj)
            if sig is not None:
                out[name] = sig
        return out
    cls = getattr(module, cls_name)
    for name, obj in inspect.getmembers(cls):
        if name.startswith("_") and name != "__init__":
            continue
        if not (inspect.isfunction(obj) or inspect.ismethod(obj)):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), None)
        if owner is None or not owner.__module__.startswith("transformer_lens"):
            continue  # torch.nn.Module's own methods
        sig = describe(obj)
        if sig is not None:
            out[name] = sig
    return out


def main() -> None:
    doc: dict[str, Any] = {
        "transformer_lens": importlib.metadata.version("transformer_lens"),
        "targets": {},
    }
    for module_name, cls_name in TARGETS:
        key = f"{module_name}.{cls_name}" if cls_name else module_name
        doc["targets"][key] = members(module_name, cls_name)
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}: {sum(len(v) for v in doc['targets'].values())} signatures")


if __name__ == "__main__":
    main()
