"""The family spec table: one tiny random checkpoint per family variant, for the conformance suite
(tests/loading/test_conformance.py) and every family-specific test, each built once per session.

To add a family: write its tiny HF config with every feature of the family switched on (sizes
from tests/_tiny.py, a sliding window or chunk shorter than the test sequence, biases on, GQA) and
add one `FamilySpec` to `FAMILY_SPECS` below (in the group it belongs to). Every conformance check
then runs on it; if a check genuinely does not apply, name it in `skip` with the reason, as
`skip={"padded_alone": "why"}` (the check names are `CHECKS`). A family's special behaviour gets
its own test in its tests/loading/test_families_*.py module, reading the checkpoint through the
`tiny_family` fixture (`tiny_family("gemma3")`), so it is built once for both.

    >>> FAMILY_SPECS["gpt2"].model_cls
    <class 'transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel'>
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import transformers as tr
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    CodeGenConfig,
    CodeGenForCausalLM,
    GPT2LMHeadModel,
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from tests._tiny import (
    D_MODEL,
    D_VOCAB,
    N_CTX,
    N_HEADS,
    NormWeights,
    TinyModel,
    build_tiny,
    gpt2_config,
    llama_config,
    mistral_config,
    neox_config,
)

# The conformance checks (tests/loading/test_conformance.py); a spec's `skip` names some of them.
CHECKS = (
    "logits", "hidden_states", "loss", "padded_loss", "processed", "padded_alone", "padded_hf",
    "explicit_attention", "pattern_masks", "decomposition", "hook_shapes", "family_hook_shapes",
    "hook_flags", "post_norms", "moe_routing", "kv_cache", "greedy", "gqa_ungroup",
    "patch_kv_head",
)  # fmt: skip


@dataclass(frozen=True)
class FamilySpec:
    """One tiny family checkpoint: its HF class, its config, and how the conformance suite
    drives it.

    - `seq`: the length of the [2, seq] token batch the checks run on;
    - `ragged`: the lengths of the padded batch's rows (padding, generation);
    - `skip`: conformance check name -> why it does not apply to this family;
    - `features`: what family-specific tests expect of the checkpoint (free-form);
    - `norms`: how the family's norms apply their stored weight, `x_hat * w` ("w") or
      `x_hat * (1 + w)` ("1+w", Gemma 1-3, Nemotron), so the draw gives gains 1 + N(0, 0.2)
      either way (tests/_tiny.py's `perturb_norms`);
    - `adjust`: what the family needs drawn beyond that (weights in place, under no_grad).
    """

    model_cls: type[PreTrainedModel]
    config: Callable[[], PretrainedConfig]
    seq: int = 12
    ragged: tuple[int, ...] = (5, 11, 8)
    skip: Mapping[str, str] = field(default_factory=dict)
    features: Mapping[str, Any] = field(default_factory=dict)
    norms: NormWeights = "w"
    adjust: Callable[[PreTrainedModel], None] | None = None


WINDOW = 5  # the local window of GPT-Neo and the Llama-like families


# -- the families of tests/conftest.py's fixtures ------------------------------------------------
_BASIC: dict[str, FamilySpec] = {
    "gpt2": FamilySpec(GPT2LMHeadModel, gpt2_config),
    # Pythia-style: parallel attention + MLP, partial rotary (half of d_head)
    "neox": FamilySpec(GPTNeoXForCausalLM, lambda: neox_config(parallel=True)),
    "neox_sequential": FamilySpec(GPTNeoXForCausalLM, lambda: neox_config(parallel=False)),
    # GPT-NeoX with attention_bias=False: no query_key_value or dense biases in the checkpoint
    "neox_no_attn_bias": FamilySpec(
        GPTNeoXForCausalLM, lambda: neox_config(parallel=True, attention_bias=False)
    ),
    # GQA (2 key/value heads for 4 query heads), untied embeddings, no biases
    "llama_gqa": FamilySpec(
        LlamaForCausalLM, lambda: llama_config(num_key_value_heads=2, tie_word_embeddings=False)
    ),
    # tied embeddings with attention and MLP biases (and GQA, so b_K/b_V are per kv head)
    "llama_tied_bias": FamilySpec(
        LlamaForCausalLM,
        lambda: llama_config(
            num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True, mlp_bias=True
        ),
    ),
    "mistral_mqa": FamilySpec(MistralForCausalLM, mistral_config),
}


# -- classic families: GPT-Neo, GPT-J, OPT, BLOOM, GPT-BigCode, CodeGen -------------------------
def _neo() -> tuple[type[PreTrainedModel], Any]:
    return GPTNeoForCausalLM, GPTNeoConfig(
        vocab_size=D_VOCAB,
        max_position_embeddings=N_CTX,
        hidden_size=64,
        num_layers=4,
        attention_types=[[["global", "local"], 2]],
        num_heads=4,
        intermediate_size=96,
        window_size=WINDOW,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


def _gptj() -> tuple[type[PreTrainedModel], Any]:
    return GPTJForCausalLM, GPTJConfig(
        vocab_size=D_VOCAB,
        n_positions=N_CTX,
        n_embd=64,
        n_layer=2,
        n_head=4,
        rotary_dim=8,  # half of d_head 16
        n_inner=96,
        bos_token_id=0,
        eos_token_id=0,
    )


def _codegen() -> tuple[type[PreTrainedModel], Any]:
    return CodeGenForCausalLM, CodeGenConfig(
        vocab_size=D_VOCAB,
        n_positions=N_CTX,
        n_ctx=N_CTX,
        n_embd=64,
        n_layer=2,
        n_head=8,
        rotary_dim=4,  # half of d_head 8
        n_inner=96,
        bos_token_id=0,
        eos_token_id=0,
    )


def _opt(**kwargs: Any) -> Callable[[], tuple[type[PreTrainedModel], Any]]:
    def make() -> tuple[type[PreTrainedModel], Any]:
        return OPTForCausalLM, OPTConfig(
            vocab_size=D_VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            ffn_dim=96,
            max_position_embeddings=N_CTX,
            num_attention_heads=4,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=2,
            **kwargs,
        )

    return make


def _bloom() -> tuple[type[PreTrainedModel], Any]:
    return BloomForCausalLM, BloomConfig(
        vocab_size=D_VOCAB,
        hidden_size=48,
        n_layer=2,
        n_head=6,  # not a power of two: ALiBi's extra slopes are used
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )


def _bigcode(multi_query: bool) -> Callable[[], tuple[type[PreTrainedModel], Any]]:
    def make() -> tuple[type[PreTrainedModel], Any]:
        return GPTBigCodeForCausalLM, GPTBigCodeConfig(
            vocab_size=D_VOCAB,
            n_positions=N_CTX,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_inner=96,
            multi_query=multi_query,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )

    return make


_CLASSIC_BUILDERS: dict[str, Callable[[], tuple[type[PreTrainedModel], Any]]] = {
    "gpt_neo": _neo,
    "gptj": _gptj,
    "codegen": _codegen,
    "opt": _opt(),
    # narrower word embeddings (project_in/out), no biases, LayerNorms without weights
    "opt_proj": _opt(
        word_embed_proj_dim=32, enable_bias=False, layer_norm_elementwise_affine=False
    ),
    # opt-350m's layout: post-LN blocks (no final norm) and narrower word embeddings
    "opt_post_ln": _opt(do_layer_norm_before=False, word_embed_proj_dim=32),
    "bloom": _bloom,
    "bigcode_mqa": _bigcode(multi_query=True),
    "bigcode_mha": _bigcode(multi_query=False),
}


def _classic(build: Callable[[], tuple[type[PreTrainedModel], Any]]) -> FamilySpec:
    model_cls, _ = build()
    return FamilySpec(model_cls, lambda: build()[1])


_CLASSIC = {name: _classic(build) for name, build in _CLASSIC_BUILDERS.items()}


# -- Llama-like families: Llama 1/2/3, Mistral, Mixtral, Qwen2/3 (and MoE) -----------------------
# 3 layers and 40 tokens: longer than every sliding window and than llama3's original context.
def _llama_like(
    model_cls: type[PreTrainedModel], config: Callable[[], Any], **features: Any
) -> FamilySpec:
    features.setdefault("local_layers", (False,) * LLAMA_LIKE_LAYERS)
    for flag in ("moe", "shared_expert", "qk_norm"):
        features.setdefault(flag, False)
    return FamilySpec(model_cls, config, seq=SEQ, ragged=(7, 23, 16), features=features)


SEQ = 40  # longer than every sliding window and than llama3's original context (32)
LLAMA_LIKE_LAYERS = 3
DYNAMIC_CONTEXT = 32  # llama_dynamic's max_position_embeddings, below SEQ

_COMMON = dict(
    vocab_size=D_VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=LLAMA_LIKE_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
_LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)


_LLAMA_LIKE: dict[str, FamilySpec] = {
    # Llama 1/2 shape: full multi-head attention, default rope, attention_bias and mlp_bias on.
    "llama": _llama_like(
        LlamaForCausalLM,
        lambda: LlamaConfig(
            **{**_COMMON, "num_key_value_heads": 4}, attention_bias=True, mlp_bias=True
        ),
    ),
    # Llama 3.1/3.2 shape: GQA, "llama3" rope scaling, tied embeddings (3.2), biases on.
    "llama3": _llama_like(
        LlamaForCausalLM,
        lambda: LlamaConfig(
            **{**_COMMON, "max_position_embeddings": 128},
            rope_parameters=dict(_LLAMA3_ROPE),
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
        ),
    ),
    # Linear rope scaling and a head_dim that is not d_model / n_heads.
    "llama_linear": _llama_like(
        LlamaForCausalLM,
        lambda: LlamaConfig(
            **_COMMON,
            head_dim=24,
            rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
        ),
    ),
    # YaRN (a ramp between interpolated and extrapolated frequencies, cos and sin scaled by its
    # attention factor) from a pretraining context of 16.
    "llama_yarn": _llama_like(
        LlamaForCausalLM,
        lambda: LlamaConfig(
            **_COMMON,
            rope_parameters=dict(
                rope_type="yarn",
                rope_theta=10000.0,
                factor=4.0,
                original_max_position_embeddings=16,
            ),
        ),
    ),
    # Dynamic NTK: past the 32-token context (SEQ is 40) the base grows with the length.
    "llama_dynamic": _llama_like(
        LlamaForCausalLM,
        lambda: LlamaConfig(
            **{**_COMMON, "max_position_embeddings": DYNAMIC_CONTEXT},
            rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=4.0),
        ),
    ),
    "mistral": _llama_like(
        MistralForCausalLM,
        lambda: MistralConfig(**_COMMON, head_dim=24, sliding_window=WINDOW),
        local_layers=(True,) * LLAMA_LIKE_LAYERS,
    ),
    "mixtral": _llama_like(
        MixtralForCausalLM,
        lambda: MixtralConfig(
            **_COMMON, sliding_window=WINDOW, num_local_experts=4, num_experts_per_tok=2
        ),
        local_layers=(True,) * LLAMA_LIKE_LAYERS,
        moe=True,
    ),
    # Qwen2: sliding window from layer max_window_layers=1 on; tied embeddings (Qwen2.5-0.5B).
    "qwen2": _llama_like(
        Qwen2ForCausalLM,
        lambda: Qwen2Config(
            **_COMMON,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=1,
            tie_word_embeddings=True,
        ),
        local_layers=(False, True, True),
    ),
    "qwen3": _llama_like(
        Qwen3ForCausalLM,
        lambda: Qwen3Config(
            **_COMMON,
            head_dim=24,
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=2,
        ),
        local_layers=(False, False, True),
        qk_norm=True,
    ),
    # Qwen2-MoE: sliding on even layers below max_window_layers; shared expert; no renormalising.
    "qwen2_moe": _llama_like(
        Qwen2MoeForCausalLM,
        lambda: Qwen2MoeConfig(
            **_COMMON,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=48,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=False,
            use_sliding_window=True,
            sliding_window=WINDOW,
            max_window_layers=3,
        ),
        local_layers=(True, False, True),
        moe=True,
        shared_expert=True,
    ),
    "qwen3_moe": _llama_like(
        Qwen3MoeForCausalLM,
        lambda: Qwen3MoeConfig(
            **_COMMON,
            head_dim=24,
            moe_intermediate_size=32,
            num_experts=4,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=WINDOW,
        ),
        local_layers=(True,) * LLAMA_LIKE_LAYERS,
        moe=True,
        qk_norm=True,
    ),
}


# -- norm variants and the second wave: Gemma, Phi, OLMo, StableLM, GLM, Granite, DeepSeek, ... ---
NV_BASE = dict(
    vocab_size=D_VOCAB,
    hidden_size=D_MODEL,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=N_HEADS,
    max_position_embeddings=N_CTX,
)
# token ids of the special tokens, inside the tiny vocabulary
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_SLIDING = ["sliding_attention", "full_attention"]
_GRANITE = dict(
    embedding_multiplier=4.0,
    residual_multiplier=0.5,
    attention_multiplier=0.125,
    logits_scaling=2.0,
)
_MLA = dict(
    num_key_value_heads=N_HEADS, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=12,
    v_head_dim=10,
)  # fmt: skip
NV_FALCON = dict(
    vocab_size=D_VOCAB, hidden_size=D_MODEL, num_hidden_layers=2, num_attention_heads=N_HEADS,
    max_position_embeddings=N_CTX, ffn_hidden_size=96, **_IDS,
)  # fmt: skip
LONGROPE_CONTEXT = 14  # phi3_longrope's pretraining context: above 12 tokens, below 11 + 6


def _norm_variant_configs() -> dict[str, tuple[type, Callable[[], Any]]]:
    return {
        # MQA, head_dim 24 != d_model / n_heads, attention biases, tied embeddings
        "gemma": (
            tr.GemmaForCausalLM,
            lambda: tr.GemmaConfig(
                **NV_BASE, **_IDS, num_key_value_heads=1, head_dim=24, attention_bias=True
            ),
        ),
        # GQA, both soft-caps small enough to bite, window 4 < 12 tokens, query_pre_attn_scalar
        "gemma2": (
            tr.Gemma2ForCausalLM,
            lambda: tr.Gemma2Config(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=24,
                attention_bias=True,
                query_pre_attn_scalar=20,
                sliding_window=4,
                layer_types=_SLIDING,
                attn_logit_softcapping=2.0,
                final_logit_softcapping=3.0,
                tie_word_embeddings=False,
            ),
        ),
        # q/k norms, local rotary base, linear rope scaling on the global layer, final soft-cap
        "gemma3": (
            tr.Gemma3ForCausalLM,
            lambda: tr.Gemma3TextConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=24,
                attention_bias=True,
                query_pre_attn_scalar=20,
                sliding_window=4,
                layer_types=_SLIDING,
                final_logit_softcapping=3.0,
                rope_parameters={
                    "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                },
            ),
        ),
        "phi": (
            tr.PhiForCausalLM,
            lambda: tr.PhiConfig(
                **NV_BASE, **_IDS, num_key_value_heads=2, partial_rotary_factor=0.5
            ),
        ),
        # qk_layernorm: a LayerNorm with bias over each head's queries and keys
        "phi_qk_norm": (
            tr.PhiForCausalLM,
            lambda: tr.PhiConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                partial_rotary_factor=0.5,
                qk_layernorm=True,
            ),
        ),
        "phi3": (
            tr.Phi3ForCausalLM,
            lambda: tr.Phi3Config(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                partial_rotary_factor=0.5,
                sliding_window=5,
            ),
        ),
        # LongRoPE (the 128k checkpoints): short factors up to LONGROPE_CONTEXT tokens, long ones
        # past it, which generation reaches (transformers then recomputes the cache)
        "phi3_longrope": (
            tr.Phi3ForCausalLM,
            lambda: tr.Phi3Config(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                partial_rotary_factor=0.5,
                original_max_position_embeddings=LONGROPE_CONTEXT,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 10000.0,
                    "short_factor": [1.0, 1.2, 1.5, 2.0],
                    "long_factor": [2.0, 3.0, 5.0, 8.0],
                },
            ),
        ),
        "olmo": (
            tr.OlmoForCausalLM,
            lambda: tr.OlmoConfig(
                **NV_BASE, **_IDS, num_key_value_heads=2, attention_bias=True, clip_qkv=1.0
            ),
        ),
        "olmo2": (
            tr.Olmo2ForCausalLM,
            lambda: tr.Olmo2Config(**NV_BASE, **_IDS, num_key_value_heads=2, attention_bias=True),
        ),
        # OLMoE's own setting norm_topk_prob=False, with clip_qkv (applied after the q/k norm)
        "olmoe": (
            tr.OlmoeForCausalLM,
            lambda: tr.OlmoeConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                num_key_value_heads=2,
                attention_bias=True,
                clip_qkv=1.0,
                num_experts=4,
                num_experts_per_tok=2,
                norm_topk_prob=False,
            ),
        ),
        "olmoe_norm_topk": (
            tr.OlmoeForCausalLM,
            lambda: tr.OlmoeConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                num_key_value_heads=2,
                num_experts=4,
                num_experts_per_tok=2,
                norm_topk_prob=True,
            ),
        ),
        # GLM: q/k/v biases, fused gate_up_proj, partial rotary on adjacent pairs
        "glm": (
            tr.GlmForCausalLM,
            lambda: tr.GlmConfig(**NV_BASE, **_IDS, num_key_value_heads=2, head_dim=16),
        ),
        # GLM-4: and a norm after attention and after the MLP
        "glm4": (
            tr.Glm4ForCausalLM,
            lambda: tr.Glm4Config(**NV_BASE, **_IDS, num_key_value_heads=2, head_dim=16),
        ),
        # GLM-4.5: a dense first layer, then 8 experts in 4 groups (the best 2 groups are open),
        # sigmoid scores steered by a correction bias, scaled weights, 2 ungated shared experts,
        # q/k norms and biases
        "glm4_moe": (
            tr.Glm4MoeForCausalLM,
            lambda: tr.Glm4MoeConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                attention_bias=True,
                use_qk_norm=True,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=2,
                first_k_dense_replace=1,
                n_group=4,
                topk_group=2,
                routed_scaling_factor=2.5,
            ),
        ),
        # SmolLM3: a sliding rotary layer, then a global NoPE layer; every bias
        "smollm3": (
            tr.SmolLM3ForCausalLM,
            lambda: tr.SmolLM3Config(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                attention_bias=True,
                mlp_bias=True,
                no_rope_layers=[1, 0],
                use_sliding_window=True,
                sliding_window=4,
                layer_types=_SLIDING,
            ),
        ),
        "ministral": (
            tr.MinistralForCausalLM,
            lambda: tr.MinistralConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=24,
                sliding_window=4,
                layer_types=_SLIDING,
            ),
        ),  # fmt: skip
        # adjacent-pair rotary, q/k/v biases without an o bias
        "helium": (
            tr.HeliumForCausalLM,
            lambda: tr.HeliumConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                attention_bias=True,
                mlp_bias=True,
            ),
        ),  # fmt: skip
        "seed_oss": (
            tr.SeedOssForCausalLM,
            lambda: tr.SeedOssConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                attention_bias=True,
                attention_out_bias=True,
                mlp_bias=True,
            ),
        ),  # fmt: skip
        # a plain squared-ReLU MLP
        "arcee": (
            tr.ArceeForCausalLM,
            lambda: tr.ArceeConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                attention_bias=True,
                mlp_bias=True,
            ),
        ),  # fmt: skip
        "ernie4_5": (
            tr.Ernie4_5ForCausalLM,
            lambda: tr.Ernie4_5Config(
                **NV_BASE, **_IDS, num_key_value_heads=2, head_dim=16, use_bias=True
            ),
        ),
        # post-norms, q/k norms, a sliding rotary layer and a global NoPE layer
        "exaone4": (
            tr.Exaone4ForCausalLM,
            lambda: tr.Exaone4Config(
                **NV_BASE, **_IDS, num_key_value_heads=2, sliding_window=4, sliding_window_pattern=2
            ),
        ),
        # OLMo 2 with a sliding layer (its own unscaled rotary) and a YaRN-scaled global layer
        "olmo3": (
            tr.Olmo3ForCausalLM,
            lambda: tr.Olmo3Config(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                sliding_window=4,
                layer_types=_SLIDING,
                rope_parameters={
                    "full_attention": {
                        "rope_type": "yarn",
                        "factor": 4.0,
                        "original_max_position_embeddings": 16,
                        "rope_theta": 1000.0,
                    },
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1000.0},
                },
            ),
        ),
        # every multiplier (powers of two, so export restores the tied embedding bit for bit)
        "granite": (
            tr.GraniteForCausalLM,
            lambda: tr.GraniteConfig(
                **NV_BASE,
                **_IDS,
                **_GRANITE,
                num_key_value_heads=2,
                attention_bias=True,
                mlp_bias=True,
                tie_word_embeddings=True,
            ),
        ),  # fmt: skip
        # experts fused in 3-D tensors, routed top-k-then-softmax (5 experts: with 4, one bfloat16
        # routing decision of this draw is a near tie that folding the norm flips)
        "granitemoe": (
            tr.GraniteMoeForCausalLM,
            lambda: tr.GraniteMoeConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                **_GRANITE,
                num_key_value_heads=2,
                num_local_experts=5,
                num_experts_per_tok=2,
            ),
        ),  # fmt: skip
        "granitemoeshared": (
            tr.GraniteMoeSharedForCausalLM,
            lambda: tr.GraniteMoeSharedConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                **_GRANITE,
                num_key_value_heads=2,
                num_local_experts=4,
                num_experts_per_tok=2,
                shared_intermediate_size=48,
                tie_word_embeddings=True,
            ),
        ),  # fmt: skip
        # parallel block, bias-free LayerNorms, per-head q/k LayerNorms, adjacent-pair rotary
        "cohere": (
            tr.CohereForCausalLM,
            lambda: tr.CohereConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                attention_bias=True,
                use_qk_norm=True,
                logit_scale=0.25,
            ),
        ),  # fmt: skip
        # a sliding rotary layer and a global NoPE layer
        "cohere2": (
            tr.Cohere2ForCausalLM,
            lambda: tr.Cohere2Config(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                attention_bias=True,
                logit_scale=0.25,
                sliding_window=4,
                layer_types=_SLIDING,
            ),
        ),  # fmt: skip
        "starcoder2": (
            tr.Starcoder2ForCausalLM,
            lambda: tr.Starcoder2Config(**NV_BASE, **_IDS, num_key_value_heads=2, sliding_window=4),
        ),
        # LayerNorm1P (1 + w), partial rotary, squared-ReLU MLP
        "nemotron": (
            tr.NemotronForCausalLM,
            lambda: tr.NemotronConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                attention_bias=True,
                mlp_bias=True,
            ),
        ),  # fmt: skip
        # q/k/v fused per head, q/k LayerNorm, partial rotary, squared ReLU, no GQA
        "persimmon": (
            tr.PersimmonForCausalLM,
            lambda: tr.PersimmonConfig(**NV_BASE, **_IDS),
        ),
        # attention sinks, a sliding and a global layer, YaRN, biased experts with a clamped
        # SwiGLU (a limit small enough to bite) stored fused and interleaved, a router bias
        "gpt_oss": (
            tr.GptOssForCausalLM,
            lambda: tr.GptOssConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                num_local_experts=4,
                num_experts_per_tok=2,
                sliding_window=4,
                layer_types=_SLIDING,
                swiglu_limit=0.5,
                rope_parameters={
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "beta_fast": 32.0,
                    "beta_slow": 1.0,
                    "original_max_position_embeddings": 16,
                    "rope_theta": 1000.0,
                    "truncate": False,
                },
            ),
        ),
        # latent attention with a query latent and YaRN (its mscale on the scores), a dense
        # first layer, 8 experts in 4 groups routed by sigmoid with a choice bias, 2 shared experts
        "deepseek_v3": (
            tr.DeepseekV3ForCausalLM,
            lambda: tr.DeepseekV3Config(
                **NV_BASE,
                **_IDS,
                **_MLA,
                q_lora_rank=24,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=2,
                first_k_dense_replace=1,
                n_group=4,
                topk_group=2,
                routed_scaling_factor=2.5,
                rope_parameters={
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 16,
                    "mscale": 1.0,
                    "mscale_all_dim": 1.0,
                    "rope_theta": 1000.0,
                },
            ),
        ),
        # V2-Lite's shape: queries without a latent; softmax routing limited to the best groups
        "deepseek_v2": (
            tr.DeepseekV2ForCausalLM,
            lambda: tr.DeepseekV2Config(
                **NV_BASE,
                **_IDS,
                **_MLA,
                q_lora_rank=None,
                moe_intermediate_size=32,
                n_routed_experts=8,
                num_experts_per_tok=2,
                n_shared_experts=2,
                first_k_dense_replace=1,
                topk_method="group_limited_greedy",
                n_group=4,
                topk_group=2,
                routed_scaling_factor=1.5,
            ),
        ),
        # Falcon-40B's shape: grouped fused q/k/v, two norms for the parallel branches, biases
        "falcon": (
            tr.FalconForCausalLM,
            lambda: tr.FalconConfig(
                **NV_FALCON, new_decoder_architecture=True, num_kv_heads=2, bias=True
            ),
        ),
        # Falcon-7B's shape: multi-query, one norm for both parallel branches
        "falcon_7b": (
            tr.FalconForCausalLM,
            lambda: tr.FalconConfig(**NV_FALCON, multi_query=True, parallel_attn=True),
        ),
        # ALiBi with 6 heads (so the non-power-of-two slopes), clip_qkv, a softmax scale
        "mpt": (
            tr.MptForCausalLM,
            lambda: tr.MptConfig(
                vocab_size=D_VOCAB,
                d_model=48,
                n_layers=2,
                n_heads=6,
                max_seq_len=N_CTX,
                attn_config={"clip_qkv": 1.0, "softmax_scale": 0.3},
                **_IDS,
            ),
        ),  # fmt: skip
        # SparseMixer routing (a jitter wide enough that the softmax spans several experts),
        # LayerNorms with bias, attention and lm_head biases, a sliding window
        "phimoe": (
            tr.PhimoeForCausalLM,
            lambda: tr.PhimoeConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                num_key_value_heads=2,
                num_local_experts=4,
                num_experts_per_tok=2,
                attention_bias=True,
                lm_head_bias=True,
                sliding_window=4,
                router_jitter_noise=0.3,
            ),
        ),  # fmt: skip
        # Llama 4 text: a chunked (5 tokens) rotary layer with q/k L2 norms after rotary and a
        # dense MLP, then a NoPE layer with temperature tuning (floor 4, so it varies within 12
        # tokens) and experts read with router-weighted inputs plus a shared expert
        "llama4": (
            tr.Llama4ForCausalLM,
            lambda: tr.Llama4TextConfig(
                **{**NV_BASE, "intermediate_size": 32},
                **_IDS,
                num_key_value_heads=2,
                head_dim=16,
                intermediate_size_mlp=96,
                num_local_experts=4,
                num_experts_per_tok=1,
                interleave_moe_layer_step=2,
                no_rope_layer_interval=2,
                attention_chunk_size=5,
                floor_scale=4,
                attn_scale=0.5,
                attention_bias=True,
            ),
        ),  # fmt: skip
        "stablelm": (
            tr.StableLmForCausalLM,
            lambda: tr.StableLmConfig(**NV_BASE, **_IDS, num_key_value_heads=2, use_qkv_bias=True),
        ),
        # StableLM-2-12B's shape: parallel, and a LayerNorm per head on queries and keys
        "stablelm_parallel": (
            tr.StableLmForCausalLM,
            lambda: tr.StableLmConfig(
                **NV_BASE,
                **_IDS,
                num_key_value_heads=2,
                use_qkv_bias=True,
                use_parallel_residual=True,
                qk_layernorm=True,
                tie_word_embeddings=True,
            ),
        ),
    }


_ONE_PLUS_W = ("gemma", "gemma2", "gemma3", "nemotron")  # norms computing x_hat * (1 + w)
_NORM_VARIANTS = {
    name: FamilySpec(model_cls, make, norms="1+w" if name in _ONE_PLUS_W else "w")
    for name, (model_cls, make) in _norm_variant_configs().items()
}
_NORM_VARIANTS["llama4"] = FamilySpec(
    *_norm_variant_configs()["llama4"],
    skip={
        "padded_alone": "Llama 4's temperature tuning counts positions from the padded sequence's "
        "start, as transformers does, so a left-padded row is not the row alone (in transformers "
        "too)"
    },
)

_LATENT_ATTENTION = {
    "hook_flags": "multi-head latent attention reads one residual stream: per-head inputs are "
    "refused by name (NotImplementedError)",
    "hook_shapes": "latent attention's q/k heads are wider than its v heads (and it has latent "
    "hooks): test_latent_attention_hooks_cache_and_weights checks its shapes",
}
for _name in ("deepseek_v2", "deepseek_v3"):
    _NORM_VARIANTS[_name] = FamilySpec(*_norm_variant_configs()[_name], skip=_LATENT_ATTENTION)


# -- Gemma 4 text ---------------------------------------------------------------------------------
_GEMMA4_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def gemma4_config(**overrides: Any) -> tr.Gemma4TextConfig:
    """Every Gemma 4 feature at once: sliding-window and global layers of different head sizes
    and key/value heads, proportional rope on the global layers, values that are the keys'
    projection there (attention_k_eq_v), value norms, the last two layers reusing earlier
    layers' keys and values with double-wide MLPs, per-layer embeddings and a final soft-cap.
    Sizes are odd on purpose.

    >>> gemma4_config(num_kv_shared_layers=0).num_kv_shared_layers
    0
    """
    kw: dict[str, Any] = dict(
        vocab_size=D_VOCAB,
        hidden_size=40,
        intermediate_size=36,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=10,
        global_head_dim=14,
        num_global_key_value_heads=1,
        attention_k_eq_v=True,
        hidden_size_per_layer_input=6,
        vocab_size_per_layer_input=D_VOCAB,
        num_kv_shared_layers=2,
        use_double_wide_mlp=True,
        sliding_window=4,
        layer_types=_GEMMA4_TYPES,
        max_position_embeddings=64,
        final_logit_softcapping=30.0,
        **_IDS,
    )
    kw.update(overrides)
    return tr.Gemma4TextConfig(**kw)


@torch.no_grad()
def gemma4_adjust(model: PreTrainedModel) -> None:
    """Gemma 4 leaves attention scores unscaled (scaling 1.0): its q/k norm weights carry the
    1/sqrt(d_head), drawn here as d_head ** -0.25 each times 1 + N(0, 0.2). With O(1) weights
    the softmax is so sharp that transformers' own float32 logits are ~3e-5 from its float64
    ones, past the suite's 1e-5. The layer scalars (buffers) are drawn U(0.5, 1), away from 1,
    and a mixture of experts' router scale and per-expert scale 1 + N(0, 0.2) (`randomise` drew
    these 1-D parameters, which are not named weight, around 0)."""
    for pname, param in model.named_parameters():
        if pname.endswith(("q_norm.weight", "k_norm.weight")):
            param.mul_(param.shape[0] ** -0.25)
        if pname.endswith(("router.scale", "router.per_expert_scale")):
            param.copy_(1.0 + 0.2 * torch.randn_like(param))
    for bname, buffer in model.named_buffers():
        if bname.endswith("layer_scalar"):
            buffer.uniform_(0.5, 1.0)


# the big checkpoints' layers: no per-layer embeddings, no keys shared across layers
_GEMMA4_UNSHARED: dict[str, Any] = dict(
    hidden_size_per_layer_input=0, num_kv_shared_layers=0, use_double_wide_mlp=False
)
_GEMMA4 = {
    "gemma4": FamilySpec(
        tr.Gemma4ForCausalLM,
        gemma4_config,
        adjust=gemma4_adjust,
        skip={
            "hook_flags": "layers that reuse an earlier layer's keys and values take no per-head "
            "inputs: refused by name (test_families_gemma4 checks the message)",
            "hidden_states": "the last block's output (|x| up to 11.5) is 1.17e-5 from "
            "transformers' eager run, which mixes values as softmax(scores) @ v where lmscope "
            "takes z from SDPA's kernel: transformers' own sdpa run is the same 1.17e-5 from its "
            "eager one and bit-equal to lmscope, and lmscope mixing as pattern @ v is bit-equal "
            "to eager (test_families_gemma4 checks both)",
        },
    ),
    # Gemma 4 31B's shape: no per-layer embeddings, no KV sharing, untied head, no soft-cap
    "gemma4_plain": FamilySpec(
        tr.Gemma4ForCausalLM,
        lambda: gemma4_config(
            **_GEMMA4_UNSHARED,
            attention_k_eq_v=False,
            tie_word_embeddings=False,
            final_logit_softcapping=None,
        ),
        adjust=gemma4_adjust,
    ),
    # Gemma 4 26B-A4B's shape: 5 experts of 20 (top 2) beside each dense MLP of 36, no per-layer
    # embeddings or KV sharing, values = keys on the global layers, a final soft-cap
    "gemma4_moe": FamilySpec(
        tr.Gemma4ForCausalLM,
        lambda: gemma4_config(
            **_GEMMA4_UNSHARED,
            enable_moe_block=True,
            num_experts=5,
            top_k_experts=2,
            moe_intermediate_size=20,
        ),
        adjust=gemma4_adjust,
    ),
}

# -- Qwen3.5 / Qwen3.5-MoE text, Qwen3-Next: gated delta-net linear attention, gated attention
QWEN3_5_SEQ = 70  # past the delta rule's 64-position chunk
_QWEN3_5_SIZES: dict[str, Any] = {
    "vocab_size": D_VOCAB, "hidden_size": 40,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_key_head_dim": 6, "linear_value_head_dim": 10, "linear_conv_kernel_dim": 3,
    "max_position_embeddings": 96, "attention_bias": True,
    "layer_types": ["linear_attention", "full_attention", "linear_attention"],
    **_IDS,
}  # fmt: skip


def qwen3_5_config(**overrides: Any) -> tr.Qwen3_5TextConfig:
    """Two linear-attention layers around one gated attention layer: 2 key heads serving 4 value
    heads, a 3-tap convolution, GQA with biases, partial rotary (4 of head_dim 16).

    >>> qwen3_5_config().layer_types[1]
    'full_attention'
    """
    return tr.Qwen3_5TextConfig(**{"intermediate_size": 56, **_QWEN3_5_SIZES, **overrides})


def qwen3_5_moe_config(**overrides: Any) -> tr.Qwen3_5MoeTextConfig:
    """The dense config's layers with 5 experts of 12 (top 2) and a gated shared expert of 20.

    >>> qwen3_5_moe_config().num_experts
    5
    """
    experts = {"moe_intermediate_size": 12, "shared_expert_intermediate_size": 20,
               "num_experts": 5, "num_experts_per_tok": 2}  # fmt: skip
    return tr.Qwen3_5MoeTextConfig(**{**experts, **_QWEN3_5_SIZES, **overrides})


@torch.no_grad()
def qwen3_5_adjust(model: PreTrainedModel) -> None:
    """Qwen3.5's norms are (1 + w) (`norms="1+w"`) but for the linear layers' gated RMSNorm,
    which computes x_hat * w: its weights go back around 1. A_log is drawn U(-1, 1) so the
    decays exp(-exp(A_log) * softplus(.)) vary between heads."""
    for name, param in model.named_parameters():
        if name.endswith("linear_attn.norm.weight"):
            param.add_(1.0)
        if name.endswith("A_log"):
            param.uniform_(-1.0, 1.0)


def qwen3_next_config(**overrides: Any) -> tr.Qwen3NextConfig:
    """Qwen3.5's layers with fused per-key-head projections and Qwen3-Next's experts: 5 of 12
    (top 2, not renormalised) and a gated shared expert of 20, the attention layer's MLP dense
    (`mlp_only_layers`, intermediate size 56).

    >>> qwen3_next_config().mlp_only_layers
    [1]
    """
    experts = {"moe_intermediate_size": 12, "shared_expert_intermediate_size": 20,
               "num_experts": 5, "num_experts_per_tok": 2, "norm_topk_prob": False,
               "intermediate_size": 56, "mlp_only_layers": [1]}  # fmt: skip
    return tr.Qwen3NextConfig(**{**experts, **_QWEN3_5_SIZES, **overrides})


_QWEN3_5 = {
    name: FamilySpec(cls, make, seq=QWEN3_5_SEQ, norms="1+w", adjust=qwen3_5_adjust)
    for name, cls, make in (
        ("qwen3_5", tr.Qwen3_5ForCausalLM, qwen3_5_config),
        ("qwen3_5_moe", tr.Qwen3_5MoeForCausalLM, qwen3_5_moe_config),
    )
}
_QWEN3_5["qwen3_next"] = FamilySpec(
    tr.Qwen3NextForCausalLM,
    qwen3_next_config,
    seq=QWEN3_5_SEQ,
    norms="1+w",
    adjust=qwen3_5_adjust,
)

FAMILY_SPECS: dict[str, FamilySpec] = {
    **_BASIC,
    **_CLASSIC,
    **_LLAMA_LIKE,
    **_NORM_VARIANTS,
    **_GEMMA4,
    **_QWEN3_5,
}
CLASSIC = list(_CLASSIC)
LLAMA_LIKE = list(_LLAMA_LIKE)
NORM_VARIANTS = list(_NORM_VARIANTS)
GEMMA4 = list(_GEMMA4)
QWEN3_5 = list(_QWEN3_5)

# The inner loop's families (`make test-fast`, `--families=fast`): one per distinct feature, so
# the per-family suites (conformance, dtypes, export, half loads, devices) still meet each code
# path; `make test` runs them over every family. A new family joins when it brings a feature
# none of these has.
FAST: dict[str, str] = {
    "gpt2": "LayerNorm, learned positions, Conv1D weights",
    "neox": "parallel attention + MLP, partial rotary",
    "llama_gqa": "RMSNorm, rotary, grouped-query attention, untied embeddings",
    "llama3": "rope scaling (llama3), tied embeddings, biases",
    "bloom": "ALiBi",
    "gemma2": "1 + w norms, soft-capping, alternating sliding window, post-norms",
    "gemma3": "q/k norms, a local rotary base",
    "qwen2_moe": "mixture of experts with a gated shared expert",
    "deepseek_v3": "multi-head latent attention",
    "gpt_oss": "attention sinks, YaRN, clamped SwiGLU experts with a router bias",
    "gemma4": "per-layer head sizes, values = keys, KV shared across layers, per-layer inputs",
    "qwen3_5": "recurrent (gated delta-net) layers",
}
assert FAST.keys() <= FAMILY_SPECS.keys(), set(FAST) - set(FAMILY_SPECS)

FAMILIES_ENV = "LMSCOPE_TEST_FAMILIES"  # the default of pytest's --families option


def family_params(names: Iterable[str] | Mapping[str, str]) -> list[Any]:
    """pytest params for a per-family suite: each marked `family(<spec name>)`, so `--families`
    (tests/conftest.py) can leave out the families it does not select. `names` are FAMILY_SPECS
    names, or a mapping of a suite's own ids to them.

    >>> [p.id for p in family_params({"llama": "llama_gqa"})]
    ['llama']
    """
    pairs = names.items() if isinstance(names, Mapping) else ((name, name) for name in names)
    return [pytest.param(key, id=key, marks=pytest.mark.family(spec)) for key, spec in pairs]


def selected_families(choice: str) -> set[str] | None:
    """The FAMILY_SPECS names `--families=<choice>` keeps: None for "all" (or ""), FAST's for
    "fast", else the comma-separated names (which may include "fast").

    >>> sorted(selected_families("fast,olmo2")) == sorted({*FAST, "olmo2"})
    True
    """
    if choice in ("", "all"):
        return None
    names = {name.strip() for name in choice.split(",") if name.strip()}
    if "fast" in names:
        names = (names - {"fast"}) | FAST.keys()
    unknown = sorted(names - FAMILY_SPECS.keys())
    if unknown:
        raise pytest.UsageError(
            f"--families / {FAMILIES_ENV}: unknown families {unknown}; use 'all', 'fast' or "
            f"names of tests/_families.py's FAMILY_SPECS (e.g. 'fast,olmo2')"
        )
    return names


_BUILT: dict[str, TinyModel] = {}


def tiny_family(name: str, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny checkpoint of `FAMILY_SPECS[name]`, built on first use and kept for the session
    (tests/conftest.py's `tiny_family` fixture passes the factory).

    >>> tiny_family("gemma3", tmp_path_factory).hf_model.config.model_type
    'gemma3_text'
    """
    if name not in _BUILT:
        spec = FAMILY_SPECS[name]
        _BUILT[name] = build_tiny(
            tmp_path_factory,
            name,
            spec.model_cls,
            spec.config(),
            norms=spec.norms,
            adjust=spec.adjust,
        )
    return _BUILT[name]
