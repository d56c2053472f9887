"""GPT-2, GPT-NeoX, Llama and Mistral (tests/conftest.py's family fixtures): what is particular to
them and the TransformerLens weight views. Their agreement with transformers (logits, padding,
attention paths, caching, generation) is the conformance suite's: tests/loading/test_conformance.py."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from lmscope import HookedTransformer
from tests._tiny import D_VOCAB, TinyModel, build_tiny, llama_config

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4


@pytest.fixture
def model(tiny_model: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_model.path)


# -- family specifics --------------------------------------------------------------------------
@torch.no_grad()
def test_neox_without_attention_biases(tiny_neox_no_attn_bias: TinyModel, tokens) -> None:
    hf = tiny_neox_no_attn_bias.hf_model
    assert hf.gpt_neox.layers[0].attention.dense.bias is None
    model = HookedTransformer.from_pretrained_no_processing(tiny_neox_no_attn_bias.path)
    assert torch.equal(model.b_Q, torch.zeros_like(model.b_Q))
    assert torch.equal(model.b_O, torch.zeros_like(model.b_O))
    torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=LOGIT_ATOL, rtol=0)
    processed = HookedTransformer.from_pretrained(tiny_neox_no_attn_bias.path)
    torch.testing.assert_close(
        processed(tokens).log_softmax(-1),
        hf(tokens).logits.log_softmax(-1),
        atol=LOGPROB_ATOL,
        rtol=0,
    )


@torch.no_grad()
def test_llama_ignores_partial_rotary_factor_like_transformers(
    tmp_path_factory: pytest.TempPathFactory, tokens
) -> None:
    """transformers' Llama computes full-head rotary even when the config asks for a fraction."""
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    tiny = build_tiny(
        tmp_path_factory, "llama_partial", LlamaForCausalLM, llama_config(rope_parameters=rope)
    )
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    assert model.cfg.rotary_dim == model.cfg.d_head
    torch.testing.assert_close(model(tokens), tiny.hf_model(tokens).logits, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_config_reflects_checkpoint(tiny_model: TinyModel, model: HookedTransformer) -> None:
    hf_cfg = tiny_model.hf_model.config
    cfg = model.cfg
    assert cfg.original_architecture == hf_cfg.architectures[0]
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_vocab) == (64, 2, 4, D_VOCAB)
    assert cfg.n_key_value_heads == getattr(hf_cfg, "num_key_value_heads", 4)
    if tiny_model.name.startswith("neox"):
        assert cfg.rotary_dim == cfg.d_head // 2
        assert cfg.parallel_attn_mlp is hf_cfg.use_parallel_residual
    if cfg.positional_embedding_type == "rotary" and not tiny_model.name.startswith("neox"):
        assert cfg.rotary_dim == cfg.d_head


# -- weights -----------------------------------------------------------------------------------
def test_weight_views_have_transformer_lens_shapes(model: HookedTransformer) -> None:
    cfg = model.cfg
    n, h, kv, dm, dh = cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model, cfg.d_head
    expected = {
        "W_E": (cfg.d_vocab, dm),
        "W_U": (dm, cfg.d_vocab_out),
        "b_U": (cfg.d_vocab_out,),
        "W_Q": (n, h, dm, dh),
        "W_K": (n, kv, dm, dh),
        "W_V": (n, kv, dm, dh),
        "W_O": (n, h, dh, dm),
        "b_Q": (n, h, dh),
        "b_K": (n, kv, dh),
        "b_V": (n, kv, dh),
        "b_O": (n, dm),
        "W_in": (n, dm, cfg.d_mlp),
        "b_in": (n, cfg.d_mlp),
        "W_out": (n, cfg.d_mlp, dm),
        "b_out": (n, dm),
        "QK": (n, h, dm, dm),
        "OV": (n, h, dm, dm),
    }
    if cfg.gated_mlp:
        expected["W_gate"] = (n, dm, cfg.d_mlp)
    else:
        with pytest.raises(AttributeError, match="not gated"):
            _ = model.W_gate
    if cfg.positional_embedding_type == "standard":
        expected["W_pos"] = (cfg.n_ctx, dm)
    else:
        with pytest.raises(AttributeError, match="rotary"):
            _ = model.W_pos
    for name, shape in expected.items():
        assert tuple(getattr(model, name).shape) == shape, name


def test_weight_views_share_storage_with_parameters(model: HookedTransformer) -> None:
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for name, view in model.named_weights().items():
        assert view.untyped_storage().data_ptr() in storages, name
    block = model.blocks[0]
    for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
        assert getattr(block.attn, name)._base is not None, name
    for name in ("W_in", "W_out"):
        assert getattr(block.mlp, name)._base is not None, name
    assert block.mlp.b_in is block.mlp.in_bias  # a parameter itself: nn.Linear layout
    torch.testing.assert_close(model.W_Q[0], block.attn.W_Q, atol=0, rtol=0)


def test_qk_and_ov_circuits_expand_kv_heads(model: HookedTransformer) -> None:
    groups = model.cfg.n_groups
    for head in range(model.cfg.n_heads):
        kv = head // groups
        qk = model.W_Q[1, head] @ model.W_K[1, kv].T
        ov = model.W_V[1, kv] @ model.W_O[1, head]
        torch.testing.assert_close(model.QK.AB[1, head], qk, atol=1e-6, rtol=0)
        torch.testing.assert_close(model.OV.AB[1, head], ov, atol=1e-6, rtol=0)


@torch.no_grad()
def test_editing_a_weight_view_edits_the_model(model: HookedTransformer, tokens) -> None:
    before_logits, before = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_q")
    model.blocks[0].attn.W_Q[1] = 0.0
    after_logits, after = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_q")
    q_before, q_after = before["q", 0], after["q", 0]
    # head 1's query is now its bias alone; the other heads are untouched
    expected = model.blocks[0].attn.b_Q[1].expand_as(q_after[:, :, 1])
    torch.testing.assert_close(q_after[:, :, 1], expected, atol=0, rtol=0)
    keep = [h for h in range(model.cfg.n_heads) if h != 1]
    torch.testing.assert_close(q_after[:, :, keep], q_before[:, :, keep], atol=0, rtol=0)
    assert not torch.allclose(q_before[:, :, 1], q_after[:, :, 1])
    assert (after_logits - before_logits).abs().max() > 1e-3


@torch.no_grad()
def test_edited_mlp_weight_matches_hf_edit(tiny_model: TinyModel, tokens) -> None:
    """Zeroing one neuron's output row through the W_out view equals zeroing it in HF."""
    model = HookedTransformer.from_pretrained_no_processing(tiny_model.path)
    model.blocks[1].mlp.W_out[5] = 0.0
    hf = tiny_model.hf_model
    hf_block_mlp = {
        "gpt2": lambda: hf.transformer.h[1].mlp.c_proj.weight[5],
        "neox": lambda: hf.gpt_neox.layers[1].mlp.dense_4h_to_h.weight[:, 5],
        "llama": lambda: hf.model.layers[1].mlp.down_proj.weight[:, 5],
        "mistral": lambda: hf.model.layers[1].mlp.down_proj.weight[:, 5],
    }
    family = next(k for k in hf_block_mlp if tiny_model.name.startswith(k))
    row = hf_block_mlp[family]()
    saved = row.clone()
    row.zero_()
    try:
        expected = hf(tokens).logits
    finally:
        row.copy_(saved)
    torch.testing.assert_close(model(tokens), expected, atol=LOGIT_ATOL, rtol=0)
    assert (expected - hf(tokens).logits).abs().max() > 1e-3
