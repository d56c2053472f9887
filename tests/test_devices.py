"""A model spread over several devices (`device_map`, `n_devices`), tested without a GPU.

Three parts: the placement policies as pure functions of device lists and free memory; an
end-to-end load with every part mapped to "cpu" (the same numbers as an unsplit load, and no
moving machinery on one device); and a split onto the "meta" device, which holds no data but
makes any operation mixing it with CPU tensors fail, so every tensor that crosses a block
boundary (residual stream, mask, ALiBi bias, rotary tables, KV-cache entries, loss targets) must
have been moved, for every family adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_dtypes import FAMILIES, FAMILY_PARAMS

import lmscope.devices as devices
import lmscope.loading as loading
from lmscope import HookedTransformer
from lmscope.devices import (
    DeviceRequest,
    auto_plan,
    check_device,
    explicit_plan,
    place,
    split_blocks,
    unit_names,
)
from lmscope.generation import KVCache
from tests._tiny import TinyModel
from tests._unchecked import unchecked

CPU, META = torch.device("cpu"), torch.device("meta")
GIB = 2**30


def cuda(i: int) -> torch.device:
    return torch.device("cuda", i)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the machine has two CUDA devices (for validation only: nothing runs there)."""
    real = devices.device_count
    monkeypatch.setattr(devices, "device_count", lambda kind: 2 if kind == "cuda" else real(kind))


def test_n_devices_splits_blocks_evenly_like_transformerlens() -> None:
    plan = split_blocks(5, [cuda(0), cuda(1)])  # ceil(5 / 2) = 3 blocks per device
    assert [plan[f"blocks.{i}"] for i in range(5)] == [cuda(0)] * 3 + [cuda(1)] * 2
    assert (plan["embed"], plan["ln_final"], plan["unembed"]) == (cuda(0), cuda(1), cuda(1))
    assert list(plan) == unit_names(5)
    plan = split_blocks(2, [cuda(0), cuda(1), cuda(2)])  # more devices than blocks
    assert [plan["blocks.0"], plan["blocks.1"], plan["unembed"]] == [cuda(0), cuda(1), cuda(1)]


def test_auto_fills_devices_in_order_then_spills_to_cpu() -> None:
    sizes = {"embed": 2 * GIB, "blocks.0": GIB, "blocks.1": GIB, "blocks.2": GIB,
             "ln_final": 0, "unembed": 2 * GIB}  # fmt: skip
    free = {cuda(0): 4 * GIB, cuda(1): 2 * GIB}  # usable: 3.6 and 1.8 GiB
    plan = auto_plan(sizes, free)
    assert [plan[n] for n in sizes] == [cuda(0), cuda(0), cuda(1), CPU, CPU, CPU]
    # Never back to an earlier device: ln_final (0 bytes) would fit cuda:1, but stays on the CPU
    # after blocks.2; with all free memory usable, the parts shift one device earlier.
    plan = auto_plan(sizes, free, usable=1.0)
    assert [plan[n] for n in sizes] == [cuda(0), cuda(0), cuda(0), cuda(1), cuda(1), CPU]
    assert set(auto_plan(sizes, {}).values()) == {CPU}  # no accelerator: all on the CPU


def test_explicit_plan_checks_every_part() -> None:
    full = {"embed": "cpu", "blocks.0": "cpu", "blocks.1": 0, "unembed": torch.device("cpu")}
    with (
        unchecked(),
        pytest.raises(ValueError, match=r"device_map\['blocks.1'\]: cuda:0 is not on this"),
    ):
        explicit_plan(full, 2)
    full["blocks.1"] = "cpu"
    assert explicit_plan(full, 2)["ln_final"] == CPU  # defaults to the unembedding's device
    with unchecked(), pytest.raises(ValueError, match=r"does not place blocks\.2, blocks\.3"):
        explicit_plan(full, 4)
    with (
        unchecked(),
        pytest.raises(ValueError, match=r"'model.layers.1' \(lmscope calls it 'blocks.1'\)"),
    ):
        explicit_plan({**full, "model.layers.1": "cpu"}, 2)
    with unchecked(), pytest.raises(TypeError, match="device_map must be 'auto' or a dict"):
        explicit_plan(["cpu"], 2)  # type: ignore[arg-type]


