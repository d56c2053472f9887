"""Gemma 4 text (Gemma4ForCausalLM): what is special to it, beyond the conformance suite
(tests/loading/test_conformance.py), which runs every generic check (logits, loss, padding,
processed log-probs, KV cache, greedy tokens, hook shapes) on tests/_families.py's "gemma4"
(every feature on), "gemma4_plain" (the 31B's shape) and "gemma4_moe" (the 26B-A4B's: experts
beside each MLP) checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.loading.families import family_for
from tests._families import gemma4_config
from tests._tiny import D_VOCAB, TinyModel

ATOL = 1e-5


@pytest.fixture(scope="module")
def full(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("gemma4")


@pytest.fixture(scope="module")
def model(full: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(full.path)


def _tokens(n: int = 13) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, D_VOCAB, (2, n), generator=gen)


@torch.no_grad()
def test_every_layers_residual_stream_matches_hf(full: TinyModel, model: HookedTransformer) -> None:
    """(The suite's hidden-state check skips this draw's last block output: see its reason.)"""
    tokens = _tokens()
    out = full.hf_model(tokens, output_hidden_states=True)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_pre" in n)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(
            cache["resid_pre", layer], out.hidden_states[layer], atol=ATOL, rtol=0
        )


def _block_outputs_of_hf(
    full: TinyModel, tokens: torch.Tensor, attention: str
) -> list[torch.Tensor]:
    """Every decoder layer's output in transformers' float32 run with `attention` ("eager" or
    "sdpa"); the shared checkpoint is put back to eager, the suite's oracle."""
    hf = full.hf_model
    outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(lambda mod, args, out: outputs.append(out))
        for layer in hf.model.layers
    ]
    hf.set_attn_implementation(attention)
    try:
        hf(tokens)
    finally:
        hf.set_attn_implementation("eager")
        for handle in handles:
            handle.remove()
    return outputs


def _suite_tokens() -> torch.Tensor:
    """The conformance suite's [2, 12] batch (tests/loading/test_conformance.py's `tokens`)."""
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, D_VOCAB, (2, 12), generator=gen)


@torch.no_grad()
def test_every_block_output_matches_hf_with_the_same_attention_kernel(
    full: TinyModel, model: HookedTransformer
) -> None:
    """Why the suite's hidden-state check skips "gemma4" (see its reason in tests/_families.py):
    the only difference from transformers' eager run is how z = softmax(scores) @ v is
    computed. lmscope takes z from SDPA's kernel, as transformers' "sdpa" run does: every
    block's output matches that run (measured bit-equal); replacing the pattern with itself
    makes lmscope mix values as pattern @ v, eager's order, and every block's output matches
    the eager run (measured bit-equal). Eager and SDPA, both transformers', differ by 1.17e-05
    on the last block here (|x| up to 11.5)."""
    tokens = _suite_tokens()
    n = model.cfg.n_layers
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "resid_post" in name)
    sdpa = _block_outputs_of_hf(full, tokens, "sdpa")
    for layer in range(n):
        torch.testing.assert_close(cache["resid_post", layer], sdpa[layer], atol=ATOL, rtol=0)

    as_eager = [
        (f"blocks.{layer}.attn.hook_pattern", lambda p, hook: p.clone()) for layer in range(n)
    ]
    with model.hooks(fwd_hooks=as_eager):
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: "resid_post" in name)
    eager = _block_outputs_of_hf(full, tokens, "eager")
    for layer in range(n):
        torch.testing.assert_close(cache["resid_post", layer], eager[layer], atol=ATOL, rtol=0)


