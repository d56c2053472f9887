"""Generation on the tiny random families: KV cache, greedy parity with transformers, hooks,
live activation capture, sampling distributions, EOS handling, streaming and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from lmscope import HookedTransformer
from lmscope.generation import (
    KVCache,
    apply_freq_penalty,
    sample_logits,
    top_k_filter,
    top_p_filter,
)
from tests._tiny import D_VOCAB, N_CTX, TinyModel, build_tiny

LOGIT_ATOL = 1e-5  # float32: cached and uncached logits, live cache vs run_with_cache
N_NEW = 12


@pytest.fixture
def model(tiny_model: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_model.path)


@pytest.fixture(scope="module")
def tiny_mistral_window(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Mistral with a sliding window of 4, shorter than the sequences below."""
    config = MistralConfig(
        vocab_size=D_VOCAB,
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=N_CTX,
        sliding_window=4,
        attn_implementation="eager",
    )
    return build_tiny(tmp_path_factory, "mistral_window", MistralForCausalLM, config)


@pytest.fixture(params=["family", "mistral_window"])
def any_model(
    request: pytest.FixtureRequest, tiny_model: TinyModel, tiny_mistral_window: TinyModel
) -> TinyModel:
    return tiny_model if request.param == "family" else tiny_mistral_window


def _seqs(lengths: tuple[int, ...], seed: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, D_VOCAB, (n,), generator=gen) for n in lengths]


def _left_pad(seqs: list[torch.Tensor], pad_id: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, length - len(s) :] = s
        mask[i, length - len(s) :] = 1
    return tokens, mask


def _hf_greedy(hf_model, tokens, n_new, attention_mask=None) -> torch.Tensor:
    """transformers' greedy generate, never stopping early (no EOS)."""
    with torch.no_grad():
        return hf_model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens) if attention_mask is None else attention_mask,
            do_sample=False,
            max_new_tokens=n_new,
            eos_token_id=None,
            pad_token_id=0,
        )


def _greedy(model: HookedTransformer, tokens, n_new=N_NEW, **kwargs) -> torch.Tensor:
    kwargs.setdefault("stop_at_eos", False)
    return model.generate(tokens, n_new, do_sample=False, verbose=False, **kwargs)


# -- the KV cache through forward ---------------------------------------------------------------
@torch.no_grad()
def test_kv_cache_steps_match_full_forward(any_model: TinyModel) -> None:
    """Prompt, then single- and multi-token steps, growing the cache twice (capacity 4 -> 16)."""
    model = HookedTransformer.from_pretrained_no_processing(any_model.path)
    tokens = torch.randint(0, D_VOCAB, (2, 14), generator=torch.Generator().manual_seed(0))
    full = model(tokens)
    cache = KVCache.init_cache(model.cfg, model.W_E.device, batch_size=2, capacity=4)
    assert cache.capacity == 4
    splits = [(0, 3), (3, 4), (4, 5), (5, 9), (9, 10), (10, 14)]
    parts = []
    for start, end in splits:
        assert cache.length == start
        parts.append(model(tokens[:, start:end], past_kv_cache=cache))
    assert cache.length == 14 and cache.capacity == 16
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_frozen_kv_cache_scores_continuations(tiny_model: TinyModel, model) -> None:
    """A frozen cache is read but not advanced: several continuations of one prompt."""
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, D_VOCAB, (1, 6), generator=gen)
    cache = KVCache.init_cache(model.cfg, batch_size=1, capacity=8)
    model(prompt, past_kv_cache=cache)
    cache.freeze()
    for n in (1, 3, 5):  # 5 also grows the frozen cache past its capacity
        cont = torch.randint(0, D_VOCAB, (1, n), generator=gen)
        got = model(cont, past_kv_cache=cache)
        expected = model(torch.cat([prompt, cont], dim=1))[:, -n:]
        torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)
        assert cache.length == 6
    cache.unfreeze()
    cont = torch.randint(0, D_VOCAB, (1, 2), generator=gen)
    got = model(cont, past_kv_cache=cache)
    assert cache.length == 8
    expected = model(torch.cat([prompt, cont], dim=1))[:, -2:]
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_kv_cache_left_padded_batch(any_model: TinyModel) -> None:
    """Left-padded prompts through the cache, then steps: each row's logits equal the unpadded
    row run alone (positions count real tokens only, padding masked at every step)."""
    model = HookedTransformer.from_pretrained_no_processing(any_model.path)
    seqs = _seqs((5, 9, 7))
    tokens, mask = _left_pad(seqs)
    steps = torch.randint(0, D_VOCAB, (3, 4), generator=torch.Generator().manual_seed(4))
    cache = KVCache.init_cache(model.cfg, batch_size=3, capacity=4)
    first = model(tokens, attention_mask=mask, past_kv_cache=cache)
    one = [model(steps[:, i : i + 1], past_kv_cache=cache) for i in range(2)]
    two = model(steps[:, 2:], past_kv_cache=cache)
    got = torch.cat([first, *one, two], dim=1)
    width = tokens.shape[1]
    for i, seq in enumerate(seqs):
        expected = model(torch.cat([seq, steps[i]])[None])[0]
        real = got[i, width - len(seq) :]
        torch.testing.assert_close(real, expected, atol=LOGIT_ATOL, rtol=0)


