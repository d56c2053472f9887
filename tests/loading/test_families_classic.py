"""Classic families against transformers (eager attention) on tiny random checkpoints: GPT-Neo,
GPT-J, OPT, BLOOM, GPT-BigCode and CodeGen.

Each tiny model switches on every feature of its family: GPT-Neo alternates global and local
layers with a window (5) shorter than the test sequences; GPT-J and CodeGen rotate a fraction of
each head on adjacent pairs and have an unembedding bias; CodeGen uses 8 heads so each of its 4
model-parallel qkv chunks holds two; OPT is tested plain and with `word_embed_proj_dim` smaller
than the model (project_in / project_out) and no biases or norm weights; BLOOM uses 6 heads, so
its ALiBi slopes include the non-power-of-two extras; GPT-BigCode is tested multi-query (one
key/value head) and multi-head.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.config import HookedTransformerConfig
from lmscope.loading.families import bloom, gpt_bigcode, opt
from tests._families import CLASSIC, WINDOW
from tests._tiny import N_CTX, TinyModel

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4


@pytest.fixture(params=CLASSIC)
def tiny(request: pytest.FixtureRequest, tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    """Each classic tiny family in turn."""
    return tiny_family(request.param)


@pytest.fixture
def bigcode_mqa(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("bigcode_mqa")


@pytest.fixture
def neo(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("gpt_neo")


@pytest.fixture
def bloom_tiny(tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family("bloom")


@pytest.fixture
def model(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


# -- config (agreement with transformers: tests/loading/test_conformance.py) -----------------
@torch.no_grad()
def test_config_reflects_checkpoint(tiny: TinyModel, model: HookedTransformer) -> None:
    cfg, hf_cfg = model.cfg, tiny.hf_model.config
    assert cfg.original_architecture == hf_cfg.architectures[0]
    assert cfg.d_model == hf_cfg.hidden_size
    assert cfg.n_heads == hf_cfg.num_attention_heads
    assert cfg.n_layers == hf_cfg.num_hidden_layers
    family = tiny.name
    if family == "gpt_neo":
        assert cfg.layer_types == ["global", "local", "global", "local"]
        assert cfg.window_size == WINDOW and cfg.use_attn_scale is False
    if family in ("gptj", "codegen"):
        assert cfg.parallel_attn_mlp and cfg.rotary_adjacent_pairs
        assert cfg.rotary_dim == hf_cfg.rotary_dim < cfg.d_head
    if family == "bloom":
        assert cfg.positional_embedding_type == "alibi" and cfg.post_embedding_ln
    if family.startswith("bigcode"):
        assert cfg.n_key_value_heads == (1 if hf_cfg.multi_query else cfg.n_heads)
    if family.startswith("opt"):
        assert cfg.act_fn == "relu"


# -- family extras -------------------------------------------------------------------------------
@torch.no_grad()
def test_gpt_neo_local_layers_see_only_the_window_and_scores_are_unscaled(
    neo: TinyModel, tokens
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(neo.path)
    _, cache = model.run_with_cache(tokens)
    p = tokens.shape[1]
    q_idx, k_idx = torch.arange(p)[:, None], torch.arange(p)[None, :]
    causal = k_idx <= q_idx
    in_window = causal & (k_idx > q_idx - WINDOW)
    for layer, kind in enumerate(model.cfg.layer_types):
        pattern = cache["pattern", layer]
        visible = in_window if kind == "local" else causal
        assert torch.all(pattern[..., ~visible] == 0), (layer, kind)
        assert torch.all(pattern[..., visible] > 0), (layer, kind)
        # no 1/sqrt(d_head): the scores are the raw dot products
        raw = torch.einsum("bqhd,bkhd->bhqk", cache["q", layer], cache["k", layer])
        torch.testing.assert_close(
            cache["attn_scores", layer][..., visible], raw[..., visible], atol=1e-5, rtol=0
        )
    # and HF's own attention weights agree
    hf_attn = neo.hf_model(tokens, output_attentions=True).attentions
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["pattern", layer], hf_attn[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gptj", "codegen"])
@torch.no_grad()
def test_partial_adjacent_pair_rotary(
    family: str, tiny_family: Callable[[str], TinyModel], tokens
) -> None:
    """hook_rot_q/k rotate only the first rotary_dim dims of each head, pairing 2i with 2i+1;
    ln1 and ln2 are the one shared LayerNorm; the unembedding has HF's lm_head bias."""
    tiny = tiny_family(family)
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    cfg = model.cfg
    rot = cfg.rotary_dim
    _, cache = model.run_with_cache(tokens)
    for name in ("q", "k"):
        before, after = cache[name, 0], cache[f"rot_{name}", 0]
        assert after.shape == before.shape
        assert torch.equal(after[..., rot:], before[..., rot:])
        assert not torch.allclose(after[..., :rot], before[..., :rot])
        torch.testing.assert_close(after[:, 0], before[:, 0], atol=0, rtol=0)  # position 0
        # position 1 rotates pair (2i, 2i+1) by angle 1 * base^(-2i/rot)
        theta = 10000.0 ** (-torch.arange(0, rot, 2).float() / rot)
        x = before[:, 1, :, :rot].unflatten(-1, (-1, 2))
        cos, sin = theta.cos(), theta.sin()
        manual = torch.stack(
            (x[..., 0] * cos - x[..., 1] * sin, x[..., 1] * cos + x[..., 0] * sin), dim=-1
        ).flatten(-2)
        torch.testing.assert_close(after[:, 1, :, :rot], manual, atol=1e-6, rtol=0)
    for block in model.blocks:
        assert torch.equal(block.ln1.w, block.ln2.w) and torch.equal(block.ln1.b, block.ln2.b)
    torch.testing.assert_close(model.b_U, tiny.hf_model.lm_head.bias, atol=0, rtol=0)
    assert model.b_U.abs().max() > 0


