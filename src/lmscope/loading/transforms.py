"""Weight-map transforms: the real rewrites between a checkpoint's layout and lmscope's storage
parameters, each a small frozen dataclass that knows its inverse, so export is the weight map
read backwards.

lmscope stores weights as checkpoints store them (`nn.Linear` [out, in]), so most weight-map
entries are a plain tensor name and need no transform. What remains is real: a slice of a fused
projection (`Part`, `FusedHeads`, `FusedGroups`), a GPT-2 Conv1D stored [in, out] (`Transpose`),
Nemotron's `1 + w` norms (`PlusOne`), Gemma's scaled embedding (`Scale`), llama.cpp's rotary permutation
of q/k rows (`RotaryUnpermute`, applied by the GGUF reader).

A transform's call turns checkpoint tensors into one model parameter. Most are views (a slice, a
transpose): the loader then adopts the checkpoint's memory without a copy, and their inverse needs
no code of its own, since the forward view of a preallocated checkpoint tensor is exactly where
the weight goes back (`Transform.inverse`). The others (`PlusOne`, `Scale`, `FusedHeads`,
`FusedGroups`, `RotaryUnpermute`) override `inverse`; one that cannot be undone (a product of two
checkpoint tensors) sets `invertible = False`.

Example:
    >>> fused = torch.randn(2, 6)                    # a Conv1D c_attn [d_model, 3 * d_model]
    >>> k = Chain((Part(1, 2, 4, 6), Transpose()))  # its k columns as k_weight [out, in]
    >>> back = torch.zeros(k.source_shapes((2, 2))[0])
    >>> k.inverse(k(fused), back); torch.equal(back[:, 2:4], fused[:, 2:4])
    True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Transform:
    """Checkpoint tensors -> one model parameter, and back."""

    # False for a transform whose checkpoint tensors cannot be recovered from the weight
    invertible = True

    def __call__(self, *sources: Tensor) -> Tensor:
        raise NotImplementedError

    def source_shapes(self, shape: Shape) -> list[Shape]:
        """The shapes of the checkpoint tensors behind a model parameter of `shape`."""
        raise NotImplementedError

    def inverse(self, value: Tensor, *outs: Tensor) -> None:
        """Write the model parameter `value` into the checkpoint tensors `outs` (allocated with
        `source_shapes`). By default through the forward view of `outs`, which must be a view."""
        view = self(*outs)
        if not any(_same_storage(view, out) for out in outs):
            raise NotImplementedError(f"{self} is not a view, so it needs its own inverse")
        view.copy_(value)


def _same_storage(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


@dataclass(frozen=True)
class Transpose(Transform):
    """A GPT-2 Conv1D [in, out] -> our [out, in] (a view; and TransformerLens's [in, out] views
    of an nn.Linear, for weight maps that name views)."""

    def __call__(self, w: Tensor) -> Tensor:
        return w.T

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)[::-1]]


@dataclass(frozen=True)
class Permute(Transform):
    """A tensor stored with its dimensions in memory order -> the parameter, whose dimensions
    `dims` picks from them (a view: the parameter keeps the stored tensor's memory order, as a
    transposed weight does). lmscope's processed-weights cache stores weights this way."""

    dims: tuple[int, ...]

    def __call__(self, w: Tensor) -> Tensor:
        return w.permute(self.dims)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        source = [0] * len(self.dims)
        for i, d in enumerate(self.dims):
            source[d] = shape[i]
        return [tuple(source)]