def test_per_head_inputs_are_refused_on_layers_that_reuse_keys(full: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(full.path)
    model.set_use_split_qkv_input(True)
    with pytest.raises(ValueError, match="layer 2 reuses layer 0's keys and values"):
        model(_tokens(5))


# -- what each switch does ------------------------------------------------------------------------
def test_config_reads_every_switch(model: HookedTransformer) -> None:
    cfg = model.cfg
    assert cfg.layer_types == ["local", "global", "local", "global"]
    assert (cfg.d_head, cfg.d_head_global) == (10, 14)
    assert (cfg.n_key_value_heads, cfg.n_key_value_heads_global) == (2, 1)
    assert cfg.kv_source_layers == [None, None, 0, 1]
    assert cfg.d_mlp_layers == [36, 36, 72, 72]
    assert (cfg.d_per_layer_input, cfg.use_attn_scale, cfg.use_v_norm) == (6, False, True)
    assert cfg.rope_scaling["rope_type"] == "proportional"
    assert cfg.rotary_base_local == 10_000.0
    global_attn, shared_attn = model.blocks[1].attn, model.blocks[3].attn
    assert global_attn.W_Q.shape == (4, 40, 14) and global_attn.W_K.shape == (1, 40, 14)
    # attention_k_eq_v: the values' weights are the keys' (a view of the same storage)
    assert global_attn.v_weight is None
    assert global_attn.W_V.data_ptr() == global_attn.W_K.data_ptr()
    with pytest.raises(AttributeError, match="reuses the keys and values of layer 1"):
        _ = shared_attn.W_K
    assert set(shared_attn.weights()) == {"W_Q", "W_O", "b_Q", "b_O"}
    with pytest.raises(AttributeError, match="different shapes"):
        _ = model.W_Q


@torch.no_grad()
def test_new_hooks_fire_with_documented_shapes(model: HookedTransformer) -> None:
    tokens = _tokens(7)
    _, cache = model.run_with_cache(tokens)
    assert cache["per_layer_embed.hook_per_layer_inputs"].shape == (2, 7, 4, 6)
    assert cache["per_layer_embed.hook_token"].shape == (2, 7, 4, 6)
    assert cache["blocks.3.per_layer.hook_in"].shape == (2, 7, 6)
    assert cache["blocks.3.per_layer.hook_gate"].shape == (2, 7, 6)
    assert cache["blocks.3.hook_per_layer_out"].shape == (2, 7, 40)
    assert cache["blocks.1.attn.v_norm.hook_normalized"].shape == (2, 7, 1, 14)
    assert cache["blocks.1.attn.hook_rot_q"].shape == (2, 7, 4, 14)
    # a layer that reuses another's keys and values computes only its queries
    assert "blocks.3.attn.hook_k" not in cache and "blocks.3.attn.hook_q" in cache
    torch.testing.assert_close(
        cache["blocks.3.attn.hook_pattern"][:, :, -1].sum(-1), torch.ones(2, 4)
    )


@torch.no_grad()
def test_hooking_the_source_layers_keys_reaches_the_layers_that_reuse_them(
    model: HookedTransformer,
) -> None:
    tokens = _tokens(7)
    _, clean = model.run_with_cache(tokens, names_filter="blocks.3.attn.hook_z")
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_v", lambda v, hook: v * 0)]):
        _, patched = model.run_with_cache(tokens, names_filter="blocks.3.attn.hook_z")
    assert torch.equal(
        patched["blocks.3.attn.hook_z"], torch.zeros_like(clean["blocks.3.attn.hook_z"])
    )
    assert clean["blocks.3.attn.hook_z"].abs().max() > 0.1


@torch.no_grad()
def test_start_at_layer_needs_the_tokens_and_the_source_layer(model: HookedTransformer) -> None:
    tokens = _tokens(7)
    embedded = model(tokens, stop_at_layer=0)
    with pytest.raises(ValueError, match="pass tokens"):
        model(embedded, start_at_layer=0)
    torch.testing.assert_close(model(embedded, start_at_layer=0, tokens=tokens), model(tokens))
    resid = model(tokens, stop_at_layer=1)
    with pytest.raises(ValueError, match="layer 0 or earlier"):  # layer 2 reuses layer 0's
        model(resid, start_at_layer=1, tokens=tokens)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(enable_moe_block=True, num_experts=4, moe_intermediate_size=8), "top_k_experts"),
        (dict(use_bidirectional_attention="all"), "use_bidirectional_attention"),
        (dict(rope_parameters={"sliding_attention": {"rope_type": "linear", "factor": 2.0,
         "rope_theta": 1e4}, "full_attention": {"rope_type": "default", "rope_theta": 1e6}}),
         "sliding_attention"),
    ],
)  # fmt: skip
def test_unsupported_features_are_refused_naming_the_attribute(
    overrides: dict[str, Any], match: str
) -> None:
    hf = gemma4_config(**overrides).to_dict()
    hf["architectures"] = ["Gemma4ForCausalLM"]
    with pytest.raises((NotImplementedError, ValueError), match=match):
        family_for(hf).config_from_hf(hf)


