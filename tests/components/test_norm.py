"""A hooked RMSNorm passes on F.rms_norm's bits, each hook alone or both, with weights or folded
(on the CPU its output comes from the statistics its hooks were shown)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmscope import HookedTransformerConfig
from lmscope.components.norm import RMSNorm, RMSNormPre
from lmscope.hooks import CacheHook

HOOKS = [("hook_scale",), ("hook_normalized",), ("hook_scale", "hook_normalized")]


@pytest.mark.parametrize("hooks", HOOKS, ids=["+".join(h) for h in HOOKS])
@pytest.mark.parametrize("kind", [RMSNorm, RMSNormPre])
@pytest.mark.parametrize("shape", [(1, 16, 64), (3, 7, 576), (2, 1, 17)])
def test_hooked_rmsnorm_gives_the_fused_bits(
    kind: type[RMSNorm], hooks: tuple[str, ...], shape: tuple[int, ...]
) -> None:
    cfg = HookedTransformerConfig(n_layers=1, d_model=shape[-1], n_ctx=8, d_head=4, d_vocab=8)
    norm = kind(cfg)
    if norm.w is not None:
        with torch.no_grad():
            norm.w.normal_(1.0, 0.3)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[-1])) * 3
    cache: dict[str, torch.Tensor] = {}
    for name in hooks:
        point = getattr(norm, name)
        point.name = name  # as a model's setup() names it
        point.add_hook(CacheHook(cache))
    for mode in (torch.inference_mode, torch.no_grad):
        with mode():
            want = F.rms_norm(x, (shape[-1],), norm.w, norm.eps)
            assert torch.equal(norm(x), want)
            rstd = x.pow(2).mean(-1, keepdim=True).add_(norm.eps).rsqrt_()
        assert sorted(cache) == sorted(hooks)
        if "hook_normalized" in cache:
            assert torch.equal(cache["hook_normalized"], x * rstd)
        if "hook_scale" in cache:
            assert torch.equal(cache["hook_scale"], rstd.reciprocal())
        cache.clear()
