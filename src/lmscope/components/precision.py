"""Where half-precision models compute in float32, as transformers does: norms, softmax, rotary
tables and routers. float32 and float64 tensors pass through untouched (no copy), so full-precision
models pay nothing."""

from __future__ import annotations

import torch
from torch import Tensor

HALF_DTYPES = (torch.float16, torch.bfloat16)


def upcast(x: Tensor) -> Tensor:
    """`x` in float32 if it is float16 or bfloat16; otherwise `x` itself."""
    return x.float() if x.dtype in HALF_DTYPES else x
