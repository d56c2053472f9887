"""HookedEncoder and HookedEncoderDecoder against transformers (eager attention, fp32) on tiny
random checkpoints of every supported architecture: hidden states, logits, pooled and NSP
outputs, with padding; TransformerLens's hook names and shapes; hooks that edit; weight
processing that keeps every output."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedEncoder, HookedEncoderDecoder
from tests._tiny import TinyModel

ATOL = 1e-5


def _load(tiny: TinyModel) -> HookedEncoder:
    return HookedEncoder.from_pretrained(tiny.path)


@torch.no_grad()
def test_encoder_matches_transformers(tiny_encoder: TinyModel, encoder_inputs) -> None:
    tokens, mask = encoder_inputs
    model = _load(tiny_encoder)
    hf = tiny_encoder.hf_model
    out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True)
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    hidden = out.hidden_states
    torch.testing.assert_close(cache["hook_full_embed"], hidden[0], atol=ATOL, rtol=0)
    for layer in range(model.cfg.n_layers):
        ours = cache[f"blocks.{layer}.hook_normalized_resid_post"]
        torch.testing.assert_close(ours, hidden[layer + 1], atol=ATOL, rtol=0)
    if model.cfg.has_mlm_head:
        ref = out.logits if hasattr(out, "logits") else out.prediction_logits
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(logits, out.last_hidden_state, atol=ATOL, rtol=0)
    if model.cfg.has_pooler:
        pooled = model(tokens, "pooled", attention_mask=mask)
        ref = out.pooler_output if hasattr(out, "pooler_output") else None
        if ref is not None:
            torch.testing.assert_close(pooled, ref, atol=ATOL, rtol=0)
    if model.cfg.has_nsp_head:
        nsp = model.nsp_head(model(tokens, "pooled", attention_mask=mask))
        torch.testing.assert_close(nsp, out.seq_relationship_logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_encoder_token_types_match_transformers(encoder_models, encoder_inputs) -> None:
    tiny = encoder_models["bert_mlm"]
    tokens, mask = encoder_inputs
    types = torch.zeros_like(tokens)
    types[:, 3:] = 1
    types[0, 6:] = 2  # a third type: the tiny config has type_vocab_size=3
    model = _load(tiny)
    ref = tiny.hf_model(input_ids=tokens, attention_mask=mask, token_type_ids=types).logits
    ours = model(tokens, token_type_ids=types, one_zero_attention_mask=mask)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@torch.no_grad()
def test_padding_is_invisible_to_real_tokens(tiny_encoder: TinyModel, encoder_inputs) -> None:
    """Bidirectional, not causal: a padded row's real positions equal the row run alone."""
    tokens, mask = encoder_inputs
    model = _load(tiny_encoder)
    padded = model(tokens, "embeddings", attention_mask=mask)
    n = int(mask[2].sum())
    alone = model(tokens[2:3, :n], "embeddings")
    torch.testing.assert_close(padded[2:3, :n], alone, atol=ATOL, rtol=0)
    # every position reads later positions too: changing the last real token moves the first
    edited = tokens[2:3, :n].clone()
    edited[0, -1] = (edited[0, -1] + 1) % model.cfg.d_vocab
    assert not torch.allclose(model(edited, "embeddings")[0, 0], alone[0, 0])


# TransformerLens 3.9's HookedEncoder hook names (layer 0), from its BertEmbed / BertBlock /
# BertPooler / BertNSPHead; use_split_qkv_input and use_hook_mlp_in hooks fire only with them
TL_ENCODER_HOOKS = [
    "embed.hook_embed",
    "embed.hook_pos_embed",
    "embed.ln.hook_scale",
    "embed.ln.hook_normalized",
    "hook_full_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v",
    "blocks.0.attn.hook_attn_scores",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.ln1.hook_scale",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
    "blocks.0.ln2.hook_normalized",
    "blocks.0.hook_normalized_resid_post",
]


