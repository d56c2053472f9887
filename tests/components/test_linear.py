"""`linear` leaves out zero biases, and sees every later edit of them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.components.linear import linear


def test_zero_bias_is_skipped_until_it_changes() -> None:
    x, w = torch.randn(3, 5, 8), torch.randn(4, 8)
    bias = nn.Parameter(torch.zeros(4), requires_grad=False)
    torch.testing.assert_close(linear(x, w, bias), F.linear(x, w), atol=0, rtol=0)
    assert bias._lmscope_zero[1] is True  # type: ignore[attr-defined]
    with torch.no_grad():
        bias[2] = 1.5  # in place: the version counter moves
    torch.testing.assert_close(linear(x, w, bias), F.linear(x, w, bias), atol=0, rtol=0)
    bias.data = torch.full((4,), -2.0)  # new memory
    torch.testing.assert_close(linear(x, w, bias), F.linear(x, w) - 2.0, atol=0, rtol=0)


def test_zero_bias_still_gets_its_gradient() -> None:
    x, w = torch.randn(3, 8), torch.randn(4, 8)
    bias = nn.Parameter(torch.zeros(4))
    linear(x, w, bias).sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((4,), 3.0))


def test_model_sees_an_edited_zero_bias() -> None:
    cfg = HookedTransformerConfig(
        d_model=32, n_layers=1, n_ctx=8, d_vocab=50, n_heads=2, d_head=16, d_mlp=64,
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        gated_mlp=True, seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 50, (2, 8))
    with torch.inference_mode():
        before = model(tokens)
    with torch.no_grad():
        model.blocks[0].attn.b_O += 0.5
    with torch.inference_mode():
        after = model(tokens)
    assert (after - before).abs().max() > 1e-3
