"""Llama 1/2/3/3.1/3.2, Mistral, Mixtral, Qwen2/2.5, Qwen3, Qwen2-MoE and Qwen3-MoE against
transformers (eager attention) on tiny random checkpoints with every family feature switched on:
GQA, biases, rope scaling (linear, llama3, yarn, dynamic), explicit head_dim, sliding windows shorter than the
test sequence (on every layer or on some), q/k RMSNorm, top-2 routed experts (renormalised or
not) and a gated shared expert.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from lmscope.loading.families import family_for
from tests._families import DYNAMIC_CONTEXT, FAMILY_SPECS, LLAMA_LIKE, SEQ, WINDOW
from tests._families import LLAMA_LIKE_LAYERS as N_LAYERS
from tests._tiny import D_VOCAB, TinyModel, build_tiny

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4


@dataclass(frozen=True)
class Spec:
    """A Llama-like FAMILY_SPECS entry and what the tests here expect of it (its `features`)."""

    model_cls: type[PreTrainedModel]
    config: Callable[[], PretrainedConfig]
    local_layers: tuple[bool, ...]
    moe: bool
    shared_expert: bool
    qk_norm: bool


SPECS: dict[str, Spec] = {
    name: Spec(
        FAMILY_SPECS[name].model_cls, FAMILY_SPECS[name].config, **FAMILY_SPECS[name].features
    )
    for name in LLAMA_LIKE
}
GQA = [name for name in SPECS if name != "llama"]
MOE = [name for name, spec in SPECS.items() if spec.moe]
QK_NORM = [name for name, spec in SPECS.items() if spec.qk_norm]
WINDOWED = [name for name, spec in SPECS.items() if any(spec.local_layers)]


@pytest.fixture(params=list(SPECS))
def tiny(request: pytest.FixtureRequest, tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family(request.param)


def _named(names: list[str]) -> Callable[..., Any]:
    """A fixture over a subset of the families."""

    @pytest.fixture(params=names)
    def fixture(
        request: pytest.FixtureRequest, tiny_family: Callable[[str], TinyModel]
    ) -> TinyModel:
        return tiny_family(request.param)

    return fixture


tiny_gqa = _named(GQA)
tiny_moe = _named(MOE)
tiny_qk_norm = _named(QK_NORM)
tiny_windowed = _named(WINDOWED)


@pytest.fixture
def tiny_llama3(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("llama3")


def _load(tiny: TinyModel, **kwargs: Any) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path, **kwargs)


@pytest.fixture
def model(tiny: TinyModel) -> HookedTransformer:
    return _load(tiny)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, D_VOCAB, (2, SEQ), generator=gen)


# -- config -------------------------------------------------------------------------------------
def test_config_reflects_checkpoint(tiny: TinyModel, model: HookedTransformer) -> None:
    spec, hf_cfg, cfg = SPECS[tiny.name], tiny.hf_model.config, model.cfg
    assert cfg.original_architecture == hf_cfg.architectures[0]
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (N_LAYERS, 64, 4)
    assert cfg.n_key_value_heads == hf_cfg.num_key_value_heads
    assert cfg.d_head == cfg.rotary_dim == (getattr(hf_cfg, "head_dim", None) or 64 // 4)
    assert cfg.tie_word_embeddings == hf_cfg.tie_word_embeddings
    assert [t == "local" for t in cfg.layer_types] == list(spec.local_layers)
    if any(spec.local_layers):
        assert cfg.window_size == WINDOW
        if hasattr(hf_cfg, "layer_types"):  # transformers' own per-layer decision
            assert [t == "sliding_attention" for t in hf_cfg.layer_types] == list(spec.local_layers)
    assert cfg.use_qk_norm is spec.qk_norm
    assert (cfg.num_experts is not None) is spec.moe
    if spec.moe:
        assert cfg.experts_per_token == 2 and cfg.num_experts == 4
        assert cfg.norm_topk_prob is (tiny.name != "qwen2_moe")
        assert cfg.shared_expert_d_mlp == (48 if spec.shared_expert else None)


# -- sliding windows (agreement with transformers: tests/loading/test_conformance.py) ------
@torch.no_grad()
def test_sliding_window_matters(tiny_windowed: TinyModel, tokens) -> None:
    """The same weights without the window give different logits: the window is exercised."""
    expected = tiny_windowed.hf_model(tokens).logits
    unwindowed = _load(tiny_windowed, window_size=None, attn_types=None)(tokens)
    assert (unwindowed - expected).abs().max() > 1e-2


@torch.no_grad()
def test_sliding_window_pattern(tiny_windowed: TinyModel, tokens) -> None:
    model = _load(tiny_windowed)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    q = torch.arange(SEQ)[:, None]
    k = torch.arange(SEQ)[None, :]
    outside = k <= q - WINDOW
    for layer, local in enumerate(SPECS[tiny_windowed.name].local_layers):
        pattern = cache["pattern", layer]
        if local:
            assert torch.all(pattern[..., outside] == 0)
            torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        else:
            assert pattern[..., outside].abs().max() > 0


# -- grouped-query attention --------------------------------------------------------------------
@torch.no_grad()
def test_gqa_hooks_and_per_head_patching(tiny_gqa: TinyModel, tokens) -> None:
    model = _load(tiny_gqa)
    cfg = model.cfg
    nh, nkv, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    assert nkv < nh
    names = ["blocks.1.attn.hook_k", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z"]
    clean, cache = model.run_with_cache(tokens, names_filter=names)
    assert cache["blocks.1.attn.hook_k"].shape == (2, SEQ, nkv, dh)
    assert cache["blocks.1.attn.hook_v"].shape == (2, SEQ, nkv, dh)

    other = tokens.flip(0)  # patch from the other sequence
    _, other_cache = model.run_with_cache(other, names_filter=names)
    for hook_name in names[:2]:

        def patch(t: torch.Tensor, hook: Any, name: str = hook_name) -> torch.Tensor:
            t[:, :, 1] = other_cache[name][:, :, 1]
            return t

        patched = model.run_with_hooks(tokens, fwd_hooks=[(hook_name, patch)])
        assert (patched - clean).abs().max() > 1e-4, hook_name

    ungrouped = _load(tiny_gqa, ungroup_grouped_query_attention=True)
    torch.testing.assert_close(ungrouped(tokens), clean, atol=LOGIT_ATOL, rtol=0)
    _, ucache = ungrouped.run_with_cache(tokens, names_filter=names)
    k, v = ucache["blocks.1.attn.hook_k"], ucache["blocks.1.attn.hook_v"]
    assert k.shape == v.shape == (2, SEQ, nh, dh)
    groups = cfg.n_groups
    torch.testing.assert_close(k, cache["blocks.1.attn.hook_k"].repeat_interleave(groups, 2))
    torch.testing.assert_close(v, cache["blocks.1.attn.hook_v"].repeat_interleave(groups, 2))

    # Patching one query head's own keys changes that head's output and no other head's.
    seen = {}

    def zero_k_of_head_0(t: torch.Tensor, hook: Any) -> torch.Tensor:
        t[:, :, 0] = 0.0
        return t

    ungrouped.run_with_hooks(
        tokens,
        fwd_hooks=[
            ("blocks.1.attn.hook_k", zero_k_of_head_0),
            ("blocks.1.attn.hook_z", lambda t, hook: seen.update(z=t.clone())),
        ],
    )
    z_clean = ucache["blocks.1.attn.hook_z"]
    assert (seen["z"][:, :, 0] - z_clean[:, :, 0]).abs().max() > 1e-4
    torch.testing.assert_close(seen["z"][:, :, 1:], z_clean[:, :, 1:], atol=0, rtol=0)


# -- family extra hooks -------------------------------------------------------------------------
def _hf_router_outputs(tiny: TinyModel, tokens: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(router_logits, top-k weights, top-k indices) of every HF MoE layer."""
    routers = [layer.mlp.gate for layer in tiny.hf_model.model.layers]
    outs: list[tuple[torch.Tensor, ...]] = []
    handles = [r.register_forward_hook(lambda m, a, out: outs.append(out)) for r in routers]
    try:
        tiny.hf_model(tokens)
    finally:
        for h in handles:
            h.remove()
    return outs