def test_encoder_hooks_are_transformerlens(encoder_models, encoder_inputs) -> None:
    model = _load(encoder_models["bert_pretraining"])
    tokens, mask = encoder_inputs
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    for name in [*TL_ENCODER_HOOKS, "embed.hook_token_type_embed"]:
        assert name in cache, name
    _, pooled = model.run_with_cache(tokens, return_type="pooled", attention_mask=mask)
    b, p, h, d = 3, 9, model.cfg.n_heads, model.cfg.d_head
    assert cache["blocks.1.attn.hook_q"].shape == (b, p, h, d)
    assert cache["blocks.1.attn.hook_pattern"].shape == (b, h, p, p)
    assert cache["pattern", 1].shape == (b, h, p, p)  # TransformerLens shorthand
    assert pooled["pooler.hook_pooler_out"].shape == (b, model.cfg.d_model)
    # padded keys get no attention; every real query row sums to 1 over real keys
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert float(pattern[2, :, :, 4:].abs().max()) == 0.0
    torch.testing.assert_close(pattern.sum(-1), torch.ones(b, h, p))


def test_encoder_hooks_edit_and_flags(encoder_models, encoder_inputs) -> None:
    model = _load(encoder_models["bert_mlm"])
    tokens, mask = encoder_inputs
    with torch.no_grad():
        clean = model(tokens, attention_mask=mask)

        def kill_head(z, hook):
            z[:, :, 1] = 0.0

        ablated = model.run_with_hooks(
            tokens, attention_mask=mask, fwd_hooks=[("blocks.0.attn.hook_z", kill_head)]
        )
        assert not torch.allclose(ablated, clean)
        torch.testing.assert_close(model(tokens, attention_mask=mask), clean)
        model.cfg.use_split_qkv_input = True
        model.cfg.use_hook_mlp_in = True
        split, cache = model.run_with_cache(tokens, attention_mask=mask)
        model.cfg.use_split_qkv_input = model.cfg.use_hook_mlp_in = False
    torch.testing.assert_close(split, clean, atol=ATOL, rtol=0)
    assert cache["blocks.0.hook_q_input"].shape == (3, 9, model.cfg.n_heads, model.cfg.d_model)
    assert "blocks.0.hook_mlp_in" in cache


@torch.no_grad()
def test_encoder_processing_keeps_outputs(tiny_encoder: TinyModel, encoder_inputs) -> None:
    tokens, mask = encoder_inputs
    model = _load(tiny_encoder)
    hidden = model(tokens, "embeddings", attention_mask=mask)
    logits = model(tokens, attention_mask=mask) if model.cfg.has_mlm_head else None
    model.process_weights_()
    torch.testing.assert_close(
        model(tokens, "embeddings", attention_mask=mask), hidden, atol=ATOL, rtol=0
    )
    if logits is not None:  # the unembedding is centred: log-probabilities are kept
        ours = model(tokens, attention_mask=mask).log_softmax(-1)
        torch.testing.assert_close(ours, logits.log_softmax(-1), atol=ATOL, rtol=0)
    assert float(model.b_V.abs().max()) == 0.0
    with pytest.raises(ValueError, match="post-LN"):
        model.process_weights_(fold_ln=True)


