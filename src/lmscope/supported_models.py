"""TransformerLens's `transformer_lens.supported_models` path, read from lmscope's registry.

`OFFICIAL_MODEL_NAMES`: hub ids; `MODEL_ALIASES`: hub id -> its short names (TransformerLens's
shape, the reverse of `lmscope.loading.registry.MODEL_ALIASES`); `DEFAULT_MODEL_ALIASES`: each
model's main alias.

Example:
    >>> from lmscope.supported_models import OFFICIAL_MODEL_NAMES
    >>> "gpt2" in OFFICIAL_MODEL_NAMES
    True
"""

from lmscope.loading.registry import list_models

OFFICIAL_MODEL_NAMES = [m.hub_id for m in list_models()]
MODEL_ALIASES = {m.hub_id: [m.alias, *m.aliases] for m in list_models()}
DEFAULT_MODEL_ALIASES = [m.alias for m in list_models()]

__all__ = ["DEFAULT_MODEL_ALIASES", "MODEL_ALIASES", "OFFICIAL_MODEL_NAMES"]