@torch.no_grad()
def test_moe_hooks_match_hf_routing(tiny_moe: TinyModel, tokens) -> None:
    model = _load(tiny_moe)
    cfg = model.cfg
    _, cache = model.run_with_cache(tokens)
    hf_routing = _hf_router_outputs(tiny_moe, tokens)
    k, n_exp = cfg.experts_per_token, cfg.num_experts
    for layer in range(N_LAYERS):
        mlp = f"blocks.{layer}.mlp."
        logits = cache[mlp + "hook_router_logits"]
        weights, indices = cache[mlp + "hook_expert_weights"], cache[mlp + "hook_expert_indices"]
        assert logits.shape == (2, SEQ, n_exp)
        assert weights.shape == indices.shape == (2, SEQ, k)
        assert not indices.dtype.is_floating_point
        hf_logits, hf_weights, hf_indices = hf_routing[layer]
        torch.testing.assert_close(logits.flatten(0, 1), hf_logits, atol=LOGIT_ATOL, rtol=0)
        assert torch.equal(indices.flatten(0, 1), hf_indices)
        torch.testing.assert_close(weights.flatten(0, 1), hf_weights, atol=1e-6, rtol=0)
        if cfg.norm_topk_prob:
            torch.testing.assert_close(weights.sum(-1), torch.ones(2, SEQ))
        else:
            assert (weights.sum(-1) < 1 - 1e-3).all()
        routed = 0
        for e in range(n_exp):
            pre = cache[f"{mlp}experts.{e}.hook_pre"]  # [tokens routed to e, d_mlp]
            assert pre.shape == (int((indices == e).sum()), cfg.d_mlp)
            assert cache[f"{mlp}experts.{e}.hook_post"].shape == pre.shape
            routed += pre.shape[0]
        assert routed == 2 * SEQ * k
        if cfg.shared_expert_d_mlp:
            assert cache[mlp + "shared_expert.hook_pre"].shape == (2, SEQ, 48)
            assert cache[mlp + "hook_shared_expert_out"].shape == (2, SEQ, cfg.d_model)