# -- the mixture of experts beside each MLP (Gemma 4 26B-A4B) -------------------------------------
@pytest.fixture(scope="module")
def moe_tiny(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("gemma4_moe")


@torch.no_grad()
def test_moe_block_reads_the_fused_experts_beside_the_mlp(moe_tiny: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(moe_tiny.path)
    cfg, block = model.cfg, model.blocks[1]
    assert (cfg.num_experts, cfg.experts_per_token, cfg.d_mlp, cfg.dense_d_mlp) == (5, 2, 20, 36)
    assert cfg.moe_beside_mlp and cfg.router_input_norm and cfg.router_per_expert_scale
    assert block.mlp.W_in.shape == (40, 36)  # the dense MLP stays at blocks.{l}.mlp
    hf = moe_tiny.hf_model.model.layers[1]
    gate_up = hf.experts.gate_up_proj[3]  # [2 * 20, 40]: gate rows, then up rows
    torch.testing.assert_close(block.moe.experts[3].W_gate, gate_up[:20].T, atol=0, rtol=0)
    torch.testing.assert_close(block.moe.experts[3].W_in, gate_up[20:].T, atol=0, rtol=0)
    torch.testing.assert_close(
        block.moe.experts[3].W_out, hf.experts.down_proj[3].T, atol=0, rtol=0
    )
    torch.testing.assert_close(
        block.moe.per_expert_scale, hf.router.per_expert_scale, atol=0, rtol=0
    )
    # fold_ln folds the experts' pre-norm into them, but not into the router (it reads its own)
    processed = HookedTransformer.from_pretrained(moe_tiny.path)
    assert processed.blocks[1].ln2_moe.w is None and processed.blocks[1].ln2_moe_post.w is not None
    torch.testing.assert_close(processed.blocks[1].moe.W_gate, block.moe.W_gate, atol=0, rtol=0)


@torch.no_grad()
def test_moe_routing_and_branch_match_hf(moe_tiny: TinyModel) -> None:
    """Every layer's expert choices and weights are transformers' router's, and hook_moe_out is
    what its post_feedforward_layernorm_2 returns."""
    model = HookedTransformer.from_pretrained_no_processing(moe_tiny.path)
    tokens = _tokens()
    seen: dict[str, Any] = {}
    hooks = []
    for i, layer in enumerate(moe_tiny.hf_model.model.layers):
        hooks.append(
            layer.router.register_forward_hook(
                lambda mod, args, out, i=i: seen.update({f"router{i}": out})
            )
        )
        hooks.append(layer.post_feedforward_layernorm_2.register_forward_hook(
            lambda mod, args, out, i=i: seen.update({f"moe{i}": out})))  # fmt: skip
    try:
        moe_tiny.hf_model(tokens)
    finally:
        for handle in hooks:
            handle.remove()
    _, cache = model.run_with_cache(tokens)
    for i in range(model.cfg.n_layers):
        _, hf_weights, hf_indices = seen[f"router{i}"]
        ours = f"blocks.{i}.moe."
        assert torch.equal(cache[ours + "hook_expert_indices"].flatten(0, 1), hf_indices)
        torch.testing.assert_close(
            cache[ours + "hook_expert_weights"].flatten(0, 1), hf_weights, atol=1e-6, rtol=0
        )
        torch.testing.assert_close(
            cache[f"blocks.{i}.hook_moe_out"], seen[f"moe{i}"], atol=ATOL, rtol=0
        )


@torch.no_grad()
def test_moe_checkpoint_exports_bit_exact(moe_tiny: TinyModel, tmp_path: Path) -> None:
    """The fused experts' per-expert views invert into the same gate_up_proj / down_proj."""
    from safetensors import safe_open

    model = HookedTransformer.from_pretrained_no_processing(moe_tiny.path)
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        for name, value in moe_tiny.hf_model.state_dict().items():
            if name != "lm_head.weight":  # tied to the embedding
                assert torch.equal(f.get_tensor(name), value), name
