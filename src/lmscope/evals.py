"""TransformerLens's `transformer_lens.evals` path: re-exports `lmscope.analysis.evals`.

Example:
    >>> from lmscope import evals
"""

from lmscope.analysis.evals import *  # noqa: F403
from lmscope.compat import module_getattr

__getattr__ = module_getattr(__name__, "evals")
