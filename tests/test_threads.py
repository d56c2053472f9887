"""Hooked runs from several threads on one model: each run sees exactly its own hooks.

Hooks added by `run_with_hooks`, `run_with_cache`, `generate(fwd_hooks=...)` and the `hooks()`
context fire only in the thread that added them; hooks added with `add_hook` fire everywhere.
Every result of a concurrent run is compared bit for bit with the same call run alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from lmscope import HookedTransformer
from lmscope.hooks import CacheHook, silenced
from tests._tiny import D_VOCAB, TinyModel

N_ITER = 25
CACHE_FILTERS = (
    lambda name: name.endswith("hook_pattern"),  # switches attention to the explicit path
    lambda name: "resid" in name,
    lambda name: name.endswith(("hook_scale", "hook_normalized")),  # the unfused norm path
)


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """One torch thread per Python thread: with several Python threads on few cores, torch's
    spinning intra-op workers would make the runs slow (not wrong)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama(tiny_llama: TinyModel) -> HookedTransformer:
    """Rotary, RMSNorm, gated MLP and GQA."""
    return HookedTransformer.from_pretrained_no_processing(tiny_llama.path)


def _tokens(i: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + i)
    return torch.randint(0, D_VOCAB, (2, 10), generator=gen)


def _steer(model: HookedTransformer, i: int, calls: list) -> torch.Tensor:
    """run_with_hooks with hooks that depend on i: a residual shift and an in-place head edit on
    the attention pattern (which also makes this thread's attention take the explicit path)."""

    def shift(x, hook):
        calls.append((threading.get_ident(), i, hook.name))
        return x + 0.05 * (i + 1)

    def drop_head(pattern, hook):
        calls.append((threading.get_ident(), i, hook.name))
        pattern[:, i % model.cfg.n_heads] = 0.0

    hooks = [("blocks.0.hook_resid_post", shift), ("blocks.1.attn.hook_pattern", drop_head)]
    with torch.no_grad():
        return model.run_with_hooks(_tokens(i), fwd_hooks=hooks)


def _cache(model: HookedTransformer, i: int) -> dict[str, torch.Tensor]:
    """run_with_cache with a filter that depends on i; every third one also back-propagates."""
    names_filter = CACHE_FILTERS[i % len(CACHE_FILTERS)]
    if i % 3 == 0:
        loss, cache = model.run_with_cache(
            _tokens(i), names_filter=names_filter, incl_bwd=True, return_type="loss"
        )
        return {"loss": loss.detach(), **cache.cache_dict}
    with torch.no_grad():
        logits, cache = model.run_with_cache(_tokens(i), names_filter=names_filter)
    return {"logits": logits, **cache.cache_dict}


def _plain(model: HookedTransformer, i: int) -> torch.Tensor:
    with torch.no_grad():
        return model(_tokens(i))


def _generate(model: HookedTransformer, i: int) -> torch.Tensor:
    """Greedy generation steered by a `fwd_hooks` hook (odd i) or plain (even i)."""

    def push(x, hook):
        x[:, :, i % 8] += 3.0

    hooks = [("blocks.1.hook_resid_post", push)] if i % 2 else []
    return model.generate(
        _tokens(i)[:1, :6], 3, do_sample=False, stop_at_eos=False, verbose=False, fwd_hooks=hooks
    )


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    return torch.equal(got, want)


