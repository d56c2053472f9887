"""TransformerLens's `transformer_lens.patching` path: re-exports `lmscope.analysis.patching`.

Example:
    >>> from lmscope import patching
"""

from lmscope.analysis.patching import *  # noqa: F403
from lmscope.compat import module_getattr

__getattr__ = module_getattr(__name__, "patching")
