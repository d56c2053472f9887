"""Gemma 1/2/3, Phi-1/2, Phi-3, OLMo 1/2, OLMoE and StableLM against transformers (eager attention).

Each tiny random checkpoint switches on every feature its family has: biases, GQA/MQA, partial
rotary, a sliding window shorter than the test sequence, soft-caps, pre+post and post norms, q/k
norms, clip_qkv, a mixture of experts routing each token to two experts. See
docs/families/norm_variants.md for what maps where.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tr
from conftest import D_MODEL, D_VOCAB, N_CTX, N_HEADS, SEED, TinyModel, _randomise

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from lmscope.loading.families import family_for

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4

_BASE = dict(
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
_FALCON = dict(
    vocab_size=D_VOCAB, hidden_size=D_MODEL, num_hidden_layers=2, num_attention_heads=N_HEADS,
    max_position_embeddings=N_CTX, ffn_hidden_size=96, **_IDS,
)  # fmt: skip
LONGROPE_CONTEXT = 14  # phi3_longrope's pretraining context: above 12 tokens, below 11 + 6


def _specs() -> dict[str, tuple[type, Callable[[], Any]]]:
    return {
        # MQA, head_dim 24 != d_model / n_heads, attention biases, tied embeddings
        "gemma": (
            tr.GemmaForCausalLM,
            lambda: tr.GemmaConfig(
                **_BASE, **_IDS, num_key_value_heads=1, head_dim=24, attention_bias=True
            ),
        ),
        # GQA, both soft-caps small enough to bite, window 4 < 12 tokens, query_pre_attn_scalar
        "gemma2": (
            tr.Gemma2ForCausalLM,
            lambda: tr.Gemma2Config(
                **_BASE,
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
                **_BASE,
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
            lambda: tr.PhiConfig(**_BASE, **_IDS, num_key_value_heads=2, partial_rotary_factor=0.5),
        ),
        # qk_layernorm: a LayerNorm with bias over each head's queries and keys
        "phi_qk_norm": (
            tr.PhiForCausalLM,
            lambda: tr.PhiConfig(
                **_BASE, **_IDS, num_key_value_heads=2, partial_rotary_factor=0.5, qk_layernorm=True
            ),
        ),
        "phi3": (
            tr.Phi3ForCausalLM,
            lambda: tr.Phi3Config(
                **_BASE, **_IDS, num_key_value_heads=2, partial_rotary_factor=0.5, sliding_window=5
            ),
        ),
        # LongRoPE (the 128k checkpoints): short factors up to LONGROPE_CONTEXT tokens, long ones
        # past it, which generation reaches (transformers then recomputes the cache)
        "phi3_longrope": (
            tr.Phi3ForCausalLM,
            lambda: tr.Phi3Config(
                **_BASE,
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
                **_BASE, **_IDS, num_key_value_heads=2, attention_bias=True, clip_qkv=1.0
            ),
        ),
        "olmo2": (
            tr.Olmo2ForCausalLM,
            lambda: tr.Olmo2Config(**_BASE, **_IDS, num_key_value_heads=2, attention_bias=True),
        ),
        # OLMoE's own setting norm_topk_prob=False, with clip_qkv (applied after the q/k norm)
        "olmoe": (
            tr.OlmoeForCausalLM,
            lambda: tr.OlmoeConfig(
                **{**_BASE, "intermediate_size": 32},
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
                **{**_BASE, "intermediate_size": 32},
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
            lambda: tr.GlmConfig(**_BASE, **_IDS, num_key_value_heads=2, head_dim=16),
        ),
        # GLM-4: and a norm after attention and after the MLP
        "glm4": (
            tr.Glm4ForCausalLM,
            lambda: tr.Glm4Config(**_BASE, **_IDS, num_key_value_heads=2, head_dim=16),
        ),
        # GLM-4.5: a dense first layer, then 8 experts in 4 groups (the best 2 groups are open),
        # sigmoid scores steered by a correction bias, scaled weights, 2 ungated shared experts,
        # q/k norms and biases
        "glm4_moe": (
            tr.Glm4MoeForCausalLM,
            lambda: tr.Glm4MoeConfig(
                **_BASE,
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
                **_BASE,
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
                **_BASE,
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
                **_BASE,
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
                **_BASE,
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
                **_BASE,
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
                **_BASE, **_IDS, num_key_value_heads=2, head_dim=16, use_bias=True
            ),
        ),
        # post-norms, q/k norms, a sliding rotary layer and a global NoPE layer
        "exaone4": (
            tr.Exaone4ForCausalLM,
            lambda: tr.Exaone4Config(
                **_BASE, **_IDS, num_key_value_heads=2, sliding_window=4, sliding_window_pattern=2
            ),
        ),
        # OLMo 2 with a sliding layer (its own unscaled rotary) and a YaRN-scaled global layer
        "olmo3": (
            tr.Olmo3ForCausalLM,
            lambda: tr.Olmo3Config(
                **_BASE,
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
                **_BASE,
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
                **{**_BASE, "intermediate_size": 32},
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
                **{**_BASE, "intermediate_size": 32},
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
                **_BASE,
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
                **_BASE,
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
            lambda: tr.Starcoder2Config(**_BASE, **_IDS, num_key_value_heads=2, sliding_window=4),
        ),
        # LayerNorm1P (1 + w), partial rotary, squared-ReLU MLP
        "nemotron": (
            tr.NemotronForCausalLM,
            lambda: tr.NemotronConfig(
                **_BASE,
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
            lambda: tr.PersimmonConfig(**_BASE, **_IDS),
        ),
        # attention sinks, a sliding and a global layer, YaRN, biased experts with a clamped
        # SwiGLU (a limit small enough to bite) stored fused and interleaved, a router bias
        "gpt_oss": (
            tr.GptOssForCausalLM,
            lambda: tr.GptOssConfig(
                **{**_BASE, "intermediate_size": 32},
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
                **_BASE,
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
                **_BASE,
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
                **_FALCON, new_decoder_architecture=True, num_kv_heads=2, bias=True
            ),
        ),
        # Falcon-7B's shape: multi-query, one norm for both parallel branches
        "falcon_7b": (
            tr.FalconForCausalLM,
            lambda: tr.FalconConfig(**_FALCON, multi_query=True, parallel_attn=True),
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
                **{**_BASE, "intermediate_size": 32},
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
                **{**_BASE, "intermediate_size": 32},
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
            lambda: tr.StableLmConfig(**_BASE, **_IDS, num_key_value_heads=2, use_qkv_bias=True),
        ),
        # StableLM-2-12B's shape: parallel, and a LayerNorm per head on queries and keys
        "stablelm_parallel": (
            tr.StableLmForCausalLM,
            lambda: tr.StableLmConfig(
                **_BASE,
                **_IDS,
                num_key_value_heads=2,
                use_qkv_bias=True,
                use_parallel_residual=True,
                qk_layernorm=True,
                tie_word_embeddings=True,
            ),
        ),
    }


SPECS = _specs()
NAMES = list(SPECS)


def _build_tiny(
    tmp_path_factory: pytest.TempPathFactory, name: str, model_cls: type, config: Any
) -> TinyModel:
    """conftest's build_tiny, plus two family adjustments:
    - MoE: transformers' eager per-expert loop (its reference path), not grouped_mm;
    - Gemma and Nemotron: their norms compute `x_hat * (1 + w)`, so the stored weights are drawn around 0
      (N(0, 0.2)), giving the same non-trivial gains 1 + N(0, 0.2) as every other family's norms
      (around 1 they would double every sublayer's output).
    """
    config._attn_implementation = "eager"
    if getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None):
        config._experts_implementation = "eager"
    torch.manual_seed(SEED)
    model = model_cls(config)
    _randomise(model)
    with torch.no_grad():  # DeepSeek-style routers' choice bias is a buffer: make it matter
        for bname, buffer in model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.3)
    if config.model_type.startswith("gemma") or config.model_type == "nemotron":
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if param.ndim == 1 and "norm" in pname and pname.endswith("weight"):
                    param.sub_(1.0)
    model.eval()
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return TinyModel(path, model, name)


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], TinyModel]:
    """Builds (once per module) the tiny checkpoint of a family variant."""
    built: dict[str, TinyModel] = {}

    def get(name: str) -> TinyModel:
        if name not in built:
            model_cls, make_config = SPECS[name]
            built[name] = _build_tiny(tmp_path_factory, f"nv_{name}", model_cls, make_config())
        return built[name]

    return get


@pytest.fixture(params=NAMES)
def tiny(request: pytest.FixtureRequest, build: Callable[[str], TinyModel]) -> TinyModel:
    return build(request.param)


@pytest.fixture
def model(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


def _final_norm(hf: torch.nn.Module) -> torch.nn.Module:
    base = getattr(hf, "model", None) or hf.base_model
    for name in ("final_layernorm", "norm", "ln_f", "norm_f"):
        if hasattr(base, name):
            return getattr(base, name)
    raise AssertionError(f"no final norm on {type(base).__name__}")


def _padded(seqs: list[torch.Tensor], pad_id: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded batch and its attention mask."""
    length = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, length - len(s) :] = s
        mask[i, length - len(s) :] = 1
    return tokens, mask


