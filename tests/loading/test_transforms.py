"""Each weight-map transform knows its inverse: the inverse writes a model parameter back into
checkpoint tensors that the transform turns into that parameter again, and the view transforms
(a slice, a transpose) give the checkpoint tensor back bit for bit."""

from __future__ import annotations

import pytest
import torch

from lmscope.loading.families.codegen import QKVPart
from lmscope.loading.transforms import (
    Chain,
    FusedGroups,
    FusedHeads,
    Offset,
    Part,
    PlusOne,
    RotaryUnpermute,
    Scale,
    Transform,
    Transpose,
)

CASES: dict[str, tuple[Transform, tuple[int, ...]]] = {
    "q rows of a fused qkv": (Part(0, 0, 8, 12), (12, 6)),
    "k columns of a Conv1D c_attn": (Chain((Part(1, 4, 8, 12), Transpose())), (6, 12)),
    "Conv1D": (Transpose(), (6, 8)),
    "v of a per-head fused qkv": (FusedHeads(2, 2), (2 * 3 * 4, 6)),
    "k bias of a per-head fused qkv": (FusedHeads(2, 1), (2 * 3 * 4,)),
    "codegen q": (QKVPart("V"), (3 * 8, 8)),
    # Qwen3-Next's in_proj_qkvz per key head [q 3 | k 3 | v 2*5 | z 2*5] and in_proj_ba [b 2 | a 2]
    "[q | k | v] of a per-key-head fused qkvz": (
        FusedGroups(2, (3, 3, 10, 10), (0, 1, 2)),
        (52, 6),
    ),
    "z of a per-key-head fused qkvz": (FusedGroups(2, (3, 3, 10, 10), (3,)), (52, 6)),
    "a of a per-key-head fused ba": (FusedGroups(2, (2, 2), (1,)), (8, 6)),
    "llama.cpp q rows": (RotaryUnpermute(2), (2 * 8, 6)),
    "llama.cpp k bias": (RotaryUnpermute(2), (2 * 8,)),
    "Nemotron norm": (PlusOne(), (6,)),
    "GGUF Gemma norm": (Offset(-1.0), (6,)),
    "Gemma embedding": (Scale(8.0**0.5), (10, 6)),
}
EXACT = {"q rows of a fused qkv", "k columns of a Conv1D c_attn", "Conv1D", "llama.cpp q rows"}


@pytest.mark.parametrize("case", list(CASES))
def test_the_inverse_writes_back_what_the_transform_reads(case: str) -> None:
    transform, shape = CASES[case]
    source = torch.randn(shape)
    value = transform(source)
    (back_shape,) = transform.source_shapes(tuple(value.shape))
    assert back_shape == shape
    back = torch.full(back_shape, float("nan"))
    transform.inverse(value, back)
    read = ~torch.isnan(back)
    assert read.any()
    if case in EXACT or isinstance(transform, (FusedHeads, FusedGroups, QKVPart, RotaryUnpermute)):
        assert torch.equal(back[read], source[read])
        assert torch.equal(transform(back), value)
    else:  # float32 arithmetic (w + 1 - 1, w * s / s) rounds
        torch.testing.assert_close(back[read], source[read])
    if not isinstance(transform, (Part, Chain, FusedHeads, FusedGroups, QKVPart)):  # a fused part
        assert read.all()  # the transform reads the whole checkpoint tensor


def test_views_stay_views_of_the_checkpoint_tensor() -> None:
    """A slice or transpose of a checkpoint tensor shares its memory, so the loader adopts it."""
    fused = torch.randn(6, 12)
    for transform in (Part(0, 2, 4, 6), Chain((Part(1, 4, 8, 12), Transpose()))):
        part = transform(fused)
        assert part.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()


def test_rotary_unpermute_refuses_rows_that_do_not_split_over_the_heads() -> None:
    with pytest.raises(ValueError, match="cannot un-permute 10 rows over 3 heads"):
        RotaryUnpermute(3)(torch.zeros(10, 4))


def test_fused_groups_parts_together_rebuild_the_fused_tensor() -> None:
    """The parts a weight map reads from one fused tensor scatter back into all of it."""
    fused = torch.randn(2 * 26, 6)
    sizes = (3, 3, 10, 10)
    back = torch.full_like(fused, float("nan"))
    for parts in ((0, 1, 2), (3,)):
        transform = FusedGroups(2, sizes, parts)
        transform.inverse(transform(fused), back)
    assert torch.equal(back, fused)
    q_rows = torch.cat([fused[0:3], fused[26:29]])  # group 0's q, then group 1's
    assert torch.equal(FusedGroups(2, sizes, (0, 1, 2))(fused)[:6], q_rows)


def test_fused_groups_refuse_a_tensor_of_another_size() -> None:
    with pytest.raises(ValueError, match=r"50 rows, the model's layout needs 52 \(2 groups"):
        FusedGroups(2, (3, 3, 10, 10), (3,))(torch.zeros(50, 4))
