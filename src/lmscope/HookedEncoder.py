"""TransformerLens's `transformer_lens.HookedEncoder` path (module and class).

Example:
    >>> from lmscope.HookedEncoder import HookedEncoder
"""

from lmscope.compat import module_getattr
from lmscope.encoders.encoder import HookedEncoder

__all__ = ["HookedEncoder"]
__getattr__ = module_getattr(__name__, "HookedEncoder")
