"""Analysis tools on top of hooks and caches, with TransformerLens's names.

- `patching`: activation patching (`generic_activation_patch`, `get_act_patch_*`);
- `attribution`: attribution patching, the gradient estimate of the same grids (`get_attr_patch_*`);
- `head_detector`: `detect_head` for previous-token, duplicate-token, induction or custom patterns;
- `svd_interpreter`: `SVDInterpreter`, weight singular vectors read through the unembedding;
- `evals`: `sanity_check`, `induction_loss`, `IOIDataset`, `ioi_eval`, `evaluate_on_dataset`.

Example:
    >>> from lmscope.analysis import patching
    >>> grid = patching.get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric)
"""

from lmscope.analysis import attribution, evals, head_detector, patching, svd_interpreter
from lmscope.analysis.head_detector import detect_head
from lmscope.analysis.svd_interpreter import SVDInterpreter

__all__ = [
    "SVDInterpreter",
    "attribution",
    "detect_head",
    "evals",
    "head_detector",
    "patching",
    "svd_interpreter",
]
