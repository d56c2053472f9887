"""Gemma 4 text (Gemma4ForCausalLM) against transformers (eager attention).

The tiny checkpoint switches on every Gemma 4 feature at once: sliding-window and global layers
of different head sizes and key/value heads, proportional rope on the global layers, values that
are the keys' projection there (attention_k_eq_v), value norms, the last two layers reusing
earlier layers' keys and values with double-wide MLPs, per-layer embeddings, layer scalars drawn
away from 1, and a final soft-cap. A second checkpoint has none of the optional parts (the 31B's
shape: no per-layer embeddings, no KV sharing). Sizes are odd on purpose.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers as tr

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from lmscope.loading.families import family_for
from tests._tiny import D_VOCAB, SEED, TinyModel, randomise

ATOL = 1e-5
_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _config(**overrides: Any) -> tr.Gemma4TextConfig:
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
        layer_types=_TYPES,
        max_position_embeddings=64,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kw.update(overrides)
    return tr.Gemma4TextConfig(**kw)


SPECS = {
    "full": _config,
    # Gemma 4 31B's shape: no per-layer embeddings, no KV sharing, untied head, no soft-cap
    "plain": lambda: _config(
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        use_double_wide_mlp=False,
        attention_k_eq_v=False,
        tie_word_embeddings=False,
        final_logit_softcapping=None,
    ),
}


def _build(tmp_path_factory: pytest.TempPathFactory, name: str) -> TinyModel:
    config = SPECS[name]()
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = tr.Gemma4ForCausalLM(config)
    randomise(model)  # Gemma 4's norms are plain `x_hat * w`: weights 1 + N(0, 0.2)
    with torch.no_grad():
        # Gemma 4 leaves scores unscaled (scaling 1.0): its q/k norm weights carry the
        # 1/sqrt(d_head), here d_head ** -0.25 each. At 1 + N(0, 0.2) the softmax would be so
        # sharp that transformers' own float32 logits are 3e-5 from its float64 ones.
        for pname, param in model.named_parameters():
            if pname.endswith(("q_norm.weight", "k_norm.weight")):
                param.mul_(param.shape[0] ** -0.25)
        for bname, buffer in model.named_buffers():  # the layer scalars are buffers
            if bname.endswith("layer_scalar"):
                buffer.uniform_(0.5, 1.0)
    model.eval()
    path = tmp_path_factory.mktemp(f"gemma4_{name}")
    model.save_pretrained(path)
    return TinyModel(path, model, name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyModel]:
    return {name: _build(tmp_path_factory, name) for name in SPECS}


@pytest.fixture(scope="module")
def full(built: dict[str, TinyModel]) -> TinyModel:
    return built["full"]


@pytest.fixture(scope="module")
def model(full: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(full.path)


def _tokens(n: int = 13) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(3, D_VOCAB, (2, n), generator=gen)


def _padded() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(3, D_VOCAB, (n,), generator=gen) for n in (5, 11, 8)]
    tokens = torch.full((3, 11), 7, dtype=torch.long)
    mask = torch.zeros((3, 11), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, 11 - len(s) :], mask[i, 11 - len(s) :] = s, 1
    return seqs, tokens, mask


# -- agreement with transformers ------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("name", list(SPECS))
def test_logits_and_residuals_match_hf(built: dict[str, TinyModel], name: str) -> None:
    tiny = built[name]
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    tokens = _tokens()
    out = tiny.hf_model(tokens, output_hidden_states=True)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_pre" in n)
    torch.testing.assert_close(logits, out.logits, atol=ATOL, rtol=0)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(
            cache["resid_pre", layer], out.hidden_states[layer], atol=ATOL, rtol=0
        )


@torch.no_grad()
def test_left_padding_matches_hf_and_each_sequence_alone(
    full: TinyModel, model: HookedTransformer
) -> None:
    seqs, tokens, mask = _padded()
    got = model(tokens, attention_mask=mask)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = full.hf_model(tokens, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)
    for i, seq in enumerate(seqs):
        alone = model(seq[None])[0]
        torch.testing.assert_close(got[i, -len(seq) :], alone, atol=ATOL, rtol=0)


@torch.no_grad()
def test_kv_cached_decode_matches_uncached(model: HookedTransformer) -> None:
    tokens = _tokens(11)
    full_logits = model(tokens)
    cache = KVCache.init_cache(model.cfg, batch_size=2, capacity=4)  # grows as it fills
    steps = [model(tokens[:, :6], past_kv_cache=cache)]
    steps += [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(6, 11)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full_logits, atol=ATOL, rtol=0)


@torch.no_grad()
def test_greedy_generation_matches_hf(full: TinyModel, model: HookedTransformer) -> None:
    prompt = _tokens(6)[:1]
    expected = full.hf_model.generate(
        prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0
    )
    got = model.generate(
        prompt, max_new_tokens=12, do_sample=False, stop_at_eos=False, verbose=False
    )
    assert torch.equal(got, expected)


@torch.no_grad()
def test_processed_model_log_probs_match_hf(full: TinyModel) -> None:
    processed = HookedTransformer.from_pretrained(full.path)
    assert processed.cfg.processing["fold_ln"] is True
    assert processed.cfg.processing["fold_value_biases"] is False  # the value norm follows b_V
    tokens = _tokens()
    expected = full.hf_model(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(processed(tokens).log_softmax(-1), expected, atol=1e-4, rtol=0)


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
        (dict(enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=8),
         "enable_moe_block"),
        (dict(use_bidirectional_attention="all"), "use_bidirectional_attention"),
        (dict(rope_parameters={"sliding_attention": {"rope_type": "linear", "factor": 2.0,
         "rope_theta": 1e4}, "full_attention": {"rope_type": "default", "rope_theta": 1e6}}),
         "sliding_attention"),
    ],
)  # fmt: skip
def test_unsupported_features_are_refused_naming_the_attribute(
    overrides: dict[str, Any], match: str
) -> None:
    hf = _config(**overrides).to_dict()
    hf["architectures"] = ["Gemma4ForCausalLM"]
    with pytest.raises((NotImplementedError, ValueError), match=match):
        family_for(hf).config_from_hf(hf)
