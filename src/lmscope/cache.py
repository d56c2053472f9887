"""ActivationCache: the activations of one run, indexed by hook name or TransformerLens shorthand,
with the residual-stream analyses of TransformerLens (logit lens, decompositions, attributions).

Shapes: residual-stream activations are [batch, pos, d_model]; after `remove_batch_dim()` they are
[pos, d_model], and an int `pos_slice` removes the pos dimension too. Stacks put their components
first: [components, *batch_and_pos, d_model].

Example:
    >>> logits, cache = model.run_with_cache("The Eiffel Tower is in")
    >>> cache["pattern", 0]                     # == cache["blocks.0.attn.hook_pattern"]
    >>> resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
    >>> per_head = cache.stack_head_results(pos_slice=-1, apply_ln=True)
    >>> cache.logit_attrs(per_head, tokens=" Paris")          # direct logit attribution per head
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.utils import Slice, SliceInput, get_act_name

if TYPE_CHECKING:
    from lmscope.model import HookedTransformer

logger = logging.getLogger(__name__)

TokensLike = str | int | Int[Tensor, ""] | Int[Tensor, " batch"] | Int[Tensor, "batch pos"]
Stack = Float[Tensor, "components *batch_and_pos d_model"]
Projection = Float[Tensor, " d_model"] | Float[Tensor, "d_model n_out"] | None
# A stack after `project_output_onto`: a [d_model] direction drops the last axis, a
# [d_model, n_out] projection makes it n_out.
ProjectedStack = (
    Stack
    | Float[Tensor, "components *batch_and_pos"]
    | Float[Tensor, "components *batch_and_pos n_out"]
)


@contextmanager
def _hooks_silenced(module: nn.Module) -> Iterator[None]:
    """Run `module` without firing its hook points (so analysis does not pollute user hooks);
    only in the calling thread, so other threads' hooked runs keep their hooks."""
    from lmscope.hooks import HookPoint, silenced

    with silenced([m for m in module.modules() if isinstance(m, HookPoint)]):
        yield


