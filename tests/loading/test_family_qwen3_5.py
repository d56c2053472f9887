"""Qwen3.5 text (Qwen3_5ForCausalLM) and Qwen3.5-MoE text (Qwen3_5MoeForCausalLM): gated
delta-net linear attention mixed with gated softmax attention, against transformers' eager path
(its torch fallback of the delta rule; no fla kernels are installed). The tiny checkpoints have
odd sizes, two linear layers around one attention layer, 2 key heads serving 4 value heads, a
3-tap convolution, grouped-query attention with biases, partial rotary, and every norm (1 + w)
perturbed; sequences of 70 tokens cross the delta rule's 64-position chunk. Every test runs on
both: the MoE one has 5 experts (top 2, renormalised) and a gated shared expert on every layer.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import transformers as tr

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from lmscope.loading.families import family_for

try:  # the shared builders (moving from tests/conftest.py to tests/_tiny.py)
    from tests._tiny import SEED, TinyModel, randomise
except ImportError:
    from conftest import SEED, TinyModel
    from conftest import _randomise as randomise

ATOL = 1e-5
VOCAB = 97
LONG = 70  # past one 64-position chunk


_SIZES: dict[str, Any] = {
    "vocab_size": VOCAB, "hidden_size": 40,
    "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
    "linear_key_head_dim": 6, "linear_value_head_dim": 10, "linear_conv_kernel_dim": 3,
    "max_position_embeddings": 96, "attention_bias": True,
    "layer_types": ["linear_attention", "full_attention", "linear_attention"],
    "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip


def qwen3_5_config(**kwargs: Any) -> tr.Qwen3_5TextConfig:
    """The tiny Qwen3.5 text config (head_dim 16: a quarter of it, 4 dimensions, rotates)."""
    return tr.Qwen3_5TextConfig(**{"intermediate_size": 56, **_SIZES, **kwargs})


def qwen3_5_moe_config(**kwargs: Any) -> tr.Qwen3_5MoeTextConfig:
    """The tiny Qwen3.5-MoE text config: the dense one's layers with 5 experts of 12 (top 2) and
    a shared expert of 20."""
    experts = {"moe_intermediate_size": 12, "shared_expert_intermediate_size": 20,
               "num_experts": 5, "num_experts_per_tok": 2}  # fmt: skip
    return tr.Qwen3_5MoeTextConfig(**{**experts, **_SIZES, **kwargs})


@pytest.fixture(scope="module", params=["dense", "moe"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    moe = request.param == "moe"
    config = qwen3_5_moe_config() if moe else qwen3_5_config()
    config._attn_implementation = "eager"
    if moe:
        config._experts_implementation = "eager"  # transformers' per-expert loop as the oracle
    torch.manual_seed(SEED)
    hf = (tr.Qwen3_5MoeForCausalLM if moe else tr.Qwen3_5ForCausalLM)(config)
    randomise(hf)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            # (1 + w) norms drawn around 0; the gated norm's weight is used as it is
            if param.ndim == 1 and "norm" in name and "linear_attn.norm" not in name:
                param.sub_(1.0)
            if name.endswith("A_log"):  # decays exp(-exp(A_log) * softplus(.)) that vary
                param.uniform_(-1.0, 1.0)
    hf.eval()
    path = tmp_path_factory.mktemp(f"qwen3_5_{request.param}")
    hf.save_pretrained(path)
    return TinyModel(path, hf, f"qwen3_5_{request.param}")


@pytest.fixture(scope="module")
def model(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, LONG), generator=torch.Generator().manual_seed(1))


def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    seqs = [torch.randint(3, VOCAB, (n,), generator=gen) for n in (5, 11, 8)]
    tokens = torch.full((3, 11), 7, dtype=torch.long)
    mask = torch.zeros(3, 11, dtype=torch.long)
    for i, seq in enumerate(seqs):
        tokens[i, 11 - len(seq) :], mask[i, 11 - len(seq) :] = seq, 1
    return tokens, mask


def test_config(tiny: TinyModel, model: HookedTransformer) -> None:
    cfg = model.cfg
    moe = tiny.name == "qwen3_5_moe"
    assert (cfg.num_experts, cfg.experts_per_token) == ((5, 2) if moe else (None, None))
    if moe:
        assert (cfg.d_mlp, cfg.shared_expert_d_mlp, cfg.norm_topk_prob) == (12, 20, True)
    assert cfg.layer_types == ["linear", "global", "linear"]
    assert (cfg.rotary_dim, cfg.attn_output_gate, cfg.use_qk_norm) == (4, True, True)
    assert (cfg.linear_n_key_heads, cfg.linear_n_value_heads) == (2, 4)
    assert (cfg.linear_d_key, cfg.linear_d_value, cfg.linear_conv_size) == (6, 10, 3)
    assert hasattr(model.blocks[0], "linear_attn") and not hasattr(model.blocks[0], "attn")


@torch.no_grad()
def test_logits_and_residuals_match_hf(tiny: TinyModel, model: HookedTransformer, tokens) -> None:
    out = tiny.hf_model(tokens, output_hidden_states=True)
    got, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_pre" in n)
    torch.testing.assert_close(got, out.logits, atol=ATOL, rtol=0)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(
            cache["resid_pre", layer], out.hidden_states[layer], atol=ATOL, rtol=0
        )


@torch.no_grad()
def test_processed_model_log_probs_match_hf(tiny: TinyModel, tokens) -> None:
    processed = HookedTransformer.from_pretrained(tiny.path)
    assert processed.cfg.processing["fold_ln"] is True
    assert processed.cfg.processing["fold_value_biases"] is False  # the gate scales b_V
    assert processed.blocks[0].ln1.w is None
    expected = tiny.hf_model(tokens).logits.log_softmax(-1)
    torch.testing.assert_close(processed(tokens).log_softmax(-1), expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_kv_cached_decode_matches_uncached(model: HookedTransformer, tokens) -> None:
    full = model(tokens)
    cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2, capacity=LONG)
    steps = [model(tokens[:, :66], past_kv_cache=cache)]
    steps += [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(66, LONG)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=0)
    state = cache.entries[0].read(LONG)[1]
    assert state.shape == (2, 4, 6, 10)
    # a frozen cache continues every call from the same state
    cache.freeze()
    again = [model(tokens[:, :1], past_kv_cache=cache) for _ in range(2)]
    torch.testing.assert_close(again[0], again[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="linear-attention state after 3 positions"):
        cache.entries[0].read(3)


@torch.no_grad()
def test_left_padding_matches_hf_and_each_row_alone(tiny: TinyModel, model) -> None:
    tokens, mask = _padded()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = tiny.hf_model(tokens, attention_mask=mask, position_ids=positions).logits
    got = model(tokens, attention_mask=mask)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=ATOL, rtol=0)
    for row in range(3):
        alone = model(tokens[row, mask[row].bool()][None])[0]
        torch.testing.assert_close(got[row, mask[row].bool()], alone, atol=ATOL, rtol=0)


@torch.no_grad()
def test_greedy_generation_matches_hf(tiny: TinyModel, model: HookedTransformer) -> None:
    tokens, mask = _padded()
    options = dict(max_new_tokens=6, do_sample=False)
    ours = model.generate(tokens, attention_mask=mask, stop_at_eos=False, verbose=False, **options)
    theirs = tiny.hf_model.generate(
        tokens, attention_mask=mask, eos_token_id=None, pad_token_id=0, **options
    )
    assert theirs.shape == (3, 17)
    assert torch.equal(ours, theirs)


@torch.no_grad()
def test_recurrent_hooks_fire_with_documented_shapes(model: HookedTransformer) -> None:
    tokens = torch.arange(3, 12)[None].repeat(2, 1)  # [2, 9]
    _, cache = model.run_with_cache(tokens)
    shapes = {
        "blocks.0.linear_attn.hook_q": (2, 9, 2, 6),
        "blocks.0.linear_attn.hook_k": (2, 9, 2, 6),
        "blocks.0.linear_attn.hook_v": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_beta": (2, 9, 4),
        "blocks.0.linear_attn.hook_g": (2, 9, 4),
        "blocks.0.linear_attn.hook_readout": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_gate": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_z": (2, 9, 4, 10),
        "blocks.0.linear_attn.hook_state": (2, 4, 6, 10),
        "blocks.0.hook_attn_out": (2, 9, 40),
        "blocks.1.attn.hook_gate": (2, 9, 4, 16),
        "blocks.1.attn.hook_z": (2, 9, 4, 16),
    }
    assert {name: tuple(cache[name].shape) for name in shapes} == shapes
    assert not any(name.startswith("blocks.0.attn.") for name in cache.keys())
    g, beta = cache["blocks.0.linear_attn.hook_g"], cache["blocks.0.linear_attn.hook_beta"]
    assert (g <= 0).all() and ((beta > 0) & (beta < 1)).all()
    # hook_z is what W_O reads: the layer's output is z @ W_O
    la = model.blocks[0].linear_attn
    out = torch.einsum("bphd,hdm->bpm", cache["blocks.0.linear_attn.hook_z"], la.W_O)
    torch.testing.assert_close(out, cache["blocks.0.hook_attn_out"], atol=ATOL, rtol=0)
    weights = model.named_weights()
    assert weights["blocks.0.linear_attn.W_V"].shape == (4, 40, 10)
    assert weights["blocks.1.attn.W_gate"].shape == (4, 40, 16)
    with pytest.raises(AttributeError, match="linear-attention layers"):
        _ = model.W_Q


@torch.no_grad()
def test_cached_state_edit_reaches_later_steps(model: HookedTransformer, tokens) -> None:
    def run(edit: bool) -> torch.Tensor:
        cache = KVCache.init_cache(model.cfg, "cpu", batch_size=2, capacity=LONG)
        hooks = [("blocks.0.linear_attn.hook_state", lambda s, hook: s * 0)] if edit else []
        with model.hooks(fwd_hooks=hooks):
            model(tokens[:, :8], past_kv_cache=cache)
        return model(tokens[:, 8:9], past_kv_cache=cache)

    assert not torch.allclose(run(True), run(False), atol=1e-3)


def test_unknown_layer_type_is_refused() -> None:
    hf = {
        **qwen3_5_config().to_dict(),
        "architectures": ["Qwen3_5ForCausalLM"],
        "layer_types": ["linear_attention", "mamba", "full_attention"],
    }
    with pytest.raises(NotImplementedError, match="layer_types holds \\['mamba'\\]"):
        family_for(hf).config_from_hf(hf)
