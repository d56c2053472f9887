"""TransformerLens's `transformer_lens.SVDInterpreter` path (module and class).

Example:
    >>> from lmscope.SVDInterpreter import SVDInterpreter
"""

from lmscope.analysis.svd_interpreter import SVDInterpreter
from lmscope.compat import module_getattr

__all__ = ["SVDInterpreter"]
__getattr__ = module_getattr(__name__, "SVDInterpreter")