def test_devices_that_are_not_there_are_refused(two_gpus: None) -> None:
    assert check_device("cuda") == cuda(0) and check_device(1) == cuda(1)
    with pytest.raises(ValueError, match=r"cuda:3 is not on this machine, which has 2 cuda"):
        check_device("cuda:3")
    with pytest.raises(ValueError, match="'meta' tensors hold no data"):
        check_device("meta")
    with pytest.raises(ValueError, match="'gpu0' is not a device"):
        check_device("gpu0")
    with pytest.raises(ValueError, match=r"n_devices=3 needs 3 cuda devices from index 0, but"):
        DeviceRequest.check(None, 3, None, torch.float32)
    assert DeviceRequest.check(None, 2, None, torch.float32).devices == (cuda(0), cuda(1))
    with pytest.raises(ValueError, match="n_devices must be an int >= 1"):
        DeviceRequest.check(None, 0, None, torch.float32)
    with pytest.raises(ValueError, match="device_map or n_devices, not both"):
        DeviceRequest.check("auto", 2, None, torch.float32)
    with pytest.raises(ValueError, match="device_map or device, not both"):
        DeviceRequest.check("auto", None, "cpu", torch.float32)
    with pytest.raises(ValueError, match="device_map must be 'auto' or a dict, got 'balanced'"):
        DeviceRequest.check("balanced", None, None, torch.float32)


def test_cpu_only_machine_refuses_cuda_before_opening_the_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tiny_llama: TinyModel
) -> None:
    monkeypatch.setattr(devices, "device_count", lambda kind: 1 if kind == "cpu" else 0)

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint was opened before the devices were checked")

    with monkeypatch.context() as patch:
        patch.setattr(loading, "open_checkpoint", no_work)
        with pytest.raises(ValueError, match=r"n_devices=2 needs 2 cuda devices .* has 0"):
            HookedTransformer.from_pretrained(tiny_llama.path, n_devices=2)
        with pytest.raises(ValueError, match=r"device_map\['blocks.0'\]: cuda:0 is not on"):
            HookedTransformer.from_pretrained(tiny_llama.path, device_map={"blocks.0": "cuda:0"})
        with pytest.raises(ValueError, match=r"device: cuda:3 is not on this machine"):
            HookedTransformer.from_pretrained(tiny_llama.path, device="cuda:3")
    monkeypatch.setattr(loading, "load_weights", no_work)  # the config is read, no weight
    with pytest.raises(ValueError, match=r"does not place blocks\.1"):
        HookedTransformer.from_pretrained(tiny_llama.path, device_map={"embed": "cpu",
                                          "blocks.0": "cpu", "unembed": "cpu"})  # fmt: skip


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_neox", "tiny_llama"])
def test_device_map_on_cpu_equals_plain_load(
    fixture: str, request: pytest.FixtureRequest, tokens: torch.Tensor
) -> None:
    path = request.getfixturevalue(fixture).path
    plain = HookedTransformer.from_pretrained(path)
    n = plain.cfg.n_layers
    explicit = {"embed": "cpu", **{f"blocks.{i}": "cpu" for i in range(n)}, "unembed": "cpu"}
    for device_map in (explicit, "auto"):  # "auto" on a CPU-only machine: all on the CPU
        model = HookedTransformer.from_pretrained(path, device_map=device_map)
        assert model._placement is None  # one device: the forward moves nothing
        assert set(model.device_map.values()) == {CPU}
        torch.testing.assert_close(model(tokens), plain(tokens), rtol=0, atol=0)
    _, cache = model.run_with_cache(tokens, device="cpu")
    _, expected = plain.run_with_cache(tokens)
    assert cache.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(cache[name], expected[name], rtol=0, atol=0)
    got = model.generate(
        tokens[:1, :5], max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False
    )
    want = plain.generate(
        tokens[:1, :5], max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False
    )
    assert torch.equal(got, want)