def _run_concurrently(workers: dict[str, Callable[[int], Any]]) -> dict[str, list]:
    """Run each worker over range(N_ITER) in its own thread, all started together."""
    results: dict[str, list] = {name: [] for name in workers}
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def loop(name: str, work: Callable[[int], Any]) -> None:
        try:
            start.wait()
            for i in range(N_ITER):
                results[name].append(work(i))
        except BaseException as err:  # reported below, with the thread's traceback
            errors.append(err)

    threads = [threading.Thread(target=loop, args=item) for item in workers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_concurrent_hooked_runs_each_see_only_their_own_hooks(llama: HookedTransformer) -> None:
    workers = {
        "steer": lambda i: _steer(llama, i, []),
        "cache": lambda i: _cache(llama, i),
        "plain": lambda i: _plain(llama, i),
        "generate": lambda i: _generate(llama, i),
    }
    reference = {name: [work(i) for i in range(N_ITER)] for name, work in workers.items()}
    assert not _same(reference["steer"][0], reference["plain"][0])  # the hooks change the output
    calls: list = []
    workers["steer"] = lambda i: _steer(llama, i, calls)
    results = _run_concurrently(workers)
    wrong = {
        name: sum(not _same(g, w) for g, w in zip(results[name], reference[name], strict=True))
        for name in workers
    }
    assert wrong == dict.fromkeys(workers, 0)
    # each steering hook ran once per run of its own thread, and nowhere else
    assert len({ident for ident, _, _ in calls}) == 1
    assert sorted((i, name) for _, i, name in calls) == sorted(
        (i, name)
        for i in range(N_ITER)
        for name in ("blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern")
    )
    assert not any(hp.has_hooks() for hp in llama.hook_dict.values())
    assert all(not hp._fwd and not hp._bwd for hp in llama.hook_dict.values())


def _cache_all(model: HookedTransformer, i: int) -> dict[str, torch.Tensor]:
    """run_with_cache() of every point: one thread at a time stores without attaching hooks
    (`hooks._StoreAll`), the others attach caching hooks meanwhile."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(_tokens(i))
    return {"logits": logits, **cache.cache_dict}


def test_concurrent_runs_caching_every_point_store_only_their_own(
    llama: HookedTransformer,
) -> None:
    workers = {
        "all_a": lambda i: _cache_all(llama, i),
        "all_b": lambda i: _cache_all(llama, i + 50),
        "steer": lambda i: _steer(llama, i, []),
        "cache": lambda i: _cache(llama, i),
        "plain": lambda i: _plain(llama, i),
    }
    reference = {name: [work(i) for i in range(N_ITER)] for name, work in workers.items()}
    results = _run_concurrently(workers)
    wrong = {
        name: sum(not _same(g, w) for g, w in zip(results[name], reference[name], strict=True))
        for name in workers
    }
    assert wrong == dict.fromkeys(workers, 0)
    assert not any(hp.has_hooks() for hp in llama.hook_dict.values())
    assert all(not hp._fwd and not hp._bwd for hp in llama.hook_dict.values())


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a new thread and return its result (re-raising its error)."""
    out: list = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as err:
            out.append(("err", err))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


def test_add_hook_is_global_and_context_hooks_are_scoped(llama: HookedTransformer) -> None:
    fired: list[int] = []
    tokens = _tokens(0)

    def record(x, hook):
        fired.append(threading.get_ident())

    [handle] = llama.add_hook("hook_embed", record)
    with torch.no_grad():
        llama(tokens)
        other = _in_thread(lambda: (llama(tokens), threading.get_ident()))[1]
    assert fired == [threading.get_ident(), other]  # a plain add_hook fires in every thread
    handle.remove()

    fired.clear()
    with llama.hooks(fwd_hooks=[("hook_embed", record)]), torch.no_grad():
        assert llama.hook_embed.has_hooks()
        assert not _in_thread(llama.hook_embed.has_hooks)
        _in_thread(lambda: llama(tokens))
        llama(tokens)
    assert fired == [threading.get_ident()]  # the context's hook fired in its own thread only

    # hooks kept after the block (reset_hooks_end=False) become global, as add_hook's
    fired.clear()
    with llama.hooks(fwd_hooks=[("hook_embed", record)], reset_hooks_end=False):
        pass
    with torch.no_grad():
        _in_thread(lambda: llama(tokens))
    assert len(fired) == 1 and fired[0] != threading.get_ident()
    llama.reset_hooks()
    assert not llama.hook_embed._fwd


def test_reset_hooks_leaves_another_threads_running_hooks(llama: HookedTransformer) -> None:
    entered, reset_done = threading.Event(), threading.Event()
    fired: list[str] = []
    tokens = _tokens(1)

    def run() -> torch.Tensor:
        with llama.hooks(fwd_hooks=[("hook_embed", lambda x, hook: fired.append("ctx"))]):
            entered.set()
            reset_done.wait(timeout=30)
            with torch.no_grad():
                return llama(tokens)

    thread = threading.Thread(target=run)
    llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: fired.append("global"))
    thread.start()
    entered.wait(timeout=30)
    llama.reset_hooks()  # removes this thread's and the global hooks, not the running context's
    assert not llama.blocks[0].hook_resid_pre._fwd
    reset_done.set()
    thread.join()
    assert fired == ["ctx"]
    assert not llama.hook_embed._fwd  # the context removed its own hook on exit