@torch.no_grad()
def test_editing_expert_weights_reweights_the_mix(tiny_moe: TinyModel, tokens) -> None:
    """Zeroing every routing weight leaves only the shared expert (or nothing) in mlp_out."""
    model = _load(tiny_moe)
    names = ["blocks.0.hook_mlp_out", "blocks.0.mlp.hook_shared_expert_out"]
    with model.hooks(
        fwd_hooks=[("blocks.0.mlp.hook_expert_weights", lambda t, hook: torch.zeros_like(t))]
    ):
        _, cache = model.run_with_cache(
            tokens, names_filter=[n for n in names if n in model.hook_dict]
        )
    mlp_out = cache["blocks.0.hook_mlp_out"]
    if model.cfg.shared_expert_d_mlp:
        assert torch.equal(mlp_out, cache["blocks.0.mlp.hook_shared_expert_out"])
    else:
        assert torch.equal(mlp_out, torch.zeros_like(mlp_out))


@torch.no_grad()
def test_moe_weight_views_map_the_checkpoint(tiny_moe: TinyModel) -> None:
    model = _load(tiny_moe)
    weights = model.named_weights()
    hf_layer = tiny_moe.hf_model.model.layers[1].mlp
    gate_up, down = hf_layer.experts.gate_up_proj[2], hf_layer.experts.down_proj[2]
    d_mlp = model.cfg.d_mlp
    torch.testing.assert_close(weights["blocks.1.mlp.W_gate"], hf_layer.gate.weight.T)
    torch.testing.assert_close(weights["blocks.1.mlp.experts.2.W_gate"], gate_up[:d_mlp].T)
    torch.testing.assert_close(weights["blocks.1.mlp.experts.2.W_in"], gate_up[d_mlp:].T)
    torch.testing.assert_close(weights["blocks.1.mlp.experts.2.W_out"], down.T)
    if model.cfg.shared_expert_d_mlp:
        torch.testing.assert_close(
            weights["blocks.1.mlp.W_shared_expert_gate"], hf_layer.shared_expert_gate.weight.T
        )
        torch.testing.assert_close(
            weights["blocks.1.mlp.shared_expert.W_in"], hf_layer.shared_expert.up_proj.weight.T
        )


