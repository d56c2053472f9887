"""HookPoint / HookedRootModule as TransformerLens 3.9 defines them: argument order and defaults of
add_hook / has_hooks / remove_hooks / reset_hooks, `hooks()` context levels, contexts (`ctx`),
check_hooks_to_add, caching helpers, and a ValueError naming the allowed values for a bad
direction (before any hook is removed)."""

from __future__ import annotations

import pytest
import torch

from lmscope import HookedTransformer, HookPoint
from lmscope.hooks import HookHandle, HookNotEnabledError
from tests._tiny import TinyModel
from tests._unchecked import unchecked

RESID = "blocks.0.hook_resid_pre"


@pytest.fixture
def model(tiny_llama: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_llama.path)


def _noop(x: torch.Tensor, hook: HookPoint) -> None:
    return None


def test_hook_point_add_hook_takes_tl_positional_order(model: HookedTransformer) -> None:
    """add_hook(hook, dir, is_permanent, level, prepend): prepend runs first, level is kept."""
    point = model.hook_dict[RESID]
    order: list[str] = []
    point.add_hook(lambda x, hook: order.append("a"), "fwd", False, 3, False)
    point.add_hook(lambda x, hook: order.append("b"), "fwd", True, None, True)
    model(torch.tensor([[1, 2, 3]]))
    assert order == ["b", "a"]
    assert [(h.is_permanent, h.context_level) for h in point.fwd_hooks] == [
        (True, None),
        (False, 3),
    ]
    assert all(isinstance(h, HookHandle) and callable(h.user_hook) for h in point.fwd_hooks)
    model.reset_hooks(including_permanent=True)
    assert point.fwd_hooks == []


def test_has_hooks_filters_by_dir_permanence_and_level(model: HookedTransformer) -> None:
    point = model.hook_dict[RESID]
    assert not point.has_hooks()
    point.add_hook(_noop, dir="bwd", is_permanent=True)
    assert point.has_hooks() and point.has_hooks(dir="bwd")
    assert not point.has_hooks(dir="fwd")
    assert not point.has_hooks(including_permanent=False)
    point.add_hook(_noop, dir="fwd", level=2)
    assert point.has_hooks(dir="fwd", level=2)
    assert not point.has_hooks(dir="fwd", level=1)
    assert point.has_hooks(including_permanent=False, level=2)


def test_remove_hooks_defaults_and_levels(model: HookedTransformer) -> None:
    """remove_hooks() defaults to dir='fwd', keeps permanent hooks, and with `level` removes only
    that level's hooks; including_permanent=True removes every hook of the direction."""
    point = model.hook_dict[RESID]
    point.add_hook(_noop, level=1)
    point.add_hook(_noop, level=2)
    point.add_hook(_noop, is_permanent=True)
    point.add_hook(_noop, dir="bwd")
    point.remove_hooks(level=2)
    assert [h.context_level for h in point.fwd_hooks] == [1, None]
    point.remove_hooks()
    assert [h.is_permanent for h in point.fwd_hooks] == [True]
    assert len(point.bwd_hooks) == 1  # dir defaults to "fwd"
    point.remove_hooks("both", including_permanent=True)
    assert not point.has_hooks()


def test_context_levels_nest_and_each_exit_removes_its_level(model: HookedTransformer) -> None:
    point = model.hook_dict[RESID]
    model.add_perma_hook(RESID, _noop)
    assert model.context_level == 0
    with model.hooks(fwd_hooks=[(RESID, _noop)]):
        assert model.context_level == 1
        # a hook added by hand at the current level belongs to the context, as in TransformerLens
        model.add_hook(RESID, _noop, level=model.context_level)
        with model.hooks(fwd_hooks=[(RESID, _noop)]):
            assert model.context_level == 2
            assert [h.context_level for h in point.fwd_hooks] == [None, 1, 1, 2]
        assert [h.context_level for h in point.fwd_hooks] == [None, 1, 1]
    assert model.context_level == 0
    assert [(h.is_permanent, h.context_level) for h in point.fwd_hooks] == [(True, None)]


def test_reset_hooks_signature_and_level(model: HookedTransformer) -> None:
    """reset_hooks(clear_contexts, direction, including_permanent, level), positionally."""
    point = model.hook_dict[RESID]
    point.ctx["seen"] = 1
    point.add_hook(_noop, level=1)
    point.add_hook(_noop, dir="bwd", level=2)
    model.reset_hooks(False, "bwd", False, 1)  # level 1 has no backward hook: nothing goes
    assert (len(point.fwd_hooks), len(point.bwd_hooks), point.ctx) == (1, 1, {"seen": 1})
    model.reset_hooks(False, "both", False, 1)
    assert (len(point.fwd_hooks), len(point.bwd_hooks)) == (0, 1)
    model.reset_hooks()
    assert not point.has_hooks() and point.ctx == {}


