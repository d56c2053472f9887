"""lmscope: see, cache, edit and patch every activation of a real language model."""

from lmscope import memory, utils
from lmscope.cache import ActivationCache
from lmscope.config import HookedTransformerConfig
from lmscope.factored_matrix import FactoredMatrix
from lmscope.hooks import HookedRootModule, HookPoint
from lmscope.loading.registry import list_models
from lmscope.model import HookedTransformer

__all__ = [
    "ActivationCache",
    "FactoredMatrix",
    "HookPoint",
    "HookedRootModule",
    "HookedTransformer",
    "HookedTransformerConfig",
    "list_models",
    "utils",
]
__version__ = "0.1.0"

memory.tune_malloc()  # caching activations reuses freed memory (LMSCOPE_TUNE_MALLOC=0: off)