@dataclass(frozen=True)
class Part(Transform):
    """Elements `start:stop` along `dim` of a fused tensor `size` long there (one of q/k/v in a
    fused projection, gate or up in a fused MLP, the used rows of a position table): a view."""

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
    (GPT-NeoX, BLOOM, GPT-BigCode without multi-query): [n_heads * n_parts * d_head, d_model] ->
    [n_heads * d_head, d_model], or for a bias [n_heads * n_parts * d_head] -> [n_heads * d_head].
    The part's rows are not contiguous, so this copies (and inverts by scattering them back)."""

    n_heads: int
    index: int
    n_parts: int = 3

    def _part(self, w: Tensor) -> Tensor:
        return w.view(self.n_heads, self.n_parts, -1, *w.shape[1:])[:, self.index]

    def __call__(self, w: Tensor) -> Tensor:
        return self._part(w).reshape(-1, *w.shape[1:])

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [(shape[0] * self.n_parts, *shape[1:])]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        part = self._part(out)
        part.copy_(value.reshape(part.shape))


@dataclass(frozen=True)
class FusedGroups(Transform):
    """Parts `parts` of a projection fused per group whose parts differ in size, its rows laid
    out [group, part (`sizes` rows each), ...], gathered part by part into [part, group, rows]
    (Qwen3-Next's linear attention fuses per key head `in_proj_qkvz` as [q | k | v | z] of
    `(d_key, d_key, r d_value, r d_value)` rows and `in_proj_ba` as [b | a] of `(r, r)`, r value
    heads per key head; lmscope stores Qwen3.5's [q | k | v] rows head by head). The rows are
    not contiguous, so this copies (and inverts by scattering them back).

    Example:
        >>> ba = FusedGroups(2, (1, 1), (1,))      # a of [b0 a0 | b1 a1]
        >>> ba(torch.arange(4.0))
        tensor([1., 3.])
    """

    n_groups: int
    sizes: tuple[int, ...]
    parts: tuple[int, ...]

    def _pieces(self, w: Tensor) -> list[Tensor]:
        rows = self.n_groups * sum(self.sizes)
        if w.shape[0] != rows:
            raise ValueError(
                f"the fused tensor has {w.shape[0]} rows, the model's layout needs {rows} "
                f"({self.n_groups} groups of {' + '.join(map(str, self.sizes))})"
            )
        split = w.view(self.n_groups, sum(self.sizes), *w.shape[1:]).split(self.sizes, dim=1)
        return [split[p] for p in self.parts]  # each [n_groups, size, ...]

    def __call__(self, w: Tensor) -> Tensor:
        return torch.cat([piece.reshape(-1, *w.shape[1:]) for piece in self._pieces(w)])

    def source_shapes(self, shape: Shape) -> list[Shape]:
        per_group = sum(self.sizes[p] for p in self.parts)
        return [(shape[0] // per_group * sum(self.sizes), *shape[1:])]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        start = 0
        for piece in self._pieces(out):
            rows = piece.shape[0] * piece.shape[1]
            piece.copy_(value[start : start + rows].reshape(piece.shape))
            start += rows


@dataclass(frozen=True)
class Strided(Transform):
    """Every `step`-th element along `dim` from `start` of a tensor `size` long there (GPT-OSS
    interleaves its experts' gate and up columns: gate `[..., 0::2]`, up `[..., 1::2]`): a view."""

    dim: int
    start: int
    step: int
    size: int

    def __call__(self, w: Tensor) -> Tensor:
        if w.shape[self.dim] != self.size:
            raise ValueError(
                f"the interleaved tensor has {w.shape[self.dim]} entries along dimension "
                f"{self.dim}, the model's layout needs {self.size}"
            )
        index = [slice(None)] * w.ndim
        index[self.dim] = slice(self.start, None, self.step)
        return w[tuple(index)]

    def source_shapes(self, shape: Shape) -> list[Shape]:
        full = list(shape)
        full[self.dim] = self.size
        return [tuple(full)]


@dataclass(frozen=True)
class Index(Transform):
    """Entry `index` of a tensor stacked `size` deep along its first dimension (one expert of a
    fused [num_experts, ...] tensor): a view."""

    index: int
    size: int

    def __call__(self, w: Tensor) -> Tensor:
        if w.shape[0] != self.size:
            raise ValueError(
                f"the stacked tensor holds {w.shape[0]} entries, the model needs {self.size}"
            )
        return w[self.index]

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [(self.size, *shape)]


@dataclass(frozen=True)
class Chain(Transform):
    """`steps` applied in order to one checkpoint tensor (e.g. a column block of a Conv1D
    c_attn, then transposed). Every step but the last must be a view; the last may rewrite
    values (an expert's slice of a fused tensor, then scaled), and inverts into its region."""

    steps: tuple[Transform, ...]

    def __call__(self, w: Tensor) -> Tensor:
        for step in self.steps:
            w = step(w)
        return w

    def source_shapes(self, shape: Shape) -> list[Shape]:
        for step in reversed(self.steps):
            (shape,) = step.source_shapes(shape)
        return [shape]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        region = out
        for step in self.steps[:-1]:
            region = step(region)
        self.steps[-1].inverse(value, region)


@dataclass(frozen=True)
class Stack(Transform):
    """Several checkpoint tensors of one shape stacked along a new first dimension (StableLM's
    per-head q/k LayerNorms `norms.{h}.weight` as one [n_heads, d_head] weight): a copy,
    inverted by writing each slice back.

    Example:
        >>> Stack()(torch.ones(3), torch.zeros(3)).shape
        torch.Size([2, 3])
    """

    def __call__(self, *parts: Tensor) -> Tensor:
        return torch.stack(parts)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape[1:])] * shape[0]

    def inverse(self, value: Tensor, *outs: Tensor) -> None:
        for out, part in zip(outs, value.unbind(0), strict=True):
            out.copy_(part)


