"""Every supported family against transformers (eager attention) on tiny random checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import D_VOCAB, TinyModel, build_tiny, llama_config
from transformers import LlamaForCausalLM

from lmscope import HookedTransformer

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4


def _final_norm(hf_model: torch.nn.Module) -> torch.nn.Module:
    base = hf_model.base_model
    for name in ("ln_f", "final_layer_norm", "norm"):
        if hasattr(base, name):
            return getattr(base, name)
    raise AssertionError(f"no final norm found on {type(base).__name__}")


@pytest.fixture
def model(tiny_model: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_model.path)


def _padded(
    seqs: list[torch.Tensor], side: str, pad_id: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        tokens[i, span] = s
        mask[i, span] = 1
    return tokens, mask


def _ragged_seqs() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return [torch.randint(0, D_VOCAB, (n,), generator=gen) for n in (5, 11, 8)]


# -- agreement with transformers --------------------------------------------------------------
@torch.no_grad()
def test_logits_match_hf(tiny_model: TinyModel, model: HookedTransformer, tokens) -> None:
    expected = tiny_model.hf_model(tokens).logits
    got = model(tokens)
    assert got.shape == (2, 12, D_VOCAB)
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


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


@torch.no_grad()
def test_residual_stream_matches_hf_hidden_states(
    tiny_model: TinyModel, model: HookedTransformer, tokens
) -> None:
    hf = tiny_model.hf_model
    captured = {}
    handle = _final_norm(hf).register_forward_hook(
        lambda mod, args, out: captured.update(norm_in=args[0], norm_out=out)
    )
    try:
        out = hf(tokens, output_hidden_states=True)
    finally:
        handle.remove()
    hidden = out.hidden_states
    n = model.cfg.n_layers
    assert len(hidden) == n + 1
    # HF's last entry is after the final norm, so the last resid_post is the norm's input.
    torch.testing.assert_close(hidden[-1], captured["norm_out"], atol=0, rtol=0)

    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "resid" in name)
    for layer in range(n):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer], atol=LOGIT_ATOL, rtol=0
        )
    torch.testing.assert_close(
        cache[f"blocks.{n - 1}.hook_resid_post"], captured["norm_in"], atol=LOGIT_ATOL, rtol=0
    )


@torch.no_grad()
def test_loss_matches_hf(tiny_model: TinyModel, model: HookedTransformer, tokens) -> None:
    expected = tiny_model.hf_model(tokens, labels=tokens).loss
    got = model(tokens, return_type="loss")
    assert got.shape == ()
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)
    logits, loss = model(tokens, return_type="both")
    torch.testing.assert_close(loss, got, atol=0, rtol=0)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 11)
    manual = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(per_token, manual, atol=1e-6, rtol=0)


@torch.no_grad()
def test_padded_loss_matches_hf(tiny_model: TinyModel, model: HookedTransformer) -> None:
    tokens, mask = _padded(_ragged_seqs(), "right")
    labels = tokens.masked_fill(mask == 0, -100)
    expected = tiny_model.hf_model(tokens, attention_mask=mask, labels=labels).loss
    got = model(tokens, attention_mask=mask, return_type="loss")
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_processed_model_log_probs_match_hf(tiny_model: TinyModel, tokens) -> None:
    processed = HookedTransformer.from_pretrained(tiny_model.path)
    assert processed.cfg.processing["fold_ln"] is True
    assert processed.cfg.normalization_type in ("LNPre", "RMSPre")
    expected = tiny_model.hf_model(tokens).logits.log_softmax(-1)
    got = processed(tokens).log_softmax(-1)
    torch.testing.assert_close(got, expected, atol=LOGPROB_ATOL, rtol=0)


# -- padding -------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_padded_batch_matches_each_sequence_alone(model: HookedTransformer, side: str) -> None:
    seqs = _ragged_seqs()
    tokens, mask = _padded(seqs, side)
    batched = model(tokens, attention_mask=mask)
    assert torch.isfinite(batched).all()  # padding rows too: no NaN from fully masked queries
    length = tokens.shape[1]
    for i, seq in enumerate(seqs):
        alone = model(seq[None])[0]
        real = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        torch.testing.assert_close(batched[i, real], alone, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_padded_batch_matches_hf(
    tiny_model: TinyModel, model: HookedTransformer, side: str
) -> None:
    """HF, given explicit position ids, agrees at the real positions of a padded batch."""
    tokens, mask = _padded(_ragged_seqs(), side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = tiny_model.hf_model(tokens, attention_mask=mask, position_ids=positions).logits
    got = model(tokens, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=LOGIT_ATOL, rtol=0)


# -- attention paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_explicit_attention_path_matches_sdpa(
    model: HookedTransformer, tokens, padded: bool
) -> None:
    kwargs = {}
    if padded:
        tokens, mask = _padded(_ragged_seqs(), "left")
        kwargs["attention_mask"] = mask
    fast = model(tokens, **kwargs)
    seen = []

    def watch(pattern, hook):
        seen.append(hook.name)

    explicit = model.run_with_hooks(
        tokens, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), watch)], **kwargs
    )
    assert seen == [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    torch.testing.assert_close(explicit, fast, atol=LOGIT_ATOL, rtol=0)
    # The explicit path's z equals the fast path's z too (hook_z alone keeps the fast path).
    _, fast_cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z", **kwargs)
    _, slow_cache = model.run_with_cache(
        tokens, names_filter=["blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern"], **kwargs
    )
    torch.testing.assert_close(slow_cache["z", 1], fast_cache["z", 1], atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_attention_pattern_rows_are_causal_distributions(model: HookedTransformer, tokens) -> None:
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "pattern" in n)
    pattern = cache["pattern", 0]
    assert pattern.shape == (2, model.cfg.n_heads, 12, 12)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, model.cfg.n_heads, 12))
    above_diagonal = torch.ones(12, 12, dtype=torch.bool).triu(1)
    assert torch.all(pattern[..., above_diagonal] == 0)


# -- residual stream decomposition -----------------------------------------------------------
@torch.no_grad()
def test_residual_stream_decomposes_exactly(model: HookedTransformer, tokens) -> None:
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        pre = cache["resid_pre", layer]
        attn_out, mlp_out = cache["attn_out", layer], cache["mlp_out", layer]
        post = cache["resid_post", layer]
        if model.cfg.parallel_attn_mlp:
            assert f"blocks.{layer}.hook_resid_mid" not in model.hook_dict
            assert torch.equal(pre + attn_out + mlp_out, post)
        else:
            mid = cache["resid_mid", layer]
            assert torch.equal(pre + attn_out, mid)
            assert torch.equal(mid + mlp_out, post)
        if layer + 1 < model.cfg.n_layers:
            assert torch.equal(post, cache["resid_pre", layer + 1])


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
