"""Mixture of experts: a router picks `experts_per_token` gated MLPs per token and mixes them.

Covers Mixtral (renormalised top-k), Qwen2-MoE (plus an always-on shared expert behind a sigmoid
gate), Qwen3-MoE, OLMoE, and the routers of the DeepSeek school: sigmoid scores, a per-expert
bias that only steers the choice (`router_choice_bias`, DeepSeek-V3's `e_score_correction_bias`),
choosing within the best groups of experts (`router_groups` / `router_topk_groups`), scaled
weights (`routed_scaling_factor`) and ungated shared experts; and routers that take the top-k
logits first and softmax over them (`router_scoring="topk_softmax"`, GPT-OSS, GraniteMoE), with a
router bias (`router_bias`), and PhiMoE's SparseMixer (`router_scoring="sparsemixer"`).
Gemma 4's router (26B-A4B, `router_input_norm`) reads its own input: a weightless RMSNorm
(`router_ln`) times a learned `router_scale` [d_model] and d_model ** -0.5, computed as
transformers does (not folded into the router: the products round differently); with
`router_per_expert_scale` each chosen expert's weight is multiplied by `per_expert_scale`
[num_experts] after renormalising.

Hooks: `hook_router_logits` [batch, pos, num_experts] (the router's output, bias included),
`hook_expert_weights` and `hook_expert_indices` [batch, pos, experts_per_token] (editing the
weights re-weights the mix), `hook_shared_expert_out` [batch, pos, d_model] and each expert's own
MLP hooks (`experts.{e}.hook_pre`, ...) over the [tokens routed to it, d_mlp] it computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lmscope.components.mlp import MLP
from lmscope.components.norm import RMSNorm
from lmscope.components.precision import upcast
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint


class MoE(nn.Module):
    """Routed experts; `W_gate` [d_model, num_experts] is the router (TransformerLens name)."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.router_weight = nn.Parameter(
            torch.empty(cfg.num_experts, cfg.d_model, dtype=cfg.dtype)
        )
        # a router bias (GPT-OSS), or a zero one that fold_ln can fold a LayerNorm's bias into
        if cfg.router_bias or cfg.normalization_type in ("LN", "LNPre"):
            self.router_bias = nn.Parameter(torch.zeros(cfg.num_experts, dtype=cfg.dtype))
        if cfg.router_choice_bias:  # steers which experts are chosen, not their weights
            self.router_choice_bias = nn.Parameter(torch.zeros(cfg.num_experts, dtype=cfg.dtype))
        if cfg.router_input_norm:  # Gemma 4: the router normalises its own input
            self.router_ln = RMSNorm(cfg, weights=False)
            self.router_scale = nn.Parameter(torch.ones(cfg.d_model, dtype=cfg.dtype))
        if cfg.router_per_expert_scale:
            self.per_expert_scale = nn.Parameter(torch.ones(cfg.num_experts, dtype=cfg.dtype))
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.num_experts))
        if cfg.shared_expert_d_mlp:
            self.shared_expert = MLP(cfg, cfg.shared_expert_d_mlp)
            if cfg.shared_expert_gated:
                self.shared_expert_gate = nn.Parameter(torch.empty(1, cfg.d_model, dtype=cfg.dtype))
            self.hook_shared_expert_out = HookPoint()  # [batch, pos, d_model], after its gate
        self.hook_router_logits = HookPoint()  # [batch, pos, num_experts]
        self.hook_expert_weights = HookPoint()  # [batch, pos, experts_per_token]
        self.hook_expert_indices = HookPoint()  # [batch, pos, experts_per_token]

    @property
    def W_gate(self) -> Float[Tensor, "d_model num_experts"]:
        return self.router_weight.T

    def weights(self) -> dict[str, Tensor]:
        views = {"W_gate": self.W_gate}
        for e, expert in enumerate(self.experts):
            views.update({f"experts.{e}.{k}": v for k, v in expert.weights().items()})
        if self.cfg.shared_expert_d_mlp:
            views.update({f"shared_expert.{k}": v for k, v in self.shared_expert.weights().items()})
            if self.cfg.shared_expert_gated:
                views["W_shared_expert_gate"] = self.shared_expert_gate.T
        return views

    def output_weights(self) -> list[Tensor]:
        """Every expert's (and the shared expert's) W_out and b_out: the mix of outputs that are
        each centred is centred."""
        writers = [w for expert in self.experts for w in expert.output_weights()]
        if self.cfg.shared_expert_d_mlp:
            writers += self.shared_expert.output_weights()
        return writers

    def input_weights(self) -> list[tuple[Tensor, Tensor | None]]:
        """The readers of the experts' input (a norm before the block folds into them); a router
        with its own input norm (`router_input_norm`) reads something else and is left out."""
        pairs: list[tuple[Tensor, Tensor | None]] = []
        if not self.cfg.router_input_norm:
            pairs.append((self.W_gate, getattr(self, "router_bias", None)))
        for expert in self.experts:
            pairs += expert.input_weights()
        if self.cfg.shared_expert_d_mlp:
            pairs += self.shared_expert.input_weights()
            if self.cfg.shared_expert_gated:
                pairs.append((self.shared_expert_gate.T, None))
        return pairs

    def route(
        self, logits: Float[Tensor, "batch pos num_experts"]
    ) -> tuple[Float[Tensor, "batch pos k"], Int[Tensor, "batch pos k"]]:
        """Each token's expert weights and indices from its router logits (in float32 for
        half-precision models, as transformers routes)."""
        cfg, k = self.cfg, self.cfg.experts_per_token
        if cfg.router_scoring == "sparsemixer":
            return self._sparsemixer(logits)
        if cfg.router_scoring == "topk_softmax":
            top, indices = logits.topk(k, dim=-1)
            weights = upcast(top).softmax(dim=-1)
        else:
            scores = upcast(logits)
            scores = scores.sigmoid() if cfg.router_scoring == "sigmoid" else scores.softmax(-1)
            choice = scores + self.router_choice_bias if cfg.router_choice_bias else scores
            if cfg.router_groups:
                choice = self._best_groups(choice)
            if choice is scores:
                weights, indices = scores.topk(k, dim=-1)
            else:
                indices = choice.topk(k, dim=-1).indices
                weights = scores.gather(-1, indices)
            if cfg.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        if cfg.routed_scaling_factor != 1.0:
            weights = weights * cfg.routed_scaling_factor
        if cfg.router_per_expert_scale:
            weights = weights * self.per_expert_scale[indices]
        return weights, indices

    def _sparsemixer(
        self, logits: Float[Tensor, "batch pos num_experts"]
    ) -> tuple[Float[Tensor, "batch pos 2"], Int[Tensor, "batch pos 2"]]:
        """PhiMoE's SparseMixer at inference: the best expert, weighted by a softmax over the
        experts whose logits lie within a relative `2 * router_jitter_eps` of it; then the best of
        the rest, weighted the same way among the rest. The weights are not renormalised."""
        eps = self.cfg.router_jitter_eps

        def pick(candidates: Tensor) -> tuple[Tensor, Tensor]:
            best, index = candidates.max(dim=-1, keepdim=True)
            factor = logits.abs().clamp(min=best)
            far = (best - logits) / factor > 2 * eps
            gates = candidates.masked_fill(far, float("-inf")).softmax(dim=-1)
            return gates.gather(-1, index), index

        first, i1 = pick(logits)
        second, i2 = pick(logits.scatter(-1, i1, float("-inf")))
        return torch.cat((first, second), dim=-1), torch.cat((i1, i2), dim=-1)

    def _best_groups(self, choice: Tensor) -> Tensor:
        """`choice` with the experts outside each token's `router_topk_groups` best groups set to
        -inf; a group's score is its best expert's ("max", DeepSeek-V2) or the sum of its best
        two ("top2_sum", DeepSeek-V3)."""
        cfg = self.cfg
        grouped = choice.unflatten(-1, (cfg.router_groups, -1))
        if cfg.router_group_score == "max":
            group_scores = grouped.max(dim=-1).values
        else:
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        best = group_scores.topk(cfg.router_topk_groups, dim=-1).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(-1, best, True)
        return grouped.masked_fill(~keep[..., None], float("-inf")).flatten(-2)

    def router_input(
        self, x: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        """What the router reads: `x` itself, or with `router_input_norm` (Gemma 4) its
        weightless RMSNorm times `router_scale` times d_model ** -0.5, in transformers' order.

        Example:
            >>> model.blocks[0].moe.router_input(resid_mid).shape   # [batch, pos, d_model]
        """
        if not self.cfg.router_input_norm:
            return x
        return self.router_ln(x) * self.router_scale * self.cfg.d_model**-0.5

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        router_in: Float[Tensor, "batch pos d_model"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The experts' mix for the tokens `x`, routed on `router_in` (default `x`; Gemma 4
        routes on the block's un-normed input while its experts read their own pre-norm)."""
        cfg = self.cfg
        routed = self.router_input(x if router_in is None else router_in)
        logits = F.linear(routed, self.router_weight, getattr(self, "router_bias", None))
        weights, indices = self.route(self.hook_router_logits(logits))
        weights = self.hook_expert_weights(weights.to(x.dtype))
        indices = self.hook_expert_indices(indices)

        flat_x = x.reshape(-1, cfg.d_model)
        flat_w, flat_i = (
            weights.reshape(-1, cfg.experts_per_token),
            indices.reshape(-1, cfg.experts_per_token),
        )
        out = torch.zeros_like(flat_x)
        for e, expert in enumerate(self.experts):
            token, slot = (flat_i == e).nonzero(as_tuple=True)
            if token.numel() == 0:
                continue
            w = flat_w[token, slot, None]
            if cfg.expert_weights_on_input:  # Llama 4: the expert reads the weighted input
                y = expert(flat_x[token] * w)
            else:
                y = expert(flat_x[token]) * w
            out.index_add_(0, token, y)
        out = out.view_as(x)
        if cfg.shared_expert_d_mlp:
            shared = self.shared_expert(x)
            if cfg.shared_expert_gated:
                shared = torch.sigmoid(F.linear(x, self.shared_expert_gate)) * shared
            out = out + self.hook_shared_expert_out(shared)
        return out
