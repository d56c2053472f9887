"""`linear`: F.linear that leaves out a bias that is all zeros.

Bias-free checkpoints (Llama, Mistral, Qwen's o_proj, ...) still get TransformerLens's zero biases
(`b_Q`, `b_O`, `b_in`, `b_U`, ...), so every bias can be hooked, edited and folded into. Adding a
zero bias costs a full copy of it into every output (addmm): ~6% of a SmolLM2 forward on CPU.
Whether a bias is zero is checked once and again only after it changes (its memory or its
in-place version counter), and never skipped when autograd needs its gradient (nor in a graph
traced by torch.compile, where the bias add is fused anyway).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`x @ weight.T + bias`, without the bias when it is all zeros and needs no gradient.

    Example:
        >>> linear(x, attn.q_weight, attn.q_bias)  # == F.linear(x, attn.q_weight, attn.q_bias)
    """
    if torch.compiler.is_compiling():  # traced: the check reads values; Inductor fuses the add
        return F.linear(x, weight, bias)
    if bias is not None and not (bias.requires_grad and torch.is_grad_enabled()):
        key = (bias.data_ptr(), bias._version, bias.dtype, bias.device)
        memo = getattr(bias, "_lmscope_zero", None)
        if memo is None or memo[0] != key:
            memo = (key, not bool(bias.any()))
            bias._lmscope_zero = memo  # type: ignore[attr-defined]
        if memo[1]:
            bias = None
    return F.linear(x, weight, bias)