@pytest.mark.parametrize("bad", ["BOTH", "forward", "", None])
def test_a_bad_direction_is_a_value_error_that_removes_nothing(
    model: HookedTransformer, bad: object
) -> None:
    point = model.hook_dict[RESID]
    point.add_hook(_noop)
    point.add_hook(_noop, dir="bwd")
    calls = [
        lambda: model.reset_hooks(direction=bad),
        lambda: model.remove_all_hook_fns(direction=bad),
        lambda: point.remove_hooks(dir=bad),
        lambda: point.has_hooks(dir=bad),
        lambda: point.add_hook(_noop, dir=bad),
        lambda: model.add_hook(RESID, _noop, dir=bad),
        lambda: model.list_hooks(dir=bad),
    ]
    for call in calls:
        with unchecked(), pytest.raises(ValueError, match=r"must be 'fwd' or 'bwd'.*got"):
            call()
    assert (len(point.fwd_hooks), len(point.bwd_hooks)) == (1, 1)


def test_hook_points_mod_dict_and_hook_dict(model: HookedTransformer) -> None:
    points = model.hook_points()
    assert points == list(model.hook_dict.values())
    assert all(isinstance(p, HookPoint) and model.hook_dict[p.name] is p for p in points)
    assert model.mod_dict["blocks.0.attn"] is model.blocks[0].attn
    assert set(model.hook_dict) <= set(model.mod_dict)
    assert len(points) == sum(isinstance(m, HookPoint) for m in model.modules())


def test_check_hooks_to_add_refuses_flag_gated_points(model: HookedTransformer) -> None:
    """TransformerLens asserts; the error here is both an AssertionError and a ValueError."""
    with pytest.raises(HookNotEnabledError, match="set_use_attn_result") as err:
        model.add_hook("blocks.0.attn.hook_result", _noop)
    assert isinstance(err.value, AssertionError) and isinstance(err.value, ValueError)
    # a filter is checked point by point, before anything is attached
    with pytest.raises(AssertionError):
        model.add_hook(lambda name: name.endswith(("hook_z", "hook_result")), _noop)
    assert not any(p.has_hooks() for p in model.hook_points())
    model.set_use_attn_result(True)
    assert len(model.add_hook(lambda name: name.endswith("hook_result"), _noop)) == 2


def test_check_hooks_to_add_is_the_override_point(model: HookedTransformer) -> None:
    seen: list[tuple] = []

    class Checked(HookedTransformer):
        def check_hooks_to_add(self, hook_point, hook_point_name, hook, dir="fwd",
                               is_permanent=False, prepend=False):  # fmt: skip
            seen.append((hook_point.name, hook_point_name, dir, is_permanent, prepend))

    model.__class__ = Checked
    model.add_hook(RESID, _noop, "bwd", True, None, True)
    model.check_and_add_hook(model.hook_dict["hook_embed"], "hook_embed", _noop)
    assert seen == [
        (RESID, RESID, "bwd", True, True),
        ("hook_embed", "hook_embed", "fwd", False, False),
    ]


def test_contexts_are_cleared_as_tl_clears_them(model: HookedTransformer) -> None:
    def count(x: torch.Tensor, hook: HookPoint) -> None:
        hook.ctx["calls"] = hook.ctx.get("calls", 0) + 1

    tokens = torch.tensor([[1, 2, 3]])
    model.run_with_hooks(tokens, fwd_hooks=[(RESID, count)])
    model.run_with_hooks(tokens, fwd_hooks=[(RESID, count)])
    assert model.hook_dict[RESID].ctx == {"calls": 2}  # clear_contexts defaults to False
    model.run_with_hooks(tokens, fwd_hooks=[(RESID, count)], clear_contexts=True)
    assert model.hook_dict[RESID].ctx == {}
    model.hook_dict[RESID].ctx["x"] = 1
    model.clear_contexts()
    assert model.hook_dict[RESID].ctx == {}


def test_run_with_cache_pos_slice(model: HookedTransformer) -> None:
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    _, full = model.run_with_cache(tokens)
    _, last = model.run_with_cache(tokens, pos_slice=-1)
    _, some = model.run_with_cache(tokens, pos_slice=(1, 3))
    for name in ("blocks.0.attn.hook_k", "blocks.0.attn.hook_z", "blocks.0.hook_resid_post"):
        pos_dim = full[name].ndim - (3 if "attn.hook" in name else 2)
        assert torch.equal(last[name], full[name].select(pos_dim, -1))
        assert torch.equal(some[name], full[name].narrow(pos_dim, 1, 2))
    # scores and patterns: the query (destination) position
    pattern = "blocks.1.attn.hook_pattern"
    assert torch.equal(last[pattern], full[pattern][:, :, -1])


def test_add_caching_hooks_and_list_hooks(model: HookedTransformer) -> None:
    cache = model.add_caching_hooks(["hook_embed", RESID])
    assert model.is_caching
    assert set(model.list_hooks()) == {"hook_embed", RESID}
    assert model.list_hooks(dir="bwd") == {}
    tokens = torch.tensor([[1, 2, 3]])
    model(tokens)
    _, reference = model.run_with_cache(tokens, names_filter=["hook_embed", RESID])
    assert set(cache) == {"hook_embed", RESID}
    assert torch.equal(cache[RESID], reference[RESID])
    model.reset_hooks()
    assert not model.is_caching and model.list_hooks() == {}
    with unchecked(), pytest.raises(ValueError, match="names_filter must be"):
        model.run_with_cache(tokens, names_filter=3)
