"""Activation functions by the name configs give them (`cfg.act_fn`): the MLPs, the gated
linear-attention norm, BERT's head and `utils.gelu_new` / `gelu_fast` all read this one table.

Example:
    >>> ACTIVATIONS["relu2"](torch.tensor([-1.0, 2.0]))
    tensor([0., 4.])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _gelu_fast(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_new(x: Tensor) -> Tensor:
    return (
        0.5 * x * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (x + 0.044715 * torch.pow(x, 3.0))))
    )


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),  # squared ReLU (Nemotron, Persimmon, Arcee)
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # GPT-OSS's gate (swiglu_alpha 1.702)
    "silu": F.silu,
    "solu_ln": lambda x: x * torch.softmax(x, dim=-1),
}