def test_kv_cache_errors(model) -> None:
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    with pytest.raises(ValueError, match="holds 2 sequences"):
        model(torch.zeros(3, 4, dtype=torch.long), past_kv_cache=cache)
    model(torch.zeros(2, N_CTX - 1, dtype=torch.long), past_kv_cache=cache)
    with pytest.raises(ValueError, match="n_ctx"):
        model(torch.zeros(2, 2, dtype=torch.long), past_kv_cache=cache)


# -- greedy parity with transformers ----------------------------------------------------------------
def test_greedy_matches_hf(any_model: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(any_model.path)
    prompt = _seqs((6,))[0][None]
    expected = _hf_greedy(any_model.hf_model, prompt, 20)
    assert torch.equal(_greedy(model, prompt, 20), expected)
    assert torch.equal(_greedy(model, prompt, 20, use_past_kv_cache=False), expected)


def test_greedy_left_padded_batch_matches_hf(any_model: TinyModel) -> None:
    model = HookedTransformer.from_pretrained_no_processing(any_model.path)
    tokens, mask = _left_pad(_seqs((4, 9)))
    expected = _hf_greedy(any_model.hf_model, tokens, N_NEW, mask)
    got = _greedy(model, tokens, attention_mask=mask)
    assert torch.equal(got, expected)
    assert torch.equal(_greedy(model, tokens, attention_mask=mask, use_past_kv_cache=False), got)
    # and each row is what that prompt gives alone
    for i, n in enumerate((4, 9)):
        alone = _greedy(model, tokens[i : i + 1, -n:])
        assert torch.equal(alone[0, n:], got[i, tokens.shape[1] :])


# -- hooks at every step ----------------------------------------------------------------------------
def test_context_hooks_fire_at_every_step(model) -> None:
    prompt = _seqs((5,))[0][None]
    seen: list[tuple[int, ...]] = []

    def record(resid, hook):
        seen.append(tuple(resid.shape))

    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", record)]):
        _greedy(model, prompt, 6)
    d = model.cfg.d_model
    assert seen == [(1, 5, d)] + [(1, 1, d)] * 5  # the prompt, then one new position per step
    seen.clear()
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", record)]):
        _greedy(model, prompt, 6, use_past_kv_cache=False)
    assert seen == [(1, 5 + i, d) for i in range(6)]  # the whole sequence each step
    seen.clear()
    _greedy(model, prompt, 3)
    assert seen == []  # detached after the block
    # a hook after the last block sees every prompt position too (unhooked, generation computes
    # the prompt's final norm and logits at its last position only)
    with model.hooks(fwd_hooks=[("unembed.hook_out", record)]):
        _greedy(model, prompt, 3)
    assert seen == [(1, 5, model.cfg.d_vocab), (1, 1, model.cfg.d_vocab), (1, 1, model.cfg.d_vocab)]


def _steer_hook(vector: torch.Tensor):
    def steer(resid, hook):
        return resid + vector

    return steer


def test_steering_vector_changes_the_output(model) -> None:
    """Adding a vector to the residual stream at every step: the KV-cached generation equals a
    greedy loop over full forward passes with the same hook, and it changes the tokens."""
    prompt = _seqs((5,))[0][None]
    vector = 3.0 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    hooks = [("blocks.0.hook_resid_post", _steer_hook(vector))]
    plain = _greedy(model, prompt)
    with model.hooks(fwd_hooks=hooks):
        steered = _greedy(model, prompt)
    # reference: greedy by hand, the whole sequence each step, through run_with_hooks
    seq = prompt
    with torch.no_grad():
        for _ in range(N_NEW):
            logits = model.run_with_hooks(seq, fwd_hooks=hooks)
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(steered, seq)
    changed = (steered != plain)[0, 5:]
    assert changed.any(), "the steering vector should change the generated tokens"
    # the same through generate's own fwd_hooks argument
    assert torch.equal(_greedy(model, prompt, fwd_hooks=hooks), steered)


def test_strong_steering_forces_one_token(model) -> None:
    """A large vector at the last residual decides every new token: it becomes the argmax of
    unembed(ln_final(vector)), computed independently of generation."""
    prompt = _seqs((5,))[0][None]
    last = model.cfg.n_layers - 1
    direction = model.W_U[:, 17].detach().clone()
    vector = 1e4 * direction / direction.norm()
    with torch.no_grad():
        x = vector[None, None]
        x = model.ln_final(x) if hasattr(model, "ln_final") else x
        target = int(model.unembed(x)[0, 0].argmax())
    out = _greedy(
        model, prompt, 6, fwd_hooks=[(f"blocks.{last}.hook_resid_post", _steer_hook(vector))]
    )
    assert out[0, 5:].tolist() == [target] * 6
    assert _greedy(model, prompt, 6)[0, 5:].tolist() != [target] * 6


def test_hooks_in_generate_stream(model) -> None:
    prompt = _seqs((5,))[0][None]
    vector = 3.0 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    hooks = [("blocks.0.hook_resid_post", _steer_hook(vector))]
    steered = _greedy(model, prompt, fwd_hooks=hooks)
    stream = model.generate_stream(
        prompt, N_NEW, do_sample=False, stop_at_eos=False, fwd_hooks=hooks
    )
    first = next(stream)
    # between steps the hooks are detached and gradients are on: nothing leaks to the caller
    assert not model.blocks[0].hook_resid_post.has_hooks()
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert not torch.is_inference(first)
    rest = list(stream)
    assert torch.equal(torch.stack([first, *rest], dim=1), steered[:, 5:])


# -- live activation capture ------------------------------------------------------------------------
def _assert_cache_equal(live, ref, real: torch.Tensor | None = None) -> None:
    """Every key equal within LOGIT_ATOL; with `real` ([batch, pos] bool), only at real positions:
    [batch, pos, ...] tensors at real positions, attention scores and patterns at real query rows
    (all key columns: padded keys are masked, so -inf / 0, in both)."""
    assert set(live.keys()) == set(ref.keys())
    for name in ref.keys():
        a, b = live[name], ref[name]
        assert a.shape == b.shape, name
        if real is None:
            torch.testing.assert_close(a, b, atol=LOGIT_ATOL, rtol=0, msg=name)
            continue
        for i in range(a.shape[0]):
            if name.endswith(("hook_pattern", "hook_attn_scores")):
                got, want = a[i][:, real[i]], b[i][:, real[i]]
            else:
                got, want = a[i][real[i]], b[i][real[i]]
            torch.testing.assert_close(got, want, atol=LOGIT_ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("use_past_kv_cache", [True, False])
def test_live_cache_equals_run_with_cache(model, use_past_kv_cache: bool) -> None:
    prompt = _seqs((5,))[0][None]
    out, live = _greedy(model, prompt, return_cache=True, use_past_kv_cache=use_past_kv_cache)
    assert torch.equal(out, _greedy(model, prompt))  # capturing changes nothing
    _, ref = model.run_with_cache(out)
    assert any(name.endswith("hook_pattern") for name in ref.keys())
    assert any(name.endswith("hook_v") for name in ref.keys())
    assert live["pattern", 0].shape[-2:] == (5 + N_NEW, 5 + N_NEW)
    _assert_cache_equal(live, ref)


def test_live_cache_names_filter(model) -> None:
    prompt = _seqs((5,))[0][None]
    for names_filter in (
        lambda name: name.endswith(("hook_attn_scores", "hook_k", "hook_resid_post")),
        ["blocks.1.attn.hook_pattern", "blocks.0.hook_resid_mid", "unembed.hook_out"]
        if not model.cfg.parallel_attn_mlp
        else ["blocks.1.attn.hook_pattern", "blocks.0.hook_mlp_out", "unembed.hook_out"],
        "blocks.0.attn.hook_v",
    ):
        out, live = _greedy(model, prompt, return_cache=True, names_filter=names_filter)
        _, ref = model.run_with_cache(out, names_filter=names_filter)
        assert len(ref.keys()) >= 1
        _assert_cache_equal(live, ref)


def test_live_cache_left_padded_batch(model) -> None:
    """Padded batch: equal at every real position. Padding positions differ by design: a padding
    query has no real key, so its mask row is opened over every key of the forward pass that
    computed it (the prompt pass when generating, the whole output in run_with_cache); nothing
    real ever attends to it."""
    tokens, mask = _left_pad(_seqs((4, 8)))
    out, live = _greedy(model, tokens, attention_mask=mask, return_cache=True)
    full_mask = torch.cat([mask, torch.ones(2, N_NEW, dtype=torch.long)], dim=1)
    _, ref = model.run_with_cache(out, attention_mask=full_mask)
    _assert_cache_equal(live, ref, real=full_mask.bool())


def test_live_cache_under_steering_and_early_stop(model) -> None:
    """With a steering hook and an EOS stop, the capture follows the hooked run it came from."""
    prompt = _seqs((5,))[0][None]
    vector = 3.0 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    hooks = [("blocks.0.hook_resid_post", _steer_hook(vector))]
    steered = _greedy(model, prompt, fwd_hooks=hooks)
    eos = int(steered[0, 8])
    stop = 5 + steered[0, 5:].tolist().index(eos) + 1
    out, live = _greedy(
        model, prompt, fwd_hooks=hooks, return_cache=True, stop_at_eos=True, eos_token_id=eos
    )
    assert torch.equal(out, steered[:, :stop])
    with model.hooks(fwd_hooks=hooks):
        _, ref = model.run_with_cache(out)
    _assert_cache_equal(live, ref)


def test_outputs_work_with_autograd(model) -> None:
    """The steps run in inference mode; what comes back are normal tensors, usable for a
    backward pass (inference tensors would raise when saved for backward)."""
    prompt = _seqs((5,))[0][None]
    out, live = _greedy(model, prompt, return_cache=True)
    assert not torch.is_inference(out)
    assert not any(torch.is_inference(t) for t in live.values())
    _, grads = model.run_with_cache(out, return_type="loss", incl_bwd=True)
    assert grads["blocks.0.hook_resid_post_grad"].shape == live["resid_post", 0].shape
    weight = torch.ones(model.cfg.d_model, requires_grad=True)
    (live["resid_post", 0] * weight).sum().backward()
    assert weight.grad is not None


def test_live_cache_with_no_new_tokens(model) -> None:
    prompt = _seqs((5,))[0][None]
    out, live = _greedy(model, prompt, 0, return_cache=True)
    assert torch.equal(out, prompt)
    _assert_cache_equal(live, model.run_with_cache(prompt)[1])


# -- sampling distributions on a fixed logit vector -------------------------------------------------
N_SAMPLES = 40_000
LOGITS = torch.tensor([2.0, 1.6, 1.1, 0.7, 0.2, -0.4, -1.0, -2.5])


def _frequencies(logits: torch.Tensor, seed: int = 0, **kwargs) -> torch.Tensor:
    batch = logits.expand(N_SAMPLES, -1)
    gen = torch.Generator().manual_seed(seed)
    drawn = sample_logits(batch, generator=gen, **kwargs)
    return torch.bincount(drawn, minlength=logits.shape[-1]).double() / N_SAMPLES


def _assert_distribution(freq: torch.Tensor, expected: torch.Tensor) -> None:
    """Each frequency within 5 standard errors sqrt(p (1 - p) / N) of its probability (for a
    correct sampler a miss has probability < 6e-7 per token: the seeds are fixed anyway, so the
    test is deterministic), and tokens of probability 0 never drawn."""
    expected = expected.double()
    sigma = (expected * (1 - expected) / N_SAMPLES).sqrt()
    assert torch.all((freq - expected).abs() <= 5 * sigma + 1e-12), (freq, expected)
    assert torch.all(freq[expected == 0] == 0)


def _far(freq: torch.Tensor, wrong: torch.Tensor) -> bool:
    """The test can tell: a wrong distribution is off by more than 10 standard errors."""
    sigma = math.sqrt(0.25 / N_SAMPLES)
    return bool((freq - wrong.double()).abs().max() > 10 * sigma)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_distribution(temperature: float) -> None:
    freq = _frequencies(LOGITS, temperature=temperature)
    _assert_distribution(freq, (LOGITS / temperature).softmax(-1))
    if temperature != 1.0:
        assert _far(freq, LOGITS.softmax(-1))


def test_top_k_distribution() -> None:
    freq = _frequencies(LOGITS, top_k=3, temperature=0.8)
    expected = torch.zeros(8)
    expected[:3] = (LOGITS[:3] / 0.8).softmax(-1)
    _assert_distribution(freq, expected)
    # ties with the k-th logit are kept (like transformers)
    tied = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert torch.isinf(top_k_filter(tied, 2)).tolist() == [[False, False, False, True]]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    logits = probs.log()[None]
    kept = lambda p: (~torch.isinf(top_p_filter(logits, p)))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.3) == [0]  # the top token alone reaches 0.3
    assert kept(0.5) == [0, 1]  # 0.4 < 0.5, 0.65 >= 0.5
    assert kept(0.7) == [0, 1, 2]  # 0.65 < 0.7: the token crossing p is kept
    assert kept(0.9) == [0, 1, 2, 3]
    assert kept(0.96) == [0, 1, 2, 3, 4]
    assert kept(1.0) == [0, 1, 2, 3, 4]
    shuffled = logits[:, [3, 0, 4, 2, 1]]  # order does not matter
    assert (~torch.isinf(top_p_filter(shuffled, 0.7)))[0].tolist() == [
        False, True, False, True, True,
    ]  # fmt: skip


def test_top_p_distribution() -> None:
    probs = LOGITS.softmax(-1)  # 0.375, 0.251, 0.153, ...: cumulative 0.626 < 0.7, then 0.779
    freq = _frequencies(LOGITS, top_p=0.7)
    expected = torch.zeros(8)
    expected[:3] = probs[:3] / probs[:3].sum()
    _assert_distribution(freq, expected)
    wrong = torch.zeros(8)  # "keep while the cumulative mass is <= p" would keep only two
    wrong[:2] = probs[:2] / probs[:2].sum()
    assert _far(freq, wrong)


def test_top_k_then_top_p_distribution() -> None:
    """Both apply, top-k first: top-p is taken over the renormalised top-k distribution
    (TransformerLens applies only top-k when both are given)."""
    freq = _frequencies(LOGITS, top_k=4, top_p=0.7)
    q = LOGITS[:4].softmax(-1)  # 0.426, 0.285, 0.173, 0.116: 0.711 >= 0.7, so two kept
    expected = torch.zeros(8)
    expected[:2] = q[:2] / q[:2].sum()
    _assert_distribution(freq, expected)
    only_k = torch.zeros(8)
    only_k[:4] = q
    assert _far(freq, only_k)
    p = LOGITS.softmax(-1)  # top-p over the full distribution would keep three (0.626 < 0.7)
    full_p = torch.zeros(8)
    full_p[:3] = p[:3] / p[:3].sum()
    assert _far(freq, full_p)


def test_freq_penalty_distribution() -> None:
    """The penalty comes before the temperature: softmax((logits - penalty * counts) / T)
    (TransformerLens subtracts it after dividing by T)."""
    history = torch.tensor([[0, 0, 0, 1, 5, 7, 7]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 1]])  # a padding position is not counted
    counts = torch.tensor([3.0, 1, 0, 0, 0, 1, 0, 1])
    penalty, temperature = 0.4, 2.0
    batch = LOGITS.expand(N_SAMPLES, -1)
    gen = torch.Generator().manual_seed(0)
    drawn = sample_logits(
        batch,
        temperature=temperature,
        freq_penalty=penalty,
        tokens=history.expand(N_SAMPLES, -1),
        token_mask=mask.expand(N_SAMPLES, -1),
        generator=gen,
    )
    freq = torch.bincount(drawn, minlength=8).double() / N_SAMPLES
    _assert_distribution(freq, ((LOGITS - penalty * counts) / temperature).softmax(-1))
    assert _far(freq, (LOGITS / temperature - penalty * counts).softmax(-1))
    penalised = apply_freq_penalty(LOGITS[None], history, penalty, mask)
    torch.testing.assert_close(penalised[0], LOGITS - penalty * counts)
    # greedy applies the penalty too: token 0 (2.0 - 1.2) loses to token 1 (1.6 - 0.4)
    assert sample_logits(LOGITS[None], do_sample=False, freq_penalty=penalty, tokens=history,
                         token_mask=mask).tolist() == [1]  # fmt: skip


