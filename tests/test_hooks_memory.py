"""Long loops do not leak: a patching sweep of 1,000 run_with_hooks calls keeps the live heap flat
(no hooks, autograd graphs or cached tensors left behind), also when a hook raises mid-sweep, and a
cache can be kept in a smaller dtype or offloaded as it is made."""

from __future__ import annotations

import ctypes
import gc
import platform

import pytest
import torch

from lmscope import HookedTransformer, HookedTransformerConfig

BATCH, POS = 4, 32  # every activation of the model below is >= 32 KiB


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost",
    )]  # fmt: skip


def _live_heap_mib() -> float:
    """Bytes malloc has handed out and not had back (heap and mmapped blocks, every arena).

    RSS is the wrong measure here: `lmscope.memory.tune_malloc` keeps up to 1 GiB of freed heap
    for reuse, so after a full test session a fragmented heap can grow RSS by megabytes with
    nothing leaked (CI saw 14.8 MiB over 900 runs that leak nothing)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


_HAS_MALLINFO2 = platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        d_model=64, n_layers=2, n_ctx=POS, d_vocab=256, n_heads=4, d_head=16, d_mlp=256,
        act_fn="gelu_new", normalization_type="LN", seed=0,
    )  # fmt: skip
    return HookedTransformer(cfg)


@pytest.mark.slow  # a thousand runs (~5-15 s on 2 cores)
@pytest.mark.skipif(not _HAS_MALLINFO2, reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_thousand_patching_runs_keep_the_heap_flat(model: HookedTransformer) -> None:
    gen = torch.Generator().manual_seed(0)
    tokens, other = torch.randint(0, 256, (2, BATCH, POS), generator=gen)
    _, clean = model.run_with_cache(other, names_filter=lambda n: n.endswith("hook_z"))
    results: list[float] = []

    def patch_head(z: torch.Tensor, hook: object, head: int = 0) -> torch.Tensor:
        z[:, :, head] = clean[hook.name][:, :, head]  # type: ignore[attr-defined]
        return z

    def sweep(start: int, stop: int) -> None:
        for i in range(start, stop):
            name = f"blocks.{i % 2}.attn.hook_z"
            # grad mode on, as in a notebook: any graph kept alive would show up on the heap
            logits = model.run_with_hooks(tokens, fwd_hooks=[(name, patch_head)])
            results.append(logits[0, -1, 0].item())
            if i % 97 == 0:
                with pytest.raises(RuntimeError, match="boom"):
                    model.run_with_hooks(tokens, fwd_hooks=[(name, _raise)])

    sweep(0, 100)  # warm-up: allocator pools and caches reach their steady size
    gc.collect()
    before = _live_heap_mib()
    sweep(100, 1000)
    gc.collect()
    grown = _live_heap_mib() - before
    assert len(results) == 1000 and len(set(results)) == 2  # two layers, two distinct patches
    assert not any(hp.has_hooks() for hp in model.hook_dict.values())
    # One leaked activation per run would be >= 32 KiB * 900 = 28 MiB.
    assert grown < 4, f"the live heap grew {grown:.1f} MiB over 900 run_with_hooks calls"


def _raise(x: torch.Tensor, hook: object) -> None:
    raise RuntimeError("boom")


def test_cache_in_a_smaller_dtype_and_on_a_device(model: HookedTransformer) -> None:
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    logits, full = model.run_with_cache(tokens)
    _, half = model.run_with_cache(tokens, cache_dtype=torch.bfloat16, device="cpu")
    assert set(half.keys()) == set(full.keys())
    for name, act in full.items():
        assert half[name].dtype == torch.bfloat16 and half[name].device.type == "cpu"
        torch.testing.assert_close(half[name].float(), act, atol=0.05, rtol=0.01)
    assert sum(t.nbytes for t in half.values()) * 2 == sum(t.nbytes for t in full.values())
    torch.testing.assert_close(logits, model(tokens))  # the run is unchanged
