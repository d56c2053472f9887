"""Weight initialisation with TransformerLens's fan convention (its `init_*_` functions).

Weights here are stored [d_in, d_out] (and attention weights [n_heads, d_model, d_head]), the
transpose of torch's nn.Linear, so fans are read from that layout: a 2-D weight has fan_in =
shape[0] and fan_out = shape[1]; a 3-D head weight fan_in = shape[1], fan_out = shape[0] * shape[2].

Example:
    >>> w = init_kaiming_uniform_(torch.empty(512, 2048), nonlinearity="relu")
    >>> float(w.abs().max()) <= (2 ** 0.5) * (3 / 512) ** 0.5
    True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

from torch import Tensor, nn

NonlinearityType = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


def calc_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight in lmscope/TransformerLens layout.

    Example:
        >>> calc_fan_in_and_fan_out(torch.empty(12, 768, 64))   # [n_heads, d_model, d_head]
        (768, 768)
    """
    shape = tensor.shape
    if len(shape) == 0:
        raise ValueError("fan in and fan out cannot be computed for a scalar")
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(
        f"fan in and fan out cannot be computed for a {len(shape)}-D shape {tuple(shape)}"
    )


def _fan(param: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return fan_in if mode == "fan_in" else fan_out


def init_xavier_uniform_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `param` in place from U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)).

    Example:
        >>> init_xavier_uniform_(torch.empty(64, 64)).shape
        torch.Size([64, 64])
    """
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `param` in place from N(0, std²), std = gain * sqrt(2 / (fan_in + fan_out)).

    Example:
        >>> init_xavier_normal_(torch.empty(64, 64)).shape
        torch.Size([64, 64])
    """
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return nn.init.normal_(param, mean=0.0, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def init_kaiming_uniform_(
    param: Tensor,
    a: float = 0,
    nonlinearity: NonlinearityType = "relu",
    gain: float = 1.0,
    mode: str = "fan_in",
) -> Tensor:
    """Fill `param` in place from U(-b, b), b = gain * calculate_gain(nonlinearity, a) * sqrt(3 / fan).

    Example:
        >>> init_kaiming_uniform_(torch.empty(64, 256), mode="fan_out").shape
        torch.Size([64, 256])
    """
    fan = _fan(param, mode)
    bound = gain * nn.init.calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(
    param: Tensor,
    a: float = 0,
    nonlinearity: NonlinearityType = "relu",
    gain: float = 1.0,
    mode: str = "fan_in",
) -> Tensor:
    """Fill `param` in place from N(0, std²), std = gain * calculate_gain(nonlinearity, a) / sqrt(fan).

    Example:
        >>> init_kaiming_normal_(torch.empty(64, 256)).shape
        torch.Size([64, 256])
    """
    std = gain * nn.init.calculate_gain(nonlinearity, a) / math.sqrt(_fan(param, mode))
    return nn.init.normal_(param, mean=0.0, std=std)


def init_weights_(
    weights: Mapping[str, Tensor], init_mode: str = "gpt2", initializer_range: float = 0.02
) -> None:
    """Fill every matrix of `weights` (TransformerLens names and layouts, as
    `HookedTransformer.named_weights()` gives them: views that write into the model) in place the
    way TransformerLens's `init_mode` does; names without `W_` (biases, norm weights) are left.

    - "gpt2": N(0, initializer_range²) (`initializer_range` is the std);
    - "xavier_uniform" / "xavier_normal" / "kaiming_uniform" / "kaiming_normal" (relu gain,
      fan_in): the functions above with gain `initializer_range`;
    - "muP": N(0, s²) with s = 1 for names containing "embed" (W_E, W_pos, and also W_U, whose
      name "unembed" contains "embed": TransformerLens checks "embed" first), else 1/sqrt(fan_in).

    Fans are read from the TransformerLens layout (W_O [head, d_head, d_model]: fan_in = d_head),
    which is why the views, not the stored [out, in] parameters, are initialised.

    Example:
        >>> init_weights_(model.named_weights(), "xavier_uniform", 1.0)
    """
    for name, param in weights.items():
        if "W_" not in name:
            continue
        if init_mode == "gpt2":
            nn.init.normal_(param, std=initializer_range)
        elif init_mode == "xavier_uniform":
            init_xavier_uniform_(param, gain=initializer_range)
        elif init_mode == "xavier_normal":
            init_xavier_normal_(param, gain=initializer_range)
        elif init_mode == "kaiming_uniform":
            init_kaiming_uniform_(param, gain=initializer_range, nonlinearity="relu")
        elif init_mode == "kaiming_normal":
            init_kaiming_normal_(param, gain=initializer_range, nonlinearity="relu")
        elif init_mode == "muP":
            scale = 1.0 if "embed" in name else calc_fan_in_and_fan_out(param)[0] ** -0.5
            nn.init.normal_(param, std=scale)
        else:
            raise ValueError(
                f"init_mode {init_mode!r} is not one of gpt2, xavier_uniform, xavier_normal, "
                "kaiming_uniform, kaiming_normal, muP"
            )


__all__ = [
    "NonlinearityType",
    "calc_fan_in_and_fan_out",
    "init_kaiming_normal_",
    "init_kaiming_uniform_",
    "init_weights_",
    "init_xavier_normal_",
    "init_xavier_uniform_",
]