def test_sampling_seed_reproducible(model) -> None:
    prompt = _seqs((5,))[0][None]

    def sample(seed: int, **kwargs) -> torch.Tensor:
        return model.generate(
            prompt, N_NEW, stop_at_eos=False, seed=seed, verbose=False, temperature=1.5, **kwargs
        )

    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = sample(0)
    assert torch.equal(torch.rand(3), before)  # the global generator is left alone
    assert torch.equal(sample(0), a)
    assert not torch.equal(sample(1), a)
    assert torch.equal(sample(0, use_past_kv_cache=False), a)
    assert torch.equal(sample(0, top_k=5, top_p=0.9), sample(0, top_k=5, top_p=0.9))


def test_generate_samples_like_sample_logits(model) -> None:
    """generate's sampling is sample_logits on the model's last logits, drawn from one generator
    seeded once (a greedy loop by hand, through full forward passes, gives the same tokens)."""
    prompt = _seqs((5,))[0][None]
    kwargs = dict(top_k=6, top_p=0.8, temperature=1.3, freq_penalty=0.5)
    got = model.generate(prompt, N_NEW, stop_at_eos=False, seed=7, verbose=False, **kwargs)
    gen = torch.Generator().manual_seed(7)
    seq = prompt
    with torch.no_grad():
        for _ in range(N_NEW):
            logits = model(seq)[:, -1]
            new = sample_logits(logits, tokens=seq, generator=gen, **kwargs)
            seq = torch.cat([seq, new[:, None]], dim=1)
    assert torch.equal(got, seq)
    top1 = model.generate(prompt, N_NEW, stop_at_eos=False, seed=3, top_k=1, verbose=False)
    assert torch.equal(top1, _greedy(model, prompt))