def _ragged_seqs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randint(3, D_VOCAB, (n,), generator=gen) for n in (5, 11, 8)]


# -- agreement with transformers --------------------------------------------------------------------
@torch.no_grad()
def test_logits_match_hf(tiny: TinyModel, model: HookedTransformer, tokens) -> None:
    expected = tiny.hf_model(tokens).logits
    got = model(tokens)
    assert got.shape == (2, 12, D_VOCAB)
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_residual_stream_matches_hf_hidden_states(
    tiny: TinyModel, model: HookedTransformer, tokens
) -> None:
    hf = tiny.hf_model
    captured = {}
    handle = _final_norm(hf).register_forward_hook(
        lambda mod, args, out: captured.update(norm_in=args[0])
    )
    try:
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    n = model.cfg.n_layers
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "resid" in name)
    for layer in range(n):
        torch.testing.assert_close(
            cache["resid_pre", layer], hidden[layer], atol=LOGIT_ATOL, rtol=0
        )
    torch.testing.assert_close(
        cache["resid_post", n - 1], captured["norm_in"], atol=LOGIT_ATOL, rtol=0
    )


@torch.no_grad()
def test_loss_matches_hf(tiny: TinyModel, model: HookedTransformer, tokens) -> None:
    expected = tiny.hf_model(tokens, labels=tokens).loss
    torch.testing.assert_close(model(tokens, return_type="loss"), expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_processed_model_log_probs_match_hf(tiny: TinyModel, tokens) -> None:
    processed = HookedTransformer.from_pretrained(tiny.path)
    cfg = processed.cfg
    assert cfg.processing["fold_ln"] is True
    # centring the unembedding would shift the logits inside the soft-cap's tanh
    assert cfg.processing["center_unembed"] is (cfg.output_logits_soft_cap <= 0)
    # clip_qkv clamps v after its bias, so b_V stays where it is
    # (and attention sinks leave rows that sum to less than 1)
    # (and latent attention has no b_V)
    folds = cfg.clip_qkv is None and not cfg.attn_sinks and not cfg.kv_lora_rank
    assert cfg.processing["fold_value_biases"] is folds
    for block in processed.blocks:  # pre-norms fold; post-norms keep their weights
        for name in ("ln1", "ln2"):
            assert getattr(getattr(block, name), "w", None) is None
        for name in ("ln1_post", "ln2_post"):
            if hasattr(block, name):
                assert getattr(block, name).w is not None
    expected = tiny.hf_model(tokens).logits.log_softmax(-1)
    got = processed(tokens).log_softmax(-1)
    torch.testing.assert_close(got, expected, atol=LOGPROB_ATOL, rtol=0)


# -- padding --------------------------------------------------------------------------------------
@torch.no_grad()
def test_left_padded_batch_matches_each_sequence_alone(model: HookedTransformer) -> None:
    if model.cfg.attn_temperature_scale is not None:
        pytest.skip(
            "Llama 4's temperature tuning counts positions from the padded sequence's start, as "
            "transformers does, so a left-padded row is not the row alone (in transformers too)"
        )
    seqs = _ragged_seqs()
    tokens, mask = _padded(seqs)
    batched = model(tokens, attention_mask=mask)
    assert torch.isfinite(batched).all()
    for i, seq in enumerate(seqs):
        alone = model(seq[None])[0]
        torch.testing.assert_close(batched[i, -len(seq) :], alone, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_left_padded_batch_matches_hf(tiny: TinyModel, model: HookedTransformer) -> None:
    tokens, mask = _padded(_ragged_seqs())
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = tiny.hf_model(tokens, attention_mask=mask, position_ids=positions).logits
    got = model(tokens, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=LOGIT_ATOL, rtol=0)


# -- attention paths --------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_explicit_attention_path_matches_sdpa(
    model: HookedTransformer, tokens, padded: bool
) -> None:
    kwargs = {}
    if padded:
        tokens, kwargs["attention_mask"] = _padded(_ragged_seqs())
    fast = model(tokens, **kwargs)
    seen = []
    explicit = model.run_with_hooks(
        tokens,
        fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: seen.append(hook.name))],
        **kwargs,
    )
    assert len(seen) == model.cfg.n_layers
    torch.testing.assert_close(explicit, fast, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_sliding_window_layers_see_only_their_window(model: HookedTransformer, tokens) -> None:
    cfg = model.cfg
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("pattern"))
    q = torch.arange(12)[:, None]
    k = torch.arange(12)[None, :]
    for layer, kind in enumerate(cfg.layer_types):
        pattern = cache["pattern", layer]
        sinks = cache[f"blocks.{layer}.attn.hook_sink_pattern"] if cfg.attn_sinks else 0
        torch.testing.assert_close(pattern.sum(-1) + sinks, torch.ones(2, cfg.n_heads, 12))
        hidden = k > q
        if kind == "local":
            assert cfg.window_size < 12
            hidden = hidden | (k <= q - cfg.window_size)
        if kind == "chunked":
            assert cfg.attention_chunk_size < 12
            hidden = hidden | (k // cfg.attention_chunk_size != q // cfg.attention_chunk_size)
        assert torch.all(pattern[..., hidden] == 0)
        assert torch.all(pattern[..., ~hidden] > 0)


# -- residual stream ---------------------------------------------------------------------------------
@torch.no_grad()
def test_residual_stream_decomposes_exactly(model: HookedTransformer, tokens) -> None:
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        pre, post = cache["resid_pre", layer], cache["resid_post", layer]
        attn_out, mlp_out = cache["attn_out", layer], cache["mlp_out", layer]
        if model.cfg.parallel_attn_mlp:
            assert f"blocks.{layer}.hook_resid_mid" not in model.hook_dict
            assert torch.equal(pre + attn_out + mlp_out, post)
        else:
            mid = cache["resid_mid", layer]
            assert torch.equal(pre + attn_out, mid)
            assert torch.equal(mid + mlp_out, post)


# -- family extras ----------------------------------------------------------------------------------
def _shapes(model: HookedTransformer, tokens: torch.Tensor, names: list[str]) -> dict[str, list]:
    seen: dict[str, list] = {}

    def record(x: torch.Tensor, hook: Any) -> None:
        seen.setdefault(hook.name, []).append(tuple(x.shape))

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in names])
    return seen


