"""Gated delta-net linear attention (Qwen3.5, Qwen3-Next): a recurrent token mixer whose state is
a fixed-size matrix per value head instead of a growing set of keys and values.

For each position t and value head h (query/key heads serve `n_value // n_key` consecutive value
heads, as grouped-query attention does):

    q, k, v   = silu(causal depthwise conv over the last `conv_size` positions of x @ W_QKV)
    beta      = sigmoid(x @ W_beta)                          how much of the new value to write
    g         = -exp(A_log) * softplus(x @ W_alpha + dt_bias)   log decay (<= 0)
    S_t       = exp(g) S_{t-1};  S_t += k (beta (v - S_t^T k))^T    (the delta rule)
    readout   = S_t^T q                       q, k L2-normalised, q scaled by d_key ** -0.5
    z         = rmsnorm(readout) * w * silu(x @ W_gate)
    out       = z @ W_O

Hook points (TransformerLens style; `hook_z` is what `W_O` reads, as in attention):
`hook_q`, `hook_k` [batch, pos, k_head, d_key], `hook_v` [batch, pos, v_head, d_value] (after
the convolution, before the L2 norm), `hook_beta`, `hook_g` [batch, pos, v_head], `hook_readout`,
`hook_gate`, `hook_z` [batch, pos, v_head, d_value], and `hook_state` [batch, v_head, d_key,
d_value], the state after the call's last position (what a KV cache carries to the next call: an
edit there reaches every later step). `norm.hook_scale` / `norm.hook_normalized` are the gated
norm's.

Storage is the checkpoint's layout (Qwen3.5): `qkv_weight` [2 n_key d_key + n_value d_value,
d_model] ([q | k | v] rows), `gate_weight` [n_value d_value, d_model], `beta_weight` and
`alpha_weight` [n_value, d_model], `conv_weight` [conv_dim, 1, conv_size], `A_log` and `dt_bias`
[n_value], `o_weight` [d_model, n_value d_value], `norm.w` [d_value]. Prompts run chunk by chunk
(64 positions: the delta rule's WY form, one triangular solve per chunk), single tokens in one step.

Precision follows transformers: in a float16/bfloat16 model the log decay, the L2 norms and the
delta rule run in float32 (so `hook_g` and `hook_state` are float32 there, as transformers keeps
them) and the readout returns to the model's dtype; a float64 model runs all of it in float64.

Example:
    >>> _, cache = model.run_with_cache(tokens)
    >>> cache["blocks.0.linear_attn.hook_state"].shape    # [batch, v_head, d_key, d_value]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from lmscope.components.attention import AttentionMask
from lmscope.components.linear import linear
from lmscope.components.mlp import ACTIVATIONS
from lmscope.components.norm import RMSNorm
from lmscope.components.precision import upcast
from lmscope.config import HookedTransformerConfig
from lmscope.hooks import HookPoint
from lmscope.kv_cache import RecurrentState  # noqa: F401 (the cache's entry, importable here)

CHUNK = 64  # positions per chunk of the delta rule


@dataclass
class RecurrentMask(AttentionMask):
    """The padding of a linear-attention layer's new positions: `mask` is [batch, pos] (True = a
    real token) or None when none is padding. Padded positions enter the layer as zeros, as
    transformers does, so they write nothing to the state and a left-padded row equals the row
    alone."""

    mask: Bool[Tensor, "batch pos"] | Int[Tensor, "batch pos"] | None  # 0/1 masks too


def _l2norm(x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def delta_rule(
    q: Float[Tensor, "batch head pos d_key"],
    k: Float[Tensor, "batch head pos d_key"],
    v: Float[Tensor, "batch head pos d_value"],
    g: Float[Tensor, "batch head pos"],
    beta: Float[Tensor, "batch head pos"],
    state: Float[Tensor, "batch head d_key d_value"] | None = None,
    chunk: int = CHUNK,
) -> tuple[Float[Tensor, "batch head pos d_value"], Float[Tensor, "batch head d_key d_value"]]:
    """The gated delta rule over all positions, chunk by chunk: (readouts, final state).

    Within a chunk with cumulative log decay c_i, the writes u_i = beta_i (v_i - S'_i^T k_i)
    solve (I + A) U = beta V - beta exp(c) K S_0 with A_ij = beta_i exp(c_i - c_j) k_i.k_j
    (j < i), and readout_i = exp(c_i) q_i S_0 + sum_{j <= i} exp(c_i - c_j) (q_i.k_j) u_j.

    Example:
        >>> out, state = delta_rule(q, k, v, g, beta)     # a zero initial state
    """
    b, h, p, dk = k.shape
    state = q.new_zeros(b, h, dk, v.shape[-1]) if state is None else state.to(q.dtype)
    outs = []
    for s in range(0, p, chunk):
        qc, kc, vc = q[:, :, s : s + chunk], k[:, :, s : s + chunk], v[:, :, s : s + chunk]
        gc, bc = g[:, :, s : s + chunk], beta[:, :, s : s + chunk]
        n = kc.shape[2]
        cum = gc.cumsum(-1)  # [b, h, n]
        lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")).exp()
        system = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).tril(-1)
        system = system + torch.eye(n, dtype=q.dtype, device=q.device)
        rhs = torch.cat((bc[..., None] * vc, (bc * cum.exp())[..., None] * kc), dim=-1)
        solved = torch.linalg.solve_triangular(system, rhs, upper=False, unitriangular=True)
        writes = solved[..., : vc.shape[-1]] - solved[..., vc.shape[-1] :] @ state
        scores = (qc @ kc.transpose(-1, -2)) * decay
        outs.append((qc * cum.exp()[..., None]) @ state + scores @ writes)
        last = cum[..., -1:]
        state = (
            last.exp()[..., None] * state
            + (kc * (last - cum).exp()[..., None]).transpose(-1, -2) @ writes
        )
    return torch.cat(outs, dim=2), state


class LinearAttention(nn.Module):
    """A gated delta-net layer (module docstring) with TransformerLens-style hooks and views."""

    def __init__(self, cfg: HookedTransformerConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        nk, nv = cfg.linear_n_key_heads, cfg.linear_n_value_heads
        dk, dv, dm = cfg.linear_d_key, cfg.linear_d_value, cfg.d_model
        self.key_dim, self.value_dim = nk * dk, nv * dv
        self.conv_dim = 2 * self.key_dim + self.value_dim
        dtype = cfg.dtype
        self.qkv_weight = nn.Parameter(torch.empty(self.conv_dim, dm, dtype=dtype))
        self.gate_weight = nn.Parameter(torch.empty(self.value_dim, dm, dtype=dtype))
        self.beta_weight = nn.Parameter(torch.empty(nv, dm, dtype=dtype))
        self.alpha_weight = nn.Parameter(torch.empty(nv, dm, dtype=dtype))
        self.conv_weight = nn.Parameter(
            torch.empty(self.conv_dim, 1, cfg.linear_conv_size, dtype=dtype)
        )
        self.A_log = nn.Parameter(torch.zeros(nv, dtype=dtype))
        self.dt_bias = nn.Parameter(torch.ones(nv, dtype=dtype))
        self.norm = RMSNorm(cfg, dv, weight_offset=0.0)  # its weight as it is, even in Qwen3.5
        self.o_weight = nn.Parameter(torch.empty(dm, self.value_dim, dtype=dtype))
        self.b_O = nn.Parameter(torch.zeros(dm, dtype=dtype))
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_q = HookPoint()  # [batch, pos, k_head, d_key]
        self.hook_k = HookPoint()  # [batch, pos, k_head, d_key]
        self.hook_v = HookPoint()  # [batch, pos, v_head, d_value]
        self.hook_beta = HookPoint()  # [batch, pos, v_head]
        self.hook_g = HookPoint()  # [batch, pos, v_head], log decay
        self.hook_readout = HookPoint()  # [batch, pos, v_head, d_value]
        self.hook_gate = HookPoint()  # [batch, pos, v_head, d_value], silu(x @ W_gate)
        self.hook_z = HookPoint()  # [batch, pos, v_head, d_value], what W_O reads
        self.hook_state = HookPoint()  # [batch, v_head, d_key, d_value], after the last position

    # -- weight views (TransformerLens-style layout: [head, d_model, d_head]) ---------------------
    def _heads(self, rows: Tensor, d: int) -> Tensor:
        return rows.view(-1, d, self.cfg.d_model).transpose(1, 2)

    @property
    def W_Q(self) -> Float[Tensor, "k_head d_model d_key"]:
        return self._heads(self.qkv_weight[: self.key_dim], self.cfg.linear_d_key)

    @property
    def W_K(self) -> Float[Tensor, "k_head d_model d_key"]:
        return self._heads(self.qkv_weight[self.key_dim : 2 * self.key_dim], self.cfg.linear_d_key)

    @property
    def W_V(self) -> Float[Tensor, "v_head d_model d_value"]:
        return self._heads(self.qkv_weight[2 * self.key_dim :], self.cfg.linear_d_value)

    @property
    def W_gate(self) -> Float[Tensor, "v_head d_model d_value"]:
        return self._heads(self.gate_weight, self.cfg.linear_d_value)

    @property
    def W_O(self) -> Float[Tensor, "v_head d_value d_model"]:
        cfg = self.cfg
        return self.o_weight.view(cfg.d_model, -1, cfg.linear_d_value).permute(1, 2, 0)

    def weights(self) -> dict[str, Tensor]:
        """This layer's weights under TransformerLens-style names (views of the storage).

        Example:
            >>> block.linear_attn.weights()["W_V"].shape     # [v_head, d_model, d_value]
        """
        return {
            "W_Q": self.W_Q,
            "W_K": self.W_K,
            "W_V": self.W_V,
            "W_gate": self.W_gate,
            "W_beta": self.beta_weight.T,
            "W_alpha": self.alpha_weight.T,
            "W_conv": self.conv_weight[:, 0],
            "A_log": self.A_log,
            "dt_bias": self.dt_bias,
            "W_O": self.W_O,
            "b_O": self.b_O,
        }

    def input_weights(self) -> list[tuple[Tensor, Tensor | None]]:
        """(W [d_model, out], b) pairs that read the block's normalised input (for fold_ln)."""
        return [(w.T, None) for w in (self.qkv_weight, self.gate_weight)] + [
            (self.beta_weight.T, None),
            (self.alpha_weight.T, None),
        ]

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        mask: AttentionMask,
        kv_cache: RecurrentState | None = None,
        cache_start: int = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The layer over new positions (continuing, with `kv_cache`, from the state after
        `cache_start` positions, and saving the state after them)."""
        cfg = self.cfg
        valid: Bool[Tensor, "batch pos"] | None = mask.mask
        if valid is not None:
            x = x * valid[..., None].to(x.dtype)
        b, p, _ = x.shape
        nv, dk, dv = cfg.linear_n_value_heads, cfg.linear_d_key, cfg.linear_d_value
        saved = kv_cache.read(cache_start) if kv_cache is not None else None
        mixed = linear(x, self.qkv_weight, None)  # [b, p, conv_dim]
        width = cfg.linear_conv_size - 1
        before = saved[0] if saved is not None else mixed.new_zeros(b, width, self.conv_dim)
        seq = torch.cat((before.to(mixed.dtype), mixed), dim=1)
        conv = F.conv1d(seq.transpose(1, 2), self.conv_weight, groups=self.conv_dim)
        conv = self.act(conv).transpose(1, 2)  # [b, p, conv_dim]
        q, k, v = conv.split((self.key_dim, self.key_dim, self.value_dim), dim=-1)
        q = self.hook_q(q.reshape(b, p, -1, dk))
        k = self.hook_k(k.reshape(b, p, -1, dk))
        v = self.hook_v(v.reshape(b, p, nv, dv))
        beta = self.hook_beta(torch.sigmoid(linear(x, self.beta_weight, None)))
        # the recurrence runs in float32 for half-precision models (as transformers does: fp16's
        # exp(A_log) can overflow) and in the model's dtype otherwise
        alpha = upcast(linear(x, self.alpha_weight, None)) + upcast(self.dt_bias)
        g = self.hook_g(-upcast(self.A_log).exp() * F.softplus(alpha))

        group = nv // q.shape[2]
        qf, kf = (_l2norm(upcast(t)).repeat_interleave(group, dim=2) for t in (q, k))
        qf = qf * dk**-0.5
        heads = [t.transpose(1, 2) for t in (qf, kf, upcast(v))]  # [b, head, p, d]
        out, state = delta_rule(
            *heads, g.transpose(1, 2), upcast(beta).transpose(1, 2), saved[1] if saved else None
        )
        state = self.hook_state(state)
        if kv_cache is not None:
            kv_cache.write(cache_start, cache_start + p, seq[:, seq.shape[1] - width :], state)
        readout = self.hook_readout(out.transpose(1, 2).to(x.dtype))  # [b, p, v_head, d_value]
        gate = linear(x, self.gate_weight, None).view(b, p, nv, dv)
        gate = self.hook_gate(F.silu(upcast(gate)).to(x.dtype))
        z = self.hook_z((upcast(self.norm(readout)) * upcast(gate)).to(x.dtype))
        return linear(z.flatten(2), self.o_weight, self.b_O)