@torch.no_grad()
def test_qk_norm_hooks(tiny_qk_norm: TinyModel, tokens) -> None:
    model = _load(tiny_qk_norm)
    cfg = model.cfg
    nh, nkv, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "_norm." in n or "hook_q" in n)
    for layer in range(N_LAYERS):
        a = f"blocks.{layer}.attn."
        assert cache[a + "q_norm.hook_scale"].shape == (2, SEQ, nh, 1)
        assert cache[a + "q_norm.hook_normalized"].shape == (2, SEQ, nh, dh)
        assert cache[a + "k_norm.hook_scale"].shape == (2, SEQ, nkv, 1)
        assert cache[a + "k_norm.hook_normalized"].shape == (2, SEQ, nkv, dh)
        # hook_q is after the norm: the normalised query times the norm weight
        w = model.blocks[layer].attn.q_norm.w
        torch.testing.assert_close(
            cache[a + "hook_q"], cache[a + "q_norm.hook_normalized"] * w, atol=1e-6, rtol=0
        )
    hf_attn = tiny_qk_norm.hf_model.model.layers[0].self_attn
    torch.testing.assert_close(model.blocks[0].attn.q_norm.w, hf_attn.q_norm.weight)
    torch.testing.assert_close(model.blocks[0].attn.k_norm.w, hf_attn.k_norm.weight)


# -- family specifics ---------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("llama3", "llama3"),
        ("llama_linear", "linear"),
        ("llama_yarn", "yarn"),
        ("llama_dynamic", "dynamic"),
    ],
)
def test_rope_scaling_matches_hf_and_matters(
    name: str, kind: str, tiny_family: Callable[[str], TinyModel], tokens
) -> None:
    tiny = tiny_family(name)
    model = _load(tiny)
    assert model.cfg.rope_scaling["rope_type"] == kind
    rotary = tiny.hf_model.model.rotary_emb
    torch.testing.assert_close(model.rotary.inv_freq, rotary.original_inv_freq, atol=0, rtol=1e-6)
    assert model.rotary.attention_factor == rotary.attention_scaling
    unscaled = _load(tiny, rope_scaling=None)
    assert (unscaled(tokens) - tiny.hf_model(tokens).logits).abs().max() > 1e-2


