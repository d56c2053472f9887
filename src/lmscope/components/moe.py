"""Mixture of experts: a router picks `experts_per_token` gated MLPs per token and mixes them.

Covers Mixtral (renormalised top-k), Qwen2-MoE (plus an always-on shared expert behind a sigmoid
gate), Qwen3-MoE and OLMoE. Hooks: `hook_expert_weights` and `hook_expert_indices`
[batch, pos, experts_per_token] (editing the weights re-weights the mix), and each expert's own
MLP hooks (`experts.{e}.hook_pre`, ...) over the [tokens routed to it, d_mlp] it computes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lmscope.components.mlp import MLP
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
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.num_experts))
        if cfg.shared_expert_d_mlp:
            self.shared_expert = MLP(cfg, cfg.shared_expert_d_mlp)
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
            views["W_shared_expert_gate"] = self.shared_expert_gate.T
        return views

    def input_weights(self) -> list[tuple[Tensor, Tensor | None]]:
        pairs: list[tuple[Tensor, Tensor | None]] = [(self.W_gate, None)]
        for expert in self.experts:
            pairs += expert.input_weights()
        if self.cfg.shared_expert_d_mlp:
            pairs += self.shared_expert.input_weights() + [(self.shared_expert_gate.T, None)]
        return pairs

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        logits = self.hook_router_logits(F.linear(x, self.router_weight))
        probs = upcast(logits).softmax(dim=-1)  # float32 in half models, as transformers routes
        weights, indices = probs.topk(cfg.experts_per_token, dim=-1)
        if cfg.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
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
            y = expert(flat_x[token]) * flat_w[token, slot, None]
            out.index_add_(0, token, y)
        out = out.view_as(x)
        if cfg.shared_expert_d_mlp:
            gate = torch.sigmoid(F.linear(x, self.shared_expert_gate))
            out = out + self.hook_shared_expert_out(gate * self.shared_expert(x))
        return out
