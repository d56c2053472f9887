"""TransformerLens's `transformer_lens.HookedTransformer` path (module and class).

Example:
    >>> from lmscope.HookedTransformer import HookedTransformer
"""

from lmscope.compat import module_getattr
from lmscope.config import DTYPES
from lmscope.model import HookedTransformer

DTYPE_FROM_STRING = {str(d).removeprefix("torch."): d for d in DTYPES} | {
    "fp32": DTYPES[0],
    "fp64": DTYPES[1],
    "fp16": DTYPES[2],
    "bf16": DTYPES[3],
}

__all__ = ["DTYPE_FROM_STRING", "HookedTransformer"]
__getattr__ = module_getattr(__name__, "HookedTransformer")
