"""TransformerLens 2.x's `transformer_lens.HookedTransformerConfig` path (module and class).

Example:
    >>> from lmscope.HookedTransformerConfig import HookedTransformerConfig
"""

from lmscope.config import HookedTransformerConfig

__all__ = ["HookedTransformerConfig"]
