"""FactoredMatrix: a matrix kept as the product `A @ B` of two thin factors.

A head's QK circuit `W_Q W_K^T` and OV circuit `W_V W_O` are d_model x d_model matrices of rank
d_head. Kept factored, products, norms, singular values and eigenvalues cost O(d_model d_head²)
instead of O(d_model³), and no d_model x d_model matrix is formed unless `AB` is asked for.

Leading dimensions broadcast like tensors: `model.OV` is one FactoredMatrix of shape
[n_layers, n_heads, d_model, d_model], and `model.OV[3, 2]` is L3H2's circuit.

Example:
    >>> ov = model.OV[0, 4]                      # FactoredMatrix [d_model, d_model], rank d_head
    >>> ov.S[:5], ov.norm()                      # top singular values, Frobenius norm
    >>> (model.W_E[:100] @ ov @ model.W_U).shape # stays factored until the end
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch
from jaxtyping import Complex, Float
from torch import Tensor

Scalar = int | float | numbers.Real | Tensor  # numbers.Real: numpy scalars too


class FactoredMatrixShapeError(ValueError, AssertionError):
    """Factor or operand dimensions that do not fit (an inner dimension, a non-square `BA`, a
    non-scalar `*`). TransformerLens asserts there, so this is both ValueError and AssertionError.
    """


class FactoredMatrixBroadcastError(ValueError, RuntimeError):
    """Leading dimensions that do not broadcast, or a vector of the wrong length on the right of
    `@`. TransformerLens lets torch raise RuntimeError there: this is both that and a ValueError.
    """


class FactoredMatrixIndexError(IndexError, ValueError):
    """An index too long for the FactoredMatrix, or factors of fewer than 2 dimensions.
    TransformerLens raises ValueError (too long) or IndexError (1-D factors): this is both."""


class FactoredMatrix:
    """The matrix `A @ B` (A: [..., ldim, mdim], B: [..., mdim, rdim]), never formed unless asked.

    Supports `@` with tensors, vectors and other FactoredMatrix on either side, scalar `*`, `.T`,
    indexing of the leading dimensions, `svd()` / `U` / `S` / `V`, `eigenvalues`, `norm()`,
    `collapse_l()` / `collapse_r()`, `make_even()`, `get_corner()` and `unsqueeze()`.

    Example:
        >>> M = FactoredMatrix(torch.randn(64, 8), torch.randn(8, 64))
        >>> M.shape, M.mdim, torch.allclose(M @ torch.ones(64), M.AB @ torch.ones(64), rtol=1e-4)
        (torch.Size([64, 64]), 8, True)
    """

    # numpy defers `np.float32(2) * M` to `M.__rmul__` instead of iterating M as a sequence
    __array_ufunc__ = None

    def __init__(
        self, A: Float[Tensor, "... ldim mdim"], B: Float[Tensor, "... mdim rdim"]
    ) -> None:
        if A.ndim < 2 or B.ndim < 2:
            raise FactoredMatrixIndexError(
                f"FactoredMatrix factors must be at least 2-D, got A {tuple(A.shape)}, B {tuple(B.shape)}"
            )
        if A.shape[-1] != B.shape[-2]:
            raise FactoredMatrixShapeError(
                f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)} "
                "(A's last dim must equal B's second-to-last)"
            )
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        try:
            lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as err:
            raise FactoredMatrixBroadcastError(
                f"shape mismatch: the leading dimensions of A {tuple(A.shape)} and B "
                f"{tuple(B.shape)} do not broadcast"
            ) from err
        self.shape = torch.Size((*lead, self.ldim, self.rdim))
        self.A = A.broadcast_to(*lead, self.ldim, self.mdim)
        self.B = B.broadcast_to(*lead, self.mdim, self.rdim)
        self.has_leading_dims = len(lead) > 0
        self._svd: tuple[Tensor, Tensor, Tensor] | None = None

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        """`self @ other`: a FactoredMatrix for a matrix or FactoredMatrix, a tensor for a vector.

        The product keeps the smallest inner dimension on offer, as TransformerLens does: against
        a matrix `X` [..., rdim, n] it is `A @ (B X)` (inner mdim) when mdim < rdim, else
        `(AB) @ X` (inner rdim); against a FactoredMatrix `C D` it is `(self @ C) @ D`, so the
        inner dimension is min(mdim, rdim, C.mdim). Leading dimensions broadcast.

        Example:
            >>> M = FactoredMatrix(torch.randn(6, 2), torch.randn(2, 6))
            >>> (M @ torch.randn(6, 5)).mdim, (M @ FactoredMatrix(torch.randn(6, 1), torch.randn(1, 4))).mdim
            (2, 1)
        """
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim < 2:
            if other.ndim == 0 or other.shape[-1] != self.rdim:
                raise FactoredMatrixBroadcastError(
                    f"cannot multiply a FactoredMatrix of shape {tuple(self.shape)} by a tensor of "
                    f"shape {tuple(other.shape)}: a vector needs {self.rdim} entries (use * for a "
                    "scalar)"
                )
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise FactoredMatrixShapeError(
                f"inner dimension mismatch: FactoredMatrix {tuple(self.shape)} @ tensor "
                f"{tuple(other.shape)} needs the tensor's second-to-last dim to be {self.rdim}"
            )
        _check_broadcast(self.shape[:-2], other.shape[:-2], "@")
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        """`other @ self` for a tensor `other` (a vector gives a vector).

        As on the right, the smaller inner dimension is kept: `(X A) @ B` (inner mdim) when
        mdim < ldim, else `X @ (AB)` (inner ldim).

        Example:
            >>> M = FactoredMatrix(torch.randn(6, 2), torch.randn(2, 6))
            >>> (torch.randn(3, 6) @ M).shape, (torch.randn(6) @ M).shape
            (torch.Size([3, 6]), torch.Size([6]))
        """
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 0 or other.shape[-1] != self.ldim:
            raise FactoredMatrixShapeError(
                f"inner dimension mismatch: tensor {tuple(other.shape)} @ FactoredMatrix "
                f"{tuple(self.shape)} needs the tensor's last dim to be {self.ldim}"
            )
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        _check_broadcast(other.shape[:-2], self.shape[:-2], "@")
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: Scalar) -> FactoredMatrix:
        """Scalar multiple (scales A): a number or a 1-element tensor, from either side.

        Example:
            >>> (FactoredMatrix(torch.ones(2, 1), torch.ones(1, 2)) * torch.tensor([3.0])).AB
            tensor([[3., 3.],
                    [3., 3.]])
        """
        if isinstance(scalar, Tensor):
            if scalar.numel() != 1:
                raise FactoredMatrixShapeError(
                    f"* takes a scalar, got a tensor of shape {tuple(scalar.shape)}; use @ for "
                    "products"
                )
        elif not isinstance(scalar, numbers.Number):
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: Scalar) -> FactoredMatrix:
        """`scalar * self`, the same as `self * scalar`."""
        return self * scalar

    def __neg__(self) -> FactoredMatrix:
        """`-self` (negates A)."""
        return self * -1

    def __truediv__(self, scalar: Scalar) -> FactoredMatrix:
        """`self / scalar` for a number or a 1-element tensor."""
        return self * (1.0 / scalar)

    @property
    def AB(self) -> Float[Tensor, "*leading ldim rdim"]:
        """The full matrix (this forms it: ldim x rdim per leading index).

        Example:
            >>> FactoredMatrix(torch.ones(3, 1), torch.ones(1, 2)).AB.shape
            torch.Size([3, 2])
        """
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "*leading mdim mdim"]:
        """`B @ A` (square matrices only): shares AB's non-zero eigenvalues.

        Example:
            >>> FactoredMatrix(torch.ones(3, 1), torch.ones(1, 3)).BA
            tensor([[3.]])
        """
        if self.ldim != self.rdim:
            raise FactoredMatrixShapeError(
                f"BA (and eigenvalues) need a square matrix, this one is {self.ldim} x {self.rdim}"
            )
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose, still factored: `B^T A^T`.

        Example:
            >>> model.QK.T                                      # keys-by-queries form
        """
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    @property
    def pair(
        self,
    ) -> tuple[Float[Tensor, "*leading ldim mdim"], Float[Tensor, "*leading mdim rdim"]]:
        """The factors `(A, B)`.

        Example:
            >>> A, B = model.OV[0, 0].pair                     # W_V and W_O of L0H0
        """
        return self.A, self.B

    @property
    def ndim(self) -> int:
        """Number of dimensions, leading ones included (`model.OV.ndim == 4`)."""
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index the leading dimensions (then optionally rows, then columns), without forming AB.

        As in TransformerLens, an int index into the row or column dimension keeps that dimension
        with length 1, so the result is always a FactoredMatrix. `...` stands for the dimensions
        not named (so `M[..., 3]` is column 3) and `None` adds a leading dimension.

        Example:
            >>> M = FactoredMatrix(torch.randn(4, 5, 2), torch.randn(4, 2, 7))
            >>> M[1].shape, M[..., 1:3, 0].shape, M[None, 0].shape
            (torch.Size([5, 7]), torch.Size([2, 1]), torch.Size([1, 5, 7]))
        """
        lead, rest = _split_index(idx if isinstance(idx, tuple) else (idx,), self.ndim)

        def keep(i: Any) -> Any:
            return slice(i, i + 1 if i != -1 else None) if isinstance(i, int) else i

        A, B = self.A[lead], self.B[lead]
        if rest:
            A = A[..., keep(rest[0]), :]
        if len(rest) == 2:
            B = B[..., keep(rest[1])]
        return FactoredMatrix(A, B)

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a leading dimension of size 1 at position `k` (k <= number of leading dims).

        A `k` past the tensor's dims is a FactoredMatrixIndexError; one that would land among the
        matrix's rows and columns is a FactoredMatrixShapeError (an AssertionError, as in
        TransformerLens, whose factors stop matching there).

        Example:
            >>> model.OV[0].unsqueeze(0).shape                 # [1, n_heads, d_model, d_model]
        """
        n_lead = self.ndim - 2
        if not -self.ndim - 1 <= k <= self.ndim:
            raise FactoredMatrixIndexError(
                f"unsqueeze({k}) is out of range for a {self.ndim}-D FactoredMatrix"
            )
        if k < 0:
            k += self.ndim + 1
        if k > n_lead:
            raise FactoredMatrixShapeError(
                f"unsqueeze({k}) would split the rows and columns of a {self.ndim}-D "
                f"FactoredMatrix; insert a leading dimension (k <= {n_lead})"
            )
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        """Move or cast both factors (arguments as `Tensor.to`).

        Example:
            >>> model.OV.to(torch.float64)
        """
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))

    def svd(
        self,
    ) -> tuple[
        Float[Tensor, "*leading ldim k"],
        Float[Tensor, "*leading k"],
        Float[Tensor, "*leading rdim k"],
    ]:
        """Thin SVD `(U, S, V)` with `U @ S.diag() @ V.T == AB` (TransformerLens's convention:
        `V` holds the right singular vectors as columns, the transpose of `torch.linalg.svd`'s Vh).

        k = min(ldim, mdim, rdim). Computed from QR factors of A and B^T and the SVD of a small
        k x k core, so it costs O((ldim + rdim) mdim²). Cached on the object.

        Example:
            >>> U, S, V = model.OV[2, 1].svd()
            >>> torch.allclose(U @ S.diag() @ V.T, model.OV[2, 1].AB, atol=1e-5)
            True
        """
        if self._svd is None:
            Qa, Ra = torch.linalg.qr(self.A)  # A = Qa Ra
            Qb, Rb = torch.linalg.qr(self.B.transpose(-2, -1))  # B = Rb^T Qb^T
            core = Ra @ Rb.transpose(-2, -1)
            Uc, S, Vch = torch.linalg.svd(core, full_matrices=False)
            U = Qa @ Uc
            V = Qb @ Vch.transpose(-2, -1)
            k = min(self.ldim, self.mdim, self.rdim)
            self._svd = (U[..., :k], S[..., :k], V[..., :k])
        return self._svd

    @property
    def U(self) -> Float[Tensor, "*leading ldim k"]:
        """Left singular vectors (columns).

        Example:
            >>> model.OV[2, 1].U.shape                         # [d_model, d_head]
        """
        return self.svd()[0]

    @property
    def S(self) -> Float[Tensor, "*leading k"]:
        """Singular values, descending.

        Example:
            >>> model.OV[2, 1].S[:3]
        """
        return self.svd()[1]

    @property
    def V(self) -> Float[Tensor, "*leading rdim k"]:
        """Right singular vectors as columns: `AB == U @ S.diag() @ V.transpose(-2, -1)`.

        Example:
            >>> model.OV[2, 1].V.shape                         # [d_model, d_head]
        """
        return self.svd()[2]

    @property
    def Vh(self) -> Float[Tensor, "*leading rdim k"]:
        """Deprecated alias of `V` (as in TransformerLens 3.9, it warns): the right singular
        vectors as columns, not their transpose.

        Example:
            >>> model.OV[2, 1].V                               # use V; Vh warns
        """
        warnings.warn(
            "FactoredMatrix.Vh returns V (the right singular vectors as columns), not its "
            "transpose; use .V (TransformerLens 3.9 deprecates .Vh the same way)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Complex[Tensor, "*leading mdim"]:
        """Eigenvalues of the (square) matrix: those of the small `BA`, which has the same non-zero
        eigenvalues as `AB` (if BA v = k v then AB (Av) = k Av).

        Example:
            >>> model.OV[0, 3].eigenvalues.real.sum()          # > 0 for a copying head
        """
        BA = self.BA
        if BA.dtype in (torch.float16, torch.bfloat16):
            BA = BA.float()
        return torch.linalg.eigvals(BA)

    def norm(self) -> Float[Tensor, "*leading"]:
        """Frobenius norm: sqrt of the sum of squared singular values.

        Example:
            >>> model.OV.norm().shape                          # [n_layers, n_heads]
        """
        return self.S.pow(2).sum(-1).sqrt()

    def collapse_l(self) -> Float[Tensor, "*leading k rdim"]:
        """`diag(S) V^T`: the matrix with its left orthogonal factor U removed (same norms, and
        same norms of products with anything on the right).

        Example:
            >>> model.OV[1, 0].collapse_l().shape              # [d_head, d_model]
        """
        return self.S[..., :, None] * self.V.transpose(-2, -1)

    def collapse_r(self) -> Float[Tensor, "*leading ldim k"]:
        """`U diag(S)`: the matrix with its right orthogonal factor removed.

        Example:
            >>> model.OV[1, 0].collapse_r().shape              # [d_model, d_head]
        """
        return self.U * self.S[..., None, :]

    def make_even(self) -> FactoredMatrix:
        """The same matrix as `(U sqrt(S)) (sqrt(S) V^T)`: both factors carry half the spectrum and
        have orthogonal columns / rows.

        Example:
            >>> even = model.QK[0, 2].make_even()             # same AB, balanced factors
        """
        root = self.S.sqrt()
        return FactoredMatrix(
            self.U * root[..., None, :], root[..., :, None] * self.V.transpose(-2, -1)
        )

    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left k x k block (of each leading index up to k), from k rows and columns only.

        Example:
            >>> model.OV[0, 0].get_corner(2)                   # AB[:2, :2] from 2 rows and columns
        """
        return get_corner(self.A[..., :k, :] @ self.B[..., :, :k], k)


def _index_axes(i: Any) -> int:
    """How many dimensions one index entry consumes (a boolean mask: its own ndim)."""
    if i is None:
        return 0
    if isinstance(i, (list, tuple)):
        try:
            i = torch.as_tensor(i)
        except (TypeError, ValueError):
            return 1
    dtype = getattr(i, "dtype", None)
    if dtype is not None and str(dtype) in ("torch.bool", "bool"):
        return i.ndim
    return 1


def _split_index(idx: tuple, ndim: int) -> tuple[tuple, tuple]:
    """Split an index into the part for the leading dims (with any `None`) and the (at most two)
    entries for rows and columns, expanding `...`; raise for an index that does not fit."""
    if sum(i is Ellipsis for i in idx) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(_index_axes(i) for i in idx if i is not Ellipsis)
    if used > ndim:
        raise FactoredMatrixIndexError(
            f"{idx} is too long an index for a FactoredMatrix of {ndim} dimensions"
        )
    at = next((n for n, i in enumerate(idx) if i is Ellipsis), None)
    if at is not None:
        idx = idx[:at] + (slice(None),) * (ndim - used) + idx[at + 1 :]
    n_lead, consumed, pos = ndim - 2, 0, 0
    while pos < len(idx) and (consumed < n_lead or idx[pos] is None):
        consumed += _index_axes(idx[pos])
        pos += 1
    lead, rest = idx[:pos], idx[pos:]
    if consumed > n_lead or any(_index_axes(i) != 1 for i in rest):
        raise IndexError(
            f"index {idx} mixes the leading dimensions with the matrix's rows and columns (a mask "
            "or None across them); index the leading dimensions, then rows, then columns"
        )
    return lead, rest


def _check_broadcast(left: torch.Size, right: torch.Size, op: str) -> None:
    """Raise FactoredMatrixBroadcastError unless two leading shapes broadcast."""
    try:
        torch.broadcast_shapes(left, right)
    except RuntimeError as err:
        raise FactoredMatrixBroadcastError(
            f"shape mismatch: leading dimensions {tuple(left)} and {tuple(right)} of {op} do not "
            "broadcast"
        ) from err


def product_norms(
    left: Float[Tensor, "*L m_l d"],
    right: Float[Tensor, "*R d m_r"],
    max_elements: int = 1 << 24,
) -> Float[Tensor, "*L *R"]:
    """Frobenius norm of `left[i] @ right[j]` for every pair of leading indices i, j.

    Streams over chunks of `left`: each chunk is one matrix product [c*m_l, d] @ [d, n_r*m_r]
    holding at most about `max_elements` products, so memory stays at one copy of `right` plus
    that chunk, never a copy of both factors per pair.

    Example:
        >>> product_norms(torch.ones(2, 1, 3), torch.ones(5, 3, 1)).shape
        torch.Size([2, 5])
    """
    if left.shape[-1] != right.shape[-2]:
        raise ValueError(
            f"left is {tuple(left.shape)} and right {tuple(right.shape)}: left's last dim must "
            "equal right's second-to-last"
        )
    m_l, d, m_r = left.shape[-2], left.shape[-1], right.shape[-1]
    l_lead, r_lead = left.shape[:-2], right.shape[:-2]
    n_l, n_r = math.prod(l_lead), math.prod(r_lead)
    flat_left = left.reshape(n_l, m_l, d)
    flat_right = right.reshape(n_r, d, m_r).permute(1, 0, 2).reshape(d, n_r * m_r)
    chunk = max(1, max_elements // max(1, m_l * n_r * m_r))
    out = left.new_empty(n_l, n_r)
    for start in range(0, n_l, chunk):
        rows = flat_left[start : start + chunk]
        prod = rows.reshape(-1, d) @ flat_right  # [c*m_l, n_r*m_r]
        out[start : start + rows.shape[0]] = torch.linalg.vector_norm(
            prod.view(rows.shape[0], m_l, n_r, m_r), dim=(1, 3)
        )
    return out.reshape((*l_lead, *r_lead))


def get_corner(tensor: Any, n: int = 3) -> Tensor:
    """The top-left `n x n x ...` corner of a tensor (or of a FactoredMatrix, without forming it).

    Example:
        >>> get_corner(torch.arange(16).reshape(4, 4), 2)
        tensor([[0, 1],
                [4, 5]])
    """
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> Tensor:
    """How much `left`'s output feeds `right`'s input: `|L R|_F / (|L|_F |R|_F)`.

    Both are FactoredMatrix (or dense [..., d, d] tensors). With `broadcast_dims`, the leading dims
    of left come first and those of right after them: left [L..] x right [R..] -> [L.., R..]. The
    products are computed on the factors in chunks, so no [.., d_model, d_model] matrix is formed.

    Example:
        >>> composition_scores(model.OV[0, 3], model.QK[1, 5])      # Q-composition L0H3 -> L1H5
    """
    if isinstance(left, Tensor):
        left = FactoredMatrix(left, torch.eye(left.shape[-1], dtype=left.dtype, device=left.device))
    if isinstance(right, Tensor):
        eye = torch.eye(right.shape[-2], dtype=right.dtype, device=right.device)
        right = FactoredMatrix(eye, right)
    if left.rdim != right.ldim:
        raise ValueError(
            f"left's output dim {left.rdim} does not match right's input dim {right.ldim}"
        )
    # Drop the orthogonal outer factors: |U S Vh^T X| = |S Vh^T X|, so only mdim-sized blocks remain.
    new_left = left.collapse_l()  # [*L, m_l, d]
    new_right = right.collapse_r()  # [*R, d, m_r]
    l_norms = new_left.norm(dim=(-2, -1))
    r_norms = new_right.norm(dim=(-2, -1))
    if broadcast_dims:
        comp = product_norms(new_left, new_right)  # [*L, *R]
        return comp / l_norms.reshape((*l_norms.shape, *(1,) * r_norms.ndim)) / r_norms
    lead = torch.broadcast_shapes(left.shape[:-2], right.shape[:-2])
    return _paired_product_norms(new_left, new_right, lead) / l_norms / r_norms


def _paired_product_norms(
    left: Tensor, right: Tensor, lead: torch.Size, max_elements: int = 1 << 24
) -> Tensor:
    """Frobenius norms of `left[i] @ right[i]` [*lead] for left [*, m_l, d] and right [*, d, m_r]
    broadcast to `lead`, gathering one chunk of pairs at a time (never a broadcast copy of all)."""
    if not lead:
        return (left @ right).norm(dim=(-2, -1))
    left = left.broadcast_to(*lead, *left.shape[-2:])  # views: stride 0 where broadcast
    right = right.broadcast_to(*lead, *right.shape[-2:])
    (m_l, d), m_r = left.shape[-2:], right.shape[-1]
    n = math.prod(lead)
    chunk = max(1, max_elements // (m_l * d + d * m_r + m_l * m_r + 1))
    out = left.new_empty(n)
    for start in range(0, n, chunk):
        idx = torch.unravel_index(
            torch.arange(start, min(n, start + chunk), device=left.device), lead
        )
        out[start : start + chunk] = (left[idx] @ right[idx]).norm(dim=(-2, -1))
    return out.reshape(lead)
