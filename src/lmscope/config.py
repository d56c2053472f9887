"""HookedTransformerConfig: every number and switch that shapes a model, validated in one place.

Field names follow TransformerLens so configs and notebooks port unchanged. Derived fields
(`d_head`, `d_mlp`, `n_key_value_heads`, `rotary_dim`, ...) are filled in `__post_init__` and
nowhere else.

Example:
    >>> cfg = HookedTransformerConfig(d_model=64, n_layers=2, n_heads=4, d_vocab=100, n_ctx=32,
    ...                               act_fn="gelu_new", normalization_type="LN")
    >>> cfg.d_head, cfg.d_mlp
    (16, 256)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

ACT_FNS = (
    "gelu",
    "gelu_new",
    "gelu_fast",
    "gelu_pytorch_tanh",
    "relu",
    "relu2",
    "quick_gelu",
    "silu",
    "solu_ln",
)
NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDING_TYPES = ("standard", "rotary", "alibi")
NORM_PLACEMENTS = ("pre", "pre_and_post", "post", "post_residual")
ATTN_TYPES = ("global", "local", "chunked", "linear")
# every rope_type transformers defines (modeling_rope_utils.ROPE_INIT_FUNCTIONS, and "default")
ROPE_SCALING_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")
# TransformerLens's weight initialisations (HookedTransformer.init_weights; lmscope.initialization)
INIT_MODES = ("gpt2", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "muP")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """The torch dtype that `dtype` names: float32, float64, float16 or bfloat16, given as a
    torch.dtype or a name ("bfloat16", "torch.float16", "half", "double").

    Example:
        >>> resolve_dtype("bf16")
        ValueError: dtype 'bf16' is not one lmscope runs in; choose one of float32, ...
    """
    found = dtype
    if isinstance(dtype, str):
        found = getattr(torch, dtype.strip().removeprefix("torch."), None)
    if found not in DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in DTYPES)
        raise ValueError(f"dtype {dtype!r} is not one lmscope runs in; choose one of {names}")
    return found


def check_dtype_runs(dtype: torch.dtype, device: str | torch.device | None) -> None:
    """Raise before any work if `device` cannot compute in `dtype` (bfloat16 on a GPU older than
    Ampere, float64 on Apple's MPS)."""
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not compute in bfloat16; use dtype=torch.float16")
    if kind == "mps" and dtype == torch.float64:
        raise ValueError("MPS does not compute in float64; use float32 there")


@dataclass
class HookedTransformerConfig:
    """Shape and behaviour of a HookedTransformer (TransformerLens field names)."""

    # what the models of this config implement (an encoder's config adds T5's relative positions)
    _positional_embedding_types: ClassVar[tuple[str, ...]] = POSITIONAL_EMBEDDING_TYPES

    d_model: int
    n_layers: int
    n_ctx: int
    d_vocab: int
    n_heads: int = -1
    d_head: int = -1
    d_mlp: int | None = None
    act_fn: str | None = "gelu_new"
    normalization_type: str | None = "LN"
    eps: float = 1e-5
    # RMSNorms multiply by `w + norm_weight_offset`, computed in float32 in half precision as
    # transformers does (1.0: Gemma 1-3 and Qwen3.5 keep the checkpoint's `w` and apply `1 + w`)
    norm_weight_offset: float = 0.0
    d_vocab_out: int = -1
    model_name: str = "custom"
    original_architecture: str | None = None
    tokenizer_name: str | None = None
    # attention
    n_key_value_heads: int | None = None
    attn_only: bool = False
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    positional_embedding_type: str = "standard"
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    rotary_adjacent_pairs: bool = False
    rope_scaling: dict[str, Any] | None = None
    ungroup_grouped_query_attention: bool = False
    window_size: int | None = None  # sliding-window width of "local" attention layers
    attn_types: list[str] | None = (
        None  # per layer "global" | "local" (default: local iff window_size)
    )
    rotary_base_local: float | None = None  # local layers' rotary base, unscaled (Gemma 3)
    attention_chunk_size: int | None = None  # "chunked" layers see their chunk only (Llama 4)
    # Llama 4's NoPE layers scale q by log1p(floor((pos + 1) / floor)) * scale + 1
    attn_temperature_scale: float | None = None
    attn_temperature_floor: float = 8192.0
    # per layer: whether it rotates q and k (None: every layer); NoPE layers (SmolLM3, Llama 4,
    # Cohere 2's global layers) have False
    rotary_layers: list[bool] | None = None
    attn_scores_soft_cap: float = -1.0  # cap * tanh(scores / cap) before masking (Gemma 2)
    attn_sinks: bool = False  # a learned sink logit per head in each softmax (GPT-OSS)
    output_logits_soft_cap: float = -1.0
    use_qk_norm: bool = False  # RMSNorm on q and k after projection, before rotary
    qk_norm_per_head: bool = True  # over each head's d_head (Qwen3, Gemma 3) or all heads (OLMo 2)
    qk_norm_type: str = "RMS"  # "RMS", "LN" (Phi, Persimmon) or weightless "RMSPre" (Llama 4)
    qk_norm_head_weights: bool = False  # weights per head, [n_heads, d_head] (StableLM-2, Cohere)
    qk_norm_after_rotary: bool = False  # the q/k norm follows rotary, on rotating layers (Llama 4)
    clip_qkv: float | None = None  # clamp q, k, v to [-clip, clip] (OLMo; after q/k norm: OLMoE)
    # Gemma 4: the "global" layers' own head size and key/value heads (None: d_head and
    # n_key_value_heads), values that are the keys' projection on those layers, a weightless
    # RMSNorm over each value head, layers that reuse an earlier layer's keys and values
    # (kv_source_layers[i] = j, or None), MLP widths per layer, per-layer embeddings of
    # d_per_layer_input per layer (over d_vocab_per_layer_input tokens) and a learned scalar
    # that multiplies each block's output
    d_head_global: int | None = None
    n_key_value_heads_global: int | None = None
    v_from_k_global: bool = False
    use_v_norm: bool = False
    kv_source_layers: list[int | None] | None = None
    d_mlp_layers: list[int] | None = None
    d_per_layer_input: int | None = None
    d_vocab_per_layer_input: int | None = None
    layer_scalars: bool = False
    # multi-head latent attention (DeepSeek-V2/V3) when kv_lora_rank is set: keys and values from
    # a latent of that size, queries through one of q_lora_rank (if set); each query and key head
    # is qk_nope_head_dim + qk_rope_head_dim wide (rotary on the latter), d_head is the values'
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    # gated delta-net linear attention (Qwen3.5, Qwen3-Next) on the layers attn_types marks
    # "linear" (`components/linear_attention.py`): linear_n_key_heads query/key heads of
    # linear_d_key, linear_n_value_heads value heads of linear_d_value, and a causal depthwise
    # convolution of linear_conv_size taps over the projected q/k/v
    linear_n_key_heads: int | None = None
    linear_n_value_heads: int | None = None
    linear_d_key: int | None = None
    linear_d_value: int | None = None
    linear_conv_size: int = 4
    # each head's z times sigmoid(x @ W_gate + b_gate) before W_O (Qwen3.5 / Qwen3-Next attention)
    attn_output_gate: bool = False
    # block layout
    gated_mlp: bool = False
    swiglu_limit: float | None = None  # GPT-OSS: clamp both gated branches, the linear one + 1
    parallel_attn_mlp: bool = False
    tie_word_embeddings: bool = False
    final_rms: bool = False
    norm_placement: str = "pre"  # "pre", "pre_and_post" (Gemma 2/3) or "post" (OLMo 2)
    # or "post_residual": each norm follows its residual add, no final norm (OPT-350m, post-LN)
    post_embedding_ln: bool = False  # LayerNorm right after the embedding (BLOOM)
    # mixture of experts (d_mlp is each expert's size)
    num_experts: int | None = None
    experts_per_token: int | None = None
    norm_topk_prob: bool = True  # renormalise the chosen experts' weights to sum to 1
    shared_expert_d_mlp: int | None = None  # an always-on shared expert (Qwen2-MoE, DeepSeek)
    shared_expert_gated: bool = True  # its output times sigmoid(x W_shared_expert_gate) (Qwen2-MoE)
    expert_weights_on_input: bool = False  # each chosen expert reads x * weight (Llama 4)
    mlp_types: list[str] | None = None  # per layer "dense" | "moe" (default: all "moe" if experts)
    dense_d_mlp: int | None = (
        None  # the dense layers' d_mlp in a model with experts (default d_mlp)
    )
    # "softmax" then top-k, "sigmoid" then top-k (DeepSeek-V3), or "topk_softmax": the top-k
    # logits, then a softmax over them (GPT-OSS, GraniteMoE)
    router_scoring: str = "softmax"  # or PhiMoE's top-2 "sparsemixer" (with router_jitter_eps)
    router_jitter_eps: float = 0.01
    router_bias: bool = False  # a bias on the router logits (GPT-OSS)
    router_choice_bias: bool = False  # a bias on the scores that only steers the choice (DS-V3)
    router_groups: int | None = None  # choose within the best router_topk_groups groups (DS-V2/3)
    router_topk_groups: int | None = None
    router_group_score: str = "top2_sum"  # a group's score: "top2_sum" (DS-V3) or "max" (DS-V2)
    routed_scaling_factor: float = 1.0  # the chosen experts' weights times this (DeepSeek)
    # Gemma 4 26B-A4B: the experts run beside a dense MLP (`blocks.{l}.moe`; each branch is
    # post-normed, the sum normed again by ln2_post), the router reads its own weightless RMSNorm
    # of the block's input times a learned `router_scale` and d_model ** -0.5, and each chosen
    # expert's weight is multiplied by its learned `per_expert_scale`
    moe_beside_mlp: bool = False
    router_input_norm: bool = False
    router_per_expert_scale: bool = False
    # hook flags (TransformerLens names); toggled on a model with set_use_*
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    # tokenizer behaviour
    default_prepend_bos: bool = True
    default_padding_side: str = "right"
    # numerics and init
    dtype: torch.dtype | str = torch.float32  # a name ("bfloat16") is resolved when made
    device: str | None = None
    seed: int | None = None
    init_weights: bool = True
    init_mode: str = "gpt2"  # one of INIT_MODES
    # gpt2: the normal's std (default 0.8 / sqrt(d_model)); xavier/kaiming: their gain (default 1)
    initializer_range: float = -1.0
    # set by weight processing
    from_checkpoint: bool = False
    processing: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_heads == -1 and self.d_head == -1:
            raise ValueError("set n_heads (and optionally d_head) in HookedTransformerConfig")
        if self.n_heads == -1:
            self.n_heads = self.d_model // self.d_head
        if self.d_head == -1:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; set d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None and not self.attn_only:
            self.d_mlp = 4 * self.d_model
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_key_value_heads={self.n_key_value_heads}"
            )
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.attn_scale == -1.0:
            self.attn_scale = self.d_head**0.5
        if self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.initializer_range < 0:  # unset, as TransformerLens: a std for gpt2, else a gain
            self.initializer_range = 0.8 / self.d_model**0.5 if self.init_mode == "gpt2" else 1.0
        self.dtype = resolve_dtype(self.dtype)
        self._validate()

    def _validate(self) -> None:
        if self.init_mode not in INIT_MODES:
            raise ValueError(f"init_mode {self.init_mode!r} is not one of {INIT_MODES}")
        if not self.attn_only and self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn {self.act_fn!r} is not supported; choose one of {ACT_FNS}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(
                f"normalization_type {self.normalization_type!r} is not supported; choose one of {NORMALIZATION_TYPES}"
            )
        if self.positional_embedding_type not in self._positional_embedding_types:
            raise ValueError(
                f"positional_embedding_type {self.positional_embedding_type!r} is not supported; "
                f"choose one of {self._positional_embedding_types}"
            )
        if self.kv_lora_rank is not None:
            self._validate_latent_attention()
        if self.positional_embedding_type == "rotary":
            head = self.qk_rope_head_dim if self.kv_lora_rank else self.d_head
            if self.rotary_dim > head or self.rotary_dim % 2:
                raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= {head}")
            kind = (self.rope_scaling or {}).get("rope_type", "default")
            if kind not in ROPE_SCALING_TYPES:
                raise ValueError(
                    f"rope_scaling rope_type {kind!r} is not supported by lmscope (it has no "
                    f"code for it); choose one of {ROPE_SCALING_TYPES}"
                )
        if self.norm_weight_offset and self.normalization_type not in ("RMS", "RMSPre"):
            raise ValueError(
                f"norm_weight_offset {self.norm_weight_offset} applies to RMSNorms only, but "
                f"normalization_type is {self.normalization_type!r}; use 0.0 or an RMS norm"
            )
        if self.qk_norm_type not in ("LN", "LNPre", "RMS", "RMSPre"):
            raise ValueError(
                f"qk_norm_type {self.qk_norm_type!r} is not one of 'LN', 'LNPre', 'RMS', 'RMSPre'"
            )
        if self.rotary_layers is not None and len(self.rotary_layers) != self.n_layers:
            raise ValueError(f"rotary_layers needs one bool per layer ({self.n_layers} layers)")
        if self.norm_placement not in NORM_PLACEMENTS:
            raise ValueError(
                f"norm_placement {self.norm_placement!r} is not one of {NORM_PLACEMENTS}"
            )
        if self.norm_placement == "post_residual" and (self.parallel_attn_mlp or self.attn_only):
            raise ValueError(
                "norm_placement 'post_residual' needs sequential attention + MLP blocks"
            )
        if self.attn_types is not None:
            if len(self.attn_types) != self.n_layers or set(self.attn_types) - set(ATTN_TYPES):
                raise ValueError(
                    f"attn_types needs one of {ATTN_TYPES} per layer ({self.n_layers} layers)"
                )
            if "local" in self.attn_types and not self.window_size:
                raise ValueError("local attention layers need window_size")
            if "chunked" in self.attn_types and not self.attention_chunk_size:
                raise ValueError("chunked attention layers need attention_chunk_size")
            if "linear" in self.attn_types:
                self._validate_linear_attention()
        if self.num_experts is not None and not (
            1 <= (self.experts_per_token or 0) <= self.num_experts
        ):
            raise ValueError("a mixture of experts needs 1 <= experts_per_token <= num_experts")
        if self.num_experts is not None:
            self._validate_experts()
        if self.default_padding_side not in ("left", "right"):
            raise ValueError("default_padding_side must be 'left' or 'right'")
        self._validate_per_layer()

    def _validate_per_layer(self) -> None:
        for name in ("kv_source_layers", "d_mlp_layers"):
            value = getattr(self, name)
            if value is not None and len(value) != self.n_layers:
                raise ValueError(f"{name} needs one entry per layer ({self.n_layers} layers)")
        for layer, src in enumerate(self.kv_source_layers or []):
            if src is not None and not (
                0 <= src < layer
                and self.kv_source_layers[src] is None
                and self.layer_types[src] == self.layer_types[layer]
            ):
                raise ValueError(
                    f"kv_source_layers[{layer}]={src}: a layer reuses the keys and values of an "
                    "earlier layer of its own attention type that computes its own"
                )
        if self.d_head_global is not None and self.rotary_dim != self.d_head:
            raise ValueError("d_head_global needs rotary over whole heads (rotary_dim = d_head)")

    def _validate_latent_attention(self) -> None:
        if not (self.qk_nope_head_dim is not None and self.qk_rope_head_dim):
            raise ValueError(
                "latent attention (kv_lora_rank) needs qk_nope_head_dim and qk_rope_head_dim"
            )
        if self.n_key_value_heads != self.n_heads:
            raise ValueError("latent attention has one key and value head per query head")
        if self.positional_embedding_type == "rotary" and self.rotary_dim != self.qk_rope_head_dim:
            raise ValueError(
                "latent attention rotates qk_rope_head_dim dimensions: set rotary_dim to it"
            )

    def _validate_linear_attention(self) -> None:
        sizes = (self.linear_n_key_heads, self.linear_n_value_heads, self.linear_d_key)
        if not all(sizes) or not self.linear_d_value or self.linear_conv_size < 1:
            raise ValueError(
                "linear attention layers need linear_n_key_heads, linear_n_value_heads, "
                "linear_d_key, linear_d_value and linear_conv_size >= 1"
            )
        if self.linear_n_value_heads % self.linear_n_key_heads:
            raise ValueError("linear_n_value_heads must be a multiple of linear_n_key_heads")

    def _validate_experts(self) -> None:
        if self.router_scoring not in ("softmax", "sigmoid", "topk_softmax", "sparsemixer"):
            raise ValueError(
                f"router_scoring {self.router_scoring!r} is not 'softmax', 'sigmoid', "
                "'topk_softmax' or 'sparsemixer'"
            )
        if self.router_scoring == "sparsemixer" and self.experts_per_token != 2:
            raise ValueError("the sparsemixer router chooses exactly 2 experts per token")
        if self.mlp_types is not None and (
            len(self.mlp_types) != self.n_layers or set(self.mlp_types) - {"dense", "moe"}
        ):
            raise ValueError(f"mlp_types needs 'dense' or 'moe' per layer ({self.n_layers} layers)")
        if self.router_groups and (
            self.num_experts % self.router_groups
            or not 1 <= (self.router_topk_groups or 0) <= self.router_groups
        ):
            raise ValueError(
                "router_groups must divide num_experts, with 1 <= router_topk_groups <= it"
            )
        if self.router_group_score not in ("top2_sum", "max"):
            raise ValueError(f"router_group_score {self.router_group_score!r} is not top2_sum/max")
        if self.moe_beside_mlp and (self.norm_placement != "pre_and_post" or self.mlp_types):
            raise ValueError(
                "moe_beside_mlp (experts beside a dense MLP, Gemma 4) needs "
                "norm_placement='pre_and_post' and experts on every layer (no mlp_types)"
            )

    def mlp_type(self, layer: int) -> str:
        """Layer `layer`'s MLP: "moe" (routed experts; at `blocks.{layer}.moe`, beside a dense
        MLP, with `moe_beside_mlp`) or "dense"."""
        if self.mlp_types is not None:
            return self.mlp_types[layer]
        return "moe" if self.num_experts else "dense"

    def for_layer(self, layer: int) -> HookedTransformerConfig | LayerConfig:
        """The config layer `layer`'s attention reads: this one, or (where the layer's head size
        or key/value heads differ, Gemma 4's global layers) a `LayerConfig` view with those.

        Example:
            >>> cfg.for_layer(5).d_head    # d_head_global on a global layer
        """
        sizes: dict[str, Any] = {}
        if self.layer_types[layer] == "global":
            if self.d_head_global is not None and self.d_head_global != self.d_head:
                sizes.update(d_head=self.d_head_global, rotary_dim=self.d_head_global)
            kv = self.n_key_value_heads_global
            if kv is not None and kv != self.n_key_value_heads:
                sizes["n_key_value_heads"] = kv
        return LayerConfig(self, sizes) if sizes else self

    # -- derived -----------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.n_heads // self.n_key_value_heads

    @property
    def layer_types(self) -> list[str]:
        """Each layer's attention type: "global", "local" (sliding window of `window_size`),
        "chunked" or "linear" (a gated delta-net layer, `blocks.{l}.linear_attn`)."""
        if self.attn_types is not None:
            return list(self.attn_types)
        return ["local" if self.window_size else "global"] * self.n_layers

    @property
    def n_params(self) -> int:
        """Parameters in the blocks (attention and MLP weights), as TransformerLens counts them."""
        attn = self.d_model * self.d_head * (2 * self.n_heads + 2 * self.n_key_value_heads)
        mlp = 0 if self.attn_only else self.d_model * self.d_mlp * (3 if self.gated_mlp else 2)
        return self.n_layers * (attn + mlp)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookedTransformerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown HookedTransformerConfig fields: {unknown}")
        return cls(**d)

    @classmethod
    def unwrap(cls, config: dict[str, Any] | HookedTransformerConfig) -> HookedTransformerConfig:
        """The config itself, or one built from a dict of its fields (TransformerLens's `unwrap`).

        Example:
            >>> cfg = HookedTransformerConfig.unwrap(
            ...     {"n_layers": 1, "d_model": 8, "n_ctx": 4, "d_head": 4, "d_vocab": 10}
            ... )
            >>> HookedTransformerConfig.unwrap(cfg) is cfg, cfg.n_heads
            (True, 2)
        """
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        raise TypeError(
            "HookedTransformerConfig.unwrap takes a HookedTransformerConfig or a dict of its "
            f"fields, got {type(config).__name__}"
        )

    def is_layer_norm_activation(self) -> bool:
        """Whether the MLP's activation has a LayerNorm inside (`solu_ln`: `mlp.ln`, `hook_mid`).

        Example:
            >>> HookedTransformerConfig.unwrap(
            ...     {"n_layers": 1, "d_model": 8, "n_ctx": 4, "d_head": 4, "d_vocab": 10, "act_fn": "solu_ln"}
            ... ).is_layer_norm_activation()
            True
        """
        return self.act_fn is not None and self.act_fn.endswith("_ln")


class LayerConfig:
    """A layer's view of its model's config: the model's fields, but for the few sizes that
    differ on this layer (`HookedTransformerConfig.for_layer`). A view, so switches set on the
    model's config later (`use_attn_result`, ...) reach the layer too.

    Example:
        >>> view = LayerConfig(cfg, {"d_head": 64})
        >>> view.d_head, view.d_model == cfg.d_model
        (64, True)
    """

    def __init__(self, cfg: HookedTransformerConfig, sizes: dict[str, Any]) -> None:
        self.__dict__["_cfg"], self.__dict__["_sizes"] = cfg, dict(sizes)

    def __getattr__(self, name: str) -> Any:
        sizes = self.__dict__["_sizes"]
        return sizes[name] if name in sizes else getattr(self.__dict__["_cfg"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__["_sizes"]:
            raise AttributeError(f"{name} is fixed for this layer")
        setattr(self.__dict__["_cfg"], name, value)

    @property
    def n_groups(self) -> int:
        """Query heads per key/value head on this layer."""
        return self.n_heads // self.n_key_value_heads