class ActivationCache:
    """A dict of hook name -> activation, plus the model that produced it (for analysis).

    Keys are full hook names; `cache["pattern", 3]`, `cache["resid_post", -1]`, `cache["k6"]`,
    `cache["scale", 2, "ln1"]` use `utils.get_act_name` shorthand (negative layers count from the
    end).

    Example:
        >>> _, cache = model.run_with_cache("Hello world")
        >>> cache["resid_pre", 0].shape                    # [batch, pos, d_model]
    """

    def __init__(
        self, cache_dict: dict[str, Tensor], model: HookedTransformer, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

    @property
    def has_embed(self) -> bool:
        """Whether `hook_embed` was cached (`cache.has_embed`)."""
        return "hook_embed" in self.cache_dict

    @property
    def has_pos_embed(self) -> bool:
        """Whether `hook_pos_embed` was cached (False for rotary models)."""
        return "hook_pos_embed" in self.cache_dict

    # -- dict behaviour ------------------------------------------------------------------------
    def _key(self, key: str | tuple) -> str:
        if isinstance(key, str):
            name = key if key in self.cache_dict else get_act_name(key)
        elif isinstance(key, tuple) and key:
            name_part, *rest = key
            layer = rest[0] if rest else None
            layer_type = rest[1] if len(rest) > 1 else None
            if layer is not None and layer < 0:
                layer += self.model.cfg.n_layers
            name = get_act_name(name_part, layer, layer_type)
        else:
            raise KeyError(
                f"cache keys are names or (name, layer[, layer_type]) tuples, got {key!r}"
            )
        if name not in self.cache_dict:
            close = difflib.get_close_matches(name, self.cache_dict.keys(), n=5, cutoff=0.6)
            hint = f" Close names in this cache: {', '.join(close)}." if close else ""
            raise KeyError(
                f"{name!r} is not in this cache ({len(self.cache_dict)} activations).{hint} "
                "Was it excluded by names_filter?"
            )
        return name

    def __getitem__(self, key: str | tuple) -> Tensor:
        return self.cache_dict[self._key(key)]

    def __contains__(self, key: object) -> bool:
        try:
            self._key(key)  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError):
            return False
        return True

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self) -> KeysView[str]:
        """The full hook names in this cache.

        Example:
            >>> [k for k in cache.keys() if k.endswith("hook_pattern")]
        """
        return self.cache_dict.keys()

    def values(self) -> ValuesView[Tensor]:
        """The cached activations.

        Example:
            >>> sum(v.numel() for v in cache.values())
        """
        return self.cache_dict.values()

    def items(self) -> ItemsView[str, Tensor]:
        """(hook name, activation) pairs.

        Example:
            >>> {k: v.shape for k, v in cache.items()}
        """
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with {len(self)} activations: {list(self.cache_dict)[:8]}..."

    def to(self, device: str | torch.device, move_model: bool = False) -> ActivationCache:
        """Move every activation (and with `move_model`, the model) to `device`; returns self.

        Example:
            >>> cache = cache.to("cpu")
        """
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        if move_model:
            self.model.to(device)
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Turn autograd on or off globally (`torch.set_grad_enabled(mode)`), as TransformerLens.

        This is global torch state; `torch.no_grad()` / `torch.inference_mode()` are the local way.

        Example:
            >>> cache.toggle_autodiff(False)                     # like torch.set_grad_enabled(False)
        """
        logger.warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop a batch dimension of size 1 from every activation (in place; returns self).

        Example:
            >>> _, cache = model.run_with_cache("Hello")
            >>> cache.remove_batch_dim()["resid_pre", 0].shape   # [pos, d_model]
        """
        if not self.has_batch_dim:
            logger.warning("Tried removing the batch dimension after it was already removed")
            return self
        for name, t in self.cache_dict.items():
            if t.ndim == 0 or t.shape[0] != 1:
                raise ValueError(
                    f"remove_batch_dim needs batch size 1, but {name} has shape {tuple(t.shape)}"
                )
        self.cache_dict = {k: v[0] for k, v in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: Slice | SliceInput) -> ActivationCache:
        """A new cache holding only the batch entries `batch_slice` picks (an int drops the dim).

        Example:
            >>> first = cache.apply_slice_to_batch_dim(0)       # like run_with_cache on prompt 0
        """
        batch_slice = Slice.unwrap(batch_slice)
        if not self.has_batch_dim:
            if batch_slice.mode != "identity":
                raise ValueError("this cache has no batch dimension to slice")
            return ActivationCache(dict(self.cache_dict), self.model, has_batch_dim=False)
        new = {name: batch_slice.apply(t, dim=0) for name, t in self.cache_dict.items()}
        return ActivationCache(new, self.model, has_batch_dim=batch_slice.mode != "int")

    # -- helpers ---------------------------------------------------------------------------------
    def _layer(self, layer: int | None) -> int:
        """None and -1 mean n_layers (the unembed); other negatives count back from n_layers."""
        n = self.model.cfg.n_layers
        if layer is None:
            return n
        if layer < 0:
            layer += n + 1
        if not 0 <= layer <= n:
            raise ValueError(f"layer must lie in [0, {n}] (or -1 / None for {n}), got {layer}")
        return layer

    @property
    def _parallel(self) -> bool:
        return bool(self.model.cfg.parallel_attn_mlp)

    def _check_mlp_input(self, layer: int, mlp_input: bool) -> None:
        if mlp_input and (layer == self.model.cfg.n_layers or self.model.cfg.attn_only):
            raise ValueError(
                "mlp_input=True needs an MLP at `layer`: not the final layer, not attn_only models"
            )

    def _target_resid(self, layer: int, mlp_input: bool) -> Tensor:
        """The residual stream entering layer `layer` (its MLP with `mlp_input`; the unembed at n)."""
        n = self.model.cfg.n_layers
        if layer == n:
            return self[f"blocks.{n - 1}.hook_resid_post"]
        if mlp_input and not self._parallel:
            return self[f"blocks.{layer}.hook_resid_mid"]
        return self[f"blocks.{layer}.hook_resid_pre"]

    def _norm_path(self, layer: int, mlp_input: bool) -> str:
        if layer == self.model.cfg.n_layers:
            return "ln_final"
        return f"blocks.{layer}.ln{2 if mlp_input else 1}"

    def _target_norm(self, layer: int, mlp_input: bool) -> nn.Module | None:
        """The norm that reads the residual entering `layer` (None where nothing normalises it:
        no normalisation, post-norm-only blocks, post-LN `post_residual` blocks)."""
        from lmscope.components.norm import LayerNorm, RMSNorm

        cfg = self.model.cfg
        if cfg.normalization_type is None or cfg.norm_placement == "post_residual":
            return None
        try:
            norm = self.model.get_submodule(self._norm_path(layer, mlp_input))
        except AttributeError:
            return None
        return norm if isinstance(norm, (LayerNorm, RMSNorm)) else None

    def _has_norm(self) -> bool:
        return self.model.cfg.normalization_type in ("LN", "LNPre", "RMS", "RMSPre")

    def _require_sum(self, what: str, per_component: bool = False) -> None:
        """Refuse decompositions that would not add up to the residual stream."""
        cfg = self.model.cfg
        if cfg.norm_placement == "post_residual":
            raise ValueError(
                f"{what}: with norm_placement='post_residual' every block re-normalises the "
                "residual stream, so it is not a sum of the outputs written into it"
            )
        if per_component and cfg.norm_placement in ("pre_and_post", "post"):
            raise ValueError(
                f"{what}: with norm_placement={cfg.norm_placement!r} each attention and MLP output "
                "passes through a norm (ln1_post / ln2_post) before it joins the residual, so head "
                "and neuron outputs do not add up to it; decompose_resid (attn_out, mlp_out) does"
            )

    def _embed_parts(self, pos_slice: Slice) -> list[tuple[str, Tensor]]:
        """The embedding components of the residual: embed (+ pos_embed), or with a LayerNorm right
        after the embedding (BLOOM) the normalised sum, labelled "embed"."""
        if self.model.cfg.post_embedding_ln:
            return [("embed", pos_slice.apply(self["blocks.0.hook_resid_pre"], dim=-2))]
        parts = []
        if self.has_embed:
            parts.append(("embed", pos_slice.apply(self["hook_embed"], dim=-2)))
        if self.has_pos_embed:
            parts.append(("pos_embed", pos_slice.apply(self["hook_pos_embed"], dim=-2)))
        return parts

    def _is_centering(self) -> bool:
        return self.model.cfg.normalization_type in ("LN", "LNPre")

    def _cached_scale(
        self, layer: int, mlp_input: bool, pos_slice: Slice, batch_slice: Slice
    ) -> Float[Tensor, "*batch_and_pos 1"]:
        key = self._norm_path(layer, mlp_input) + ".hook_scale"
        if key not in self.cache_dict:
            raise KeyError(
                f"apply_ln needs the cached norm scale {key!r}, which is not in this cache; "
                "include it in names_filter (or pass recompute_ln=True where offered)"
            )
        scale = pos_slice.apply(self.cache_dict[key], dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        return scale

    def _empty_stack(self, pos_slice: Slice, last: int | None = None, n: int = 0) -> Tensor:
        """A stack [n, *batch_and_pos, d_model (or last)] like the residual stream; zero
        components unless `n` is given, then uninitialised, for the caller to fill."""
        ref = pos_slice.apply(self["blocks.0.hook_resid_pre"], dim=-2)
        shape = ref.shape if last is None else (*ref.shape[:-1], last)
        return ref.new_zeros((0, *shape)) if n == 0 else ref.new_empty((n, *shape))

    def _fill_neuron_results(
        self,
        stack: Tensor,
        start: int,
        layer: int,
        neuron_slice: Slice,
        pos_slice: Slice,
        p: Tensor | None,
    ) -> int:
        """Write every neuron's result for the MLPs before `layer` into `stack` [components, ...,
        d] from component `start` on (layer-major, as `stack_neuron_results` orders them), one
        layer at a time, so only one layer's results exist besides `stack`. Returns the end."""
        for i in range(layer):
            post, W_out = self._neuron_factors(i, neuron_slice, pos_slice)
            end = start + W_out.shape[0]
            part = stack[start:end]  # [neuron, ..., d]; a fresh view each time (autograd)
            start = end
            if p is None:  # written in the stack's own layout, with no temporary
                shape = (W_out.shape[0], *(1,) * (post.ndim - 1), W_out.shape[1])
                factors = post.movedim(-1, 0)[..., None], W_out.view(shape)
                if torch.is_grad_enabled() and (post.requires_grad or part.requires_grad):
                    part.copy_(torch.mul(*factors))  # out= below has no autograd
                else:
                    torch.mul(*factors, out=part)
            else:
                results = self.get_neuron_results(i, neuron_slice, pos_slice, project_output_onto=p)
                part.copy_(results.movedim(-2, 0))
        return start

    # -- residual-stream analysis -----------------------------------------------------------
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Slice | SliceInput = None,
        mlp_input: bool = False,
        return_labels: bool = False,
        recompute_ln: bool = True,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream entering each layer up to `layer` (inclusive): the logit lens input.

        `layer` in [0, n_layers] (None / -1: n_layers, which adds the final `resid_post` labelled
        "final_post"). `incl_mid` adds each earlier layer's resid_mid; `mlp_input` adds resid_mid of
        `layer` itself. With `apply_ln`, each entry goes through the target norm (ln_final, or ln1/ln2
        of `layer`). `recompute_ln=True` (the default) normalises every entry with its own scale,
        which is what a logit lens needs; `recompute_ln=False` divides all of them by the cached
        scale of the final entry, as TransformerLens 2.x did (only right for the last entry).

        Example:
            >>> resid, labels = cache.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True)
            >>> lens_logits = resid @ model.W_U + model.b_U      # [layers + 1, batch, d_vocab]
        """
        pos_slice = Slice.unwrap(pos_slice)
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        n = self.model.cfg.n_layers
        parts, labels = [], []
        for i in range(layer + 1):
            if i == n:
                parts.append(self[f"blocks.{n - 1}.hook_resid_post"])
                labels.append("final_post")
                continue
            parts.append(self[f"blocks.{i}.hook_resid_pre"])
            labels.append(f"{i}_pre")
            if not self._parallel and ((incl_mid and i < layer) or (mlp_input and i == layer)):
                parts.append(self[f"blocks.{i}.hook_resid_mid"])
                labels.append(f"{i}_mid")
        resid = torch.stack([pos_slice.apply(p, dim=-2) for p in parts], dim=0)
        if apply_ln:
            resid = self.apply_ln_to_stack(
                resid,
                layer,
                mlp_input=mlp_input,
                pos_slice=pos_slice,
                has_batch_dim=self.has_batch_dim,
                recompute_ln=recompute_ln,
            )
        return (resid, labels) if return_labels else resid

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Slice | SliceInput = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """The residual stream entering `layer` split into the outputs that wrote it.

        Components: embed, pos_embed (learned-position models), then each earlier layer's attn_out
        and mlp_out (`mode` keeps only one kind); with `mlp_input`, also attn_out of `layer` itself
        (sequential blocks). With all components they sum to the residual exactly. `apply_ln` divides
        by the target norm's cached scale (centring first for LayerNorm), so the stack still sums to
        the normalised residual.

        Example:
            >>> parts, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
            >>> torch.allclose(parts.sum(0), cache["resid_post", -1][:, -1], atol=1e-4)
            True
        """
        pos_slice = Slice.unwrap(pos_slice)
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        self._require_sum("decompose_resid")
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"mode must be 'all', 'mlp' or 'attn', got {mode!r}")
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not self.model.cfg.attn_only
        parts, labels = [], []
        if incl_embeds:
            for label, part in self._embed_parts(Slice(None)):
                parts.append(part)
                labels.append(label)
        for i in range(layer):
            if incl_attn:
                parts.append(self[f"blocks.{i}.hook_attn_out"])
                labels.append(f"{i}_attn_out")
            if incl_mlp:
                parts.append(self[f"blocks.{i}.hook_mlp_out"])
                labels.append(f"{i}_mlp_out")
        if mlp_input and incl_attn and not self._parallel:
            parts.append(self[f"blocks.{layer}.hook_attn_out"])
            labels.append(f"{layer}_attn_out")
        if parts:
            stack = torch.stack([pos_slice.apply(p, dim=-2) for p in parts], dim=0)
        else:
            stack = self._empty_stack(pos_slice)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def compute_head_results(self) -> None:
        """Add each head's output `z_h W_O[h]` ([batch, pos, head, d_model], without b_O) to the
        cache as `blocks.{l}.attn.hook_result` (needs `hook_z`). Does nothing where it is cached.

        Example:
            >>> cache.compute_head_results()
            >>> cache["result", 0].sum(-2) + model.b_O[0]      # == cache["attn_out", 0]
        """
        done = 0
        for layer in range(self.model.cfg.n_layers):
            key = f"blocks.{layer}.attn.hook_result"
            if key in self.cache_dict:
                done += 1
                continue
            z = self[f"blocks.{layer}.attn.hook_z"]
            W_O = self.model.blocks[layer].attn.W_O.detach()
            if z.dtype != W_O.dtype or z.device != W_O.device:
                W_O = W_O.to(dtype=z.dtype, device=z.device)
            self.cache_dict[key] = einops.einsum(
                z, W_O, "... head d_head, head d_head d_model -> ... head d_model"
            )
        if done == self.model.cfg.n_layers:
            logger.info("compute_head_results: every head result was already cached")

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Slice | SliceInput = None,
        apply_ln: bool = False,
    ) -> Stack | tuple[Stack, list[str]]:
        """Every head's output in layers before `layer` (default: all), as [layer*head, ...].

        Labels are "L{l}H{h}". `incl_remainder` adds a last component, the rest of the residual
        stream entering `layer` (so the stack sums to it). `apply_ln` divides by the target norm's
        cached scale (ln1 of `layer`, or ln_final), centring first for LayerNorm.

        Example:
            >>> heads, labels = cache.stack_head_results(pos_slice=-1, apply_ln=True, return_labels=True)
            >>> dla = cache.logit_attrs(heads, tokens=answer, incorrect_tokens=wrong)  # [heads, batch]
        """
        pos_slice = Slice.unwrap(pos_slice)
        layer = self._layer(layer)
        self._require_sum("stack_head_results", per_component=True)
        self.compute_head_results()
        n_heads = self.model.cfg.n_heads
        labels = [f"L{i}H{h}" for i in range(layer) for h in range(n_heads)]
        if layer > 0:
            per_layer = [
                pos_slice.apply(self[f"blocks.{i}.attn.hook_result"], dim=-3) for i in range(layer)
            ]
            stack = einops.rearrange(
                torch.cat(per_layer, dim=-2), "... comp d_model -> comp ... d_model"
            )
        else:
            stack = self._empty_stack(pos_slice)
        if incl_remainder:
            target = pos_slice.apply(self._target_resid(layer, False), dim=-2)
            stack = torch.cat([stack, (target - stack.sum(0))[None]], dim=0)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> Float[Tensor, "layers_covered ..."]:
        """One activation from every layer before `layer` (default: all) on a new leading dim.

        Example:
            >>> cache.stack_activation("pattern").shape    # [n_layers, batch, head, q_pos, k_pos]
        """
        n = self.model.cfg.n_layers if layer in (None, -1) else self._layer(layer)
        return torch.stack(
            [self[get_act_name(activation_name, i, sublayer_type)] for i in range(n)], dim=0
        )

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Slice | SliceInput = None,
        pos_slice: Slice | SliceInput = None,
        project_output_onto: Projection = None,
    ) -> (
        Float[Tensor, "*batch_and_pos neuron d_model"]
        | Float[Tensor, "*batch_and_pos neuron"]
        | Float[Tensor, "*batch_and_pos neuron n_out"]
    ):
        """Each neuron's write to the residual stream, `post[n] * W_out[n]` (without b_out).

        With `project_output_onto` ([d_model] or [d_model, n_out]) the writes are projected on the
        way (`post[n] * (W_out[n] @ p)`), so no [..., d_mlp, d_model] tensor is formed.

        Example:
            >>> cache.get_neuron_results(0, neuron_slice=[3, 7], pos_slice=-1).shape  # [batch, 2, d_model]
        """
        post, W_out = self._neuron_factors(layer, neuron_slice, pos_slice)
        if project_output_onto is None:
            return post[..., None] * W_out
        p = project_output_onto.to(dtype=post.dtype, device=post.device)
        projected = W_out @ p  # [d_mlp] or [d_mlp, n_out]
        return post * projected if p.ndim == 1 else post[..., None] * projected

    def _neuron_factors(
        self, layer: int, neuron_slice: Slice | SliceInput, pos_slice: Slice | SliceInput
    ) -> tuple[Float[Tensor, "*batch_and_pos neuron"], Float[Tensor, "neuron d_model"]]:
        """A layer's neuron activations (sliced) and their W_out rows: each neuron's write to the
        residual is `post[..., n, None] * W_out[n]`."""
        neuron_slice, pos_slice = Slice.unwrap(neuron_slice), Slice.unwrap(pos_slice)
        if self.model.cfg.num_experts:
            raise ValueError(
                "neuron results need one MLP per layer; this model's MLPs are mixtures of experts "
                "(each expert sees only its routed tokens): use mlp_out, or the experts' own hooks"
            )
        if layer < 0:
            layer += self.model.cfg.n_layers
        post = pos_slice.apply(self[f"blocks.{layer}.mlp.hook_post"], dim=-2)
        post = neuron_slice.apply(post, dim=-1)
        W_out = neuron_slice.apply(self.model.blocks[layer].mlp.W_out.detach(), dim=0)
        return post, W_out.to(dtype=post.dtype, device=post.device)

    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: Slice | SliceInput = None,
        neuron_slice: Slice | SliceInput = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: Projection = None,
        mlp_input: bool = False,
    ) -> ProjectedStack | tuple[ProjectedStack, list[str]]:
        """Every neuron's write for the MLPs before `layer`, as [layer*neuron, ..., d_model].

        Labels are "L{l}N{n}". `incl_remainder` adds the rest of the residual entering `layer`
        (its MLP with `mlp_input`). `project_output_onto` projects each write (see
        `get_neuron_results`); with `apply_ln` the cached-scale norm is folded into the projection.
        This is [.., d_mlp * layers, d_model] without a projection: large for big models.

        Example:
            >>> neurons = cache.stack_neuron_results(2, pos_slice=-1, project_output_onto=direction)
        """
        pos_slice = Slice.unwrap(pos_slice)
        neuron_slice = Slice.unwrap(neuron_slice)
        if neuron_slice.mode == "int":  # keep the neuron axis: layers are concatenated along it
            neuron_slice = Slice([neuron_slice.slice])
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        if self.model.cfg.attn_only:
            raise ValueError("this model is attention-only: it has no neurons")
        self._require_sum("stack_neuron_results", per_component=True)
        neuron_ids = neuron_slice.indices(self.model.cfg.d_mlp)
        labels = [f"L{i}N{int(n)}" for i in range(layer) for n in neuron_ids]
        p, squeeze = self._projection(project_output_onto, apply_ln)
        last = None if p is None else p.shape[-1]
        n_neurons = len(labels)
        # One stack, filled in place: no concatenated copies of a [neurons, ..., d_model] tensor.
        stack = self._empty_stack(pos_slice, last, n=n_neurons + int(incl_remainder))
        self._fill_neuron_results(stack, 0, layer, neuron_slice, pos_slice, p)
        if incl_remainder:
            target = pos_slice.apply(self._target_resid(layer, mlp_input), dim=-2)
            if p is not None:
                target = target @ p
            torch.sub(target, stack[:n_neurons].sum(0), out=stack[n_neurons])
            labels.append("remainder")
        if apply_ln:
            stack = self._apply_cached_ln(
                stack, layer, mlp_input, pos_slice, centred=p is None, inplace=True
            )
        if squeeze:
            stack = stack.squeeze(-1)
        return (stack, labels) if return_labels else stack

    def _projection(
        self, project_output_onto: Tensor | None, apply_ln: bool
    ) -> tuple[Tensor | None, bool]:
        """The projection as [d_model, n_out], centred over d_model when a LayerNorm will be applied
        (centring then projecting == projecting onto the centred direction)."""
        if project_output_onto is None:
            return None, False
        p = project_output_onto
        squeeze = p.ndim == 1
        p = p[:, None] if squeeze else p
        if apply_ln and self._has_norm() and self._is_centering():
            p = p - p.mean(dim=0, keepdim=True)
        return p, squeeze

    def _apply_cached_ln(
        self,
        stack: Tensor,
        layer: int,
        mlp_input: bool,
        pos_slice: Slice,
        centred: bool,
        batch_slice: Slice | None = None,
        inplace: bool = False,
    ) -> Tensor:
        """Divide by the cached scale; centre first (LayerNorm) unless the stack is projected.
        With `inplace` (for a stack the caller made) `stack` is overwritten: no copies of it."""
        if self._target_norm(layer, mlp_input) is None:
            return stack
        if centred and self._is_centering():
            mean = stack.mean(dim=-1, keepdim=True)
            stack = stack.sub_(mean) if inplace else stack - mean
        scale = self._cached_scale(layer, mlp_input, pos_slice, batch_slice or Slice(None))
        return stack.div_(scale) if inplace else stack / scale

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "components *batch_and_pos d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Slice | SliceInput = None,
        batch_slice: Slice | SliceInput = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "components *batch_slice_and_pos d_model"]:
        """Treat each component as input to the norm before `layer` (ln_final at n_layers / None,
        ln2 with `mlp_input`) and normalise it.

        - `recompute_ln=False` (default, TransformerLens): centre (LayerNorm only) and divide by the
          norm's scale *cached in this run*, the same for every component. This is linear, so a
          decomposition still sums to the normalised residual: use it for attribution. Norm weights
          are not applied (they are folded into the next layer by `fold_ln`).
        - `recompute_ln=True`: run the norm itself on each component, each with its own scale (and the
          norm's weights, if not folded). Use it for stacks of whole residual streams (logit lens).
          TransformerLens only recomputes for ln_final; here it works for any layer.

        `pos_slice` / `batch_slice` say which positions / batch entries the stack holds (the stack
        is assumed already position-sliced; `batch_slice` is applied to it here, on dim 1).

        Example:
            >>> parts = cache.decompose_resid(pos_slice=-1)
            >>> normed = cache.apply_ln_to_stack(parts, pos_slice=-1)   # sums to ln_final's output
        """
        pos_slice, batch_slice = Slice.unwrap(pos_slice), Slice.unwrap(batch_slice)
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        norm = self._target_norm(layer, mlp_input)
        if norm is None:  # nothing normalises the residual there
            return residual_stack
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln:
            with _hooks_silenced(norm):
                return norm(residual_stack)
        return self._apply_cached_ln(
            residual_stack, layer, mlp_input, pos_slice, centred=True, batch_slice=batch_slice
        )

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: Slice | SliceInput = None,
        return_labels: bool = False,
        project_output_onto: Projection = None,
    ) -> ProjectedStack | tuple[ProjectedStack, list[str]]:
        """The residual entering `layer` as: every head ("L{l}H{h}"), every neuron ("L{l}N{n}") or
        MLP ("{l}_mlp_out" without `expand_neurons`), "embed", "pos_embed" and the summed "bias"
        (b_O's, and b_out's when neurons are expanded). The components sum to the residual.

        `project_output_onto` ([d_model] or [d_model, n_out]) projects every component without
        forming the [.., d_mlp, d_model] neuron writes; `apply_ln` uses the cached scale.

        Example:
            >>> stack, labels = cache.get_full_resid_decomposition(pos_slice=-1, return_labels=True,
            ...                                                    project_output_onto=direction)
        """
        pos_slice = Slice.unwrap(pos_slice)
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        self._require_sum("get_full_resid_decomposition", per_component=True)
        if expand_neurons and self.model.cfg.num_experts:
            raise ValueError(
                "expand_neurons=True needs one MLP per layer, but this model's MLPs are mixtures "
                "of experts: pass expand_neurons=False"
            )
        p, squeeze = self._projection(project_output_onto, apply_ln)

        def project(t: Tensor) -> Tensor:
            return t if p is None else t @ p

        head_layer = layer + (1 if mlp_input and not self._parallel else 0)
        heads, labels = self.stack_head_results(head_layer, pos_slice=pos_slice, return_labels=True)
        parts = [project(heads)]
        n_neurons = 0  # neurons go right after the heads, written straight into the stack
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                d_mlp = self.model.cfg.d_mlp
                n_neurons = layer * d_mlp
                labels += [f"L{i}N{n}" for i in range(layer) for n in range(d_mlp)]
            else:
                mlps, mlp_labels = self.decompose_resid(
                    layer, pos_slice=pos_slice, incl_embeds=False, mode="mlp", return_labels=True
                )
                parts.append(project(mlps))
                labels += mlp_labels
        ref = pos_slice.apply(self["blocks.0.hook_resid_pre"], dim=-2)
        for label, part in self._embed_parts(pos_slice):
            parts.append(project(part)[None])
            labels.append(label)
        bias = self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)
        bias = project(bias.detach().to(dtype=ref.dtype, device=ref.device))
        parts.append(bias.expand(1, *ref.shape[:-1], bias.shape[-1]))
        labels.append("bias")
        n = n_neurons + sum(part.shape[0] for part in parts)
        stack = self._empty_stack(pos_slice, parts[0].shape[-1], n=n)
        start = 0
        for i, part in enumerate(parts):
            stack[start : start + part.shape[0]] = part
            start += part.shape[0]
            if i == 0 and n_neurons:
                start = self._fill_neuron_results(stack, start, layer, Slice(None), pos_slice, p)
        if apply_ln:
            stack = self._apply_cached_ln(
                stack, layer, mlp_input, pos_slice, centred=p is None, inplace=True
            )
        if squeeze:
            stack = stack.squeeze(-1)
        return (stack, labels) if return_labels else stack

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "components *batch_and_pos d_model"],
        tokens: TokensLike,
        incorrect_tokens: TokensLike | None = None,
        pos_slice: Slice | SliceInput = None,
        batch_slice: Slice | SliceInput = None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, " components *batch_and_pos"]:
        """How much each component of `residual_stack` adds to the logit of `tokens` (minus that of
        `incorrect_tokens`): component, normalised by ln_final's cached scale, dotted with the
        token's unembedding direction.

        On a fold_ln model the attributions of a full decomposition sum to the logit (difference)
        minus `b_U`. Without fold_ln, the final norm's weight is folded into the direction here, so
        RMSNorm models stay exact too (TransformerLens ignores it). With an output logit soft-cap
        they add up to the logits before the cap. `tokens` is a string, an id, a [batch] tensor
        (one answer per prompt, shared over positions) or [batch, pos].

        Example:
            >>> heads = cache.stack_head_results(pos_slice=-1)
            >>> attrs = cache.logit_attrs(heads, answer_ids, incorrect_tokens=wrong_ids, pos_slice=-1)
        """
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            wrong = self.model.tokens_to_residual_directions(incorrect_tokens)
            if wrong.shape != directions.shape:
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape, got "
                    f"{tuple(directions.shape[:-1])} and {tuple(wrong.shape[:-1])}"
                )
            directions = directions - wrong
        ln = getattr(self.model, "ln_final", None)
        w = ln.applied_weight() if getattr(ln, "w", None) is not None else None  # Gemma: 1 + w
        if w is not None:
            directions = directions * w.detach()
        scaled = self.apply_ln_to_stack(
            residual_stack,
            -1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        directions = directions.to(dtype=scaled.dtype, device=scaled.device)
        if (
            has_batch_dim
            and Slice.unwrap(batch_slice).mode != "int"
            and scaled.ndim == 4
            and directions.ndim == 2
            and directions.shape[0] == scaled.shape[1]
        ):
            directions = directions[:, None, :]  # one answer per prompt, shared over positions
        return (scaled * directions).sum(dim=-1)