def test_silenced_points_are_silent_in_the_silencing_thread_only(
    llama: HookedTransformer,
) -> None:
    point = llama.hook_dict["blocks.0.hook_resid_pre"]
    fired: list[int] = []
    [handle] = llama.add_hook(point.name, lambda x, hook: fired.append(threading.get_ident()))
    x = torch.zeros(2)
    with silenced([point]):
        point(x)
        assert not point.has_hooks()
        other = _in_thread(lambda: (point(x), threading.get_ident())[1])
    point(x)
    handle.remove()
    assert fired == [other, threading.get_ident()]


def test_concurrent_adds_and_removes_lose_nothing(llama: HookedTransformer) -> None:
    point = llama.hook_dict["hook_embed"]
    n_threads, n_hooks = 4, 150
    added, counted = threading.Barrier(n_threads), threading.Barrier(n_threads)

    def churn() -> None:
        handles = [point.add_hook(lambda x, hook: None) for _ in range(n_hooks)]
        added.wait(timeout=30)
        assert len(point._fwd) == n_threads * n_hooks
        counted.wait(timeout=30)
        for handle in handles:
            handle.remove()

    _run_concurrently({f"t{k}": lambda i: churn() if i == 0 else None for k in range(n_threads)})
    assert point._fwd == []


def test_fires_and_only_caches_follow_each_hooks_thread(llama: HookedTransformer) -> None:
    """The flags a hook point works out when its hooks change (`fires`, `has_hooks`,
    `only_caches`) say what its handles say, for one thread's hooks, global ones and a mix."""
    point = llama.hook_dict["blocks.0.hook_resid_pre"]

    def check(here: bool, there: bool, caches_here: bool, caches_there: bool, stores: bool) -> None:
        assert (point.fires(), point.has_hooks(), point.only_caches()) == (here, here, caches_here)
        assert point.only_stores() == stores  # no hook or one plain CacheHook: nothing can edit
        got = _in_thread(lambda: (point.fires(), point.has_hooks(), point.only_caches()))
        assert got == (there, there, caches_there)

    check(False, False, True, True, True)
    [scoped] = llama.add_hook(point.name, CacheHook({}), thread_scoped=True)
    check(True, False, True, True, True)
    [dead] = _in_thread(
        lambda: llama.add_hook(point.name, lambda x, hook: None, thread_scoped=True)
    )
    check(
        True, False, True, True, False
    )  # a mix of owners: the other thread's hook fires nowhere now
    [glob] = llama.add_hook(point.name, lambda x, hook: None)
    check(True, True, False, False, False)
    glob.remove()
    scoped.remove()
    check(False, False, True, True, False)
    dead.remove()
    [grad] = llama.add_hook(point.name, CacheHook({}), dir="bwd")
    check(True, True, False, False, False)  # a backward hook sees gradients
    grad.remove()
    assert point._who is None and point._store is None


def test_caching_hooks_kept_after_the_run_store_in_every_thread(llama: HookedTransformer) -> None:
    """run_with_cache(reset_hooks_end=False) leaves its hooks global: another thread's forward
    stores too (the point's dict-store flag follows the handles' new owner)."""
    tokens = _tokens(2)
    with torch.no_grad():
        _, cache = llama.run_with_cache(
            tokens, names_filter="hook_embed", reset_hooks_end=False, return_cache_object=False
        )
        cache.clear()
        _in_thread(lambda: llama(tokens))
    llama.reset_hooks()
    assert list(cache) == ["hook_embed"]
