"""TransformerLens's `transformer_lens.loading_from_pretrained` path (also `lmscope.loading`'s
TransformerLens helpers): model names through lmscope's registry.

Example:
    >>> get_official_model_name("pythia-70m")
    'EleutherAI/pythia-70m'
"""

from lmscope.compat import module_getattr
from lmscope.loading.registry import MODEL_ALIASES, get_model_info


def make_model_alias_map() -> dict[str, str]:
    """Every short name (lower case) -> its hub id.

    Example:
        >>> make_model_alias_map()["gpt2-small"]
        'gpt2'
    """
    return dict(MODEL_ALIASES)


def get_official_model_name(model_name: str) -> str:
    """The hub id behind an alias or hub id (case-insensitive); ValueError if unknown.

    Example:
        >>> get_official_model_name("gpt2-small")
        'gpt2'
    """
    try:
        return get_model_info(model_name).hub_id
    except KeyError as err:
        raise ValueError(err.args[0]) from None


__all__ = ["get_official_model_name", "make_model_alias_map"]
__getattr__ = module_getattr(__name__, "loading_from_pretrained")
