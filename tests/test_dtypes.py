"""Every family in float32, bfloat16, float16 and float64, against transformers in the same dtype.

Half-precision parity is relative to what transformers itself achieves: on the same tiny random
checkpoint, lmscope in a dtype must be no further (root-mean-square over the logits) from
transformers' float32 logits than transformers in that dtype is, with 1.5x slack for rounding luck. float64 keeps lmscope's float32
tolerances. The tiny checkpoints are tests/_families.py's FAMILY_SPECS, built once per session.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from lmscope import HookedTransformer
from lmscope.generation import KVCache
from tests._families import family_params
from tests._tiny import TinyModel
from tests._unchecked import unchecked

HALF = [torch.bfloat16, torch.float16]
SLACK = 1.5
LOGIT_ATOL = 1e-5  # lmscope's float32 tolerance against transformers (tests/loading)
FLOAT32_HOOKS = ("linear_attn.hook_g", "linear_attn.hook_state")  # float32 in half precision
# Measured gaps of processed models, left failing on purpose (strict xfail: they report when
# fixed). fold_ln rounds `W * (1 + w)` to the model's dtype once, where transformers rounds `W` and
# the norm's output; the difference is small but the gated delta-net amplifies it at a few
# positions (per-position log-prob distance up to 0.115 in qwen3_5_moe bfloat16, where transformers
# has 0.029; 0.027 against 0.017 at one position of qwen3_5 float16): processed qwen3_5_moe
# bfloat16 0.0392 against a budget of 0.0264, qwen3_5 float16 0.0064 against 0.0060. The same
# models unprocessed are within budget (0.0209 / 0.0264 and 0.0050 / 0.0060).
PROCESSED_GAPS = {
    ("qwen3_5_moe", torch.bfloat16): "fold_ln's rounding amplified by the gated delta-net",
    ("qwen3_5", torch.float16): "fold_ln's rounding amplified by the gated delta-net",
}


def _tiny(name: str, request: pytest.FixtureRequest) -> TinyModel:
    """The session's tiny checkpoint of tests/_families.py's FAMILY_SPECS[name]."""
    return request.getfixturevalue("tiny_family")(name)


def _spec(name: str) -> partial[TinyModel]:
    return partial(_tiny, name)


# One checkpoint per family adapter, plus the variants whose features touch precision
# (soft-caps, q/k norms, local rotary bases, rope scaling, routers, ALiBi, partial rotary).
FAMILIES: dict[str, partial[TinyModel]] = {
    "gpt2": _spec("gpt2"),
    "neox": _spec("neox"),
    "llama": _spec("llama_gqa"),
    "mistral": _spec("mistral_mqa"),
    "gpt_neo": _spec("gpt_neo"),
    "gptj": _spec("gptj"),
    "codegen": _spec("codegen"),
    "opt": _spec("opt"),
    "bloom": _spec("bloom"),
    "bigcode_mqa": _spec("bigcode_mqa"),
    "llama3": _spec("llama3"),
    "mixtral": _spec("mixtral"),
    "qwen2": _spec("qwen2"),
    "qwen3": _spec("qwen3"),
    "qwen2_moe": _spec("qwen2_moe"),
    "qwen3_moe": _spec("qwen3_moe"),
    "gemma": _spec("gemma"),
    "gemma2": _spec("gemma2"),
    "gemma3": _spec("gemma3"),
    "phi": _spec("phi"),
    "phi3": _spec("phi3"),
    "olmo": _spec("olmo"),
    "olmo2": _spec("olmo2"),
    "olmoe": _spec("olmoe"),
    "stablelm": _spec("stablelm"),
    "llama_yarn": _spec("llama_yarn"),
    "phi3_longrope": _spec("phi3_longrope"),
    "stablelm_qk_norm": _spec("stablelm_parallel"),
    "glm": _spec("glm"),
    "glm4": _spec("glm4"),
    "glm4_moe": _spec("glm4_moe"),
    "smollm3": _spec("smollm3"),
    "ministral": _spec("ministral"),
    "helium": _spec("helium"),
    "seed_oss": _spec("seed_oss"),
    "arcee": _spec("arcee"),
    "ernie4_5": _spec("ernie4_5"),
    "exaone4": _spec("exaone4"),
    "olmo3": _spec("olmo3"),
    "granite": _spec("granite"),
    "granitemoe": _spec("granitemoe"),
    "granitemoeshared": _spec("granitemoeshared"),
    "cohere": _spec("cohere"),
    "cohere2": _spec("cohere2"),
    "starcoder2": _spec("starcoder2"),
    "nemotron": _spec("nemotron"),
    "persimmon": _spec("persimmon"),
    "gpt_oss": _spec("gpt_oss"),
    "deepseek_v2": _spec("deepseek_v2"),
    "deepseek_v3": _spec("deepseek_v3"),
    "falcon": _spec("falcon"),
    "falcon_7b": _spec("falcon_7b"),
    "mpt": _spec("mpt"),
    "phimoe": _spec("phimoe"),
    "llama4": _spec("llama4"),
    "qwen3_5": _spec("qwen3_5"),
    "qwen3_5_moe": _spec("qwen3_5_moe"),
    "qwen3_next": _spec("qwen3_next"),
}
# The params of every suite over FAMILIES, each marked with its FAMILY_SPECS name (--families).
FAMILY_PARAMS = family_params({key: get.args[0] for key, get in FAMILIES.items()})


@pytest.fixture(params=FAMILY_PARAMS)
def tiny(request: pytest.FixtureRequest) -> TinyModel:
    return FAMILIES[request.param](request)


_HF: dict[tuple[str, torch.dtype], PreTrainedModel] = {}


def _hf(tiny: TinyModel, dtype: torch.dtype) -> PreTrainedModel:
    """transformers' model loaded in `dtype` (eager attention, eager experts), as users load it."""
    key = (str(tiny.path), dtype)
    if key not in _HF:
        _HF[key] = AutoModelForCausalLM.from_pretrained(
            tiny.path, dtype=dtype, attn_implementation="eager", experts_implementation="eager"
        ).eval()
    return _HF[key]