def test_family_hooks_fire_with_documented_shapes(model: HookedTransformer, tokens) -> None:
    cfg = model.cfg
    b, p, dm, h, kv, dh = 2, 12, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    expected: dict[str, tuple] = {}
    for layer in range(cfg.n_layers):
        x = f"blocks.{layer}."
        if cfg.norm_placement != "post":
            expected[f"{x}ln1.hook_scale"] = (b, p, 1)
            expected[f"{x}ln2.hook_normalized"] = (b, p, dm)
        else:
            assert f"{x}ln1.hook_scale" not in model.hook_dict  # no pre-norm to hook
        if cfg.norm_placement != "pre":
            for ln in ("ln1_post", "ln2_post"):
                expected[f"{x}{ln}.hook_scale"] = (b, p, 1)
                expected[f"{x}{ln}.hook_normalized"] = (b, p, dm)
        rotates = cfg.rotary_layers is None or cfg.rotary_layers[layer]
        if cfg.use_qk_norm and (rotates or not cfg.qk_norm_after_rotary):
            if cfg.qk_norm_per_head:
                expected[f"{x}attn.q_norm.hook_scale"] = (b, p, h, 1)
                expected[f"{x}attn.q_norm.hook_normalized"] = (b, p, h, dh)
                expected[f"{x}attn.k_norm.hook_scale"] = (b, p, kv, 1)
                expected[f"{x}attn.k_norm.hook_normalized"] = (b, p, kv, dh)
            else:
                expected[f"{x}attn.q_norm.hook_scale"] = (b, p, 1)
                expected[f"{x}attn.q_norm.hook_normalized"] = (b, p, h * dh)
                expected[f"{x}attn.k_norm.hook_scale"] = (b, p, 1)
                expected[f"{x}attn.k_norm.hook_normalized"] = (b, p, kv * dh)
        if cfg.num_experts and cfg.mlp_type(layer) == "moe":
            k, e = cfg.experts_per_token, cfg.num_experts
            expected[f"{x}mlp.hook_router_logits"] = (b, p, e)
            expected[f"{x}mlp.hook_expert_weights"] = (b, p, k)
            expected[f"{x}mlp.hook_expert_indices"] = (b, p, k)
    seen = _shapes(model, tokens, list(expected))
    assert {name: shapes for name, shapes in seen.items()} == {
        name: [shape] for name, shape in expected.items()
    }