@torch.no_grad()
def test_llama3_legacy_rope_scaling_config(tiny_llama3: TinyModel, tmp_path: Path, tokens) -> None:
    """A Llama 3.1 hub config.json (top-level rope_theta and rope_scaling) loads the same way."""
    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_llama3.path, legacy)
    config = json.loads((legacy / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    (legacy / "config.json").write_text(json.dumps(config))
    model = HookedTransformer.from_pretrained_no_processing(legacy)
    assert model.cfg.rope_scaling == _load(tiny_llama3).cfg.rope_scaling
    hf = AutoModelForCausalLM.from_pretrained(legacy, attn_implementation="eager")
    torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=LOGIT_ATOL, rtol=0)


def test_llama3_original_context_defaults_like_transformers() -> None:
    hf = {**SPECS["llama3"].config().to_dict(), "architectures": ["LlamaForCausalLM"]}
    del hf["rope_parameters"]["original_max_position_embeddings"]
    fields = family_for(hf).config_from_hf(hf)
    assert fields["rope_scaling"]["original_max_position_embeddings"] == 128
    hf["original_max_position_embeddings"] = 16
    fields = family_for(hf).config_from_hf(hf)
    assert fields["rope_scaling"]["original_max_position_embeddings"] == 16


@torch.no_grad()
def test_biases_land_where_the_family_has_them(tiny: TinyModel) -> None:
    model = _load(tiny)

    def nonzero(t: torch.Tensor) -> bool:
        return bool(t.abs().max() > 0)

    attn_bias = tiny.name in ("llama", "llama3", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe")
    o_bias = tiny.name in ("llama", "llama3", "qwen3", "qwen3_moe")
    assert nonzero(model.b_Q) is attn_bias and nonzero(model.b_V) is attn_bias
    assert nonzero(model.b_O) is o_bias
    if tiny.name in ("llama", "llama3"):  # mlp_bias
        assert nonzero(model.b_in) and nonzero(model.b_out) and nonzero(model.blocks[0].mlp.b_gate)


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "qwen2_moe"])
def test_layer_types_rule_without_layer_types_key(
    name: str, tiny_family: Callable[[str], TinyModel]
) -> None:
    """Hub configs that predate `layer_types` get transformers' per-family rule."""
    tiny = tiny_family(name)
    hf = json.loads((tiny.path / "config.json").read_text())
    with_types = family_for(hf).config_from_hf(hf)
    del hf["layer_types"]
    without = family_for(hf).config_from_hf(hf)
    assert without["attn_types"] == with_types["attn_types"]
    assert [t == "local" for t in without["attn_types"]] == list(SPECS[name].local_layers)
    hf["use_sliding_window"] = False
    assert family_for(hf).config_from_hf(hf)["window_size"] is None


@pytest.mark.parametrize(
    ("name", "override"),
    [("qwen2_moe", {"mlp_only_layers": [1]}), ("qwen3_moe", {"decoder_sparse_step": 3})],
    ids=["mlp_only", "step"],
)
@torch.no_grad()
def test_dense_layers_of_a_moe_model(
    name: str, override: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, tokens
) -> None:
    """Layers that `mlp_only_layers` or `decoder_sparse_step` make dense hold a gated MLP of
    `intermediate_size`; the model matches transformers and caches and generates alike."""
    spec = SPECS[name]
    config = spec.config()
    for key, value in override.items():
        setattr(config, key, value)
    config._experts_implementation = "eager"
    tiny = build_tiny(tmp_path_factory, f"{name}_dense", spec.model_cls, config)
    model = _load(tiny)
    layer_types = ["moe", "dense", "moe"] if name == "qwen2_moe" else ["dense", "dense", "moe"]
    assert model.cfg.mlp_types == layer_types
    dense = next(b.mlp for b in model.blocks if not hasattr(b.mlp, "experts"))
    assert dense.d_mlp == config.intermediate_size
    expected = tiny.hf_model(tokens).logits
    torch.testing.assert_close(model(tokens), expected, atol=LOGIT_ATOL, rtol=0)
    cache = KVCache.init_cache(model.cfg, batch_size=2, capacity=SEQ)
    parts = [model(tokens[:, :30], past_kv_cache=cache), model(tokens[:, 30:], past_kv_cache=cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), expected, atol=LOGIT_ATOL, rtol=0)


# -- hub-style config.json files -----------------------------------------------------------------
# Modelled on the published config.json of each checkpoint (pre-transformers-5 layout: top-level
# rope_theta / rope_scaling, no layer_types), to check that the adapters read the legacy keys the
# way transformers 5 does. Only config objects are built here, never the (large) models.
HUB_STYLE_CONFIGS: dict[str, dict[str, Any]] = {
    "Llama-3.2-1B": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "vocab_size": 128256,
    },
    "Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "Mixtral-8x7B-v0.1": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "max_position_embeddings": 32768,
        "num_attention_heads": 32,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "vocab_size": 32000,
    },
    "Qwen2.5-0.5B": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "max_position_embeddings": 32768,
        "max_window_layers": 24,
        "num_attention_heads": 14,
        "num_hidden_layers": 24,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "Qwen3-0.6B": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "attention_bias": False,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "max_position_embeddings": 40960,
        "max_window_layers": 28,
        "num_attention_heads": 16,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "Qwen1.5-MoE-A2.7B": {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "decoder_sparse_step": 1,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "max_position_embeddings": 8192,
        "max_window_layers": 21,
        "moe_intermediate_size": 1408,
        "norm_topk_prob": False,
        "num_attention_heads": 16,
        "num_experts": 60,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "shared_expert_intermediate_size": 5632,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
    "Qwen3-30B-A3B": {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "attention_bias": False,
        "decoder_sparse_step": 1,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "max_position_embeddings": 40960,
        "max_window_layers": 48,
        "mlp_only_layers": [],
        "moe_intermediate_size": 768,
        "norm_topk_prob": True,
        "num_attention_heads": 32,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_hidden_layers": 48,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "vocab_size": 151936,
    },
}


