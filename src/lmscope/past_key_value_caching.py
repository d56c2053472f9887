"""KV-cache classes under TransformerLens's names: 2.x `transformer_lens.past_key_value_caching`
and 3.x `transformer_lens.cache.key_value_cache(_entry)` (both paths resolve here).

Example:
    >>> from lmscope.past_key_value_caching import HookedTransformerKeyValueCache
    >>> cache = HookedTransformerKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
"""

from lmscope.kv_cache import KVCache, KVCacheEntry

HookedTransformerKeyValueCache = TransformerLensKeyValueCache = KVCache
HookedTransformerKeyValueCacheEntry = TransformerLensKeyValueCacheEntry = KVCacheEntry

__all__ = [
    "HookedTransformerKeyValueCache",
    "HookedTransformerKeyValueCacheEntry",
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
]
