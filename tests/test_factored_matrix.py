"""FactoredMatrix against dense linear algebra (property-based), and the model's QK/OV circuits."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope import FactoredMatrix
from lmscope.factored_matrix import composition_scores
from tests._unchecked import unchecked

_spec = importlib.util.spec_from_file_location(
    "tiny_analysis_models", Path(__file__).parent / "analysis" / "tiny_analysis_models.py"
)
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
make_model, one_thread = _helpers.make_model, _helpers.one_thread


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


dims = st.integers(min_value=1, max_value=7)
leads = st.lists(st.integers(min_value=1, max_value=3), min_size=0, max_size=2)


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-9) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-7)


@st.composite
def factored(draw: st.DrawFn) -> tuple[FactoredMatrix, torch.Tensor]:
    """A random FactoredMatrix (float64, so dense comparisons are tight) and its dense product."""
    lead = tuple(draw(leads))
    ldim, mdim, rdim = draw(dims), draw(dims), draw(dims)
    seed = draw(st.integers(0, 10_000))
    # broadcast: sometimes A or B has size-1 (or missing) leading dims
    a_lead = tuple(1 if draw(st.booleans()) else d for d in lead)
    A, B = rand(*a_lead, ldim, mdim, seed=seed), rand(*lead, mdim, rdim, seed=seed + 1)
    return FactoredMatrix(A, B), A @ B


@settings(max_examples=60, deadline=None)
@given(factored())
def test_products_match_dense(fm_dense: tuple[FactoredMatrix, torch.Tensor]) -> None:
    M, dense = fm_dense
    assert M.shape == dense.shape and M.ndim == dense.ndim
    close(M.AB, dense)
    x = rand(M.rdim, 3, seed=1)
    close((M @ x).AB, dense @ x)
    close(M @ x[:, 0], dense @ x[:, 0])
    y = rand(2, M.ldim, seed=2)
    close((y @ M).AB, y @ dense)
    close(y[0] @ M, y[0] @ dense)
    other = FactoredMatrix(rand(M.rdim, 2, seed=3), rand(2, 4, seed=4))
    close((M @ other).AB, dense @ other.AB)
    close((M * 2.5).AB, 2.5 * dense)
    close((torch.tensor(-2.0, dtype=torch.float64) * M).AB, -2.0 * dense)
    close(M.T.AB, dense.transpose(-2, -1))
    close((-M).AB, -dense)


@settings(max_examples=60, deadline=None)
@given(factored())
def test_svd_norm_and_collapses_match_dense(fm_dense: tuple[FactoredMatrix, torch.Tensor]) -> None:
    M, dense = fm_dense
    U, S, Vh = M.svd()
    k = min(M.ldim, M.mdim, M.rdim)
    assert U.shape[-1] == S.shape[-1] == Vh.shape[-1] == k
    close(U @ torch.diag_embed(S) @ Vh.transpose(-2, -1), dense)  # TransformerLens's convention
    close(S, torch.linalg.svdvals(dense)[..., :k])
    eye = torch.eye(k, dtype=torch.float64)
    # singular vectors of (numerically) non-zero singular values are orthonormal
    live = S > 1e-8 * S.amax(-1, keepdim=True).clamp(min=1e-30)
    gram_u = (U.transpose(-2, -1) @ U) * live[..., None, :] * live[..., :, None]
    close(gram_u, eye * live[..., None, :], 1e-8)
    close(M.norm(), torch.linalg.matrix_norm(dense), 1e-8)
    # collapsing an orthogonal factor keeps norms (and norms of products)
    close(torch.linalg.matrix_norm(M.collapse_l()), M.norm(), 1e-8)
    close(torch.linalg.matrix_norm(M.collapse_r()), M.norm(), 1e-8)
    close(M.U @ M.collapse_l(), dense)
    close(M.collapse_r() @ M.V.transpose(-2, -1), dense)
    even = M.make_even()
    close(even.AB, dense)
    close(even.A.transpose(-2, -1) @ even.A, torch.diag_embed(S), 1e-8)
    assert M.U is M.svd()[0]  # cached


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.integers(0, 10_000))
def test_eigenvalues_match_dense(d: int, m: int, seed: int) -> None:
    A, B = rand(d, m, seed=seed), rand(m, d, seed=seed + 1)
    M = FactoredMatrix(A, B)
    got = M.eigenvalues
    assert got.shape == (m,)
    want = torch.linalg.eigvals(A @ B)

    def top(values: torch.Tensor) -> torch.Tensor:
        order = values.abs().argsort(descending=True)
        return values[order][: min(d, m)]

    # the non-zero eigenvalues agree (the extra ones are zero): match each to its nearest
    remaining = list(top(got))
    for w in top(want):
        nearest = min(range(len(remaining)), key=lambda i: abs(remaining[i] - w))
        assert abs(remaining.pop(nearest) - w) < 1e-7 * max(1.0, abs(w))
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(rand(3, 2, seed=0), rand(2, 4, seed=0)).eigenvalues


def test_indexing_and_unsqueeze() -> None:
    A, B = rand(2, 3, 5, 4, seed=0), rand(2, 3, 4, 6, seed=1)
    M, dense = FactoredMatrix(A, B), A @ B
    close(M[1].AB, dense[1])
    close(M[1, 2].AB, dense[1, 2])
    close(M[:, 1:].AB, dense[:, 1:])
    close(M[1, 2, 1:3].AB, dense[1, 2, 1:3])
    close(M[1, 2, 3].AB, dense[1, 2, 3:4])  # an int in a matrix dim keeps it (TransformerLens)
    close(M[1, 2, -1, [0, 5]].AB, dense[1, 2, -1:][:, [0, 5]])
    close(M[1, 2, :, 4].AB, dense[1, 2, :, 4:5])
    with pytest.raises(IndexError):
        M[0, 0, 0, 0, 0]
    assert M.unsqueeze(0).shape == (1, 2, 3, 5, 6)
    assert M.unsqueeze(2).shape == (2, 3, 1, 5, 6)
    assert M.unsqueeze(-3).shape == (2, 3, 1, 5, 6)
    with pytest.raises(AssertionError):
        M.unsqueeze(3)
    assert len(M) == 2 and "Hidden Dim(4)" in repr(M)
    close(M.get_corner(2), dense[:2, :2, :2, :2])


def test_construction_errors() -> None:
    with unchecked(), pytest.raises(ValueError, match="inner"):
        FactoredMatrix(rand(3, 2, seed=0), rand(3, 2, seed=0))
    with unchecked(), pytest.raises(ValueError, match="broadcast"):
        FactoredMatrix(rand(2, 3, 2, seed=0), rand(3, 2, 3, seed=0))
    with unchecked(), pytest.raises(ValueError, match="scalar"):
        FactoredMatrix(rand(3, 2, seed=0), rand(2, 3, seed=0)) * torch.ones(2)


def test_huge_matrix_is_never_formed() -> None:
    # 200_000 x 200_000 in float64 is 320 GB: any operation that formed it would fail.
    n = 200_000
    A, B = rand(n, 3, seed=0), rand(3, n, seed=1)
    M = FactoredMatrix(A, B)
    v = rand(n, seed=2)
    close(M @ v, A @ (B @ v))
    gram = (A.T @ A) * (B @ B.T)  # |AB|_F^2 = tr(A^T A B B^T)
    close(M.norm(), gram.sum().sqrt())
    assert M.S.shape == (3,) and M.U.shape == (n, 3) and M.eigenvalues.shape == (3,)
    assert M.collapse_l().shape == (3, n) and M.make_even().mdim == 3
    assert (M @ M).mdim == 3 and (M.T @ rand(n, 2, seed=3)).shape == (n, 2)
    assert M[5:10].shape == (5, n) and M.get_corner(3).shape == (3, 3)
    assert composition_scores(M, M.T).shape == ()


# -- the model's circuits ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["ln", "rms_gqa"])
def test_model_qk_ov_are_factored_and_expand_kv_heads(variant: str) -> None:
    model = make_model(variant)
    cfg = model.cfg
    QK, OV = model.QK, model.OV
    assert isinstance(QK, FactoredMatrix) and isinstance(OV, FactoredMatrix)
    assert QK.shape == OV.shape == (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_model)
    assert QK.mdim == OV.mdim == cfg.d_head
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            kv = head // cfg.n_groups
            qk = model.W_Q[layer, head] @ model.W_K[layer, kv].T
            ov = model.W_V[layer, kv] @ model.W_O[layer, head]
            torch.testing.assert_close(QK[layer, head].AB, qk, atol=1e-6, rtol=0)
            torch.testing.assert_close(OV[layer, head].AB, ov, atol=1e-6, rtol=0)


def _dense_score(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(left @ right) / (
        torch.linalg.matrix_norm(left) * torch.linalg.matrix_norm(right)
    )


@pytest.mark.parametrize("variant", ["ln", "rms_gqa"])
def test_all_composition_scores_match_dense(variant: str) -> None:
    model = make_model(variant)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    QK, OV = model.QK.AB.detach(), model.OV.AB.detach()
    rights = {"Q": QK, "K": QK.transpose(-2, -1), "V": OV}
    for mode, right in rights.items():
        scores = model.all_composition_scores(mode)
        assert scores.shape == (n_layers, n_heads, n_layers, n_heads)
        for l1 in range(n_layers):
            for l2 in range(n_layers):
                for h1, h2 in [(0, 3), (2, 1)]:
                    want = _dense_score(OV[l1, h1], right[l2, h2]) if l1 < l2 else torch.tensor(0.0)
                    torch.testing.assert_close(scores[l1, h1, l2, h2], want, atol=1e-5, rtol=1e-4)
    with unchecked(), pytest.raises(ValueError, match="mode"):
        model.all_composition_scores("X")  # type: ignore[arg-type]


def test_composition_scores_accepts_dense_and_broadcasts() -> None:
    left, right = rand(3, 5, 5, seed=0).float(), rand(2, 5, 5, seed=1).float()
    scores = composition_scores(left, right)
    assert scores.shape == (3, 2)
    torch.testing.assert_close(scores[2, 1], _dense_score(left[2], right[1]), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="match"):
        composition_scores(rand(4, 3, seed=0), rand(4, 4, seed=0))


def _previous_all_composition_scores(model, mode: str) -> torch.Tensor:
    """all_composition_scores as it was before it streamed (it copied both collapsed factors for
    every head pair): the reference that the streaming version must reproduce."""
    left = model.OV
    right = {"Q": model.QK, "K": model.QK.T, "V": model.OV}[mode]
    n_l = left.ndim - 2
    for i in range(n_l):
        right = right.unsqueeze(i)
    for i in range(n_l):
        left = left.unsqueeze(n_l + i)
    lead = torch.broadcast_shapes(left.shape[:-2], right.shape[:-2])
    new_left, new_right = left.collapse_l(), right.collapse_r()
    l_norms, r_norms = new_left.norm(dim=(-2, -1)), new_right.norm(dim=(-2, -1))
    pairs_l = new_left.broadcast_to(*lead, *new_left.shape[-2:])
    pairs_r = new_right.broadcast_to(*lead, *new_right.shape[-2:])
    scores = (pairs_l @ pairs_r).norm(dim=(-2, -1)) / l_norms / r_norms
    earlier = torch.arange(model.cfg.n_layers)
    mask = earlier[:, None, None, None] < earlier[None, None, :, None]
    return torch.where(mask, scores, torch.zeros_like(scores))


@pytest.mark.parametrize("variant", ["ln", "rms_gqa", "parallel"])
def test_all_composition_scores_equal_the_previous_implementation(variant: str) -> None:
    model = make_model(variant)
    dense_ov = model.OV.AB.detach().double()
    dense_qk = model.QK.AB.detach().double()
    dense = {"Q": dense_qk, "K": dense_qk.transpose(-2, -1), "V": dense_ov}
    n, h = model.cfg.n_layers, model.cfg.n_heads
    for mode in "QKV":
        scores = model.all_composition_scores(mode)
        with torch.no_grad():
            previous = _previous_all_composition_scores(model, mode)
        # float32 rounding only (measured: at most 4e-7 relative on these models)
        torch.testing.assert_close(scores, previous, rtol=2e-6, atol=1e-7)
        products = dense_ov[:, :, None, None] @ dense[mode][None, None]
        want = torch.linalg.matrix_norm(products) / (
            torch.linalg.matrix_norm(dense_ov)[:, :, None, None]
            * torch.linalg.matrix_norm(dense[mode])[None, None]
        )
        want = want * (torch.arange(n)[:, None, None, None] < torch.arange(n)[:, None]).double()
        assert scores.shape == (n, h, n, h) and bool((scores[1:, :, 0] == 0).all())
        torch.testing.assert_close(scores.double(), want, rtol=1e-5, atol=1e-7)


def test_composition_scores_stream_in_chunks_and_pair_broadcast_dims() -> None:
    left = FactoredMatrix(rand(3, 1, 6, 2, seed=0), rand(1, 4, 2, 6, seed=1))  # [3, 4, 6, 6]
    right = FactoredMatrix(rand(4, 6, 3, seed=2), rand(4, 3, 6, seed=3))  # [4, 6, 6]
    dense_l, dense_r = left.AB, right.AB
    outer = composition_scores(left, right)  # [3, 4] x [4]
    paired = composition_scores(left, right, broadcast_dims=False)  # [3, 4]: pairs over [4]
    assert outer.shape == (3, 4, 4) and paired.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            close(paired[i, j], _dense_score(dense_l[i, j], dense_r[j]))
            for k in range(4):
                close(outer[i, j, k], _dense_score(dense_l[i, j], dense_r[k]))
    from lmscope.factored_matrix import product_norms

    small = product_norms(left.collapse_l(), right.collapse_r(), max_elements=1)  # 12 chunks
    close(small, torch.linalg.matrix_norm(left.collapse_l()[:, :, None] @ right.collapse_r()))
    with unchecked(), pytest.raises(ValueError, match="last dim"):
        product_norms(rand(2, 3, seed=0), rand(2, 3, seed=0))


def test_factored_matrix_module_imports_no_lmscope_module() -> None:
    """`composition_scores` and `get_corner` live here; `utils` re-exports them under the
    TransformerLens names, so utils depends on factored_matrix and never the other way round."""
    import ast

    import lmscope.factored_matrix as fm
    from lmscope import utils

    tree = ast.parse(Path(fm.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not {m for m in imported if m and m.startswith("lmscope")}
    assert utils.composition_scores is fm.composition_scores
    assert utils.get_corner is fm.get_corner is utils.get_matrix_corner
