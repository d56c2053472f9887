"""TransformerLens's `transformer_lens.HookedEncoderDecoder` path (module and class).

Example:
    >>> from lmscope.HookedEncoderDecoder import HookedEncoderDecoder
"""

from lmscope.compat import module_getattr
from lmscope.encoders.encoder_decoder import HookedEncoderDecoder

__all__ = ["HookedEncoderDecoder"]
__getattr__ = module_getattr(__name__, "HookedEncoderDecoder")
