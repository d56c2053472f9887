"""lmscope: see, cache, edit and patch every activation of a real language model."""

import importlib as _importlib
import sys as _sys

from lmscope import compat as _compat
from lmscope import config, harvest, memory, past_key_value_caching, sae, serve, train, utils
from lmscope.analysis.svd_interpreter import SVDInterpreter
from lmscope.cache import ActivationCache
from lmscope.config import HookedTransformerConfig
from lmscope.encoders import EncoderConfig, HookedEncoder, HookedEncoderDecoder
from lmscope.factored_matrix import FactoredMatrix
from lmscope.hooks import HookedRootModule, HookPoint
from lmscope.loading.registry import list_models
from lmscope.model import HookedTransformer
from lmscope.past_key_value_caching import (
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
)
from lmscope.sae import SAE, HookedSAETransformer
from lmscope.version import __version__ as __version__

# TransformerLens module paths (docs/migration.md). Importing a module named like its class
# (lmscope.FactoredMatrix) binds the module here, so the name is set back to the class.
for _path in _compat.ALIAS_MODULES:
    _module = _importlib.import_module(f"lmscope.{_path}")
    if _path[0].isupper():
        globals()[_path] = getattr(_module, _path)
_compat.alias_submodules(
    _sys.modules["lmscope.cache"],
    ["key_value_cache", "key_value_cache_entry"],
    past_key_value_caching,
)
_compat.alias_submodules(config, ["hooked_transformer_config"])
config.__getattr__ = _compat.module_getattr(config.__name__, "config")
__getattr__ = _compat.module_getattr(__name__, "")
_compat.install_finder()

__all__ = [
    "ActivationCache",
    "EncoderConfig",
    "FactoredMatrix",
    "HookPoint",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "HookedRootModule",
    "HookedSAETransformer",
    "HookedTransformer",
    "HookedTransformerConfig",
    "SAE",
    "SVDInterpreter",
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
    "evals",
    "harvest",
    "head_detector",
    "hook_points",
    "list_models",
    "loading_from_pretrained",
    "memory",
    "patching",
    "sae",
    "serve",
    "supported_models",
    "train",
    "utilities",
    "utils",
]
