"""Compiled hooked runs (lmscope.compiled): equal to the eager run, and eager with one warning naming
the reason where a hook or an input cannot be compiled.

torch.compile runs with the "eager" backend (Dynamo's tracing, which decides whether the hooks are
captured) and, where hooks edit activations, "aot_eager" (plus AOTAutograd's functionalisation of
in-place edits, what Inductor compiles from). Inductor itself takes ~20 s cold on this CPU for a
one-layer model; benchmarks/hook_overhead.py and benchmarks/gpu_hooks.py run it.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.compiled import CompileFallbackWarning, compile_kwargs
from tests._tiny import TinyModel

DYNAMO = {"backend": "eager"}
AOT = {"backend": "aot_eager"}


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)


@pytest.fixture(scope="module")
def llama(tiny_llama: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_llama.path)


def _unique_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _assert_caches_close(got, want) -> None:
    assert sorted(got.keys()) == sorted(want.keys())
    for name in want.keys():
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("fixture", ["gpt2", "llama"])
def test_compiled_cache_of_every_activation_equals_eager_and_hf(
    request: pytest.FixtureRequest, fixture: str, tokens: torch.Tensor
) -> None:
    model: HookedTransformer = request.getfixturevalue(fixture)
    hf = request.getfixturevalue(f"tiny_{fixture}").hf_model
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        logits, cache = model.run_with_cache(tokens)
        compiled_logits, compiled = model.run_with_cache(tokens, compile=DYNAMO)
        graphs = _unique_graphs()
        again, _ = model.run_with_cache(tokens, compile=DYNAMO)
        hf_logits = hf(tokens).logits
    assert _unique_graphs() == graphs  # the second call replays the compiled graph
    assert len(compiled.keys()) == len(cache.keys()) >= 17 * model.cfg.n_layers
    _assert_caches_close(compiled, cache)
    torch.testing.assert_close(compiled_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled_logits, hf_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(again, compiled_logits)


def test_hooks_that_edit_are_traced_into_the_graph(
    gpt2: HookedTransformer, tokens: torch.Tensor
) -> None:
    """In-place edits, returned replacements and a norm scale edit act in the compiled graph as
    they do eagerly, next to caching hooks (which store what follows the edits). (run_with_hooks
    compiles the same way: the patching sweeps' test runs it.)"""

    def ablate_head_1(z: torch.Tensor, hook) -> None:
        z[:, :, 1] = 0.0

    def halve(pattern: torch.Tensor, hook) -> torch.Tensor:
        return pattern * 0.5

    def double(scale: torch.Tensor, hook) -> None:
        scale.mul_(2.0)

    hooks = [
        ("blocks.0.attn.hook_z", ablate_head_1),
        ("blocks.1.attn.hook_pattern", halve),
        ("blocks.1.ln2.hook_scale", double),
    ]
    names = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.1.hook_resid_post"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with gpt2.hooks(fwd_hooks=hooks):
            logits, cache = gpt2.run_with_cache(tokens, names_filter=names)
            compiled_logits, compiled = gpt2.run_with_cache(tokens, names_filter=names, compile=AOT)
    assert torch.equal(compiled["blocks.0.attn.hook_z"][:, :, 1], torch.zeros(2, 12, 16))
    _assert_caches_close(compiled, cache)
    torch.testing.assert_close(compiled_logits, logits, atol=1e-5, rtol=1e-5)
    assert (logits - gpt2(tokens)).abs().max() > 1e-2  # the hooks changed the output


def test_an_untraceable_hook_runs_eagerly_with_a_warning_naming_it(
    gpt2: HookedTransformer, tokens: torch.Tensor
) -> None:
    calls: list[str] = []

    def log_name(x: torch.Tensor, hook) -> None:
        print(hook.name, end="")  # torch.compile cannot trace print
        calls.append(hook.name)

    hooks = [("blocks.0.hook_resid_post", log_name)]
    for attempt in range(2):  # the second call does not trace again, and warns again
        calls.clear()
        with pytest.warns(CompileFallbackWarning, match=r"ran eagerly: .*print.* in log_name"):
            out = gpt2.run_with_hooks(tokens, fwd_hooks=hooks, compile=DYNAMO)
        assert calls == ["blocks.0.hook_resid_post"], attempt
        torch.testing.assert_close(out, gpt2(tokens), atol=0, rtol=0)


def test_what_a_graph_cannot_take_runs_eagerly(
    gpt2: HookedTransformer, tokens: torch.Tensor
) -> None:
    """Backward hooks (incl_bwd) and padding run eagerly, with their reason, and give the eager
    results."""
    with pytest.warns(CompileFallbackWarning, match="backward hook"):
        loss, cache = gpt2.run_with_cache(
            tokens, return_type="loss", incl_bwd=True, names_filter="blocks.1.hook_resid_pre",
            compile=DYNAMO,
        )  # fmt: skip
    _, eager = gpt2.run_with_cache(
        tokens, return_type="loss", incl_bwd=True, names_filter="blocks.1.hook_resid_pre"
    )
    _assert_caches_close(cache, eager)
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0
    with pytest.warns(CompileFallbackWarning, match="padding"):
        out = gpt2.run_with_hooks(tokens, attention_mask=mask, compile=DYNAMO)
    torch.testing.assert_close(out, gpt2(tokens, attention_mask=mask), atol=0, rtol=0)


def test_cache_options_apply_to_the_graphs_outputs(
    gpt2: HookedTransformer, tokens: torch.Tensor
) -> None:
    options = dict(names_filter=lambda n: "resid" in n, pos_slice=-1, cache_dtype=torch.float16)
    with torch.no_grad():
        _, eager = gpt2.run_with_cache(tokens[:1], remove_batch_dim=True, **options)
        _, compiled = gpt2.run_with_cache(
            tokens[:1], remove_batch_dim=True, compile=DYNAMO, **options
        )
    assert compiled["blocks.0.hook_resid_pre"].shape == (64,)
    assert compiled["blocks.0.hook_resid_pre"].dtype == torch.float16
    _assert_caches_close(compiled, eager)


def test_compile_argument_forms() -> None:
    assert compile_kwargs(True) == {"fullgraph": True, "dynamic": False}
    assert compile_kwargs("reduce-overhead")["mode"] == "reduce-overhead"
    assert compile_kwargs({"backend": "eager"})["backend"] == "eager"
    with pytest.raises(TypeError, match="compile must be True, a torch.compile mode name"):
        compile_kwargs(3)


def test_with_cuda_graphs_the_cache_is_one_copy_out_of_the_graph(
    gpt2: HookedTransformer, tokens: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compile="reduce-overhead" (CUDA graphs, whose next replay reuses their memory): the graph
    gathers the cached values into one flat tensor, copied once; the cache is views of it.
    Checked on the CPU by taking the CUDA-graph path with Dynamo's eager backend."""
    import lmscope.compiled as compiled_module

    monkeypatch.setattr(compiled_module, "_uses_cudagraphs", lambda options: True)
    names = lambda name: "resid" in name or "pattern" in name  # noqa: E731
    with torch.no_grad():
        logits, cache = gpt2.run_with_cache(tokens, names_filter=names)
        got, graphed = gpt2.run_with_cache(tokens, names_filter=names, compile=DYNAMO)
    _assert_caches_close(graphed, cache)
    torch.testing.assert_close(got, logits, atol=1e-5, rtol=1e-5)
    storages = {t.untyped_storage().data_ptr() for t in graphed.values()}
    assert len(storages) == 1


def test_a_model_compiled_in_place_is_traced_without_breaks_by_a_cache_of_every_point(
    tiny_gpt2: TinyModel,
) -> None:
    """run_with_cache() of every point stores without hooks (hooks._StoreAll); torch.compile of
    the model itself must not trace that store (it breaks the graph at the thread check): its
    hook points see `is_compiling()` first and leave it, as with attached caching hooks."""
    model = HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 6), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with torch.no_grad():
        want = model(tokens)
        model.compile(backend="eager")
        for _ in range(2):
            logits, _ = model.run_with_cache(tokens)
            assert torch.equal(logits, want)
    assert not torch._dynamo.utils.counters["graph_break"]
    torch._dynamo.reset()
