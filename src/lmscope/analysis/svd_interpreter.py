"""SVDInterpreter: read a head's OV circuit or an MLP's weights through their singular vectors,
projected onto the vocabulary (TransformerLens's `SVDInterpreter`, after Millidge & Black's "The
singular value decompositions of transformer weight matrices are highly interpretable").

Example:
    >>> svd = SVDInterpreter(model)
    >>> vecs = svd.get_singular_vectors("OV", layer_index=4, head_index=2, num_vectors=5)
    >>> for i in range(5):                                   # top tokens of each direction
    ...     print(model.to_str_tokens(vecs[:, i].topk(8).indices))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from lmscope.factored_matrix import FactoredMatrix

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer

VectorType = Literal["OV", "w_in", "w_out", "w_gate"]


class SVDInterpreter:
    """Singular vectors of a model's weight matrices, read out through the unembedding W_U.

    Example:
        >>> SVDInterpreter(model).get_singular_vectors("w_out", layer_index=3).shape  # [d_vocab, 10]
    """

    def __init__(self, model: HookedTransformer) -> None:
        self.model = model
        self.cfg = model.cfg

    @torch.no_grad()
    def get_singular_vectors(
        self,
        vector_type: VectorType,
        layer_index: int,
        num_vectors: int = 10,
        head_index: int | None = None,
    ) -> Float[Tensor, "d_vocab num_vectors"]:
        """The top `num_vectors` right singular vectors (d_model directions) of a weight matrix,
        each multiplied by W_U: column i scores every token for direction i.

        - "OV": head `head_index`'s W_V W_O (output side; GQA: the kv head that head reads);
        - "w_in": the MLP's input weights as [d_mlp, d_model] (the ln2 weight folded in when the
          model is not fold_ln-processed), so directions in the residual stream it reads;
        - "w_gate": the same for a gated MLP's gate;
        - "w_out": the MLP's output weights [d_mlp, d_model] (directions it writes).

        Singular vectors have an arbitrary sign: look at both ends of each column. (TransformerLens
        returns [d_vocab, 1, num_vectors]; the singleton axis is dropped here.)

        Example:
            >>> vecs = SVDInterpreter(model).get_singular_vectors("OV", 0, 4, head_index=1)
        """
        if vector_type == "OV":
            if head_index is None:
                raise ValueError("vector_type 'OV' needs a head_index")
            V = self._get_OV_matrix(layer_index, head_index).V.T  # [k, d_model] rows
        elif vector_type in ("w_in", "w_gate", "w_out"):
            if head_index is not None:
                raise ValueError(f"vector_type {vector_type!r} takes no head_index")
            if vector_type == "w_out":
                matrix = self._get_w_out_matrix(layer_index)
            else:
                matrix = self._get_w_in_matrix(layer_index, gate=vector_type == "w_gate")
            V = torch.linalg.svd(matrix.float(), full_matrices=False).Vh  # [k, d_model] rows
        else:
            raise ValueError(
                f"vector_type must be 'OV', 'w_in', 'w_gate' or 'w_out', got {vector_type!r}"
            )
        if num_vectors > V.shape[0]:
            raise ValueError(f"only {V.shape[0]} singular vectors exist, asked for {num_vectors}")
        return (V[:num_vectors].float() @ self.model.W_U.detach().float()).T

    def _get_OV_matrix(self, layer_index: int, head_index: int) -> FactoredMatrix:
        attn = self.model.blocks[layer_index].attn
        if not 0 <= head_index < self.cfg.n_heads:
            raise ValueError(f"head_index must lie in [0, {self.cfg.n_heads}), got {head_index}")
        kv = head_index // self.cfg.n_groups
        return FactoredMatrix(attn._W_V[kv].detach().float(), attn.W_O[head_index].detach().float())

    def _get_w_in_matrix(
        self, layer_index: int, gate: bool = False
    ) -> Float[Tensor, "d_mlp d_model"]:
        block = self.model.blocks[layer_index]
        if gate and not self.cfg.gated_mlp:
            raise ValueError("this model's MLP is not gated: use 'w_in'")
        W = (block.mlp.W_gate if gate else block.mlp.W_in).detach().T  # [d_mlp, d_model]
        ln_w = block.ln2.applied_weight() if getattr(block.ln2, "w", None) is not None else None
        return W * ln_w.detach() if ln_w is not None else W

    def _get_w_out_matrix(self, layer_index: int) -> Float[Tensor, "d_mlp d_model"]:
        return self.model.blocks[layer_index].mlp.W_out.detach()
