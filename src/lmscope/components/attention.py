"""Multi-head attention (MHA, GQA and MQA) with every TransformerLens hook.

Storage is the checkpoints' own nn.Linear layout: `q_weight` [n_heads d_head, d_model], `k_weight`
and `v_weight` [n_kv d_head, d_model], `o_weight` [d_model, n_heads d_head], so loading adopts a
checkpoint's tensors without copying them (a fused q/k/v matmul measured no faster on CPU).
`W_Q` [head, d_model, d_head], `W_K`, `W_V`, `W_O` [head, d_head, d_model] and the biases are
views of that storage: editing a view edits the model.

Two paths give the same numbers: a fast one through `scaled_dot_product_attention`, taken whenever
nobody hooks `hook_attn_scores` or `hook_pattern` (caching them counts as hooking), and an explicit
one that materialises scores and pattern for the hooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from lmscope.components.exact import HookValues, fused_value, needs_grad, untouched, version
from lmscope.components.linear import linear
from lmscope.components.norm import RMSNormPre
from lmscope.components.precision import HALF_DTYPES
from lmscope.components.qk_norm import make_qk_norm
from lmscope.components.rotary import apply_rotary
from lmscope.config import HookedTransformerConfig, LayerConfig
from lmscope.hooks import HookPoint

if TYPE_CHECKING:
    from lmscope.kv_cache import KVCacheEntry

_compiling = torch.compiler.is_compiling

# `enable_gqa` (torch >= 2.5) lets SDPA read each kv head for its query group without copying.
_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


# Small causal biases (the explicit path's causal mask, see `AttentionMask.causal_bias`), shared by
# every forward: a batch of short sequences would otherwise spend ops rebuilding one per call.
_CAUSAL_BIAS: dict[tuple[torch.device, torch.dtype, int, int], Tensor] = {}
_SHARED_BIAS_BITS = 8 * 2**20 * 4  # 4 MiB
_MISSING = object()


def _causal_bias(
    device: torch.device, dtype: torch.dtype, groups: int, q_len: int
) -> Float[Tensor, "rows k"]:
    """0 on and below the diagonal, -inf above, [groups * q_len, q_len]; a normal tensor that
    needs no gradient, whatever the grad or inference mode."""
    with torch.inference_mode(False), torch.no_grad():
        square = torch.full((q_len, q_len), float("-inf"), dtype=dtype, device=device).triu_(1)
        return square.repeat(groups, 1)


@dataclass
class AttentionMask:
    """Which keys each query may see (and any additive bias), built once per forward per layer
    type and shared by the layers of that type.

    `mask` is None when nothing beyond causality applies: then `is_causal` says whether the
    queries are a causal square (SDPA's `is_causal` path) or a single new query that sees every
    key (a KV-cache step). Otherwise it is a boolean [batch, 1, q_pos, k_pos] (True = attend);
    queries are the last q_pos of the k_pos positions. Rows with no visible key (left padding)
    are opened fully so neither path produces NaN; those positions are padding and mean nothing.
    `bias` is an additive [batch, head, q_pos, k_pos] term on the scores (ALiBi).
    """

    mask: Bool[Tensor, "batch 1 #q k"] | None  # one row for every query too
    is_causal: bool = True
    bias: Float[Tensor, "#batch head #q k"] | None = None  # one for every row too
    _sdpa: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        key_valid: Bool[Tensor, "batch k"] | Int[Tensor, "batch k"] | None,  # 0/1 masks too
        q_len: int,
        k_len: int,
        device: torch.device,
        window: int | None = None,
        bias: Tensor | None = None,
        causal: bool = True,
        chunk: int | None = None,
    ) -> AttentionMask:
        """Causal mask, with padding (`key_valid`) and a sliding window (key i - window < j <= i).
        With `causal=False` (encoders, cross-attention) every query sees every real key: the mask
        is `key_valid` alone, [batch, 1, 1, k_pos], or None without padding. With `chunk`
        (Llama 4's chunked attention) a query sees only the keys of its own chunk of `chunk`
        positions, counting real tokens (left padding does not shift the chunks)."""
        if not causal:
            if key_valid is None:
                return cls(None, False, bias)
            return cls(key_valid[:, None, None, :].bool(), False, bias)
        windowed = window is not None and k_len > window
        if chunk is not None and k_len > chunk:
            return cls._chunked(key_valid, q_len, k_len, device, chunk, bias)
        if key_valid is None and not windowed:
            if q_len == k_len:
                return cls(None, True, bias)
            if q_len == 1:
                return cls(None, False, bias)
        q_idx = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        k_idx = torch.arange(k_len, device=device)[None, :]
        allowed = k_idx <= q_idx
        if windowed:
            allowed = allowed & (k_idx > q_idx - window)
        mask = allowed[None, None]
        if key_valid is not None:
            mask = mask & key_valid[:, None, None, :].bool()
            mask = mask | ~mask.any(-1, keepdim=True)
        return cls(mask, False, bias)

    @classmethod
    def _chunked(
        cls,
        key_valid: Bool[Tensor, "batch k"] | Int[Tensor, "batch k"] | None,  # 0/1 masks too
        q_len: int,
        k_len: int,
        device: torch.device,
        chunk: int,
        bias: Tensor | None,
    ) -> AttentionMask:
        if key_valid is None:
            key_pos = torch.arange(k_len, device=device)[None]
        else:
            key_pos = (key_valid.long().cumsum(-1) - 1).clamp(min=0)
        query_pos = key_pos[:, k_len - q_len :]
        q_idx = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        allowed = torch.arange(k_len, device=device)[None, :] <= q_idx
        same_chunk = (key_pos[:, None, :] // chunk) == (query_pos[:, :, None] // chunk)
        mask = (allowed[None] & same_chunk)[:, None]
        if key_valid is not None:
            mask = mask & key_valid[:, None, None, :].bool()
            mask = mask | ~mask.any(-1, keepdim=True)
        return cls(mask, False, bias)

    def dense(self, q_len: int, k_len: int, device: torch.device) -> Bool[Tensor, "batch 1 q k"]:
        """The boolean mask, materialising an implicit one."""
        if self.mask is not None:
            return self.mask
        square = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
        return (square.tril() if self.is_causal else square)[None, None]

    def blocked(self, q_len: int, k_len: int, device: torch.device) -> Bool[Tensor, "batch 1 q k"]:
        """Where the dense mask forbids attending (True = blocked), made once per forward."""
        key = ("blocked", q_len, k_len)
        if key not in self._sdpa:
            self._sdpa[key] = ~self.dense(q_len, k_len, device)
        return self._sdpa[key]

    def causal_bias(
        self, groups: int, q_len: int, device: torch.device, dtype: torch.dtype
    ) -> Float[Tensor, "rows k"]:
        """The implicit causal square as an additive 0 / -inf bias, repeated for `groups` query
        heads folded into the rows ([groups * q_len, q_len]): made once per process when small
        (`_causal_bias`), else once per forward."""
        key = (device, dtype, groups, q_len)
        bias = _CAUSAL_BIAS.get(key)
        if bias is not None:
            return bias
        if groups * q_len * q_len * torch.finfo(dtype).bits <= _SHARED_BIAS_BITS:
            if len(_CAUSAL_BIAS) >= 64:
                _CAUSAL_BIAS.clear()
            bias = _CAUSAL_BIAS[key] = _causal_bias(*key)
            return bias
        if key not in self._sdpa:
            self._sdpa[key] = _causal_bias(*key)
        return self._sdpa[key]

    def sdpa_mask(
        self, q_len: int, k_len: int, device: torch.device, dtype: torch.dtype = torch.float32
    ) -> Tensor | None:
        """What SDPA's `attn_mask` takes: None (implicit), or an additive float mask (0 / -inf,
        plus any bias) made once and reused by every layer (SDPA would convert a boolean mask
        in each call)."""
        if self.bias is None and self.mask is None:
            return None
        key = (q_len, k_len, dtype)
        if key not in self._sdpa:
            allowed = self.dense(q_len, k_len, device)
            if self.bias is None:
                base = torch.zeros(allowed.shape, dtype=dtype, device=device)
            else:  # in the scores' dtype, as transformers' BLOOM casts its ALiBi tensor
                base = self.bias.to(dtype)
            self._sdpa[key] = base.masked_fill(~allowed, float("-inf"))
        return self._sdpa[key]


def alibi_bias(
    n_heads: int, key_positions: Int[Tensor, "batch k"], q_len: int
) -> Float[Tensor, "batch head q k"]:
    """ALiBi: head h adds slope_h * key_position to every score (BLOOM's form; a per-row constant
    away from slope_h * (k - q), which softmax ignores)."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = base ** torch.arange(1, closest + 1, dtype=torch.float32)
    if closest != n_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        n_extra = n_heads - closest
        slopes = torch.cat(
            [slopes, extra_base ** torch.arange(1, 1 + 2 * n_extra, 2, dtype=torch.float32)]
        )
    slopes = slopes.to(key_positions.device)
    bias = slopes[None, :, None] * key_positions[:, None, :].float()  # [batch, head, k]
    return bias[:, :, None, :].expand(-1, -1, q_len, -1)


def _softmax(scores: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q k"]:
    """Softmax over keys; half-precision scores are normalised in float32 and the pattern cast
    back (transformers' eager attention does the same)."""
    if scores.dtype in HALF_DTYPES:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


class Attention(nn.Module):
    """Causal self-attention with TransformerLens hooks and layout."""

    def __init__(self, cfg: HookedTransformerConfig | LayerConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        nh, nkv, dh, dm = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_model
        # Gemma 4: a layer that reuses an earlier layer's keys and values has no projections of
        # its own for them; a global layer whose values are its keys' projection has no W_V
        sources = cfg.kv_source_layers
        self.kv_source: int | None = sources[layer_idx] if sources else None
        self.v_from_k = cfg.v_from_k_global and cfg.layer_types[layer_idx] == "global"
        has_k = self.kv_source is None
        has_v = has_k and not self.v_from_k
        self.q_weight = nn.Parameter(torch.empty(nh * dh, dm, dtype=cfg.dtype))
        self.k_weight = nn.Parameter(torch.empty(nkv * dh, dm, dtype=cfg.dtype)) if has_k else None
        self.v_weight = nn.Parameter(torch.empty(nkv * dh, dm, dtype=cfg.dtype)) if has_v else None
        self.q_bias = nn.Parameter(torch.zeros(nh * dh, dtype=cfg.dtype))
        self.k_bias = nn.Parameter(torch.zeros(nkv * dh, dtype=cfg.dtype)) if has_k else None
        self.v_bias = nn.Parameter(torch.zeros(nkv * dh, dtype=cfg.dtype)) if has_v else None
        self.o_weight = nn.Parameter(torch.empty(dm, nh * dh, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(dm, dtype=cfg.dtype))

        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [batch, head, q_pos, k_pos]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], with use_attn_result
        if cfg.positional_embedding_type == "rotary":
            self.hook_rot_k = HookPoint()
            self.hook_rot_q = HookPoint()
        if cfg.attn_sinks:  # GPT-OSS: a learned logit per head that takes attention from the keys
            self.sinks = nn.Parameter(torch.zeros(nh, dtype=cfg.dtype))
            self.hook_sink_pattern = HookPoint()  # [batch, head, q_pos]: attention on the sink
        if cfg.use_qk_norm:  # hooks attn.q_norm.hook_scale / hook_normalized, likewise k_norm
            self.q_norm = make_qk_norm(cfg, nh)
            if has_k:
                self.k_norm = make_qk_norm(cfg, nkv)
        if cfg.attn_output_gate:  # Qwen3.5 / Qwen3-Next: z *= sigmoid(x @ W_gate + b_gate)
            self.gate_weight = nn.Parameter(torch.empty(nh * dh, dm, dtype=cfg.dtype))
            self.gate_bias = nn.Parameter(torch.zeros(nh * dh, dtype=cfg.dtype))
            self.hook_gate = HookPoint()  # [batch, pos, head, d_head], the sigmoid
        if cfg.use_v_norm and has_k:  # Gemma 4: weightless, hooks attn.v_norm.hook_scale / ...
            self.v_norm = RMSNormPre(cfg, dh)

    def __getattr__(self, name: str) -> Any:
        # submodules and parameters first, without nn.Module.__getattr__'s frame (a forward reads
        # a dozen hook points and weights per layer); names never repeat across the two dicts
        found = self._modules.get(name, _MISSING)
        if found is _MISSING:
            found = self._parameters.get(name, _MISSING)
        if found is not _MISSING:
            return found
        try:
            return super().__getattr__(name)
        except AttributeError:
            # a view that raised AttributeError (W_K of a layer that reuses another's keys)
            # lands here, and nn.Module would replace its message with a generic one
            prop = getattr(type(self), name, None)
            if isinstance(prop, property) and prop.fget is not None:
                prop.fget(self)
            raise

    # -- weight views (TransformerLens layout) -------------------------------------------------
    def _heads(self, w: Tensor) -> Float[Tensor, "n d_model d_head"]:
        return w.view(-1, self.cfg.d_head, self.cfg.d_model).transpose(1, 2)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._heads(self.q_weight)

    def _own_kv(self) -> None:
        if self.kv_source is not None:
            raise AttributeError(
                f"layer {self.layer_idx} reuses the keys and values of layer {self.kv_source} "
                f"(Gemma 4's KV sharing) and has no key or value weights: read "
                f"blocks[{self.kv_source}].attn's"
            )

    def _value_params(self) -> tuple[Tensor, Tensor]:
        """The values' (weight, bias): the keys' on a layer whose values are its keys'."""
        self._own_kv()
        if self.v_from_k:
            return self.k_weight, self.k_bias
        return self.v_weight, self.v_bias

    @property
    def _W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        """The stored keys' weights, one per key/value head (a view: editing it edits the model)."""
        self._own_kv()
        return self._heads(self.k_weight)

    @property
    def _W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        """The stored values' weights, one per key/value head (a view; on a layer whose values
        are its keys' projection, `v_from_k`, the keys' weights themselves)."""
        return self._heads(self._value_params()[0])

    @property
    def _b_K(self) -> Float[Tensor, "kv_head d_head"]:
        self._own_kv()
        return self.k_bias.view(-1, self.cfg.d_head)

    @property
    def _b_V(self) -> Float[Tensor, "kv_head d_head"]:
        return self._value_params()[1].view(-1, self.cfg.d_head)

    def _ungrouped(self, t: Tensor) -> Tensor:
        """`t` with one entry per query head when `cfg.ungroup_grouped_query_attention` is on
        (repeat_interleave over each group, a copy, as TransformerLens); else `t` itself."""
        g = self.cfg.n_groups
        return (
            t.repeat_interleave(g, dim=0)
            if g > 1 and self.cfg.ungroup_grouped_query_attention
            else t
        )

    @property
    def W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        """Key weights: the stored view per key/value head, or with
        `ungroup_grouped_query_attention` a copy with one per query head."""
        return self._ungrouped(self._W_K)

    @property
    def W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        """Value weights: per key/value head, or per query head when ungrouped (a copy)."""
        return self._ungrouped(self._W_V)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return self.q_bias.view(-1, self.cfg.d_head)

    @property
    def b_K(self) -> Float[Tensor, "kv_head d_head"]:
        return self._ungrouped(self._b_K)

    @property
    def b_V(self) -> Float[Tensor, "kv_head d_head"]:
        return self._ungrouped(self._b_V)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        cfg = self.cfg
        return self.o_weight.view(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 2, 0)

    @property
    def W_gate(self) -> Float[Tensor, "head d_model d_head"]:
        """The output gate's weights (`cfg.attn_output_gate`), a view."""
        return self._heads(self.gate_weight)

    @property
    def b_gate(self) -> Float[Tensor, "head d_head"]:
        return self.gate_bias.view(-1, self.cfg.d_head)

    def weights(self) -> dict[str, Tensor]:
        """This layer's weights under their TransformerLens names (views of the storage); keys and
        values per key/value head, as stored (never ungrouped copies).

        Example:
            >>> block.attn.weights()["W_Q"].shape     # [head, d_model, d_head]
        """
        names = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
        if self.kv_source is not None:  # (Gemma 4's layers that reuse another's keys, values)
            names = ("W_Q", "W_O", "b_Q", "b_O")
        names += ("W_gate", "b_gate") if self.cfg.attn_output_gate else ()
        return {name: getattr(self, f"_{name}" if name[-1] in "KV" else name) for name in names}

    def input_weights(self) -> list[tuple[Tensor, Tensor | None]]:
        """(W, b) pairs that read the block's normalised input, for weight processing (each
        stored matrix once: values that are the keys' projection are not listed again)."""
        pairs = [(self.W_Q, self.b_Q)]
        if self.kv_source is None:
            pairs.append((self._W_K, self._b_K))
            if not self.v_from_k:
                pairs.append((self._W_V, self._b_V))
        return pairs + ([(self.W_gate, self.b_gate)] if self.cfg.attn_output_gate else [])

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        query_input: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
        # (cross-attention: the keys and values have their own length)
        key_input: Float[Tensor, "batch k_pos d_model"]
        | Float[Tensor, "batch k_pos kv_head d_model"],
        value_input: Float[Tensor, "batch k_pos d_model"]
        | Float[Tensor, "batch k_pos kv_head d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None = None,
        kv_cache: KVCacheEntry | None = None,
        cache_start: int = 0,
        shared_kv: dict[int, tuple[Tensor, Tensor]] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Attention over the inputs (and, with `kv_cache`, over the cached positions before
        `cache_start`, to which this call's keys and values are appended). `shared_kv` (Gemma
        4's KV sharing) receives this layer's keys and values, cached ones included, under its
        index; a layer with a `kv_source` attends to that layer's from there."""
        if self.kv_source is not None:
            return self._forward_shared_kv(query_input, mask, rotary, cache_start, shared_kv)
        cfg = self.cfg
        b, p = query_input.shape[:2]
        if query_input.ndim == 3 and key_input.ndim == 3 and value_input.ndim == 3:
            # (keys and values may read another sequence: cross-attention reads the encoder's,
            # and reads no new positions once a cache holds them)
            q = linear(query_input, self.q_weight, self.q_bias).view(b, p, -1, cfg.d_head)
            k = linear(key_input, self.k_weight, self.k_bias).unflatten(-1, (-1, cfg.d_head))
            v = linear(value_input, *self._value_params()).unflatten(-1, (-1, cfg.d_head))
            if cfg.clip_qkv is not None and not cfg.use_qk_norm:
                q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        else:  # per-head inputs (use_split_qkv_input / use_attn_in)
            q = self._project(query_input, self.W_Q, self.b_Q)
            ungrouped = key_input.ndim == 4 and key_input.shape[2] == cfg.n_heads
            k = self._project(
                key_input, *((self.W_K, self.b_K) if ungrouped else (self._W_K, self._b_K))
            )
            v = self._project(
                value_input, *((self.W_V, self.b_V) if ungrouped else (self._W_V, self._b_V))
            )
            if cfg.clip_qkv is not None and not cfg.use_qk_norm:
                q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        if cfg.use_qk_norm and not cfg.qk_norm_after_rotary:
            q, k = self._qk_norm(q, self.q_norm), self._qk_norm(k, self.k_norm)
            if cfg.clip_qkv is not None:  # with a q/k norm the clamp follows it (OLMoE)
                q, k, v = (t.clamp(-cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
        if cfg.use_v_norm:
            v = self.v_norm(v)
        if cfg.ungroup_grouped_query_attention and k.shape[2] != cfg.n_heads:
            k, v = (t.repeat_interleave(cfg.n_groups, dim=2) for t in (k, v))
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        if rotary is not None:
            cos, sin = rotary
            q = self.hook_rot_q(apply_rotary(q, cos, sin, cfg.rotary_adjacent_pairs))
            k = self.hook_rot_k(apply_rotary(k, cos, sin, cfg.rotary_adjacent_pairs))
            if cfg.use_qk_norm and cfg.qk_norm_after_rotary:  # Llama 4: rotating layers only
                q, k = self._qk_norm(q, self.q_norm), self._qk_norm(k, self.k_norm)
        elif cfg.attn_temperature_scale is not None:  # Llama 4's NoPE layers
            q = q * self._temperature(cache_start, p, q)

        # [batch, head, pos, d_head] from here on
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v, cache_start)
        if shared_kv is not None:
            shared_kv[self.layer_idx] = (k, v)
        return self._attend(q, k, v, mask, self._gate(query_input))

    def _gate(
        self, x: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"]
    ) -> Float[Tensor, "batch pos head d_head"] | None:
        """The output gate sigmoid(x @ W_gate + b_gate) per head (`cfg.attn_output_gate`)."""
        if not self.cfg.attn_output_gate:
            return None
        if x.ndim == 3:
            gate = linear(x, self.gate_weight, self.gate_bias).unflatten(-1, (-1, self.cfg.d_head))
        else:
            gate = self._project(x, self.W_gate, self.b_gate)
        return self.hook_gate(torch.sigmoid(gate))

    def _forward_shared_kv(
        self,
        x: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
        mask: AttentionMask,
        rotary: tuple[Tensor, Tensor] | None,
        cache_start: int,
        shared_kv: dict[int, tuple[Tensor, Tensor]] | None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Gemma 4's KV sharing: this layer's queries (`hook_q`, `hook_rot_q`) attend to the keys
        and values layer `kv_source` computed in this forward (its `hook_k` / `hook_v`: this
        layer's never fire)."""
        cfg = self.cfg
        if x.ndim != 3:
            raise ValueError(
                f"layer {self.layer_idx} reuses layer {self.kv_source}'s keys and values, so it "
                "takes no per-head inputs (use_split_qkv_input / use_attn_in)"
            )
        if shared_kv is None or self.kv_source not in shared_kv:
            raise ValueError(
                f"layer {self.layer_idx} attends to the keys and values of layer "
                f"{self.kv_source} (Gemma 4's KV sharing): run the model from layer "
                f"{self.kv_source} or earlier (start_at_layer)"
            )
        b, p = x.shape[:2]
        q = linear(x, self.q_weight, self.q_bias).view(b, p, -1, cfg.d_head)
        if cfg.use_qk_norm:
            q = self._qk_norm(q, self.q_norm)
        q = self.hook_q(q)
        if rotary is not None:
            q = self.hook_rot_q(apply_rotary(q, *rotary, cfg.rotary_adjacent_pairs))
        k, v = shared_kv[self.kv_source]
        if cfg.ungroup_grouped_query_attention and k.shape[1] != cfg.n_heads:
            k, v = (t.repeat_interleave(cfg.n_groups, dim=1) for t in (k, v))
        return self._attend(q.transpose(1, 2), k, v, mask)

    def _attend(
        self,
        q: Float[Tensor, "batch head q d_qk"],
        k: Float[Tensor, "batch kv_head k d_qk"],
        v: Float[Tensor, "batch kv_head k d_head"],
        mask: AttentionMask,
        gate: Float[Tensor, "batch q head d_head"] | None = None,
    ) -> Float[Tensor, "batch q d_model"]:
        """The heads' mixes of values (`hook_z`, times the output `gate` where there is one)
        through the path the hooks and switches call for, and the output projection (per head
        as `hook_result` with `use_attn_result`)."""
        cfg = self.cfg
        scores_hook, pattern_hook = self.hook_attn_scores, self.hook_pattern
        if cfg.attn_scores_soft_cap > 0 or cfg.attn_sinks:
            z = self._explicit_attention(q, k, v, mask)
        elif scores_hook.fires() or pattern_hook.fires():
            z = self._hooked_attention(q, k, v, mask, scores_hook, pattern_hook)
        else:
            z = self._fast_attention(q, k, v, mask)
        z = z.transpose(1, 2)
        z = self.hook_z(z if gate is None else z * gate)
        if cfg.use_attn_result:
            result = self.hook_result(einops.einsum(z, self.W_O, "b p h dh, h dh dm -> b p h dm"))
            return result.sum(dim=2) + self.b_O
        return linear(z.flatten(2), self.o_weight, self.b_O)

    def _temperature(self, start: int, p: int, q: Tensor) -> Float[Tensor, "1 pos 1 1"]:
        """Llama 4's attention temperature for positions start..start+p (counting padding, as
        transformers does): log1p(floor((pos + 1) / floor_scale)) * scale + 1."""
        cfg = self.cfg
        pos = torch.arange(start, start + p, device=q.device, dtype=torch.float32)
        scale = torch.log1p(torch.floor((pos + 1.0) / cfg.attn_temperature_floor))
        return (scale * cfg.attn_temperature_scale + 1.0).to(q.dtype).view(1, p, 1, 1)

    @staticmethod
    def _project(
        x: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
        W: Float[Tensor, "head d_model d_head"],
        bias: Float[Tensor, "head d_head"],
    ) -> Float[Tensor, "batch pos head d_head"]:
        if x.ndim == 3:
            return einops.einsum(x, W, "b p dm, h dm dh -> b p h dh") + bias
        return einops.einsum(x, W, "b p h dm, h dm dh -> b p h dh") + bias

    def _qk_norm(self, x: Float[Tensor, "batch pos head d_head"], norm: nn.Module) -> Tensor:
        if self.cfg.qk_norm_per_head:
            return norm(x)
        return norm(x.flatten(-2)).view_as(x)

    def _expand_kv(
        self, t: Float[Tensor, "batch kv_head pos d_head"]
    ) -> Float[Tensor, "batch head pos d_head"]:
        g = self.cfg.n_heads // t.shape[1]
        return t if g == 1 else t.repeat_interleave(g, dim=1)

    def _fast_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask
    ) -> Float[Tensor, "batch head pos d_head"]:
        # Same numbers either way; the CPU kernel takes GQA with or without a mask, while CUDA
        # kernels fall back to the slow math path for a masked GQA call, so expand there.
        attn_mask = mask.sdpa_mask(q.shape[-2], k.shape[-2], q.device, q.dtype)
        gqa = (
            k.shape[1] != q.shape[1]
            and _SDPA_HAS_GQA
            and (attn_mask is None or q.device.type == "cpu")
        )
        if not gqa:
            k, v = self._expand_kv(k), self._expand_kv(v)
        z = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None and mask.is_causal,
            scale=1.0 / self.cfg.attn_scale if self.cfg.use_attn_scale else 1.0,
            **({"enable_gqa": True} if gqa else {}),
        )
        return z

    def _hooked_attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: AttentionMask,
        scores_hook: HookPoint,
        pattern_hook: HookPoint,
    ) -> Float[Tensor, "batch head pos d_head"]:
        """Scores and pattern made for their hooks, while z stays SDPA's (the unhooked numbers,
        see `lmscope.components.exact`) unless a hook edited the scores or the pattern. When autograd
        records, gradients run through the explicit pattern (so hooks and `autograd.grad` on it
        see them), unless caching hooks alone fire there (they store the values detached).
        Traced by torch.compile (`lmscope.compiled`), z is pattern @ v."""
        if scores_hook.only_stores() and pattern_hook.only_stores() and not _compiling():
            # stored as they are: no edit to look for, no gradient to see, nothing recorded (no
            # attention sinks here: those layers take `_explicit_attention`)
            grad = torch.is_grad_enabled()
            if grad:
                torch._C._set_grad_enabled(False)
            try:
                pattern_hook(_softmax(scores_hook(self._scores(q, k, mask))))
            finally:
                if grad:
                    torch._C._set_grad_enabled(True)
            return self._fast_attention(q, k, v, mask)
        grad = needs_grad(q, k, v) and not (
            scores_hook.only_caches() and pattern_hook.only_caches()
        )
        pattern, edited = self._pattern(q, k, mask, detached=not grad)
        if edited or _compiling():
            return self._mix(pattern, v)
        if grad:
            fast = lambda: self._fast_attention(q, k, v, mask)  # noqa: E731
            return fused_value(fast, self._mix(pattern, v))
        return self._fast_attention(q, k, v, mask)

    def _explicit_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: AttentionMask
    ) -> Float[Tensor, "batch head pos d_head"]:
        """Attention through the materialised (and hooked) scores and pattern."""
        return self._mix(self._pattern(q, k, mask)[0], v)

    def _softmax(self, scores: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q k"]:
        """The pattern over the keys; with attention sinks each head's sink logit joins the
        softmax as one more key whose value is zero, so a row sums to 1 minus the sink's share
        (`hook_sink_pattern`)."""
        if not self.cfg.attn_sinks:
            return _softmax(scores)
        b, h, q, _ = scores.shape
        sink = self.sinks.to(scores.dtype).view(1, h, 1, 1).expand(b, h, q, 1)
        probs = _softmax(torch.cat((scores, sink), dim=-1))
        self.hook_sink_pattern(probs[..., -1])
        return probs[..., :-1]

    def _pattern(
        self, q: Tensor, k: Tensor, mask: AttentionMask, detached: bool = False
    ) -> tuple[Float[Tensor, "batch head q k"], bool]:
        """The attention pattern, after `hook_attn_scores` and `hook_pattern`, and whether a hook
        edited or replaced the scores or the pattern (always False when traced by
        torch.compile, where whatever the hooks return flows on). `detached`: autograd does not
        record them (see `HookValues`)."""
        if _compiling():
            scores = self.hook_attn_scores(self._scores(q, k, mask))
            return self.hook_pattern(self._softmax(scores)), False
        if not torch.is_grad_enabled() and (
            self.hook_attn_scores.only_stores() and self.hook_pattern.only_stores()
        ):  # stored as they are: no edit to look for
            scores = self.hook_attn_scores(self._scores(q, k, mask))
            return self.hook_pattern(self._softmax(scores)), False
        with HookValues(detached):
            scores = self._scores(q, k, mask)
        before = version(scores)
        seen = self.hook_attn_scores(scores)
        edited = not untouched(seen, scores, before)
        with HookValues(detached):
            pattern = self._softmax(seen)
        before = version(pattern)
        seen = self.hook_pattern(pattern)
        return seen, edited or not untouched(seen, pattern, before)

    def _scores(self, q: Tensor, k: Tensor, mask: AttentionMask) -> Float[Tensor, "batch head q k"]:
        """Scaled, capped and masked attention scores. Causal self-attention takes one kernel:
        the matmul scales and adds the causal bias (`baddbmm`)."""
        # Grouped heads fold into the query positions ([batch, kv_head, group * pos, d_head]), so
        # each key/value head is read where it is, never copied per query head.
        b, h, p, dh = q.shape
        kv = k.shape[1]
        cap = self.cfg.attn_scores_soft_cap
        causal = mask.mask is None and mask.bias is None and mask.is_causal and p > 1
        if causal and cap <= 0 and not _compiling():
            bias = mask.causal_bias(h // kv, p, q.device, q.dtype)
            alpha = 1.0 / self.cfg.attn_scale if self.cfg.use_attn_scale else 1.0
            q3 = q.reshape(b * kv, (h // kv) * p, dh)
            k3 = k.reshape(b * kv, p, dh).transpose(1, 2)
            return torch.baddbmm(bias, q3, k3, alpha=alpha).view(b, h, p, p)
        scores = (q.reshape(b, kv, (h // kv) * p, dh) @ k.transpose(-1, -2)).view(b, h, p, -1)
        if self.cfg.use_attn_scale:
            scores.div_(self.cfg.attn_scale)  # in place: the matmul's output is not saved
        if cap > 0:
            scores = cap * torch.tanh(scores / cap)
        if mask.mask is not None or mask.bias is not None:
            scores += mask.sdpa_mask(p, scores.shape[-1], q.device, q.dtype)  # 0/-inf (+ bias)
        elif mask.is_causal and p > 1:
            scores.masked_fill_(mask.blocked(p, scores.shape[-1], q.device), float("-inf"))
        return scores

    @staticmethod
    def _mix(
        pattern: Float[Tensor, "batch head q k"], v: Float[Tensor, "batch kv_head k d_head"]
    ) -> Float[Tensor, "batch head q d_head"]:
        """pattern @ v, each query head reading its key/value head in place."""
        b, h, p, _ = pattern.shape
        kv, dh = v.shape[1], v.shape[-1]
        return (pattern.reshape(b, kv, (h // kv) * p, -1) @ v).view(b, h, p, dh)
