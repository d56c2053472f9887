"""TransformerLens's `transformer_lens.hook_points` path: re-exports `lmscope.hooks`.

Example:
    >>> from lmscope.hook_points import HookedRootModule, HookPoint
"""

from lmscope.compat import module_getattr
from lmscope.hooks import HookedRootModule, HookPoint

__all__ = ["HookPoint", "HookedRootModule"]
__getattr__ = module_getattr(__name__, "hook_points")