@dataclass(frozen=True)
class Offset(Transform):
    """`w + delta` in float32 (GGUF's Gemma norms are stored as `1 + w`: `Offset(-1.0)`)."""

    delta: float

    def __call__(self, w: Tensor) -> Tensor:
        return w.float() + self.delta

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        out.copy_(value.float() - self.delta)


@dataclass(frozen=True)
class PlusOne(Offset):
    """A norm weight applied as `1 + w` as an ordinary multiplicative weight (Nemotron's
    LayerNorm1P, whose `weight + 1` transformers rounds to the model's dtype as this does; Gemma's
    RMSNorms instead keep `w` and add the 1 in float32: `cfg.norm_weight_offset`)."""

    delta: float = 1.0


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


@dataclass(frozen=True)
class RotaryUnpermute(Transform):
    """Undo llama.cpp's rotary permutation of q/k rows (`convert_hf_to_gguf.LlamaModel.permute`):
    it stores each head's rows as `reshape(n_heads, 2, d_head / 2).swapaxes(1, 2)` of HF's order
    (the two rotary halves interleaved, for its "normal" rope). The inverse is that permutation,
    so the GGUF file's own tensor comes back.

    Example:
        >>> RotaryUnpermute(1)(torch.arange(4.0))   # stored [a0, b0, a1, b1] -> HF [a0, a1, b0, b1]
        tensor([0., 2., 1., 3.])
    """

    n_heads: int

    def _split(self, w: Tensor, *inner: int) -> Tensor:
        rows = w.shape[0]
        if rows % (2 * self.n_heads):
            raise ValueError(f"cannot un-permute {rows} rows over {self.n_heads} heads")
        return w.reshape(self.n_heads, *inner, *w.shape[1:])

    def __call__(self, w: Tensor) -> Tensor:
        half = w.shape[0] // self.n_heads // 2
        return self._split(w, half, 2).transpose(1, 2).reshape(w.shape)

    def source_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)]

    def inverse(self, value: Tensor, out: Tensor) -> None:
        half = value.shape[0] // self.n_heads // 2
        out.copy_(self._split(value, 2, half).transpose(1, 2).reshape(value.shape))


# -- TransformerLens layouts, for weight maps that name weight views (`named_weights`) ------------
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
