"""TransformerLens's `transformer_lens.utilities` path (and its submodules, `utilities.tensors`,
`utilities.lm_utils`, ...): the same names as `lmscope.utils`.

Example:
    >>> from lmscope.utilities import get_act_name, to_numpy
    >>> from lmscope.utilities.initialization_utils import init_kaiming_uniform_
"""

import sys

from lmscope.compat import alias_submodules, module_getattr
from lmscope.utils import *  # noqa: F403
from lmscope.utils import __all__ as _names

__all__ = list(_names)
__getattr__ = module_getattr(__name__, "utilities")
alias_submodules(
    sys.modules[__name__],
    [
        "activation_functions",
        "attribute_utils",
        "components_utils",
        "defaults_utils",
        "devices",
        "exploratory_utils",
        "gpu_utils",
        "hf_utils",
        "initialization_utils",
        "library_utils",
        "lm_utils",
        "logits_utils",
        "matrix",
        "parameter_swap",
        "slice",
        "tensors",
        "tokenize_utils",
    ],
)