def _distance(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Root-mean-square difference, in float64. (The largest difference is one rounding outlier
    among a few thousand logits, so it says little about a dtype's precision.)"""
    return (got.double() - expected.double()).pow(2).mean().sqrt().item()


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().log_softmax(-1)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@torch.no_grad()
def test_half_precision_is_as_close_to_float32_as_transformers(
    tiny: TinyModel, dtype: torch.dtype, tokens: torch.Tensor
) -> None:
    reference = tiny.hf_model(tokens).logits  # transformers, float32
    hf = _hf(tiny, dtype)(tokens).logits
    assert hf.dtype == dtype
    budget = SLACK * _distance(hf, reference)

    model = HookedTransformer.from_pretrained_no_processing(tiny.path, dtype=dtype)
    assert model.cfg.dtype == dtype
    assert {p.dtype for p in model.parameters()} == {dtype}
    fast = model(tokens)
    explicit, cache = model.run_with_cache(tokens)  # explicit attention, hooked norms
    assert fast.dtype == explicit.dtype == dtype
    dtypes = {name: t.dtype for name, t in cache.items() if t.is_floating_point()}
    # linear attention's log decay and recurrent state stay float32, as transformers keeps them
    assert {n for n, d in dtypes.items() if d != dtype} == {
        n for n in dtypes if n.endswith(FLOAT32_HOOKS)
    }
    assert {d for n, d in dtypes.items() if n.endswith(FLOAT32_HOOKS)} <= {torch.float32}
    distances = {"fast": _distance(fast, reference), "explicit": _distance(explicit, reference)}
    assert max(distances.values()) <= budget, (distances, budget)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@torch.no_grad()
def test_processed_half_precision_is_as_close_to_float32_as_transformers(
    tiny: TinyModel, dtype: torch.dtype, tokens: torch.Tensor, request: pytest.FixtureRequest
) -> None:
    """The processed model's log-probs (centring changes the logits by a constant per row)."""
    if (tiny.name, dtype) in PROCESSED_GAPS:
        reason = PROCESSED_GAPS[tiny.name, dtype]
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    reference = _log_probs(tiny.hf_model(tokens).logits)
    lp_budget = SLACK * _distance(_log_probs(_hf(tiny, dtype)(tokens).logits), reference)
    processed = HookedTransformer.from_pretrained(tiny.path, dtype=dtype)
    assert {p.dtype for p in processed.parameters()} == {dtype}
    lp_distance = _distance(_log_probs(processed(tokens)), reference)
    assert lp_distance <= lp_budget, (lp_distance, lp_budget)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_hooks_backward_and_cached_generation(
    tiny: TinyModel, dtype: torch.dtype, tokens: torch.Tensor
) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny.path, dtype=dtype)
    with torch.no_grad():
        clean = model(tokens)
        seen: list[torch.dtype] = []

        def ablate_head_0(z: torch.Tensor, hook: object) -> None:
            seen.append(z.dtype)
            z[:, :, 0] = 0.0

        z_hook = next(n for n in model.hook_dict if n.endswith("attn.hook_z"))  # or linear_attn
        ablated = model.run_with_hooks(tokens, fwd_hooks=[(z_hook, ablate_head_0)])
    assert seen == [dtype] and ablated.dtype == dtype
    assert (ablated - clean).abs().max() > 0

    norm = next(
        n for n in ("ln_final", "blocks.0.ln2") if f"{n}.hook_normalized" in model.hook_dict
    )
    grads: dict[str, torch.Tensor] = {}

    def keep(grad: torch.Tensor, hook: object) -> None:
        grads[hook.name] = grad

    with model.hooks(bwd_hooks=[(f"{norm}.hook_normalized", keep), ("hook_embed", keep)]):
        loss = model(tokens, return_type="loss")
        # the loss is scored in float32 for half-precision logits, as transformers does
        assert loss.dtype == (torch.float32 if dtype in HALF else dtype) and torch.isfinite(loss)
        loss.backward()
    assert {g.dtype for g in grads.values()} == {dtype} and len(grads) == 2
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads.values())
    params = [p for p in model.parameters() if p.grad is not None]
    assert params and all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in params)

    generated = model.generate(
        tokens[:, :5], max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False
    )  # with the KV cache
    with torch.no_grad():
        full = model(generated)  # each step's greedy choice, without the cache
    assert generated.shape == (2, 10)
    assert torch.equal(full[:, 4:-1].argmax(-1), generated[:, 5:])