# -- T5 ----------------------------------------------------------------------------------------
def _t5_inputs(encoder_inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    tokens, mask = encoder_inputs
    decoder = torch.cat([torch.zeros(3, 1, dtype=torch.long), tokens[:, :4].flip(0)], dim=1)
    return tokens, mask, decoder


@torch.no_grad()
def test_t5_matches_transformers(tiny_t5: TinyModel, encoder_inputs) -> None:
    tokens, mask, decoder = _t5_inputs(encoder_inputs)
    model = HookedEncoderDecoder.from_pretrained(tiny_t5.path)
    out = tiny_t5.hf_model(
        input_ids=tokens, attention_mask=mask, decoder_input_ids=decoder, output_hidden_states=True
    )
    logits, cache = model.run_with_cache(tokens, decoder, one_zero_attention_mask=mask)
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        cache["encoder_final_ln.hook_normalized"] * model.encoder_final_ln.w,
        out.encoder_last_hidden_state,
        atol=ATOL,
        rtol=0,
    )
    n_dec = model.cfg.n_decoder_layers
    for layer in range(n_dec - 1):  # the last hidden state is after decoder_final_ln
        ours = cache[f"decoder.{layer}.hook_resid_post"]
        torch.testing.assert_close(ours, out.decoder_hidden_states[layer + 1], atol=ATOL, rtol=0)
    h, d = model.cfg.n_heads, model.cfg.d_model
    assert cache["encoder.0.attn.hook_pattern"].shape == (3, h, 9, 9)
    assert cache["decoder.0.attn.hook_pattern"].shape == (3, h, 5, 5)
    assert cache["decoder.1.cross_attn.hook_pattern"].shape == (3, h, 5, 9)
    assert cache["decoder.0.hook_cross_attn_out"].shape == (3, 5, d)
    assert cache["encoder.0.attn.rel_pos_hook"].shape == (1, h, 9, 9)
    assert cache["decoder.0.attn.rel_pos_hook"].shape == (1, h, 5, 5)
    causal = cache["decoder.0.attn.hook_pattern"]
    assert float(causal.triu(1).abs().max()) == 0.0  # the decoder's self-attention is causal
    assert float(cache["decoder.0.cross_attn.hook_pattern"][2, :, :, 4:].abs().max()) == 0.0


@torch.no_grad()
def test_t5_greedy_generation_equals_transformers(tiny_t5: TinyModel, encoder_inputs) -> None:
    tokens, mask, _ = _t5_inputs(encoder_inputs)
    model = HookedEncoderDecoder.from_pretrained(tiny_t5.path)
    # (transformers' decoder cache assumes as many decoder layers as encoder layers)
    ref = tiny_t5.hf_model.generate(
        input_ids=tokens, attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=False
    )
    ours = model.generate(
        tokens, mask, max_new_tokens=8, do_sample=False, eos_token_id=1, verbose=False
    )
    uncached = model.generate(
        tokens, mask, max_new_tokens=8, do_sample=False, eos_token_id=1, verbose=False,
        use_past_kv_cache=False,
    )  # fmt: skip
    assert torch.equal(ours, uncached)
    for row_ours, row_ref in zip(ours.tolist(), ref.tolist(), strict=True):
        n = row_ref.index(1) + 1 if 1 in row_ref else len(row_ref)  # HF pads after EOS with 0
        assert row_ours[:n] == row_ref[:n]


