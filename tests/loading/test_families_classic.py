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

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import D_VOCAB, N_CTX, TinyModel, build_tiny
from transformers import (
    BloomConfig,
    BloomForCausalLM,
    CodeGenConfig,
    CodeGenForCausalLM,
    GPTBigCodeConfig,
    GPTBigCodeForCausalLM,
    GPTJConfig,
    GPTJForCausalLM,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
)

from lmscope import HookedTransformer
from lmscope.config import HookedTransformerConfig
from lmscope.generation import KVCache
from lmscope.loading.families import bloom, gpt_bigcode, opt

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4
WINDOW = 5  # GPT-Neo's local window, shorter than every test sequence but the shortest


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


BUILDERS: dict[str, Callable[[], tuple[type[PreTrainedModel], Any]]] = {
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

_BUILT: dict[str, TinyModel] = {}  # each tiny model is built (and saved) once per test run


def _get(name: str, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    if name not in _BUILT:
        model_cls, config = BUILDERS[name]()
        _BUILT[name] = build_tiny(tmp_path_factory, f"classic_{name}", model_cls, config)
    return _BUILT[name]


@pytest.fixture(scope="module", params=list(BUILDERS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Each classic tiny family in turn."""
    return _get(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def bigcode_mqa(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return _get("bigcode_mqa", tmp_path_factory)


@pytest.fixture(scope="module")
def neo(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return _get("gpt_neo", tmp_path_factory)


@pytest.fixture(scope="module")
def bloom_tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return _get("bloom", tmp_path_factory)


@pytest.fixture
def model(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


def _after_blocks(hf: PreTrainedModel) -> torch.nn.Module:
    """The module that reads the last block's output: the final norm, or for post-LN OPT (which
    has none) its project_out."""
    base = hf.base_model
    if hasattr(base, "decoder"):  # OPT
        return base.decoder.final_layer_norm or base.decoder.project_out
    return base.ln_f


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
    return [torch.randint(0, D_VOCAB, (n,), generator=gen) for n in (5, 11, 8)]


# -- agreement with transformers --------------------------------------------------------------
@torch.no_grad()
def test_config_reflects_checkpoint(tiny: TinyModel, model: HookedTransformer) -> None:
    cfg, hf_cfg = model.cfg, tiny.hf_model.config
    assert cfg.original_architecture == hf_cfg.architectures[0]
    assert cfg.d_model == hf_cfg.hidden_size
    assert cfg.n_heads == hf_cfg.num_attention_heads
    assert cfg.n_layers == hf_cfg.num_hidden_layers
    family = tiny.name.removeprefix("classic_")
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


@torch.no_grad()
def test_logits_match_hf(tiny: TinyModel, model: HookedTransformer, tokens) -> None:
    expected = tiny.hf_model(tokens).logits
    got = model(tokens)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_residual_stream_matches_hf_hidden_states(
    tiny: TinyModel, model: HookedTransformer, tokens
) -> None:
    hf = tiny.hf_model
    captured = {}
    handle = _after_blocks(hf).register_forward_hook(
        lambda mod, args, out: captured.update(blocks_out=args[0])
    )
    try:
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    n = model.cfg.n_layers
    assert len(hidden) == n + 1
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "resid" in name)
    for layer in range(n):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer], atol=LOGIT_ATOL, rtol=0
        )
    torch.testing.assert_close(
        cache[f"blocks.{n - 1}.hook_resid_post"], captured["blocks_out"], atol=LOGIT_ATOL, rtol=0
    )


@torch.no_grad()
def test_loss_matches_hf(tiny: TinyModel, model: HookedTransformer, tokens) -> None:
    expected = tiny.hf_model(tokens, labels=tokens).loss
    got = model(tokens, return_type="loss")
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_processed_model_log_probs_match_hf(tiny: TinyModel, tokens) -> None:
    processed = HookedTransformer.from_pretrained(tiny.path)
    post_ln = processed.cfg.norm_placement == "post_residual"
    # post-LN norms write the residual stream itself: nothing can be folded (or centred)
    assert processed.cfg.processing["fold_ln"] is not post_ln
    assert processed.cfg.normalization_type == ("LN" if post_ln else "LNPre")
    expected = tiny.hf_model(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(
        processed(tokens).log_softmax(-1), expected, atol=LOGPROB_ATOL, rtol=0
    )


# -- padding -------------------------------------------------------------------------------------
@torch.no_grad()
def test_left_padded_batch_matches_each_sequence_alone(model: HookedTransformer) -> None:
    seqs = _ragged_seqs()
    tokens, mask = _padded(seqs)
    batched = model(tokens, attention_mask=mask)
    assert torch.isfinite(batched).all()
    length = tokens.shape[1]
    for i, seq in enumerate(seqs):
        alone = model(seq[None])[0]
        torch.testing.assert_close(batched[i, length - len(seq) :], alone, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_left_padded_batch_matches_hf(tiny: TinyModel, model: HookedTransformer) -> None:
    """HF with the same attention mask (and position ids counted over real tokens, where its
    forward takes them) agrees at every real position."""
    tokens, mask = _padded(_ragged_seqs())
    kwargs: dict[str, Any] = {"attention_mask": mask}
    if "position_ids" in inspect.signature(tiny.hf_model.forward).parameters:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = tiny.hf_model(tokens, **kwargs).logits
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
        tokens, kwargs["attention_mask"] = _padded(_ragged_seqs())
    fast = model(tokens, **kwargs)
    seen = []
    explicit = model.run_with_hooks(
        tokens,
        fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: seen.append(hook.name))],
        **kwargs,
    )
    assert seen == [f"blocks.{i}.attn.hook_pattern" for i in range(model.cfg.n_layers)]
    torch.testing.assert_close(explicit, fast, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_residual_stream_decomposes_exactly(model: HookedTransformer, tokens) -> None:
    # (norm hooks left uncached: a hooked norm takes its explicit path, so recomputing a post-LN
    # norm below must see the same fast kernel the forward pass used)
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: "resid" in n or n.endswith(("attn_out", "mlp_out"))
    )
    for layer in range(model.cfg.n_layers):
        pre, post = cache["resid_pre", layer], cache["resid_post", layer]
        attn_out, mlp_out = cache["attn_out", layer], cache["mlp_out", layer]
        if model.cfg.parallel_attn_mlp:
            assert f"blocks.{layer}.hook_resid_mid" not in model.hook_dict
            assert torch.equal(pre + attn_out + mlp_out, post)
        elif model.cfg.norm_placement == "post_residual":  # each norm follows its add
            block, mid = model.blocks[layer], cache["resid_mid", layer]
            assert torch.equal(block.ln1(pre + attn_out), mid)
            assert torch.equal(block.ln2(mid + mlp_out), post)
        else:
            mid = cache["resid_mid", layer]
            assert torch.equal(pre + attn_out, mid)
            assert torch.equal(mid + mlp_out, post)


@torch.no_grad()
def test_every_hook_fires_once_with_its_shape(model: HookedTransformer, tokens) -> None:
    cfg = model.cfg
    b, p = tokens.shape
    h, kv, dh, dm = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_model
    shapes: dict[str, list[tuple[int, ...]]] = {}
    enabled = [n for n in model.hook_dict if model._disabled_reason(n) is None]
    with model.hooks(
        fwd_hooks=[(n, lambda x, hook: shapes.setdefault(hook.name, []).append(x.shape))
                   for n in enabled]
    ):  # fmt: skip
        model(tokens)
    assert set(shapes) == set(enabled)
    expected = {
        "hook_q": (b, p, h, dh),
        "hook_rot_q": (b, p, h, dh),
        "hook_k": (b, p, kv, dh),
        "hook_rot_k": (b, p, kv, dh),
        "hook_v": (b, p, kv, dh),
        "hook_z": (b, p, h, dh),
        "hook_attn_scores": (b, h, p, p),
        "hook_pattern": (b, h, p, p),
        "hook_scale": (b, p, 1),
        "hook_pre": (b, p, cfg.d_mlp),
        "hook_post": (b, p, cfg.d_mlp),
        "hook_out": (b, p, cfg.d_vocab_out),
    }
    for name, seen in shapes.items():
        assert seen == [torch.Size(expected.get(name.rsplit(".", 1)[-1], (b, p, dm)))], name


@torch.no_grad()
def test_hook_flags_keep_the_logits(model: HookedTransformer, tokens) -> None:
    """Per-head inputs, per-head results and hook_mlp_in (every block layout here) change no
    number."""
    expected = model(tokens)
    for setter in ("set_use_split_qkv_input", "set_use_attn_result", "set_use_hook_mlp_in"):
        getattr(model, setter)(True)
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, expected, atol=LOGIT_ATOL, rtol=0)
    cfg = model.cfg
    assert cache["blocks.0.hook_k_input"].shape == (
        *tokens.shape,
        cfg.n_key_value_heads,
        cfg.d_model,
    )
    assert cache["result", 0].shape == (*tokens.shape, cfg.n_heads, cfg.d_model)
    torch.testing.assert_close(
        cache["result", 0].sum(2) + model.blocks[0].attn.b_O,
        cache["attn_out", 0],
        atol=1e-5,
        rtol=0,
    )


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
    family: str, tmp_path_factory: pytest.TempPathFactory, tokens
) -> None:
    """hook_rot_q/k rotate only the first rotary_dim dims of each head, pairing 2i with 2i+1;
    ln1 and ln2 are the one shared LayerNorm; the unembedding has HF's lm_head bias."""
    tiny = _get(family, tmp_path_factory)
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
    family: str, tmp_path_factory: pytest.TempPathFactory, tokens
) -> None:
    tiny = _get(family, tmp_path_factory)
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
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tiny = _get("opt_proj", tmp_path_factory)
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


# -- generation ----------------------------------------------------------------------------------
@torch.no_grad()
def test_kv_cached_forward_matches_uncached(model: HookedTransformer, tokens) -> None:
    full = model(tokens)
    cache = KVCache.init_cache(model.cfg, batch_size=tokens.shape[0])
    pieces = [model(tokens[:, :7], past_kv_cache=cache)]
    for pos in range(7, tokens.shape[1]):  # one token at a time past GPT-Neo's window
        pieces.append(model(tokens[:, pos : pos + 1], past_kv_cache=cache))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_greedy_generation_matches_hf(
    tiny: TinyModel, model: HookedTransformer, tokens, padded: bool
) -> None:
    if padded:
        tokens, mask = _padded(_ragged_seqs())
    else:
        mask = torch.ones_like(tokens)
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
    assert torch.equal(ours, theirs)
