"""FactoredMatrix as TransformerLens 3.9 defines it: which inner dimension a product keeps,
broadcasting, scalars, the exception types it raises, `V`/`Vh` and indexing with `...`/None."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from lmscope import FactoredMatrix
from lmscope.factored_matrix import (
    FactoredMatrixBroadcastError,
    FactoredMatrixIndexError,
    FactoredMatrixShapeError,
)
from tests._unchecked import unchecked


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-7)


SIZES = (1, 2, 4)


@pytest.mark.parametrize(("ldim", "mdim", "rdim", "n"), list(itertools.product(SIZES, repeat=4)))
def test_products_with_tensors_keep_the_smaller_inner_dimension(ldim, mdim, rdim, n) -> None:
    A, B = rand(ldim, mdim, seed=1), rand(mdim, rdim, seed=2)
    M, dense = FactoredMatrix(A, B), A @ B
    X, Y = rand(rdim, n, seed=3), rand(n, ldim, seed=4)
    right, left = M @ X, Y @ M
    close(right.AB, dense @ X)
    close(left.AB, Y @ dense)
    assert (right.ldim, right.mdim, right.rdim) == (ldim, min(mdim, rdim), n)
    assert (left.ldim, left.mdim, left.rdim) == (n, min(mdim, ldim), rdim)
    # ties go to the dense side, as in TransformerLens: (AB) @ X and Y @ (AB)
    if rdim <= mdim:
        assert torch.equal(right.A, dense) and torch.equal(right.B, X)
    else:
        assert torch.equal(right.A, A)
    if ldim <= mdim:
        assert torch.equal(left.A, Y) and torch.equal(left.B, dense)
    else:
        assert torch.equal(left.B, B)


@pytest.mark.parametrize(
    ("ldim", "mdim", "rdim", "m2", "n"), list(itertools.product(SIZES, repeat=5))
)
def test_product_of_factored_matrices_keeps_the_smallest_inner_dimension(
    ldim, mdim, rdim, m2, n
) -> None:
    M = FactoredMatrix(rand(ldim, mdim, seed=1), rand(mdim, rdim, seed=2))
    N = FactoredMatrix(rand(rdim, m2, seed=3), rand(m2, n, seed=4))
    product = M @ N
    close(product.AB, M.AB @ N.AB)
    assert (product.ldim, product.rdim) == (ldim, n)
    assert product.mdim == min(mdim, rdim, m2)


def test_leading_dimensions_broadcast_in_every_product() -> None:
    M = FactoredMatrix(rand(2, 1, 5, 3, seed=1), rand(1, 4, 3, 6, seed=2))
    assert M.shape == (2, 4, 5, 6) and M.A.shape == (2, 4, 5, 3) and M.has_leading_dims
    dense = M.AB
    X, Y = rand(7, 1, 1, 6, 2, seed=3), rand(4, 2, 5, seed=4)
    close((M @ X).AB, dense @ X)
    assert (M @ X).shape == (7, 2, 4, 5, 2)
    close((Y @ M).AB, Y @ dense)
    N = FactoredMatrix(rand(4, 6, 2, seed=5), rand(4, 2, 3, seed=6))
    close((M @ N).AB, dense @ N.AB)
    v, w = rand(6, seed=7), rand(5, seed=8)
    close(M @ v, dense @ v)
    close(w @ M, w @ dense)
    assert (w @ M).shape == (2, 4, 6)


@pytest.mark.parametrize(
    "scalar",
    [3, -0.5, np.float32(2.0), torch.tensor(2.0), torch.tensor([2.0]), torch.tensor([[2.0]])],
)
def test_scalar_multiplication_from_either_side(scalar) -> None:
    M = FactoredMatrix(rand(3, 5, 2, seed=1), rand(3, 2, 4, seed=2))
    value = float(scalar)
    close((M * scalar).AB, M.AB * value)
    close((scalar * M).AB, M.AB * value)
    close((M / scalar).AB, M.AB / value)


def test_dimension_mismatches_raise_transformer_lens_types() -> None:
    M = FactoredMatrix(rand(3, 4, seed=1), rand(4, 6, seed=2))
    cases = [
        (lambda: FactoredMatrix(rand(3, 4), rand(5, 6)), FactoredMatrixShapeError, AssertionError),
        (
            lambda: FactoredMatrix(rand(9, 5, 3), rand(2, 4, 3, 7)),
            FactoredMatrixBroadcastError,
            RuntimeError,
        ),
        (lambda: M @ rand(5, 2), FactoredMatrixShapeError, AssertionError),
        (lambda: rand(2, 4) @ M, FactoredMatrixShapeError, AssertionError),
        (
            lambda: M @ FactoredMatrix(rand(5, 6), rand(6, 7)),
            FactoredMatrixShapeError,
            AssertionError,
        ),
        (lambda: M @ rand(5), FactoredMatrixBroadcastError, RuntimeError),
        (lambda: rand(4) @ M, FactoredMatrixShapeError, AssertionError),
        (lambda: M * torch.ones(2), FactoredMatrixShapeError, AssertionError),
        (lambda: M.BA, FactoredMatrixShapeError, AssertionError),
        (lambda: M.eigenvalues, FactoredMatrixShapeError, AssertionError),
        (lambda: M[0, 0, 0], FactoredMatrixIndexError, ValueError),
        (lambda: M.unsqueeze(1), FactoredMatrixShapeError, AssertionError),
        (lambda: M.unsqueeze(5), FactoredMatrixIndexError, IndexError),
    ]
    for make, ours, theirs in cases:
        with unchecked(), pytest.raises(ours) as err:
            make()
        assert isinstance(err.value, theirs) and isinstance(err.value, (ValueError, IndexError))
    lead = FactoredMatrix(rand(2, 3, 4), rand(2, 4, 6))
    with unchecked(), pytest.raises(RuntimeError, match="[Mm]ismatch"):
        lead @ FactoredMatrix(rand(5, 6, 7), rand(5, 7, 2))
    with unchecked(), pytest.raises(RuntimeError, match="[Mm]ismatch"):
        FactoredMatrix(rand(9, 5, 3), rand(2, 4, 3, 7))


def test_svd_V_and_deprecated_Vh() -> None:
    M = FactoredMatrix(rand(2, 6, 3, seed=1), rand(2, 3, 5, seed=2))
    U, S, V = M.svd()
    assert U.shape == (2, 6, 3) and S.shape == (2, 3) and V.shape == (2, 5, 3)
    close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), M.AB)
    assert M.V is V
    with pytest.warns(DeprecationWarning, match="use .V"):
        Vh = M.Vh
    assert Vh is V
    close(M.collapse_l(), S[..., :, None] * V.transpose(-2, -1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.make_even(), M.collapse_l()  # the class itself never goes through Vh


def test_repr_and_shape_as_transformer_lens() -> None:
    M = FactoredMatrix(rand(5, 3), rand(3, 7))
    assert repr(M) == "FactoredMatrix: Shape(torch.Size([5, 7])), Hidden Dim(3)"
    assert isinstance(M.shape, torch.Size) and M.ndim == 2 and not M.has_leading_dims


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_indexing_with_ellipsis_and_none_matches_dense(lead) -> None:
    M = FactoredMatrix(rand(*lead, 5, 2, seed=1), rand(*lead, 2, 7, seed=2))
    full = (slice(None),) * len(lead)
    for index, dense_index in [
        ((..., 1), full + (slice(None), slice(1, 2))),
        ((..., -1, slice(None)), full + (slice(-1, None), slice(None))),
        ((..., slice(1, 4), slice(2, 6)), full + (slice(1, 4), slice(2, 6))),
        ((None, ..., slice(1, 4), slice(None)), (None,) + full + (slice(1, 4), slice(None))),
        ((..., torch.tensor([1, 4])), full + (slice(None), torch.tensor([1, 4]))),
    ]:
        got = M[index]
        assert got.mdim == 2
        close(got.AB, M.AB[dense_index])
    with pytest.raises(IndexError):
        M[..., ...]
    with pytest.raises(ValueError, match="too long an index"):
        M[(...,) + (0,) * (M.ndim + 1)]


def test_boolean_masks_index_the_leading_dimensions() -> None:
    M = FactoredMatrix(rand(2, 3, 5, 2, seed=1), rand(2, 3, 2, 7, seed=2))
    mask = torch.tensor([[True, False, True], [False, True, False]])
    for form in (mask, mask.numpy(), mask.tolist()):
        close(M[form, ..., 1].AB, M.AB[mask][..., 1:2])
    close(M[None, torch.tensor([True, False])].AB, M.AB[None, torch.tensor([True, False])])