@pytest.mark.parametrize("family", ["opt", "opt_proj", "opt_post_ln"])
@torch.no_grad()
def test_opt_positions_are_offset_by_two(
    family: str, tiny_family: Callable[[str], TinyModel], tokens
) -> None:
    tiny = tiny_family(family)
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    table = tiny.hf_model.model.decoder.embed_positions.weight
    assert model.W_pos.shape == (N_CTX, model.cfg.d_model)
    torch.testing.assert_close(model.W_pos, table[2:], atol=0, rtol=0)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(
        cache["hook_pos_embed"], table[2 : 2 + tokens.shape[1]].expand_as(cache["hook_pos_embed"])
    )
    assert (cache["post", 0] >= 0).all() and (cache["post", 0] == 0).any()  # ReLU


@torch.no_grad()
def test_opt_projections_fold_into_embed_and_unembed(
    tiny_family: Callable[[str], TinyModel],
) -> None:
    tiny = tiny_family("opt_proj")
    decoder = tiny.hf_model.model.decoder
    assert decoder.project_in is not None and decoder.project_out is not None
    model = HookedTransformer.from_pretrained_no_processing(tiny.path)
    torch.testing.assert_close(model.W_E, decoder.embed_tokens.weight @ decoder.project_in.weight.T)
    torch.testing.assert_close(
        model.W_U, (tiny.hf_model.lm_head.weight @ decoder.project_out.weight).T
    )
    assert torch.equal(model.b_Q, torch.zeros_like(model.b_Q))  # enable_bias=False


@torch.no_grad()
def test_bloom_alibi_and_embedding_norm(bloom_tiny: TinyModel, tokens) -> None:
    model = HookedTransformer.from_pretrained_no_processing(bloom_tiny.path)
    cfg = model.cfg
    assert not hasattr(model, "pos_embed") and not hasattr(model, "rotary")
    hf_base = bloom_tiny.hf_model.transformer
    torch.testing.assert_close(model.ln_embed.w, hf_base.word_embeddings_layernorm.weight)
    _, cache = model.run_with_cache(tokens)
    b, p = tokens.shape
    assert cache["ln_embed.hook_scale"].shape == (b, p, 1)
    assert cache["ln_embed.hook_normalized"].shape == (b, p, cfg.d_model)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["ln_embed.hook_normalized"])
    # scores = q.k / sqrt(d_head) + slope_h * key_position, slopes as HF's (6 heads: 4 + 2 extra)
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    slopes = _get_alibi_slopes(cfg.n_heads, torch.device("cpu"))
    assert slopes.shape == (6,)
    raw = torch.einsum("bqhd,bkhd->bhqk", cache["q", 1], cache["k", 1]) / math.sqrt(cfg.d_head)
    bias = slopes[None, :, None, None] * torch.arange(p, dtype=torch.float32)[None, None, None, :]
    causal = torch.ones(p, p, dtype=torch.bool).tril()
    scores = cache["attn_scores", 1]
    torch.testing.assert_close(scores[..., causal], (raw + bias)[..., causal], atol=1e-5, rtol=0)
    assert torch.isinf(scores[..., ~causal]).all()