# -- EOS -----------------------------------------------------------------------------------------------
def _expected_with_eos(
    free: torch.Tensor, prompt_len: int, eos: set[int], pad: int
) -> torch.Tensor:
    """What stopping at `eos` must give, from a run that ignored EOS: each row padded after its
    first EOS, the batch cut once every row has one."""
    rows, stops = [], []
    for row in free:
        new = row[prompt_len:].tolist()
        first = next((i for i, t in enumerate(new) if t in eos), None)
        stops.append(len(new) if first is None else first + 1)
        if first is not None:
            new = new[: first + 1] + [pad] * (len(new) - first - 1)
        rows.append(row[:prompt_len].tolist() + new)
    return torch.tensor(rows)[:, : prompt_len + max(stops)]


def test_stop_at_eos_int_and_list(model) -> None:
    tokens, mask = _left_pad(_seqs((4, 7)))
    width = tokens.shape[1]
    free = _greedy(model, tokens, attention_mask=mask)
    a, b = int(free[0, width + 2]), int(free[1, width + 4])
    for eos in (a, [a, b], [b, a]):
        eos_set = {eos} if isinstance(eos, int) else set(eos)
        pad = eos if isinstance(eos, int) else eos[0]
        got = _greedy(model, tokens, attention_mask=mask, stop_at_eos=True, eos_token_id=eos)
        assert torch.equal(got, _expected_with_eos(free, width, eos_set, pad))
        if isinstance(eos, list):  # both rows finish early, so the run stops early
            assert got.shape[1] < free.shape[1]
    # stop_at_eos=False ignores the EOS
    assert torch.equal(_greedy(model, tokens, attention_mask=mask, eos_token_id=a), free)


