"""Every public name of TransformerLens 3.9's classic API (tl_public_names.json, written by
scripts/tl_public_names.py) resolves under the same module path in lmscope, or is listed in
lmscope.compat with what to use instead, and reaching it says so."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from lmscope import compat

ROOT = Path(__file__).resolve().parents[2]
DATA = json.loads((Path(__file__).with_name("tl_public_names.json")).read_text())
MODULES: dict[str, list[str]] = DATA["modules"]


def _excluded_module(path: str) -> str | None:
    for prefix, reason in compat.NOT_PROVIDED_MODULES.items():
        if path == prefix or path.startswith(prefix + "."):
            return reason
    return None


def _assert_documented_import(name: str) -> None:
    """An excluded TransformerLens module either is an lmscope module of the same name (documented
    as different, e.g. lmscope.components) or fails to import naming TransformerLens."""
    try:
        importlib.import_module(name)
    except ImportError as err:
        assert "TransformerLens" in str(err), f"{name}: unhelpful ImportError {err}"


def _assert_documented_attr(module: object, attr: str) -> None:
    try:
        getattr(module, attr)
    except AttributeError as err:
        assert "TransformerLens" in str(err), f"{attr}: unhelpful AttributeError {err}"


@pytest.mark.parametrize("path", sorted(MODULES))
def test_module_path_resolves_or_is_documented(path: str) -> None:
    name = "lmscope" + (f".{path}" if path else "")
    if _excluded_module(path) is not None:
        _assert_documented_import(name)
        return
    module = importlib.import_module(name)
    for attr in MODULES[path]:
        if _excluded_module(f"{path}.{attr}".lstrip(".")) is not None:
            _assert_documented_attr(module, attr)
            continue
        why = compat.missing(path, attr)
        if why is None:
            assert hasattr(module, attr), f"lmscope.{path}.{attr} is missing and not documented"
        else:
            with pytest.raises(AttributeError, match=re.escape(why)):
                getattr(module, attr)


def test_class_paths_are_module_and_class() -> None:
    import lmscope
    from lmscope.FactoredMatrix import FactoredMatrix
    from lmscope.HookedTransformer import HookedTransformer

    assert lmscope.FactoredMatrix is FactoredMatrix
    assert lmscope.HookedTransformer is HookedTransformer
    assert (
        lmscope.SVDInterpreter is importlib.import_module("lmscope.SVDInterpreter").SVDInterpreter
    )


def test_aliases_only_reexport() -> None:
    from lmscope.cache.key_value_cache import TransformerLensKeyValueCache

    from lmscope import hook_points, hooks, patching, utilities, utils
    from lmscope.analysis import patching as real_patching
    from lmscope.generation import KVCache

    assert hook_points.HookPoint is hooks.HookPoint
    assert patching.get_act_patch_resid_pre is real_patching.get_act_patch_resid_pre
    assert utilities.to_numpy is utils.to_numpy
    assert importlib.import_module("lmscope.utilities.tensors").is_square is utils.is_square
    assert TransformerLensKeyValueCache is KVCache


def test_unknown_name_is_a_plain_attribute_error() -> None:
    import lmscope.utils

    with pytest.raises(AttributeError, match="no attribute 'not_a_tl_name'"):
        lmscope.utils.not_a_tl_name  # noqa: B018


def test_excluded_modules_are_in_migration_doc() -> None:
    doc = (ROOT / "docs" / "migration.md").read_text()
    for prefix in compat.NOT_PROVIDED_MODULES:
        assert f"`{prefix}`" in doc, f"docs/migration.md does not list excluded module {prefix}"