@torch.no_grad()
def test_post_norms_normalise_each_sublayer_output(model: HookedTransformer, tokens) -> None:
    if model.cfg.norm_placement == "pre":
        pytest.skip("no post-norms")
    _, cache = model.run_with_cache(tokens)
    for layer, block in enumerate(model.blocks):
        for ln, out in (("ln1_post", "attn_out"), ("ln2_post", "mlp_out")):
            normalized = cache[f"blocks.{layer}.{ln}.hook_normalized"]
            torch.testing.assert_close(
                normalized * getattr(block, ln).w, cache[out, layer], atol=1e-6, rtol=0
            )
            scale = cache[f"blocks.{layer}.{ln}.hook_scale"][..., 0]  # sqrt(mean(x^2) + eps)
            torch.testing.assert_close(
                normalized.pow(2).mean(-1), 1 - model.cfg.eps / scale**2, atol=1e-5, rtol=0
            )


def test_mixture_of_experts_routing_hooks(model: HookedTransformer, tokens) -> None:
    cfg = model.cfg
    if not cfg.num_experts:
        pytest.skip("not a mixture of experts")
    layer = cfg.mlp_types.index("moe") if cfg.mlp_types else 0
    mlp = f"blocks.{layer}.mlp."
    _, cache = model.run_with_cache(tokens)
    weights, indices = cache[mlp + "hook_expert_weights"], cache[mlp + "hook_expert_indices"]
    logits = cache[mlp + "hook_router_logits"]
    scores = logits.sigmoid() if cfg.router_scoring == "sigmoid" else logits.softmax(-1)
    scale = cfg.routed_scaling_factor
    if cfg.router_scoring == "sparsemixer":  # each weight a softmax over the experts near it
        assert bool((weights > 0).all()) and bool((weights <= 1).all())
    elif cfg.norm_topk_prob:
        torch.testing.assert_close(weights.sum(-1), torch.full((2, 12), scale))
    else:
        assert torch.all(weights.sum(-1) <= scale + 1e-6)
        torch.testing.assert_close(weights, scale * scores.gather(-1, indices))
    # each expert's hooks see exactly the tokens routed to it
    routed = 0
    for e in range(cfg.num_experts):
        n_routed = int((indices == e).sum())
        if n_routed:
            assert cache[f"{mlp}experts.{e}.hook_post"].shape == (n_routed, cfg.d_mlp)
        routed += n_routed
    assert routed == 2 * 12 * cfg.experts_per_token
    # the routing weights are live: zeroing them switches the routed experts off, leaving the
    # shared experts (if any)
    seen = []
    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (mlp + "hook_expert_weights", lambda w, hook: torch.zeros_like(w)),
                (f"blocks.{layer}.hook_mlp_out", lambda x, hook: seen.append(x.clone())),
            ],
        )
    shared = cache[mlp + "hook_shared_expert_out"] if cfg.shared_expert_d_mlp else 0 * seen[0]
    torch.testing.assert_close(seen[0], shared, atol=1e-6, rtol=0)
    assert cache["mlp_out", layer].abs().max() > 0


@torch.no_grad()
def test_sparsemixer_router_matches_hf(build, tokens) -> None:
    """PhiMoE's SparseMixer picks the same two experts with the same weights as transformers'."""
    tiny = build("phimoe")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    router = tiny.hf_model.model.layers[1].mlp.router
    out = []
    handle = router.register_forward_hook(lambda m, a, o: out.append(o))
    try:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "blocks.1.mlp.hook_" in n)
        tiny.hf_model(tokens)
    finally:
        handle.remove()
    _, hf_weights, hf_indices = out[0]
    assert torch.equal(cache["blocks.1.mlp.hook_expert_indices"].flatten(0, 1), hf_indices)
    torch.testing.assert_close(
        cache["blocks.1.mlp.hook_expert_weights"].flatten(0, 1), hf_weights, atol=1e-6, rtol=0
    )
    assert bool((hf_weights.sum(-1) != 1).any())  # not renormalised


