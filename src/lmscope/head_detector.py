"""TransformerLens's `transformer_lens.head_detector` path: re-exports `lmscope.analysis.head_detector`.

Example:
    >>> from lmscope import head_detector
"""

from lmscope.analysis.head_detector import *  # noqa: F403
from lmscope.compat import module_getattr

__getattr__ = module_getattr(__name__, "head_detector")