@torch.no_grad()
def test_t5_cached_decode_equals_uncached(encoder_models, encoder_inputs) -> None:
    from lmscope.encoders.t5 import CrossAttentionCache
    from lmscope.generation import KVCache

    tokens, mask, decoder = _t5_inputs(encoder_inputs)
    model = HookedEncoderDecoder.from_pretrained(encoder_models["t5"].path)
    full = model(tokens, decoder, attention_mask=mask)
    enc = model.encoder_output(tokens, mask)
    kv = KVCache(model.cfg, 3, 5, "cpu", torch.float32, ["cpu"] * model.cfg.n_decoder_layers)
    crosses = [CrossAttentionCache() for _ in model.decoder]
    steps = [model._decode(decoder[:, :2], enc, mask, kv, crosses)]
    steps += [model._decode(decoder[:, i : i + 1], enc, mask, kv, crosses) for i in range(2, 5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=0)


@torch.no_grad()
def test_t5_hooks_fire_in_generation(encoder_models, encoder_inputs) -> None:
    tokens, mask, _ = _t5_inputs(encoder_inputs)
    model = HookedEncoderDecoder.from_pretrained(encoder_models["t5"].path)
    seen: dict[str, list[tuple[int, ...]]] = {}

    def record(x, hook):
        seen.setdefault(hook.name, []).append(tuple(x.shape))

    names = ["encoder.1.hook_resid_post", "decoder.0.attn.hook_k", "decoder.0.cross_attn.hook_k"]
    with model.hooks(fwd_hooks=[(name, record) for name in names]):
        model.generate(
            tokens, mask, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False
        )
    assert seen["encoder.1.hook_resid_post"] == [(3, 9, 30)]  # the encoder runs once
    assert seen["decoder.0.attn.hook_k"] == [(3, 1, 3, 7)] * 3  # one new key per step
    # the encoder's keys are projected once, then read from the cache (no new positions)
    assert seen["decoder.0.cross_attn.hook_k"] == [(3, 9, 3, 7), (3, 0, 3, 7), (3, 0, 3, 7)]


@torch.no_grad()
def test_t5_fold_ln_keeps_logits(tiny_t5: TinyModel, encoder_inputs) -> None:
    tokens, mask, decoder = _t5_inputs(encoder_inputs)
    model = HookedEncoderDecoder.from_pretrained(tiny_t5.path)
    logits = model(tokens, decoder, attention_mask=mask)
    model.process_weights_(fold_ln=True)
    assert model.cfg.normalization_type == "RMSPre"
    torch.testing.assert_close(
        model(tokens, decoder, attention_mask=mask), logits, atol=ATOL, rtol=0
    )
    with pytest.raises(ValueError, match="RMSNorm"):
        model.process_weights_(center_writing_weights=True)


@torch.no_grad()
def test_t5_own_lm_head(encoder_models, encoder_inputs, tmp_path) -> None:
    """A T5 1.1 checkpoint as transformers 4 wrote it: its own lm_head.weight, copies of the
    shared embedding, tie_word_embeddings false (no output scaling)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import T5ForConditionalGeneration

    tokens, mask, decoder = _t5_inputs(encoder_inputs)
    path = tmp_path / "t5_v11_own_head"
    shutil.copytree(encoder_models["t5_v11"].path, path)
    weights = load_file(path / "model.safetensors")
    shared = weights["shared.weight"]  # a head of its own, seeded, at the embedding's scale
    gen = torch.Generator().manual_seed(0)
    weights["lm_head.weight"] = torch.randn(shared.shape, generator=gen) * shared.std()
    for stack in ("encoder", "decoder"):
        weights[f"{stack}.embed_tokens.weight"] = weights["shared.weight"].clone()
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    hf_config = json.loads((path / "config.json").read_text())
    for key in ("scale_decoder_outputs", "is_gated_act", "dense_act_fn"):
        hf_config.pop(key, None)
    (path / "config.json").write_text(json.dumps({**hf_config, "tie_word_embeddings": False}))
    hf = T5ForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    model = HookedEncoderDecoder.from_pretrained(path)
    assert not model.cfg.tie_word_embeddings and not model.cfg.scale_decoder_outputs
    torch.testing.assert_close(model.W_U, weights["lm_head.weight"].T)
    ref = hf(input_ids=tokens, attention_mask=mask, decoder_input_ids=decoder).logits
    torch.testing.assert_close(model(tokens, decoder, attention_mask=mask), ref, atol=ATOL, rtol=0)


def test_cache_analysis_on_an_encoder(encoder_models, encoder_inputs) -> None:
    """What applies to a post-LN encoder's cache works; what sums outputs into the residual
    stream is refused, saying why."""
    model = _load(encoder_models["bert_mlm"])
    tokens, mask = encoder_inputs
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    resid, labels = cache.accumulated_resid(return_labels=True)
    assert resid.shape == (3, 3, 9, 30) and labels == ["0_pre", "1_pre", "final_post"]
    assert cache.stack_activation("pattern").shape == (2, 3, 3, 9, 9)
    with pytest.raises(ValueError, match="re-normalises the residual stream"):
        cache.decompose_resid()
    _, single = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    assert not single.has_batch_dim and single["resid_pre", 1].shape == (9, 30)