def test_stop_at_eos_matches_hf(tiny_model: TinyModel, model) -> None:
    tokens, mask = _left_pad(_seqs((4, 7)))
    free = _greedy(model, tokens, attention_mask=mask)
    eos = int(free[0, tokens.shape[1] + 3])
    got = _greedy(model, tokens, attention_mask=mask, stop_at_eos=True, eos_token_id=eos)
    with torch.no_grad():
        expected = tiny_model.hf_model.generate(
            tokens,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=N_NEW,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def text_model(tiny_gpt2_tok: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_gpt2_tok.path)


def test_str_output_is_cut_after_eos(text_model) -> None:
    prompts = ["The quick brown fox", "Hello"]
    tokens = text_model.generate(
        prompts, 10, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
    )
    width = tokens.shape[1] - 10
    eos = int(tokens[1, width + 1])  # the second row's second new token ends it
    texts = text_model.generate(prompts, 10, do_sample=False, eos_token_id=eos, verbose=False)
    assert isinstance(texts, list) and len(texts) == 2
    for row, text, prompt in zip(tokens, texts, prompts, strict=True):
        new = row[width:].tolist()
        end = new.index(eos) + 1 if eos in new else len(new)
        assert text == prompt + text_model.to_string(new[:end])
    assert texts[1] == prompts[1] + text_model.to_string(tokens[1, width : width + 2])
    single = text_model.generate(prompts[1], 10, do_sample=False, eos_token_id=eos, verbose=False)
    assert single == texts[1]


def test_stop_at_eos_uses_the_tokenizer_eos(text_model) -> None:
    eos = text_model.tokenizer.eos_token_id
    bias = torch.zeros(text_model.cfg.d_vocab)
    bias[eos] = 1e4

    def force_eos(logits, hook):
        return logits + bias

    out = text_model.generate(
        "Hello", 5, do_sample=False, verbose=False, return_type="tokens",
        fwd_hooks=[("unembed.hook_out", force_eos)],
    )  # fmt: skip
    assert out[0, -1].item() == eos and out.shape[1] == text_model.to_tokens("Hello").shape[1] + 1


# -- return types and streaming ---------------------------------------------------------------------
def test_return_types(text_model) -> None:
    prompt = "Hello there"
    text = text_model.generate(prompt, 5, do_sample=False, stop_at_eos=False, verbose=False)
    tokens = text_model.generate(
        prompt, 5, do_sample=False, stop_at_eos=False, verbose=False, return_type="tokens"
    )
    # the text leaves out the BOS that generate prepended (TransformerLens does too)
    assert text_model.cfg.default_prepend_bos and tokens[0, 0] == text_model.tokenizer.bos_token_id
    assert isinstance(text, str) and text == text_model.to_string(tokens[0, 1:])
    from_tokens = text_model.generate(
        tokens[0, :-5], 5, do_sample=False, stop_at_eos=False, verbose=False
    )
    assert torch.equal(from_tokens, tokens)  # "input" gives tokens for token input
    as_str = text_model.generate(
        tokens[:, :-5], 5, do_sample=False, stop_at_eos=False, verbose=False, return_type="str"
    )
    # token input is decoded whole: a BOS the caller passed is part of the input
    assert as_str == [text_model.to_string(tokens[0])]


def test_stream_yields_the_same_tokens(model) -> None:
    tokens, mask = _left_pad(_seqs((4, 7)))
    for kwargs in (dict(do_sample=False), dict(seed=3, top_k=10, temperature=1.2)):
        expected = model.generate(
            tokens, N_NEW, attention_mask=mask, stop_at_eos=False, verbose=False, **kwargs
        )
        steps = list(
            model.generate_stream(tokens, N_NEW, attention_mask=mask, stop_at_eos=False, **kwargs)
        )
        assert len(steps) == N_NEW
        assert torch.equal(torch.stack(steps, dim=1), expected[:, tokens.shape[1] :])


def test_stream_text_pieces(text_model) -> None:
    prompts = ["The quick brown fox", "Hello"]
    tokens = text_model.generate(
        prompts, 12, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
    )
    width = tokens.shape[1] - 12
    eos = int(tokens[1, width + 3])
    pieces = list(
        text_model.generate_stream(
            prompts, 12, do_sample=False, eos_token_id=eos, return_type="str"
        )
    )
    texts = text_model.generate(prompts, 12, do_sample=False, eos_token_id=eos, verbose=False)
    for i, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        assert prompt + "".join(step[i] for step in pieces) == text
    assert all(step[1] == "" for step in pieces[4:])  # nothing after the row's EOS
    streamed = text_model.generate_stream(prompts[0], 12, do_sample=False, stop_at_eos=False)
    assert torch.equal(torch.stack(list(streamed), dim=1), tokens[:1, width:])


def test_stream_text_waits_for_whole_characters(text_model) -> None:
    """Byte-level tokens of multi-byte characters: a piece stays empty until its character is
    complete, and no replacement character ever comes out."""
    ids = text_model.tokenizer("é€", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2  # single bytes
    step = iter(range(len(ids)))

    def force_next(logits, hook):  # steer step i to ids[i]
        bias = torch.zeros_like(logits)
        bias[:, -1, ids[next(step)]] = 1e4
        return logits + bias

    pieces = [
        piece[0]
        for piece in text_model.generate_stream(
            torch.tensor([[5]]), len(ids), do_sample=False, stop_at_eos=False, return_type="str",
            fwd_hooks=[("unembed.hook_out", force_next)],
        )
    ]  # fmt: skip
    assert "".join(pieces) == "é€" and "\ufffd" not in "".join(pieces)
    assert pieces.count("") >= 2  # waited for the second byte of each character
    # a stream ending inside a character flushes what it has in one more list
    step = iter(range(len(ids)))
    cut = list(
        text_model.generate_stream(
            torch.tensor([[5]]), 1, do_sample=False, stop_at_eos=False, return_type="str",
            fwd_hooks=[("unembed.hook_out", force_next)],
        )
    )  # fmt: skip
    assert cut == [[""], ["\ufffd"]]


# -- bad input --------------------------------------------------------------------------------------
def test_bad_input_errors(model, text_model) -> None:
    prompt = torch.zeros(1, 5, dtype=torch.long)
    for fn in (model.generate, model.generate_stream):  # the stream checks when called, too
        with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
            fn(prompt, -1)
        with pytest.raises(ValueError, match="exceeds the model's context"):
            fn(prompt, N_CTX - 4)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            fn(prompt, 3, eos_token_id=D_VOCAB)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            fn(prompt, 3, eos_token_id=[1, -1])
        with pytest.raises(ValueError, match="temperature must be > 0"):
            fn(prompt, 3, temperature=0.0)
        with pytest.raises(ValueError, match="top_k"):
            fn(prompt, 3, top_k=0)
        with pytest.raises(ValueError, match="top_p"):
            fn(prompt, 3, top_p=1.5)
        tokens, mask = _left_pad(_seqs((3, 5)))
        with pytest.raises(ValueError, match="left padding"):
            fn(tokens.flip(1), 3, attention_mask=mask.flip(1))
        with pytest.raises(ValueError, match="left padding"):
            text_model.generate(["a b c d", "a"], 3, padding_side="right", verbose=False)
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate(torch.zeros(1, N_CTX + 1, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="return_type"):
        model.generate(prompt, 1, return_type="logits")
    # greedy ignores the temperature, and 0 new tokens returns the prompt (this model has no
    # tokenizer, so no EOS id: stop_at_eos=True would be refused, as TransformerLens does)
    assert torch.equal(model.generate(prompt, 0, stop_at_eos=False, verbose=False), prompt)
    out = model.generate(
        prompt, 2, do_sample=False, temperature=0.0, stop_at_eos=False, verbose=False
    )
    assert out.shape == (1, 7)


def _nan_from_call(n: int):
    """A hook that writes NaN into the logits from its n-th call on (call 0 is the prompt)."""
    calls = []

    def hook(logits: torch.Tensor, hook: object) -> torch.Tensor:
        calls.append(1)
        return logits.fill_(float("nan")) if len(calls) > n else logits

    return hook


@pytest.mark.parametrize("do_sample", [False, True])
def test_nan_logits_raise_naming_the_step(tiny_llama: TinyModel, do_sample: bool) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_llama.path)  # any family
    prompt = torch.tensor([[3, 1, 4]])
    for stop_at_eos, eos in ((False, None), (True, 127)):  # with EOS the check shares its sync
        with pytest.raises(FloatingPointError, match=r"generation step 2: .*hook writes NaN"):
            model.generate(
                prompt, 5, do_sample=do_sample, stop_at_eos=stop_at_eos, eos_token_id=eos,
                seed=0, verbose=False, fwd_hooks=[("unembed.hook_out", _nan_from_call(2))],
            )  # fmt: skip
    stream = model.generate_stream(
        prompt, 5, do_sample=do_sample, stop_at_eos=False, seed=0,
        fwd_hooks=[("unembed.hook_out", _nan_from_call(1))],
    )  # fmt: skip
    assert next(stream).shape == (1,)  # step 0 was fine
    with pytest.raises(FloatingPointError, match="generation step 1"):
        next(stream)
    # nothing is left attached after the error
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_sample_logits_refuses_logits_without_a_distribution() -> None:
    good = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 3.0]])
    nan = good.clone()
    nan[1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"NaN logits, so no token .* row\(s\) \[1\] of 2"):
        sample_logits(nan, do_sample=False)
    with pytest.raises(FloatingPointError, match=r"row\(s\) \[1\]"):
        sample_logits(nan, do_sample=True)
    inf, all_masked = good.clone(), good.clone()
    inf[0, 2] = float("inf")
    all_masked[0] = float("-inf")
    for bad in (inf, all_masked):
        with pytest.raises(FloatingPointError, match=r"NaN or \+inf logits .* row\(s\) \[0\]"):
            sample_logits(bad, do_sample=True)
    # greedy takes a +inf logit as the clear winner; -inf alone is masking, not an error
    assert sample_logits(inf, do_sample=False).tolist() == [2, 2]
    masked = good.masked_fill(torch.tensor([[True, False, True], [False, False, False]]), -math.inf)
    assert sample_logits(masked, do_sample=True)[0].item() == 1
