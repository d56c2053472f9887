"""SVDInterpreter against dense SVDs of the same weight matrices (singular vectors up to sign)."""

from __future__ import annotations

import pytest
import torch
from tiny_analysis_models import make_model

from lmscope.analysis import SVDInterpreter
from tests._unchecked import unchecked


def _assert_same_up_to_sign(got: torch.Tensor, vh_rows: torch.Tensor, W_U: torch.Tensor) -> None:
    want = (vh_rows @ W_U).T  # [d_vocab, n]
    signs = torch.sign((got * want).sum(0))
    torch.testing.assert_close(got, want * signs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", ["ln", "rms_gqa"])
def test_ov_singular_vectors(variant: str) -> None:
    model = make_model(variant)
    svd = SVDInterpreter(model)
    for head in (0, 3):
        got = svd.get_singular_vectors("OV", layer_index=1, num_vectors=4, head_index=head)
        assert got.shape == (model.cfg.d_vocab, 4)
        dense = model.OV[1, head].AB.detach()
        Vh = torch.linalg.svd(dense).Vh[:4]
        _assert_same_up_to_sign(got, Vh, model.W_U.detach())


def test_mlp_singular_vectors_fold_an_unfolded_ln2_weight() -> None:
    model = make_model("rms_gqa", processed=False)
    svd = SVDInterpreter(model)
    W_U = model.W_U.detach()
    ln2 = model.blocks[2].ln2.w.detach()
    for kind, weight in [
        ("w_in", model.blocks[2].mlp.W_in),
        ("w_gate", model.blocks[2].mlp.W_gate),
    ]:
        got = svd.get_singular_vectors(kind, layer_index=2, num_vectors=3)
        Vh = torch.linalg.svd(weight.detach().T * ln2, full_matrices=False).Vh[:3]
        _assert_same_up_to_sign(got, Vh, W_U)
    got = svd.get_singular_vectors("w_out", layer_index=0, num_vectors=5)
    Vh = torch.linalg.svd(model.blocks[0].mlp.W_out.detach(), full_matrices=False).Vh[:5]
    _assert_same_up_to_sign(got, Vh, W_U)


def test_errors() -> None:
    svd = SVDInterpreter(make_model("ln"))
    with unchecked(), pytest.raises(ValueError, match="head_index"):
        svd.get_singular_vectors("OV", 0)
    with unchecked(), pytest.raises(ValueError, match="no head_index"):
        svd.get_singular_vectors("w_in", 0, head_index=1)
    with unchecked(), pytest.raises(ValueError, match="not gated"):
        svd.get_singular_vectors("w_gate", 0)
    with unchecked(), pytest.raises(ValueError, match="singular vectors exist"):
        svd.get_singular_vectors("OV", 0, num_vectors=20, head_index=0)
    with unchecked(), pytest.raises(ValueError, match="vector_type"):
        svd.get_singular_vectors("QK", 0, head_index=0)  # type: ignore[arg-type]