@torch.no_grad()
def test_grouped_sigmoid_router_matches_hf(build, tokens) -> None:
    """GLM-4.5's router (DeepSeek-V3's): the same experts and weights as transformers', the
    correction bias steering the choice but not the weights, only the open groups chosen."""
    tiny = build("glm4_moe")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    assert model.cfg.mlp_types == ["dense", "moe"]
    assert model.cfg.shared_expert_d_mlp == 64 and not model.cfg.shared_expert_gated
    gate = tiny.hf_model.model.layers[1].mlp.gate
    out = []
    handle = gate.register_forward_hook(lambda m, a, o: out.append(o))
    try:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: "blocks.1.mlp.hook_" in n)
        tiny.hf_model(tokens)
    finally:
        handle.remove()
    hf_logits, hf_weights, hf_indices = out[0]
    indices = cache["blocks.1.mlp.hook_expert_indices"].flatten(0, 1)
    weights = cache["blocks.1.mlp.hook_expert_weights"].flatten(0, 1)
    torch.testing.assert_close(
        cache["blocks.1.mlp.hook_router_logits"].flatten(0, 1), hf_logits, atol=1e-5, rtol=0
    )
    order, hf_order = indices.argsort(-1), hf_indices.argsort(-1)  # transformers' is unsorted
    assert torch.equal(indices.gather(-1, order), hf_indices.gather(-1, hf_order))
    torch.testing.assert_close(
        weights.gather(-1, order), hf_weights.gather(-1, hf_order), atol=1e-6, rtol=0
    )
    bias = model.blocks[1].mlp.router_choice_bias
    torch.testing.assert_close(bias, gate.e_score_correction_bias, atol=0, rtol=0)
    bias.zero_()  # without the correction bias other experts are chosen
    unsteered = model.blocks[1].mlp.route(cache["blocks.1.mlp.hook_router_logits"])[1]
    assert not torch.equal(unsteered.sort(-1).values, indices.view_as(unsteered).sort(-1).values)
    groups = indices // 2  # 8 experts in 4 groups of 2; 2 groups open per token
    assert all(len(set(row.tolist())) <= 2 for row in groups)