@torch.no_grad()
def test_float64_matches_transformers(tiny: TinyModel, tokens: torch.Tensor) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny.path, dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    reference = tiny.hf_model(tokens).logits.double()
    hf64 = _hf(tiny, torch.float64)(tokens).logits
    fast = model(tokens)
    explicit, _ = model.run_with_cache(tokens)
    assert fast.dtype == torch.float64
    # where transformers' own float32 logits are further than the tolerance from its float64 ones
    # (Qwen3.5's gated RMSNorm of small readouts: 2.0e-05), that float32 rounding is the budget
    own = (hf64 - reference).abs().max().item()
    for got in (fast, explicit):
        torch.testing.assert_close(got, reference, atol=max(LOGIT_ATOL, SLACK * own), rtol=0)
        torch.testing.assert_close(got, hf64, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_to_dtype_after_loading_equals_loading_in_dtype(
    tiny: TinyModel, tokens: torch.Tensor
) -> None:
    dtype = torch.bfloat16
    loaded = HookedTransformer.from_pretrained_no_processing(tiny.path, dtype=dtype)
    cast = HookedTransformer.from_pretrained_no_processing(tiny.path).to(dtype)
    assert cast.cfg.dtype == dtype
    rotary = [m for name, m in cast.named_modules() if name.startswith("rotary")]
    assert all(m.inv_freq.dtype == torch.float32 for m in rotary)
    assert torch.equal(cast(tokens), loaded(tokens))

    kv = KVCache.init_cache(cast.cfg, batch_size=2)  # reads cfg.dtype
    assert next(e for e in kv.entries if hasattr(e, "k")).k.dtype == dtype  # not recurrent
    first = cast(tokens[:, :7], past_kv_cache=kv)
    rest = cast(tokens[:, 7:], past_kv_cache=kv)
    assert torch.equal(torch.cat([first, rest], dim=1).argmax(-1), loaded(tokens).argmax(-1))

    back = cast.float()
    assert back.cfg.dtype == torch.float32 and back(tokens).dtype == torch.float32


@torch.no_grad()
def test_residual_analysis_in_bfloat16(tiny_llama: TinyModel, tokens: torch.Tensor) -> None:
    """decompose_resid, accumulated_resid and logit_attrs run in bfloat16 and are as close to their
    float32 values as the bfloat16 logits are to theirs."""
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = HookedTransformer.from_pretrained(tiny_llama.path, dtype=dtype)
        logits, cache = model.run_with_cache(tokens)
        stack = cache.decompose_resid(apply_ln=True, pos_slice=-1)
        results[dtype] = {
            "logits": logits[:, -1],
            "decompose_resid": stack,
            "accumulated_resid": cache.accumulated_resid(apply_ln=True, pos_slice=-1),
            "logit_attrs": cache.logit_attrs(stack, tokens[:, -1], pos_slice=-1),
        }
    full, half = results[torch.float32], results[torch.bfloat16]

    def relative(name: str) -> float:
        return _distance(half[name], full[name]) / full[name].double().pow(2).mean().sqrt().item()

    assert {t.dtype for t in half.values()} == {torch.bfloat16}
    budget = SLACK * relative("logits")
    for name in ("decompose_resid", "accumulated_resid", "logit_attrs"):
        assert half[name].shape == full[name].shape
        assert relative(name) <= budget, (name, relative(name), budget)


@pytest.mark.parametrize(
    "dtype", ["int8", torch.int32, torch.bool, "bf16", "float8_e4m3fn", torch.float8_e4m3fn, 3]
)
def test_a_dtype_lmscope_cannot_run_is_refused_before_loading(dtype: object) -> None:
    # The name would be looked up on the hub if loading began.
    with (
        unchecked(),
        pytest.raises(ValueError, match="not one lmscope runs in; choose one of float32"),
    ):
        HookedTransformer.from_pretrained("no-such-org/no-such-model", dtype=dtype)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("bfloat16", torch.bfloat16), ("torch.float16", torch.float16), ("half", torch.float16)],
)
def test_dtype_names_are_accepted(tiny_gpt2: TinyModel, name: str, dtype: torch.dtype) -> None:
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path, dtype=name)
    assert model.cfg.dtype == dtype and model.W_E.dtype == dtype


@pytest.mark.slow
def test_smollm2_greedy_generation_in_bfloat16_matches_float32() -> None:
    """The issue's example, the embedded SmolLM2 (GGUF) in bfloat16: its greedy continuation equals
    float32's, as transformers' bfloat16 one does (" Paris.\n\nThe answer is:"). Unprocessed: the
    processed bfloat16 model departs at the 6th token, where float32's top two are 0.22 nats apart."""
    prompt = "The capital of France is"
    kwargs = dict(max_new_tokens=8, do_sample=False, verbose=False, return_type="tokens")
    half = HookedTransformer.from_pretrained_no_processing("smollm2-135m", dtype=torch.bfloat16)
    assert half.cfg.dtype == torch.bfloat16 and half.W_E.dtype == torch.bfloat16
    got = half.generate(prompt, **kwargs)
    del half
    full = HookedTransformer.from_pretrained_no_processing("smollm2-135m")
    expected = full.generate(prompt, **kwargs)
    assert torch.equal(got, expected), (full.to_string(got[0]), full.to_string(expected[0]))
