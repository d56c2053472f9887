"""TransformerLens's `transformer_lens.FactoredMatrix` path (module and class).

Example:
    >>> from lmscope.FactoredMatrix import FactoredMatrix
"""

from lmscope.compat import module_getattr
from lmscope.factored_matrix import FactoredMatrix

__all__ = ["FactoredMatrix"]
__getattr__ = module_getattr(__name__, "FactoredMatrix")