# -- generation and the KV cache --------------------------------------------------------------------
@torch.no_grad()
def test_greedy_generation_matches_hf(tiny: TinyModel, model: HookedTransformer) -> None:
    tokens, mask = _padded(_ragged_seqs())
    ours = model.generate(
        tokens,
        max_new_tokens=6,
        do_sample=False,
        stop_at_eos=False,
        verbose=False,
        attention_mask=mask,
    )
    theirs = tiny.hf_model.generate(
        tokens,
        attention_mask=mask,
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert theirs.shape == (3, 11 + 6)
    assert torch.equal(ours, theirs)
    single = _ragged_seqs()[1][None]
    ours_single = model.generate(
        single, max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False
    )
    theirs_single = tiny.hf_model.generate(
        single,
        attention_mask=torch.ones_like(single),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert torch.equal(ours_single, theirs_single)


@torch.no_grad()
def test_kv_cached_forward_matches_uncached(model: HookedTransformer, tokens) -> None:
    cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2)
    pieces = [model(tokens[:, :7], past_kv_cache=cache)]
    pieces += [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(7, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), model(tokens), atol=LOGIT_ATOL, rtol=0)


# -- grouped-query attention -------------------------------------------------------------------------
@torch.no_grad()
def test_gqa_keys_and_values_have_kv_head_shape(
    tiny: TinyModel, model: HookedTransformer, tokens
) -> None:
    cfg = model.cfg
    if cfg.n_key_value_heads == cfg.n_heads:
        pytest.skip("no grouped-query attention (Persimmon)")
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_k", "hook_v")))
    assert cache["k", 0].shape == (2, 12, cfg.n_key_value_heads, cfg.d_head)
    assert cache["v", 1].shape == (2, 12, cfg.n_key_value_heads, cfg.d_head)

    ungrouped = HookedTransformer.from_pretrained_no_processing(
        tiny.path, ungroup_grouped_query_attention=True
    )
    logits, ucache = ungrouped.run_with_cache(
        tokens, names_filter=lambda n: n.endswith(("hook_k", "hook_v"))
    )
    assert ucache["k", 0].shape == (2, 12, cfg.n_heads, cfg.d_head)
    torch.testing.assert_close(
        ucache["k", 0], cache["k", 0].repeat_interleave(cfg.n_groups, dim=2), atol=0, rtol=0
    )
    torch.testing.assert_close(logits, model(tokens), atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("ungroup", [False, True])
@pytest.mark.parametrize("which", ["k", "v"])
@torch.no_grad()
def test_patching_one_kv_head(tiny: TinyModel, tokens, ungroup: bool, which: str) -> None:
    model = HookedTransformer.from_pretrained_no_processing(
        tiny.path, ungroup_grouped_query_attention=ungroup
    )
    clean = model(tokens)
    _, source = model.run_with_cache(tokens.flip(-1), names_filter=f"blocks.0.attn.hook_{which}")

    def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x[:, :, 0] = source[hook.name][:, :, 0]
        return x

    patched = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.0.attn.hook_{which}", patch)])
    assert torch.isfinite(patched).all()
    assert (patched - clean).abs().max() > 1e-4
    # patching a head with its own activation changes nothing
    same = model.run_with_hooks(
        tokens, fwd_hooks=[(f"blocks.0.attn.hook_{which}", lambda x, hook: x.clone())]
    )
    torch.testing.assert_close(same, clean, atol=0, rtol=0)


# -- family specifics ---------------------------------------------------------------------------------
def test_gemma_folds_embedding_scale_and_unit_offset_at_load(build) -> None:
    tiny = build("gemma3")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    hf = tiny.hf_model
    embed = hf.model.embed_tokens.weight
    torch.testing.assert_close(model.W_E, embed * torch.tensor(math.sqrt(D_MODEL)), atol=0, rtol=0)
    torch.testing.assert_close(model.W_U, embed.T, atol=0, rtol=0)  # tied: the unscaled matrix
    layer = hf.model.layers[0]
    block = model.blocks[0]
    torch.testing.assert_close(block.ln1.w, 1 + layer.input_layernorm.weight, atol=0, rtol=0)
    torch.testing.assert_close(
        block.ln1_post.w, 1 + layer.post_attention_layernorm.weight, atol=0, rtol=0
    )
    torch.testing.assert_close(
        block.attn.q_norm.w, 1 + layer.self_attn.q_norm.weight, atol=0, rtol=0
    )
    cfg = model.cfg
    assert (cfg.d_head, cfg.attn_scale) == (24, math.sqrt(20))
    assert cfg.attn_types == ["local", "global"] and cfg.window_size == 4
    assert (cfg.rotary_base, cfg.rotary_base_local) == (1000.0, 100.0)
    assert cfg.rope_scaling["rope_type"] == "linear" and cfg.rope_scaling["factor"] == 2.0
    assert cfg.attn_scores_soft_cap < 0 and cfg.output_logits_soft_cap == 3.0


def test_config_reflects_each_family(build) -> None:
    cfgs = {
        name: HookedTransformer.from_pretrained_no_processing(build(name).path).cfg
        for name in NAMES
    }
    assert cfgs["gemma"].n_key_value_heads == 1 and cfgs["gemma"].act_fn == "gelu_pytorch_tanh"
    assert cfgs["gemma2"].attn_scores_soft_cap == 2.0
    assert cfgs["gemma2"].output_logits_soft_cap == 3.0
    assert cfgs["gemma2"].norm_placement == "pre_and_post"
    assert cfgs["phi"].parallel_attn_mlp and cfgs["phi"].rotary_dim == 8
    assert cfgs["phi3"].rotary_dim == 8 and cfgs["phi3"].window_size == 5
    assert cfgs["olmo"].normalization_type == "LNPre" and cfgs["olmo"].clip_qkv == 1.0
    assert cfgs["olmo2"].norm_placement == "post" and not cfgs["olmo2"].qk_norm_per_head
    assert cfgs["olmoe"].num_experts == 4 and not cfgs["olmoe"].norm_topk_prob
    assert cfgs["olmoe_norm_topk"].norm_topk_prob
    assert cfgs["stablelm"].rotary_dim == 4 and not cfgs["stablelm"].parallel_attn_mlp
    assert cfgs["stablelm_parallel"].parallel_attn_mlp and cfgs["stablelm_parallel"].use_qk_norm
    assert cfgs["phi_qk_norm"].use_qk_norm and cfgs["phi_qk_norm"].qk_norm_type == "LN"
    assert cfgs["phi3_longrope"].rope_scaling["rope_type"] == "longrope"
    assert cfgs["phi3_longrope"].rope_scaling["original_max_position_embeddings"] == 14


@torch.no_grad()
def test_longrope_switches_to_its_long_factors_past_the_context(build) -> None:
    tiny = build("phi3_longrope")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    rotary = tiny.hf_model.model.rotary_emb
    assert model.rotary.attention_factor == rotary.attention_scaling > 1
    tokens = torch.randint(3, D_VOCAB, (2, 2 * LONGROPE_CONTEXT))
    for length in (LONGROPE_CONTEXT, 2 * LONGROPE_CONTEXT):  # short factors, then long ones
        expected = tiny.hf_model(tokens[:, :length]).logits
        got = model(tokens[:, :length])
        torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)
    assert not torch.equal(model.rotary.long_inv_freq, model.rotary.inv_freq)


@torch.no_grad()
def test_per_head_qk_layer_norms(build, tokens) -> None:
    """Phi's q/k LayerNorm (one, with bias, over d_head) and StableLM-2-12B's (one per head, no
    bias: `head_w` [n_heads, d_head] stacked from the checkpoint's per-head norms)."""
    phi = HookedTransformer.from_pretrained_no_processing(build("phi_qk_norm").path)
    hf_attn = build("phi_qk_norm").hf_model.model.layers[0].self_attn
    assert phi.cfg.qk_norm_type == "LN" and not phi.cfg.qk_norm_head_weights
    torch.testing.assert_close(phi.blocks[0].attn.q_norm.b, hf_attn.q_layernorm.bias)
    tiny = build("stablelm_parallel")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    q_norm = model.blocks[1].attn.q_norm
    hf_norms = tiny.hf_model.model.layers[1].self_attn.q_layernorm.norms
    assert q_norm.head_w.shape == (4, model.cfg.d_head) and q_norm.head_b is None
    for head, hf_norm in enumerate(hf_norms):
        torch.testing.assert_close(q_norm.head_w[head], hf_norm.weight, atol=0, rtol=0)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "blocks.1.attn" in n)
    normalized = cache["blocks.1.attn.q_norm.hook_normalized"]  # before the per-head weights
    torch.testing.assert_close(normalized.mean(-1), torch.zeros(2, 12, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        cache["blocks.1.attn.hook_q"], normalized * q_norm.head_w, atol=1e-6, rtol=0
    )


@torch.no_grad()
def test_llama4_chunks_temperature_and_qk_norm(build, tokens) -> None:
    """Llama 4's chunked layer attends within chunks of real tokens (left padding does not shift
    them), its NoPE layer's temperature tuning and its q/k norm after rotary all matter."""
    tiny = build("llama4")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    cfg = model.cfg
    assert cfg.attn_types == ["chunked", "global"] and cfg.rotary_layers == [True, False]
    assert cfg.mlp_types == ["dense", "moe"] and cfg.expert_weights_on_input
    expected = tiny.hf_model(tokens).logits
    for change in ({"attn_types": None}, {"attn_temperature_scale": None}, {"use_qk_norm": False}):
        changed = HookedTransformer.from_pretrained_no_processing(tiny.path, **change)
        assert (changed(tokens) - expected).abs().max() > 1e-3, change
    seqs = _ragged_seqs()
    padded, mask = _padded(seqs)
    _, cache = model.run_with_cache(
        padded, attention_mask=mask, names_filter="blocks.0.attn.hook_pattern"
    )
    row = 0  # 5 real tokens after 6 pads: one chunk, every real key visible to the last query
    pattern = cache["blocks.0.attn.hook_pattern"][row, :, -1, -len(seqs[row]) :]
    assert bool((pattern > 0).all())


@pytest.mark.parametrize("name", ["smollm3", "exaone4"])
@torch.no_grad()
def test_nope_layers_do_not_rotate(build, tokens, name: str) -> None:
    """Layer 1 of these checkpoints is a NoPE layer: no rotary hooks fire there, and rotating it
    anyway departs from transformers."""
    tiny = build(name)
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    assert model.cfg.rotary_layers == [True, False]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "hook_rot_" in n)
    assert sorted(cache.keys()) == ["blocks.0.attn.hook_rot_k", "blocks.0.attn.hook_rot_q"]
    rotated = HookedTransformer.from_pretrained_no_processing(tiny.path, rotary_layers=None)
    assert (rotated(tokens) - tiny.hf_model(tokens).logits).abs().max() > 1e-3