def test_unsupported_variants_raise_clearly() -> None:
    base_bloom = {"hidden_size": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128}
    with pytest.raises(NotImplementedError, match="apply_residual_connection_post_layernorm"):
        bloom.config_from_hf({**base_bloom, "apply_residual_connection_post_layernorm": True})
    base_bigcode = {"n_embd": 64, "n_layer": 2, "n_head": 4, "vocab_size": 128, "n_positions": 64}
    with pytest.raises(NotImplementedError, match="cross-attention"):
        gpt_bigcode.config_from_hf({**base_bigcode, "add_cross_attention": True})
    base_opt = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "ffn_dim": 96,
        "vocab_size": 128,
        "max_position_embeddings": 64,
    }
    with pytest.raises(NotImplementedError, match="_remove_final_layer_norm"):
        opt.config_from_hf({**base_opt, "_remove_final_layer_norm": True})
    post_ln = opt.config_from_hf({**base_opt, "do_layer_norm_before": False})
    assert post_ln["norm_placement"] == "post_residual"
    with pytest.raises(ValueError, match="post_residual"):
        HookedTransformerConfig(**{**post_ln, "parallel_attn_mlp": True})


# -- multi-query attention (GPT-BigCode) ---------------------------------------------------------
@torch.no_grad()
def test_multi_query_kv_hooks_and_ungrouping(bigcode_mqa: TinyModel, tokens) -> None:
    grouped = HookedTransformer.from_pretrained_no_processing(bigcode_mqa.path)
    ungrouped = HookedTransformer.from_pretrained_no_processing(
        bigcode_mqa.path, ungroup_grouped_query_attention=True
    )
    cfg = grouped.cfg
    b, p = tokens.shape
    assert cfg.n_key_value_heads == 1 and cfg.n_groups == cfg.n_heads
    assert grouped.W_K.shape == (cfg.n_layers, 1, cfg.d_model, cfg.d_head)
    logits_g, cache_g = grouped.run_with_cache(tokens)
    logits_u, cache_u = ungrouped.run_with_cache(tokens)
    assert cache_g["k", 0].shape == cache_g["v", 0].shape == (b, p, 1, cfg.d_head)
    assert cache_u["k", 0].shape == cache_u["v", 0].shape == (b, p, cfg.n_heads, cfg.d_head)
    for h in range(cfg.n_heads):
        assert torch.equal(cache_u["k", 0][:, :, h], cache_g["k", 0][:, :, 0])
    torch.testing.assert_close(logits_u, logits_g, atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(
        logits_g, bigcode_mqa.hf_model(tokens).logits, atol=LOGIT_ATOL, rtol=0
    )


@torch.no_grad()
def test_per_head_kv_patching_with_multi_query(bigcode_mqa: TinyModel, tokens) -> None:
    """Patch one query head's keys/values from another prompt (ungrouped), and the shared kv head
    (grouped): no crash, the output changes, and only the patched head's z changes."""
    clean, corrupt = tokens[:1], tokens[1:]
    for ungroup in (False, True):
        model = HookedTransformer.from_pretrained_no_processing(
            bigcode_mqa.path, ungroup_grouped_query_attention=ungroup
        )
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=lambda n: "hook_" in n)
        clean_logits, clean_cache = model.run_with_cache(clean, names_filter="blocks.1.attn.hook_z")
        head = 2 if ungroup else 0

        def patch(
            act: torch.Tensor, hook: Any, head: int = head, source: Any = corrupt_cache
        ) -> torch.Tensor:
            act[:, :, head] = source[hook.name][:, :, head]
            return act

        for name in ("k", "v"):
            hook_name = f"blocks.1.attn.hook_{name}"
            with model.hooks(fwd_hooks=[(hook_name, patch)]):
                patched_logits, patched_cache = model.run_with_cache(
                    clean, names_filter="blocks.1.attn.hook_z"
                )
            assert (patched_logits - clean_logits).abs().max() > 1e-4, (ungroup, name)
            changed = (patched_cache["z", 1] - clean_cache["z", 1]).abs().amax(dim=(0, 1, 3)) > 0
            expected = (
                [True] * model.cfg.n_heads
                if not ungroup
                else [h == head for h in range(model.cfg.n_heads)]
            )
            assert changed.tolist() == expected, (ungroup, name)


@torch.no_grad()
def test_split_qkv_input_with_multi_query(bigcode_mqa: TinyModel, tokens) -> None:
    model = HookedTransformer.from_pretrained_no_processing(bigcode_mqa.path)
    expected = model(tokens)
    model.set_use_split_qkv_input(True)
    shapes = {}
    logits = model.run_with_hooks(
        tokens,
        fwd_hooks=[("blocks.0.hook_k_input", lambda x, hook: shapes.update(k=x.shape))],
    )
    assert shapes["k"] == (*tokens.shape, 1, model.cfg.d_model)
    torch.testing.assert_close(logits, expected, atol=LOGIT_ATOL, rtol=0)
