"""TransformerLens's `transformer_lens.ActivationCache` path (module and class).

Example:
    >>> from lmscope.ActivationCache import ActivationCache
"""

from lmscope.cache import ActivationCache

__all__ = ["ActivationCache"]