def test_multipliers_are_folded_into_the_weights(build) -> None:
    """Granite's embedding, residual, attention and logits multipliers and Cohere's logit scale
    live in the weights (and the attention scale), so logits = resid @ W_U as everywhere."""
    tiny = build("granite")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    hf = tiny.hf_model.model
    embed = hf.embed_tokens.weight
    torch.testing.assert_close(model.W_E, embed * 4.0, atol=0, rtol=0)
    torch.testing.assert_close(model.W_U, embed.T / 2.0, atol=0, rtol=0)  # tied, / logits_scaling
    attn, mlp = hf.layers[1].self_attn, hf.layers[1].mlp
    block = model.blocks[1]
    torch.testing.assert_close(block.attn.o_weight, attn.o_proj.weight * 0.5, atol=0, rtol=0)
    torch.testing.assert_close(block.attn.b_O, attn.o_proj.bias * 0.5, atol=0, rtol=0)
    torch.testing.assert_close(block.mlp.out_weight, mlp.down_proj.weight * 0.5, atol=0, rtol=0)
    assert model.cfg.attn_scale == 8.0  # 1 / attention_multiplier
    moe = HookedTransformer.from_pretrained_no_processing(build("granitemoeshared").path)
    experts = build("granitemoeshared").hf_model.model.layers[0].block_sparse_moe.experts
    torch.testing.assert_close(
        moe.blocks[0].mlp.experts[3].out_weight, experts.down_proj[3] * 0.5, atol=0, rtol=0
    )
    torch.testing.assert_close(
        moe.blocks[0].mlp.experts[3].in_weight, experts.gate_up_proj[3, 32:], atol=0, rtol=0
    )
    cohere = build("cohere")
    model = HookedTransformer.from_pretrained_no_processing(cohere.path)
    embed = cohere.hf_model.model.embed_tokens.weight
    torch.testing.assert_close(model.W_U, embed.T * 0.25, atol=0, rtol=0)
    assert model.blocks[0].attn.q_norm.head_w.shape == (4, 16)


@torch.no_grad()
def test_attention_sinks(build, tokens) -> None:
    """GPT-OSS's sinks take a share of every attention row (`hook_sink_pattern`), as in
    transformers; without them the logits depart from transformers'."""
    tiny = build("gpt_oss")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    hf_attn = tiny.hf_model.model.layers[1].self_attn
    torch.testing.assert_close(model.blocks[1].attn.sinks, hf_attn.sinks, atol=0, rtol=0)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
    for layer in range(2):
        sink = cache[f"blocks.{layer}.attn.hook_sink_pattern"]
        assert sink.shape == (2, 4, 12) and bool((sink > 0).all())
        torch.testing.assert_close(cache["pattern", layer].sum(-1) + sink, torch.ones(2, 4, 12))
    processed = HookedTransformer.from_pretrained(tiny.path)
    assert processed.cfg.processing["fold_value_biases"] is False  # rows do not sum to 1
    for block in model.blocks:  # a sink logit of -inf takes no attention: as if it were absent
        block.attn.sinks.fill_(float("-inf"))
    assert (model(tokens) - tiny.hf_model(tokens).logits).abs().max() > 1e-3


