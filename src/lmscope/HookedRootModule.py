"""TransformerLens's `transformer_lens.HookedRootModule` path (module and class).

Example:
    >>> from lmscope.HookedRootModule import HookedRootModule
"""

from lmscope.hooks import HookedRootModule

__all__ = ["HookedRootModule"]