@pytest.mark.parametrize("name", list(HUB_STYLE_CONFIGS))
def test_hub_style_config_reads_like_transformers(name: str) -> None:
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lmscope.components.rotary import rope_inv_freq
    from lmscope.config import HookedTransformerConfig

    raw = HUB_STYLE_CONFIGS[name]
    fields = family_for(raw).config_from_hf(json.loads(json.dumps(raw)))
    cfg = HookedTransformerConfig(**fields)
    hf = AutoConfig.for_model(**json.loads(json.dumps(raw)))
    assert cfg.n_layers == hf.num_hidden_layers and cfg.d_model == hf.hidden_size
    assert (cfg.n_heads, cfg.n_key_value_heads) == (
        hf.num_attention_heads,
        hf.num_key_value_heads,
    )
    assert cfg.d_head == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    assert cfg.rotary_base == hf.rope_parameters["rope_theta"]
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    # sliding windows: transformers' own per-layer decision where it records one
    hf_window = getattr(hf, "sliding_window", None) or None
    if hasattr(hf, "layer_types"):
        hf_local = [t == "sliding_attention" and hf_window is not None for t in hf.layer_types]
    else:
        hf_local = [hf_window is not None] * hf.num_hidden_layers
    assert [t == "local" for t in cfg.layer_types] == hf_local
    if any(hf_local):
        assert cfg.window_size == hf_window
    # rope: the same inverse frequencies as transformers' initialiser
    kind = hf.rope_parameters["rope_type"]
    if kind != "default":
        hf_inv_freq, scale = ROPE_INIT_FUNCTIONS[kind](hf)
        assert scale == 1.0
        torch.testing.assert_close(rope_inv_freq(cfg), hf_inv_freq, atol=0, rtol=1e-6)
    if cfg.num_experts:
        assert cfg.num_experts == (getattr(hf, "num_experts", None) or hf.num_local_experts)
        assert cfg.experts_per_token == hf.num_experts_per_tok
        assert cfg.norm_topk_prob == getattr(hf, "norm_topk_prob", True)
        assert cfg.d_mlp == getattr(hf, "moe_intermediate_size", hf.intermediate_size)


def test_dynamic_rope_extends_the_context() -> None:
    hf = {**SPECS["llama_dynamic"].config().to_dict(), "architectures": ["LlamaForCausalLM"]}
    fields = family_for(hf).config_from_hf(hf)
    assert fields["n_ctx"] == 4 * DYNAMIC_CONTEXT
    assert fields["rope_scaling"]["max_position_embeddings"] == DYNAMIC_CONTEXT


@pytest.mark.parametrize("kind", ["mrope", "ntk-by-parts"])
def test_unknown_rope_scaling_is_refused_by_name(kind: str) -> None:
    from lmscope.config import HookedTransformerConfig

    raw = json.loads(json.dumps(HUB_STYLE_CONFIGS["Llama-3.2-1B"]))
    raw["rope_scaling"] = {"rope_type": kind, "factor": 4.0}
    with pytest.raises(ValueError, match=f"rope_scaling rope_type '{kind}' is not supported"):
        HookedTransformerConfig(**family_for(raw).config_from_hf(raw))