@torch.no_grad()
def test_latent_attention_hooks_cache_and_weights(build, tokens) -> None:
    """DeepSeek's multi-head latent attention: the latents and decompressed q/k/v have their
    documented shapes, the KV cache holds the latent, an edit of the latent reaches later
    cached steps, and the weight views are slices of the checkpoint's projections."""
    tiny = build("deepseek_v3")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "blocks.1.attn" in n)
    a = "blocks.1.attn."
    shapes = {
        "hook_q_latent": (2, 12, 24),
        "hook_kv_latent": (2, 12, 16),
        "hook_k_rope": (2, 12, 1, 8),
        "hook_q": (2, 12, 4, 20),
        "hook_rot_q": (2, 12, 4, 20),
        "hook_k": (2, 12, 4, 20),
        "hook_rot_k": (2, 12, 4, 20),
        "hook_v": (2, 12, 4, 10),
        "hook_z": (2, 12, 4, 10),
        "hook_pattern": (2, 4, 12, 12),
    }
    assert {name: tuple(cache[a + name].shape) for name in shapes} == shapes
    # the rotary key part is shared by the heads; the rest is each head's decompressed latent
    k = cache[a + "hook_k"]
    assert torch.equal(k[..., 12:], cache[a + "hook_k_rope"].expand(-1, -1, 4, -1))
    attn = model.blocks[1].attn
    torch.testing.assert_close(
        k[..., :12], torch.einsum("bpr,hrd->bphd", cache[a + "hook_kv_latent"], attn.W_UK)
    )
    kv = KVCache.init_cache(model.cfg, "cpu", batch_size=2)
    model(tokens[:, :5], past_kv_cache=kv)
    assert kv.entries[1].k.shape[1:2] == (1,) and kv.entries[1].k.shape[-1] == 16
    torch.testing.assert_close(kv.entries[1].k[:, 0, :5], cache[a + "hook_kv_latent"][:, :5])
    hf_attn = tiny.hf_model.model.layers[1].self_attn
    torch.testing.assert_close(attn.W_DKV, hf_attn.kv_a_proj_with_mqa.weight[:16].T, atol=0, rtol=0)
    kv_b = hf_attn.kv_b_proj.weight.view(4, 22, 16)
    torch.testing.assert_close(attn.W_UV, kv_b[:, 12:].transpose(1, 2), atol=0, rtol=0)
    with pytest.raises(AttributeError, match="decompressed from a normalised latent"):
        _ = model.W_K

    # zeroing the cached latent of position 0 changes every later step's output
    def ablate(latent: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.cat((torch.zeros_like(latent[:, :1]), latent[:, 1:]), dim=1)

    kv = KVCache.init_cache(model.cfg, "cpu", batch_size=2)
    with model.hooks(fwd_hooks=[(a + "hook_kv_latent", ablate)]):
        model(tokens[:, :5], past_kv_cache=kv)
    later = model(tokens[:, 5:6], past_kv_cache=kv)
    clean = model(tokens[:, :6])[:, 5:6]
    assert (later - clean).abs().max() > 1e-4


def test_shared_norm_of_parallel_blocks_is_loaded_twice(build) -> None:
    for name in ("phi", "stablelm_parallel", "cohere"):
        model = HookedTransformer.from_pretrained_no_processing(build(name).path)
        for block in model.blocks:
            assert torch.equal(block.ln1.w, block.ln2.w) and torch.equal(block.ln1.b, block.ln2.b)


@torch.no_grad()
def test_olmo_layer_norm_has_no_weights(build, tokens) -> None:
    model = HookedTransformer.from_pretrained_no_processing(build("olmo").path)
    assert not any(".ln" in name for name in model.named_weights())
    _, cache = model.run_with_cache(tokens)
    resid = cache["resid_pre", 1]
    centred = resid - resid.mean(-1, keepdim=True)
    torch.testing.assert_close(
        cache["blocks.1.ln1.hook_normalized"],
        centred / (centred.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt(),
        atol=1e-6,
        rtol=0,
    )


@torch.no_grad()
def test_clip_qkv_clamps_queries_keys_and_values(build, tokens) -> None:
    for name in ("olmo", "olmoe"):
        model = HookedTransformer.from_pretrained_no_processing(build(name).path)
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_q"))
        q = cache["q", 0]
        assert q.abs().max() == 1.0  # the clamp is active at the test scale


# -- configs lmscope reads (and refuses) ----------------------------------------------------------
def _hf_dict(config: Any) -> dict[str, Any]:
    return config.to_dict()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: tr.Gemma3TextConfig(**_BASE, use_bidirectional_attention=True),
            "bidirectional",
        ),
        (lambda: tr.FalconConfig(**_FALCON, alibi=True), "alibi=True"),
        (
            lambda: tr.MptConfig(
                vocab_size=D_VOCAB, d_model=48, n_heads=6, attn_config={"qk_ln": True}
            ),
            "attn_config.qk_ln",
        ),
        (lambda: tr.GptOssConfig(**_BASE, swiglu_alpha=1.5), "swiglu_alpha"),
        (
            lambda: tr.PhimoeConfig(
                **_BASE,
                rope_parameters={
                    "rope_type": "longrope",
                    "rope_theta": 1e4,
                    "short_factor": [1.0] * 8,
                    "long_factor": [2.0] * 8,
                    "short_mscale": 1.1,
                    "long_mscale": 1.2,
                    "original_max_position_embeddings": 32,
                },
            ),
            "short LongRoPE factors",
        ),
        (
            lambda: tr.Olmo3Config(
                **_BASE,
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1e4},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                },
            ),
            "sliding-window layers",
        ),
        (
            lambda: tr.Gemma3TextConfig(
                **_BASE,
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                },
            ),
            "sliding-window layers",
        ),
    ],
)
def test_unsupported_features_are_refused_clearly(make: Callable[[], Any], match: str) -> None:
    hf = _hf_dict(make())
    with pytest.raises(NotImplementedError, match=match):
        family_for(hf).config_from_hf(hf)


def test_legacy_gemma_configs() -> None:
    """config.json files written before transformers 5 (as on the hub)."""
    gemma1 = {
        **_BASE,
        "architectures": ["GemmaForCausalLM"],
        "head_dim": 16,
        "num_key_value_heads": 1,
        "hidden_act": "gelu",  # the official releases' legacy value: the tanh approximation
        "rope_theta": 10000.0,
    }
    assert family_for(gemma1).config_from_hf(gemma1)["act_fn"] == "gelu_pytorch_tanh"
    gemma3 = {
        **_BASE,
        "num_hidden_layers": 6,
        "architectures": ["Gemma3ForCausalLM"],
        "head_dim": 16,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 8.0},
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "query_pre_attn_scalar": 256,
    }
    fields = family_for(gemma3).config_from_hf(gemma3)
    assert fields["attn_types"] == ["local"] * 5 + ["global"]
    assert fields["rotary_base"] == 1e6 and fields["rotary_base_local"] == 1e4
    assert fields["rope_scaling"]["factor"] == 8.0 and fields["attn_scale"] == 16.0
    gemma2 = {**_BASE, "architectures": ["Gemma2ForCausalLM"], "sliding_window": 4096}
    fields = family_for(gemma2).config_from_hf(gemma2)
    assert fields["attn_types"] == ["local", "global"]