def _meta_split(model: HookedTransformer) -> dict[str, torch.device]:
    """Put the second half of the blocks, ln_final and the unembedding on "meta" (bypassing the
    check that refuses meta for users); returns the plan."""
    n = model.cfg.n_layers
    plan = {name: CPU for name in unit_names(n)}
    for name in [f"blocks.{i}" for i in range(n // 2, n)] + ["ln_final", "unembed"]:
        plan[name] = META
    place(model, plan)
    return plan


def _expected_device(hook_name: str, plan: dict[str, torch.device]) -> torch.device:
    if hook_name.startswith("blocks."):
        return plan[".".join(hook_name.split(".")[:2])]
    embed = hook_name in ("hook_embed", "hook_pos_embed") or hook_name.startswith("ln_embed.")
    return plan["embed" if embed else "unembed"]


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_every_tensor_crossing_a_block_boundary_is_moved(
    family: str,
    request: pytest.FixtureRequest,
    tokens: torch.Tensor,
) -> None:
    # Routing tokens to experts needs nonzero(), which meta tensors only shape-infer with this
    # switch (assuming every expert gets tokens). Grad mode stays on: `linear` would otherwise
    # read each bias's values to skip zero biases.
    patch = torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    model = HookedTransformer.from_pretrained_no_processing(FAMILIES[family](request).path)
    plan = _meta_split(model)
    n, vocab = model.cfg.n_layers, model.cfg.d_vocab
    batch = tokens[:2, :12]
    mask = torch.ones_like(batch)
    mask[0, :3] = 0  # left padding: a real mask (and ALiBi bias) crosses over
    logits, cache = model.run_with_cache(batch, attention_mask=mask)
    assert logits.device == META and logits.shape == (2, 12, vocab)
    wrong = {k: v.device for k, v in cache.items() if v.device != _expected_device(k, plan)}
    assert not wrong and len(cache) > 10 * n
    assert model(batch, return_type="loss", attention_mask=mask).device == META
    resid = model(batch, stop_at_layer=1)
    assert resid.device == CPU  # block 0 is on the CPU
    assert model(resid, start_at_layer=1).device == META
    for kv in (
        KVCache.init_cache(model.cfg, CPU, batch_size=2),  # entries move on first use
        KVCache(model.cfg, 2, 16, CPU, model.cfg.dtype, model._placement.blocks),
    ):
        model(batch, attention_mask=mask, past_kv_cache=kv)
        assert model(batch[:, :1], past_kv_cache=kv).shape == (2, 1, vocab)
        assert [_entry_device(e) for e in kv.entries] == [plan[f"blocks.{i}"] for i in range(n)]


def _entry_device(entry: Any) -> torch.device:
    """Where a KV cache entry keeps its tensors: the keys, or a recurrent layer's saved state."""
    if hasattr(entry, "k"):
        return entry.k.device
    (conv, state), *_ = entry.saved.values()
    assert conv.device == state.device
    return state.device


def test_moves_keep_or_gather_the_placement(tiny_llama: TinyModel) -> None:
    model = HookedTransformer.from_pretrained(tiny_llama.path)
    plan = {name: META if name == "blocks.0" else CPU for name in unit_names(model.cfg.n_layers)}
    place(model, plan)
    model.to(torch.float64)  # a dtype move keeps every part where it is
    assert model.device_map == plan and model.cfg.dtype == torch.float64
    assert model.W_Q.device == META and model.W_Q.shape[0] == model.cfg.n_layers  # on block 0's
    model.to(META)  # a device move gathers everything there
    assert set(model.device_map.values()) == {META} and model._placement is None
    with pytest.raises(ValueError, match=r"device_map\['blocks.1'\]: 'gpu' is not a device"):
        model.set_device_map({"embed": "cpu", "blocks.0": "cpu", "blocks.1": "gpu",
                              "unembed": "cpu"})  # fmt: skip


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_5_moe"])
def test_hybrid_model_split_across_devices_keeps_its_recurrent_cache(
    family: str, tiny_family: Callable[[str], TinyModel]
) -> None:
    """Qwen3.5's linear-attention layers keep a recurrent state, not keys and values, in the KV
    cache: a cached forward over a split model moves what each entry holds to its layer's
    device (a state written before the model was split follows it)."""
    from tests._tiny import D_VOCAB

    model = HookedTransformer.from_pretrained_no_processing(tiny_family(family).path)
    assert model.cfg.layer_types == ["linear", "global", "linear"]
    tokens = torch.randint(3, D_VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    before = KVCache.init_cache(model.cfg, CPU, batch_size=2)
    model(tokens, past_kv_cache=before)  # written unsplit: every entry on the CPU
    patch = torch.fx.experimental._config.patch(meta_nonzero_assume_all_nonzero=True)
    with patch:  # routing tokens to experts on meta (see the test above)
        plan = _meta_split(model)  # block 0 (linear) on the CPU; blocks 1, 2 on meta
        for kv in (
            before,
            KVCache.init_cache(model.cfg, CPU, batch_size=2),
            KVCache(model.cfg, 2, 16, CPU, model.cfg.dtype, model._placement.blocks),
        ):
            if kv is not before:
                model(tokens, past_kv_cache=kv)
            assert model(tokens[:, :1], past_kv_cache=kv).device == META
            conv, state = kv.entries[2].read(10)
            assert conv.device == state.device == plan["blocks.2"] == META
            assert kv.entries[0].read(10)[1].device == CPU
            assert kv.entries[1].k.device == META
