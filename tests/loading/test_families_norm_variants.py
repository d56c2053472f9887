"""Gemma 1/2/3, Phi-1/2, Phi-3, OLMo 1/2, OLMoE and StableLM against transformers (eager attention).

Each tiny random checkpoint switches on every feature its family has: biases, GQA/MQA, partial
rotary, a sliding window shorter than the test sequence, soft-caps, pre+post and post norms, q/k
norms, clip_qkv, a mixture of experts routing each token to two experts. See
docs/families/norm_variants.md for what maps where. Their agreement with transformers (logits,
padding, attention paths, hooks, caching, generation) is the conformance suite's
(tests/loading/test_conformance.py); this module holds what is particular to each family.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tr

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from lmscope.loading.families import family_for
from tests._families import LONGROPE_CONTEXT, NORM_VARIANTS, NV_BASE, NV_FALCON
from tests._tiny import D_MODEL, D_VOCAB, TinyModel

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4


@pytest.fixture
def build(tiny_family: Callable[[str], TinyModel]) -> Callable[[str], TinyModel]:
    """The tiny checkpoint of a family variant (tests/_families.py), built once per session."""
    return tiny_family


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


# -- family extras ----------------------------------------------------------------------------------
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


# -- family specifics ---------------------------------------------------------------------------------
def test_gemma_folds_embedding_scale_and_keeps_the_unit_offset_in_the_norm(build) -> None:
    """The embedding scale is folded into W_E at load; a (1 + w) norm keeps transformers' `w` as
    its weight and applies 1 + w (cfg.norm_weight_offset), as transformers computes it."""
    tiny = build("gemma3")
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    hf = tiny.hf_model
    embed = hf.model.embed_tokens.weight
    torch.testing.assert_close(model.W_E, embed * torch.tensor(math.sqrt(D_MODEL)), atol=0, rtol=0)
    torch.testing.assert_close(model.W_U, embed.T, atol=0, rtol=0)  # tied: the unscaled matrix
    layer = hf.model.layers[0]
    block = model.blocks[0]
    assert model.cfg.norm_weight_offset == 1.0
    pairs = [
        (block.ln1, layer.input_layernorm),
        (block.ln1_post, layer.post_attention_layernorm),
        (block.attn.q_norm, layer.self_attn.q_norm),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours.w, theirs.weight, atol=0, rtol=0)
        torch.testing.assert_close(ours.applied_weight(), 1 + theirs.weight, atol=0, rtol=0)
    cfg = model.cfg
    assert (cfg.d_head, cfg.attn_scale) == (24, math.sqrt(20))
    assert cfg.attn_types == ["local", "global"] and cfg.window_size == 4
    assert (cfg.rotary_base, cfg.rotary_base_local) == (1000.0, 100.0)
    assert cfg.rope_scaling["rope_type"] == "linear" and cfg.rope_scaling["factor"] == 2.0
    assert cfg.attn_scores_soft_cap < 0 and cfg.output_logits_soft_cap == 3.0


def test_config_reflects_each_family(build) -> None:
    cfgs = {
        name: HookedTransformer.from_pretrained_no_processing(build(name).path).cfg
        for name in NORM_VARIANTS
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
            lambda: tr.Gemma3TextConfig(**NV_BASE, use_bidirectional_attention=True),
            "bidirectional",
        ),
        (lambda: tr.FalconConfig(**NV_FALCON, alibi=True), "alibi=True"),
        (
            lambda: tr.MptConfig(
                vocab_size=D_VOCAB, d_model=48, n_heads=6, attn_config={"qk_ln": True}
            ),
            "attn_config.qk_ln",
        ),
        (lambda: tr.GptOssConfig(**NV_BASE, swiglu_alpha=1.5), "swiglu_alpha"),
        (
            lambda: tr.PhimoeConfig(
                **NV_BASE,
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
                **NV_BASE,
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1e4},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                },
            ),
            "sliding-window layers",
        ),
        (
            lambda: tr.Gemma3TextConfig(
                **NV_BASE,
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
        **NV_BASE,
        "architectures": ["GemmaForCausalLM"],
        "head_dim": 16,
        "num_key_value_heads": 1,
        "hidden_act": "gelu",  # the official releases' legacy value: the tanh approximation
        "rope_theta": 10000.0,
    }
    assert family_for(gemma1).config_from_hf(gemma1)["act_fn"] == "gelu_pytorch_tanh"
    gemma3 = {
        **NV_BASE,
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
    gemma2 = {**NV_BASE, "architectures": ["Gemma2ForCausalLM"], "sliding_window": 4096}
    fields = family_for(gemma2).config_from_hf(gemma2)
    assert fields["attn_types"] == ["local", "global"]
