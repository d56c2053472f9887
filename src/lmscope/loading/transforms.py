"""Weight-map transforms: the real rewrites between a checkpoint's layout and lmscope's, each a
small frozen dataclass that knows its inverse, so export is the weight map read backwards.

A transform's call (`forward`) turns checkpoint tensors into one model weight. Most are views
(reshapes, transposes, slices of a fused tensor): their inverse needs no code of its own, since
the forward view of a preallocated checkpoint tensor is exactly where the weight goes back
(`Transform.inverse`). The rest (Gemma's `1 + w` norms, a scaled embedding) override `inverse`;
one that cannot be undone (a product of two checkpoint tensors) sets `invertible = False`.

Example:
    >>> w = torch.randn(8, 6)                       # q_proj.weight [n_heads * d_head, d_model]
    >>> W_Q = HeadsIn(2)(w)                         # [n_heads, d_model, d_head]
    >>> back = torch.empty(HeadsIn(2).source_shapes(W_Q.shape)[0])
    >>> HeadsIn(2).inverse(W_Q, back); torch.equal(back, w)
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    """Checkpoint tensors -> one model weight, and back."""

    # False for a transform whose checkpoint tensors cannot be recovered from the weight
    invertible = True

    def __call__(self, *sources: Tensor) -> Tensor:
        raise NotImplementedError

    def source_shapes(self, shape: Shape) -> list[Shape]:
        """The shapes of the checkpoint tensors behind a model weight of `shape`."""
        raise NotImplementedError

    def inverse(self, value: Tensor, *outs: Tensor) -> None:
        """Write the model weight `value` into the checkpoint tensors `outs` (allocated with
        `source_shapes`). By default through the forward view of `outs`, which must be a view."""
        view = self(*outs)
        if not any(_same_storage(view, out) for out in outs):
            raise NotImplementedError(f"{self} is not a view, so it needs its own inverse")
        view.copy_(value)


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@dataclass(frozen=True)
class Transpose(Transform):
    """nn.Linear [out, in] -> [in, out] (W_in, W_out, W_U), and a Conv1D [in, out] -> [out, in]."""

    def __call__(self, w: Tensor) -> Tensor:
        return w.T

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)[::-1]]


@dataclass(frozen=True)
class HeadsIn(Transform):
    """[n_heads * d_head, d_model] -> [n_heads, d_model, d_head] (W_Q, W_K, W_V)."""

    n_heads: int

    def __call__(self, w: Tensor) -> Tensor:
        return w.reshape(self.n_heads, -1, w.shape[-1]).transpose(1, 2)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        n, d_model, d_head = shape
        return [(n * d_head, d_model)]


@dataclass(frozen=True)
class HeadsOut(Transform):
    """[d_model, n_heads * d_head] -> [n_heads, d_head, d_model] (W_O)."""

    n_heads: int

    def __call__(self, w: Tensor) -> Tensor:
        return w.reshape(w.shape[0], self.n_heads, -1).permute(1, 2, 0)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        n, d_head, d_model = shape
        return [(d_model, n * d_head)]


@dataclass(frozen=True)
class HeadsBias(Transform):
    """[n_heads * d_head] -> [n_heads, d_head] (b_Q, b_K, b_V)."""

    n_heads: int

    def __call__(self, b: Tensor) -> Tensor:
        return b.reshape(self.n_heads, -1)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        n, d_head = shape
        return [(n * d_head,)]


@dataclass(frozen=True)
class Part(Transform):
    """Elements `start:stop` along `dim` of a fused tensor `size` long there (one of q/k/v in a
    fused projection, gate or up in a fused MLP, the used rows of a position table)."""

    dim: int
    start: int
    stop: int
    size: int

    def __call__(self, w: Tensor) -> Tensor:
        if w.shape[self.dim] != self.size:
            raise ValueError(
                f"the fused tensor has {w.shape[self.dim]} entries along dimension {self.dim}, "
                f"the model's layout needs {self.size}"
            )
        return w.narrow(self.dim, self.start, self.stop - self.start)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        full = list(shape)
        full[self.dim] = self.size
        return [tuple(full)]


@dataclass(frozen=True)
class FusedHeads(Transform):
    """Part `index` of a projection fused per head, its rows laid out [head, part, d_head]
    (GPT-NeoX, BLOOM): [n_heads * n_parts * d_head, d_model] -> [n_heads, d_model, d_head], or
    for a bias [n_heads * n_parts * d_head] -> [n_heads, d_head]."""

    n_heads: int
    index: int
    n_parts: int = 3

    def __call__(self, w: Tensor) -> Tensor:
        part = w.reshape(self.n_heads, self.n_parts, -1, *w.shape[1:])[:, self.index]
        return part.transpose(1, 2) if w.ndim == 2 else part

    def source_shapes(self, shape: Shape) -> list[Shape]:
        if len(shape) == 2:
            n, d_head = shape
            return [(n * self.n_parts * d_head,)]
        n, d_model, d_head = shape
        return [(n * self.n_parts * d_head, d_model)]


@dataclass(frozen=True)
class Chain(Transform):
    """`steps` applied in order to one checkpoint tensor (e.g. a column block of a Conv1D
    c_attn, transposed, split into heads)."""

    steps: tuple[Transform, ...]

    def __call__(self, w: Tensor) -> Tensor:
        for step in self.steps:
            w = step(w)
        return w

    def source_shapes(self, shape: Shape) -> list[Shape]:
        for step in reversed(self.steps):
            (shape,) = step.source_shapes(shape)
        return [shape]


@dataclass(frozen=True)
class PlusOne(Transform):
    """A norm weight applied as `1 + w` (Gemma) as an ordinary multiplicative weight, in float32
    as transformers computes it."""

    def __call__(self, w: Tensor) -> Tensor:
        return w.float() + 1.0

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        out.copy_(value.float() - 1.0)


@dataclass(frozen=True)
class Scale(Transform):
    """`w * factor` in float32 (Gemma's embedding, multiplied by sqrt(d_model))."""

    factor: float

    def __call__(self, w: Tensor) -> Tensor:
        return w.float() * torch.tensor(self.factor, dtype=torch.float32)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        out.copy_(value.float() / torch.tensor(self.factor, dtype=torch.float32))


def conv1d_heads_in(n_heads: int, part: Part | None = None) -> Chain:
    """A Conv1D projection [d_model, n_heads * d_head] (optionally one `part` of a fused one)
    -> [n_heads, d_model, d_head]."""
    return Chain(((part,) if part else ()) + (Transpose(), HeadsIn(n_heads)))


def conv1d_heads_out(n_heads: int) -> Chain:
    """A Conv1D output projection [n_heads * d_head, d_model] -> [n_heads, d_head, d_model]."""
    return Chain((Transpose(), HeadsOut(n_heads)))


def part_of(part: Part, then: Transform) -> Chain:
    """`then` applied to one `part` of a fused tensor."""
    return Chain((part, then))
