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
from typing import Any

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from lmscope.utils import get_corner as _dense_corner

Scalar = int | float | Tensor


class FactoredMatrix:
    """The matrix `A @ B` (A: [..., ldim, mdim], B: [..., mdim, rdim]), never formed unless asked.

    Supports `@` with tensors, vectors and other FactoredMatrix on either side, scalar `*`, `.T`,
    indexing of the leading dimensions, `svd()` / `U` / `S` / `Vh`, `eigenvalues`, `norm()`,
    `collapse_l()` / `collapse_r()`, `make_even()`, `get_corner()` and `unsqueeze()`.

    Example:
        >>> M = FactoredMatrix(torch.randn(64, 8), torch.randn(8, 64))
        >>> M.shape, M.mdim, torch.allclose(M @ torch.ones(64), M.AB @ torch.ones(64), rtol=1e-4)
        (torch.Size([64, 64]), 8, True)
    """

    def __init__(
        self, A: Float[Tensor, "... ldim mdim"], B: Float[Tensor, "... mdim rdim"]
    ) -> None:
        if A.ndim < 2 or B.ndim < 2:
            raise ValueError(
                f"FactoredMatrix factors must be at least 2-D, got A {tuple(A.shape)}, B {tuple(B.shape)}"
            )
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(
                f"inner dimensions differ: A is {tuple(A.shape)}, B is {tuple(B.shape)} "
                "(A's last dim must equal B's second-to-last)"
            )
        self.ldim, self.mdim, self.rdim = A.shape[-2], A.shape[-1], B.shape[-1]
        try:
            lead = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError as err:
            raise ValueError(
                f"leading dimensions do not broadcast: A {tuple(A.shape)}, B {tuple(B.shape)}"
            ) from err
        self.shape = torch.Size((*lead, self.ldim, self.rdim))
        self.A = A.broadcast_to(*lead, self.ldim, self.mdim)
        self.B = B.broadcast_to(*lead, self.mdim, self.rdim)
        self.has_leading_dims = len(lead) > 0
        self._svd: tuple[Tensor, Tensor, Tensor] | None = None

    # -- products --------------------------------------------------------------------------------
    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        """`self @ other`: a FactoredMatrix for a matrix, a tensor for a vector."""
        if isinstance(other, FactoredMatrix):
            if self.rdim != other.ldim:
                raise ValueError(f"cannot multiply {self.shape} by {other.shape}")
            middle = self.B @ other.A  # [..., m1, m2]: small
            if self.mdim <= other.mdim:
                return FactoredMatrix(self.A, middle @ other.B)
            return FactoredMatrix(self.A @ middle, other.B)
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim < 2:
            if other.shape[-1] != self.rdim:
                raise ValueError(f"cannot multiply {self.shape} by a vector of {other.shape[-1]}")
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise ValueError(f"cannot multiply {self.shape} by {tuple(other.shape)}")
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        """`other @ self` for a tensor `other` (a vector gives a vector)."""
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.shape[-1] != self.ldim:
            raise ValueError(f"cannot multiply {tuple(other.shape)} by {self.shape}")
        if other.ndim < 2:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        return FactoredMatrix(other @ self.A, self.B)

    def __mul__(self, scalar: Scalar) -> FactoredMatrix:
        """Scalar multiple (scales A)."""
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise ValueError(
                f"* takes a scalar, got a tensor of shape {tuple(scalar.shape)}; use @ for products"
            )
        if not isinstance(scalar, (int, float, Tensor)):
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: Scalar) -> FactoredMatrix:
        return self * scalar

    def __neg__(self) -> FactoredMatrix:
        return self * -1

    def __truediv__(self, scalar: Scalar) -> FactoredMatrix:
        return self * (1.0 / scalar)

    # -- views -----------------------------------------------------------------------------------
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
            raise ValueError(f"BA needs a square matrix, this one is {self.ldim} x {self.rdim}")
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
        return f"FactoredMatrix: Shape({tuple(self.shape)}), Hidden Dim({self.mdim})"

    def __getitem__(self, idx: Any) -> FactoredMatrix:
        """Index the leading dimensions (then optionally rows, then columns).

        As in TransformerLens, an int index into the row or column dimension keeps that dimension
        with length 1, so the result is always a FactoredMatrix.
        """
        if not isinstance(idx, tuple):
            idx = (idx,)
        if any(i is None or i is Ellipsis for i in idx):
            raise IndexError("FactoredMatrix indexing takes no None or ...; index dims explicitly")
        n_lead = self.ndim - 2
        if len(idx) > self.ndim:
            raise IndexError(f"index {idx} is too long for a FactoredMatrix of shape {self.shape}")

        def keep(i: Any) -> Any:
            return slice(i, i + 1 if i != -1 else None) if isinstance(i, int) else i

        lead = idx[:n_lead]
        A, B = self.A[lead], self.B[lead]
        rest = idx[n_lead:]
        if rest:
            A = A[..., keep(rest[0]), :]
        if len(rest) == 2:
            B = B[..., keep(rest[1])]
        return FactoredMatrix(A, B)

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a leading dimension of size 1 at position `k` (k <= number of leading dims).

        Example:
            >>> model.OV[0].unsqueeze(0).shape                 # [1, n_heads, d_model, d_model]
        """
        n_lead = self.ndim - 2
        if k < 0:
            k += self.ndim + 1
        if not 0 <= k <= n_lead:
            raise IndexError(
                f"unsqueeze({k}) would not be a leading dimension of a {self.ndim}-D FactoredMatrix"
            )
        return FactoredMatrix(self.A.unsqueeze(k), self.B.unsqueeze(k))

    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        """Move or cast both factors (arguments as `Tensor.to`).

        Example:
            >>> model.OV.to(torch.float64)
        """
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))

    # -- spectral ----------------------------------------------------------------------------------
    def svd(
        self,
    ) -> tuple[
        Float[Tensor, "*leading ldim k"],
        Float[Tensor, "*leading k"],
        Float[Tensor, "*leading rdim k"],
    ]:
        """Thin SVD `(U, S, Vh)` with `U @ S.diag() @ Vh.T == AB` (TransformerLens's convention:
        `Vh` holds the right singular vectors as columns, the transpose of `torch.linalg.svd`'s).

        k = min(ldim, mdim, rdim). Computed from QR factors of A and B^T and the SVD of a small
        k x k core, so it costs O((ldim + rdim) mdim²). Cached on the object.

        Example:
            >>> U, S, Vh = model.OV[2, 1].svd()
            >>> torch.allclose(U @ S.diag() @ Vh.T, model.OV[2, 1].AB, atol=1e-5)
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
    def Vh(self) -> Float[Tensor, "*leading rdim k"]:
        """Right singular vectors as columns (TransformerLens's name; `AB = U diag(S) Vh^T`).

        Example:
            >>> model.OV[2, 1].Vh.shape                        # [d_model, d_head]
        """
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
        """`diag(S) Vh^T`: the matrix with its left orthogonal factor U removed (same norms, and
        same norms of products with anything on the right).

        Example:
            >>> model.OV[1, 0].collapse_l().shape              # [d_head, d_model]
        """
        return self.S[..., :, None] * self.Vh.transpose(-2, -1)

    def collapse_r(self) -> Float[Tensor, "*leading ldim k"]:
        """`U diag(S)`: the matrix with its right orthogonal factor removed.

        Example:
            >>> model.OV[1, 0].collapse_r().shape              # [d_model, d_head]
        """
        return self.U * self.S[..., None, :]

    def make_even(self) -> FactoredMatrix:
        """The same matrix as `(U sqrt(S)) (sqrt(S) Vh^T)`: both factors carry half the spectrum and
        have orthogonal columns / rows.

        Example:
            >>> even = model.QK[0, 2].make_even()             # same AB, balanced factors
        """
        root = self.S.sqrt()
        return FactoredMatrix(
            self.U * root[..., None, :], root[..., :, None] * self.Vh.transpose(-2, -1)
        )

    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left k x k block (of each leading index up to k), from k rows and columns only.

        Example:
            >>> model.OV[0, 0].get_corner(2)                   # AB[:2, :2] from 2 rows and columns
        """
        return _dense_corner(self.A[..., :k, :] @ self.B[..., :, :k], k)


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
