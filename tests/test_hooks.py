"""Hook points: which fire, with what shapes, how they edit, cache and back-propagate, and that
they are always cleaned up."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from lmscope import HookedTransformer, HookPoint
from lmscope.hooks import CacheHook, HookedRootModule, silenced
from lmscope.utils import Slice
from tests._tiny import TinyModel
from tests._unchecked import unchecked

FLAG_SETTERS = (
    "set_use_attn_result",
    "set_use_split_qkv_input",
    "set_use_attn_in",
    "set_use_hook_mlp_in",
)
FLAGGED = {
    "hook_result": "set_use_attn_result",
    "hook_q_input": "set_use_split_qkv_input",
    "hook_k_input": "set_use_split_qkv_input",
    "hook_v_input": "set_use_split_qkv_input",
    "hook_attn_in": "set_use_attn_in",
    "hook_mlp_in": "set_use_hook_mlp_in",
}


def _load(tiny: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


@pytest.fixture
def llama(tiny_llama: TinyModel) -> HookedTransformer:
    """Rotary, RMSNorm, gated MLP and GQA (4 query heads share 2 key/value heads)."""
    return _load(tiny_llama)


@pytest.fixture
def gpt2(tiny_gpt2: TinyModel) -> HookedTransformer:
    return _load(tiny_gpt2)


def _expected_shape(model: HookedTransformer, name: str, batch: int, pos: int) -> tuple:
    cfg = model.cfg
    dm, h, kv, dh = cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    leaf = name.rsplit(".", 1)[-1]
    residual = (batch, pos, dm)
    table = {
        "hook_embed": residual,
        "hook_pos_embed": residual,
        "hook_resid_pre": residual,
        "hook_resid_mid": residual,
        "hook_resid_post": residual,
        "hook_attn_out": residual,
        "hook_mlp_out": residual,
        "hook_mlp_in": residual,
        "hook_normalized": residual,
        "hook_scale": (batch, pos, 1),
        "hook_q": (batch, pos, h, dh),
        "hook_rot_q": (batch, pos, h, dh),
        "hook_z": (batch, pos, h, dh),
        "hook_k": (batch, pos, kv, dh),
        "hook_rot_k": (batch, pos, kv, dh),
        "hook_v": (batch, pos, kv, dh),
        "hook_attn_scores": (batch, h, pos, pos),
        "hook_pattern": (batch, h, pos, pos),
        "hook_result": (batch, pos, h, dm),
        "hook_attn_in": (batch, pos, h, dm),
        "hook_q_input": (batch, pos, h, dm),
        "hook_k_input": (batch, pos, kv, dm),
        "hook_v_input": (batch, pos, kv, dm),
        "hook_pre": (batch, pos, cfg.d_mlp),
        "hook_pre_linear": (batch, pos, cfg.d_mlp),
        "hook_mid": (batch, pos, cfg.d_mlp),
        "hook_post": (batch, pos, cfg.d_mlp),
    }
    if name == "unembed.hook_in":
        return residual
    if name == "unembed.hook_out":
        return (batch, pos, cfg.d_vocab_out)
    assert leaf in table, f"undocumented hook point {name}"
    return table[leaf]


def _record_all(model: HookedTransformer, tokens: torch.Tensor) -> dict[str, list[tuple]]:
    """Every enabled hook point -> the shape it saw at each call, in one forward pass."""
    shapes: dict[str, list[tuple]] = {}

    def record(x, hook):
        shapes.setdefault(hook.name, []).append(tuple(x.shape))

    enabled = [n for n in model.hook_dict if model._disabled_reason(n) is None]
    with torch.no_grad(), model.hooks(fwd_hooks=[(n, record) for n in enabled]):
        model(tokens)
    return shapes


def test_every_hook_fires_once_with_documented_shape(tiny_model: TinyModel, tokens) -> None:
    model = _load(tiny_model)
    shapes = _record_all(model, tokens)
    flagged = {n for n in model.hook_dict if n.rsplit(".", 1)[-1] in FLAGGED}
    assert set(shapes) == set(model.hook_dict) - flagged
    for name, seen in shapes.items():
        assert seen == [_expected_shape(model, name, *tokens.shape)], name
    rotary = model.cfg.positional_embedding_type == "rotary"
    assert ("hook_pos_embed" in model.hook_dict) is not rotary
    assert ("blocks.0.attn.hook_rot_q" in model.hook_dict) is rotary
    assert ("blocks.0.hook_resid_mid" in model.hook_dict) is not model.cfg.parallel_attn_mlp
    assert ("blocks.0.mlp.hook_pre_linear" in model.hook_dict) is model.cfg.gated_mlp
    assert f"blocks.{model.cfg.n_layers - 1}.hook_resid_post" in shapes


def test_flagged_hooks_fire_once_when_their_flags_are_on(tiny_model: TinyModel, tokens) -> None:
    model = _load(tiny_model)
    for setter in FLAG_SETTERS:
        getattr(model, setter)(True)
    shapes = _record_all(model, tokens)
    # use_split_qkv_input takes precedence over use_attn_in, as in TransformerLens
    assert set(shapes) == {n for n in model.hook_dict if not n.endswith("hook_attn_in")}
    cfg = model.cfg
    b, p = tokens.shape
    for name, seen in shapes.items():
        if ".ln1." in name:
            # ln1 normalises the query, key and value inputs separately (per head), so its
            # hooks fire three times, as TransformerLens's ln1 always does
            last = (1,) if name.endswith("hook_scale") else (cfg.d_model,)
            heads = (cfg.n_heads, cfg.n_key_value_heads, cfg.n_key_value_heads)
            assert seen == [(b, p, h, *last) for h in heads], name
        else:
            assert seen == [_expected_shape(model, name, b, p)], name


def test_attn_in_fires_when_only_use_attn_in_is_on(llama: HookedTransformer, tokens) -> None:
    llama.set_use_attn_in(True)
    shapes = _record_all(llama, tokens)
    assert shapes["blocks.1.hook_attn_in"] == [(2, 12, 4, 64)]
    assert "blocks.0.hook_q_input" not in shapes


@pytest.mark.parametrize(
    "name",
    [
        "blocks.0.attn.hook_result",
        "blocks.1.hook_q_input",
        "blocks.0.hook_k_input",
        "blocks.0.hook_v_input",
        "blocks.1.hook_attn_in",
        "blocks.0.hook_mlp_in",
    ],
)
def test_flagged_hook_with_flag_off_raises(llama: HookedTransformer, name: str) -> None:
    setter = FLAGGED[name.rsplit(".", 1)[-1]]
    message = re.escape(f"only fires after model.{setter}(True)")
    with pytest.raises(ValueError, match=message):
        llama.add_hook(name, lambda x, hook: None)
    with pytest.raises(ValueError, match=message):
        llama.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=[name])
    assert not any(hp.has_hooks() for hp in llama.hook_dict.values())
    getattr(llama, setter)(True)
    handles = llama.add_hook(name, lambda x, hook: None)
    assert len(handles) == 1 and handles[0].hook_point.name == name


@torch.no_grad()
def test_attn_result_sums_to_attn_out(llama: HookedTransformer, tokens) -> None:
    plain = llama(tokens)
    llama.set_use_attn_result(True)
    logits, cache = llama.run_with_cache(tokens)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    W_O, b_O = llama.W_O, llama.b_O
    for layer in range(llama.cfg.n_layers):
        result = cache["result", layer]
        assert result.shape == (2, 12, 4, 64)
        assert torch.equal(result.sum(dim=2) + b_O[layer], cache["attn_out", layer])
        z = cache["z", layer]
        for head in range(llama.cfg.n_heads):
            torch.testing.assert_close(
                result[:, :, head], z[:, :, head] @ W_O[layer, head], atol=1e-6, rtol=0
            )


@torch.no_grad()
def test_split_qkv_input_gives_each_head_its_own_input(llama: HookedTransformer, tokens) -> None:
    plain_logits, plain = llama.run_with_cache(tokens, names_filter=lambda n: "blocks.1" in n)
    llama.set_use_split_qkv_input(True)
    logits, cache = llama.run_with_cache(tokens, names_filter=lambda n: "blocks.1" in n)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=0)
    for key in ("q_input", "k_input", "v_input"):
        x = cache[f"blocks.1.hook_{key}"]
        assert torch.equal(x, plain["resid_pre", 1][:, :, None].expand_as(x))
    torch.testing.assert_close(cache["q", 1], plain["q", 1], atol=1e-5, rtol=0)

    def shift_head_2(x, hook):  # (a pure rescale would be undone by the norm)
        x[:, :, 2] += 1.0

    with llama.hooks(fwd_hooks=[("blocks.1.hook_q_input", shift_head_2)]):
        _, edited = llama.run_with_cache(tokens, names_filter="blocks.1.attn.hook_q")
    others = [0, 1, 3]
    torch.testing.assert_close(edited["q", 1][:, :, others], cache["q", 1][:, :, others])
    assert not torch.allclose(edited["q", 1][:, :, 2], cache["q", 1][:, :, 2], atol=1e-3)


@torch.no_grad()
def test_hook_mlp_in_is_the_mlp_input(tiny_model: TinyModel, tokens) -> None:
    model = _load(tiny_model)
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid" in n or "mlp_in" in n)
    source = "resid_pre" if model.cfg.parallel_attn_mlp else "resid_mid"
    assert torch.equal(cache["mlp_in", 0], cache[source, 0])
    # editing hook_mlp_in changes the MLP but not the residual that bypasses it
    mlp_in_zero = model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.hook_mlp_in", lambda x, hook: torch.zeros_like(x))]
    )
    assert (mlp_in_zero - model(tokens)).abs().max() > 1e-3


# -- ablation -------------------------------------------------------------------------------------
@torch.no_grad()
def test_zero_ablating_a_head_via_hook_z(llama: HookedTransformer, tokens) -> None:
    layer, head = 1, 2
    clean_logits, clean = llama.run_with_cache(tokens)

    def ablate(z, hook):
        z[:, :, head] = 0.0

    with llama.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", ablate)]):
        ablated_logits, ablated = llama.run_with_cache(tokens)

    z_name = f"blocks.{layer}.attn.hook_z"
    names = list(clean.keys())
    before = names[: names.index(z_name)]
    assert f"blocks.{layer}.attn.hook_pattern" in before
    assert "blocks.0.hook_resid_post" in before
    for name in before:
        assert torch.equal(clean[name], ablated[name]), name
    others = [h for h in range(llama.cfg.n_heads) if h != head]
    assert torch.equal(ablated[z_name][:, :, others], clean[z_name][:, :, others])
    assert torch.equal(ablated[z_name][:, :, head], torch.zeros_like(clean[z_name][:, :, head]))
    assert (ablated_logits - clean_logits).abs().max() > 1e-3

    # the same as removing the head's output weights (compared on the same attention path)
    fast_ablated = llama.run_with_hooks(tokens, fwd_hooks=[(z_name, ablate)])
    torch.testing.assert_close(fast_ablated, ablated_logits, atol=1e-5, rtol=0)
    llama.blocks[layer].attn.W_O[head] = 0.0
    torch.testing.assert_close(llama(tokens), fast_ablated, atol=1e-6, rtol=0)


@torch.no_grad()
def test_replacing_an_activation_with_a_returned_tensor(tiny_gpt2: TinyModel, tokens) -> None:
    model = HookedTransformer.from_pretrained(tiny_gpt2.path)  # ln_final is LNPre: LN(0) = 0
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits = model.run_with_hooks(tokens, fwd_hooks=[(last, lambda x, hook: torch.zeros_like(x))])
    assert torch.equal(logits, model.b_U.expand_as(logits))


# -- gradients ------------------------------------------------------------------------------------
GRAD_HOOKS = [
    "hook_embed",
    "blocks.0.attn.hook_z",
    "blocks.0.hook_resid_post",  # the same tensor as the next one: each must fire once
    "blocks.1.hook_resid_pre",
    "blocks.1.attn.hook_pattern",
    "blocks.1.attn.hook_rot_k",
    "blocks.0.mlp.hook_post",
    "blocks.1.ln2.hook_scale",
    "ln_final.hook_normalized",
]


def test_backward_hooks_receive_the_autograd_gradient(llama: HookedTransformer, tokens) -> None:
    stored: dict[str, torch.Tensor] = {}
    grads: dict[str, list[torch.Tensor]] = {}

    def keep(x, hook):
        x.retain_grad()  # autograd's own gradient of exactly this activation, for reference
        stored[hook.name] = x

    def keep_grad(g, hook):
        grads.setdefault(hook.name, []).append(g.clone())

    loss = llama.run_with_hooks(
        tokens,
        return_type="loss",
        fwd_hooks=[(n, keep) for n in GRAD_HOOKS],
        bwd_hooks=[(n, keep_grad) for n in GRAD_HOOKS],
    )
    # hooks are already detached, but backward hooks live on in this forward's graph
    assert not any(hp.has_hooks() for hp in llama.hook_dict.values())
    assert grads == {}
    loss.backward()
    assert set(grads) == set(GRAD_HOOKS)
    for name in GRAD_HOOKS:
        assert len(grads[name]) == 1, f"{name} fired {len(grads[name])} times"
        expected = stored[name].grad
        assert expected is not None and expected.abs().max() > 0, name
        assert torch.equal(grads[name][0], expected), name
    assert torch.equal(grads["blocks.0.hook_resid_post"][0], grads["blocks.1.hook_resid_pre"][0])


def test_backward_hooks_match_torch_autograd_grad(llama: HookedTransformer, tokens) -> None:
    """The same gradients as torch.autograd.grad computes on an unhooked forward pass."""
    names = ["blocks.0.attn.hook_v", "blocks.1.hook_mlp_out", "blocks.0.ln1.hook_normalized"]
    stored: dict[str, torch.Tensor] = {}
    loss = llama.run_with_hooks(
        tokens,
        return_type="loss",
        fwd_hooks=[(n, lambda x, hook: stored.__setitem__(hook.name, x)) for n in names],
    )
    reference = torch.autograd.grad(loss, [stored[n] for n in names])
    grads: dict[str, torch.Tensor] = {}
    loss = llama.run_with_hooks(
        tokens,
        return_type="loss",
        bwd_hooks=[(n, lambda g, hook: grads.__setitem__(hook.name, g)) for n in names],
    )
    loss.backward()
    for name, expected in zip(names, reference, strict=True):
        torch.testing.assert_close(grads[name], expected, atol=1e-7, rtol=1e-6, msg=name)


def test_backward_hook_returning_a_scaled_gradient_scales_upstream_grads(
    llama: HookedTransformer, tokens
) -> None:
    def grads() -> dict[str, torch.Tensor]:
        out = {n: p.grad.clone() for n, p in llama.named_parameters() if p.grad is not None}
        llama.zero_grad(set_to_none=True)
        return out

    llama(tokens, return_type="loss").backward()
    plain = grads()
    loss = llama.run_with_hooks(
        tokens, return_type="loss", bwd_hooks=[("blocks.1.hook_resid_pre", lambda g, hook: 2 * g)]
    )
    loss.backward()
    scaled = grads()
    assert set(plain) == set(scaled)
    for name, grad in plain.items():
        # block 0 and the (untied) embedding feed the output only through resid_pre of block 1
        upstream = name.startswith(("blocks.0.", "embed."))
        expected = 2 * grad if upstream else grad
        torch.testing.assert_close(scaled[name], expected, atol=1e-7, rtol=1e-6, msg=name)
        assert grad.abs().max() > 0, name


def test_cache_incl_bwd_stores_true_gradients(llama: HookedTransformer, tokens) -> None:
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_v", "blocks.1.mlp.hook_pre"]
    stored: dict[str, torch.Tensor] = {}
    loss = llama.run_with_hooks(
        tokens,
        return_type="loss",
        fwd_hooks=[(n, lambda x, hook: stored.__setitem__(hook.name, x)) for n in names],
    )
    reference = torch.autograd.grad(loss, [stored[n] for n in names])
    out, cache = llama.run_with_cache(tokens, return_type="loss", names_filter=names, incl_bwd=True)
    torch.testing.assert_close(out, loss.detach(), atol=0, rtol=0)
    assert set(cache.keys()) == set(names) | {n + "_grad" for n in names}
    for name, expected in zip(names, reference, strict=True):
        torch.testing.assert_close(cache[name + "_grad"], expected, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(cache[name], stored[name].detach(), atol=0, rtol=0)
        assert not cache[name].requires_grad
    # run_with_cache backpropagated into the parameters
    assert llama.blocks[0].attn.q_weight.grad is not None


def test_incl_bwd_needs_a_scalar_output(llama: HookedTransformer, tokens) -> None:
    with pytest.raises(ValueError, match="return_type='loss'"):
        llama.run_with_cache(tokens, incl_bwd=True)
    assert not any(hp.has_hooks() for hp in llama.hook_dict.values())


# -- cleanup ----------------------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


def _explode(x, hook):
    raise Boom(f"boom at {hook.name}")


def _no_hooks(model: HookedRootModule) -> bool:
    return not any(hp.has_hooks() for hp in model.hook_dict.values())


def test_hooks_are_removed_when_run_with_hooks_raises(llama: HookedTransformer, tokens) -> None:
    with pytest.raises(Boom, match="blocks.1.hook_resid_mid"):
        llama.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("blocks.0.hook_resid_pre", lambda x, hook: None),
                ("blocks.1.hook_resid_mid", _explode),
            ],
            bwd_hooks=[("blocks.0.attn.hook_z", lambda g, hook: None)],
        )
    assert _no_hooks(llama)


def test_hooks_are_removed_when_the_hooks_context_raises(llama: HookedTransformer, tokens) -> None:
    with pytest.raises(Boom):
        with llama.hooks(fwd_hooks=[(lambda n: n.endswith("hook_q"), _explode)]):
            assert llama.blocks[0].attn.hook_q.has_hooks()
            llama(tokens)
    assert _no_hooks(llama)
    with pytest.raises(Boom):
        with llama.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", _explode)]):
            llama.run_with_cache(tokens)
    assert _no_hooks(llama)


def test_hooks_context_keeps_hooks_with_reset_hooks_end_false(
    llama: HookedTransformer, tokens
) -> None:
    with llama.hooks(
        fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: None)], reset_hooks_end=False
    ):
        pass
    assert llama.blocks[0].hook_resid_pre.has_hooks()
    llama.reset_hooks()
    assert _no_hooks(llama)


# -- run_with_cache options -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "names_filter, expected",
    [
        ("blocks.1.attn.hook_k", {"blocks.1.attn.hook_k"}),
        (
            ["hook_embed", "blocks.0.ln1.hook_scale", "ln_final.hook_normalized"],
            {"hook_embed", "blocks.0.ln1.hook_scale", "ln_final.hook_normalized"},
        ),
        (
            lambda name: name.endswith("hook_resid_post"),
            {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"},
        ),
    ],
    ids=["str", "list", "callable"],
)
def test_run_with_cache_names_filter(
    llama: HookedTransformer, tokens, names_filter, expected: set
) -> None:
    logits, cache = llama.run_with_cache(tokens, names_filter=names_filter)
    assert set(cache.keys()) == expected
    torch.testing.assert_close(logits, llama(tokens), atol=1e-5, rtol=0)
    assert _no_hooks(llama)


def test_run_with_cache_stores_every_enabled_hook_by_default(
    llama: HookedTransformer, tokens
) -> None:
    _, cache = llama.run_with_cache(tokens)
    enabled = {n for n in llama.hook_dict if llama._disabled_reason(n) is None}
    assert set(cache.keys()) == enabled
    assert "blocks.0.attn.hook_result" not in cache


@torch.no_grad()
def test_run_with_cache_remove_batch_dim_and_device(llama: HookedTransformer) -> None:
    single = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    _, full = llama.run_with_cache(single)
    _, squeezed = llama.run_with_cache(single, remove_batch_dim=True, device="cpu")
    assert set(full.keys()) == set(squeezed.keys())
    for name in full.keys():
        assert squeezed[name].device.type == "cpu"
        assert torch.equal(squeezed[name], full[name][0]), name
    assert squeezed["pattern", 0].shape == (4, 8, 8)
    assert squeezed["resid_post", 1].shape == (8, 64)
    _, wide = llama.run_with_cache(
        single, names_filter="blocks.0.hook_resid_pre", cache_dtype=torch.float64
    )
    assert wide["resid_pre", 0].dtype == torch.float64
    assert torch.equal(wide["resid_pre", 0], full["resid_pre", 0].double())


# -- HookPoint and HookedRootModule verbs ---------------------------------------------------------
def test_prepend_orders_hooks(llama: HookedTransformer, tokens) -> None:
    order: list[str] = []
    llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: order.append("first"))
    llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: order.append("second"))
    llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: order.append("zeroth"), prepend=True)
    with torch.no_grad():
        llama(tokens)
    assert order == ["zeroth", "first", "second"]
    llama.reset_hooks()


def test_hooks_compose_in_order(llama: HookedTransformer, tokens) -> None:
    """A later hook sees what an earlier one returned."""
    seen = []
    with torch.no_grad():
        llama.run_with_hooks(
            tokens,
            fwd_hooks=[
                ("blocks.0.hook_resid_pre", lambda x, hook: torch.full_like(x, 2.0)),
                ("blocks.0.hook_resid_pre", lambda x, hook: seen.append(x.clone())),
            ],
        )
    assert torch.equal(seen[0], torch.full((2, 12, 64), 2.0))


def test_permanent_hooks_survive_reset_hooks(llama: HookedTransformer, tokens) -> None:
    calls = Counter()
    llama.add_perma_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.update(["perma"]))
    llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: calls.update(["temp"]))
    llama.add_hook(
        "blocks.0.hook_resid_post", lambda x, hook: calls.update(["perma2"]), is_permanent=True
    )
    llama.reset_hooks()
    with torch.no_grad():
        llama(tokens)
    assert calls == Counter({"perma": 1, "perma2": 1})
    with llama.hooks(
        fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.update(["ctx"]))]
    ):
        pass
    assert len(llama.blocks[0].hook_resid_pre._fwd) == 1  # the context removed only its own hook
    llama.reset_hooks(including_permanent=True)
    assert _no_hooks(llama)
    with torch.no_grad():
        llama(tokens)
    assert calls == Counter({"perma": 1, "perma2": 1})


def test_reset_hooks_direction(llama: HookedTransformer) -> None:
    llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None)
    llama.add_hook("blocks.0.hook_resid_pre", lambda g, hook: None, dir="bwd")
    llama.reset_hooks(direction="fwd")
    point = llama.blocks[0].hook_resid_pre
    assert (len(point._fwd), len(point._bwd)) == (0, 1)
    llama.reset_hooks(direction="bwd")
    assert _no_hooks(llama)
    with unchecked(), pytest.raises(ValueError, match="dir must be 'fwd' or 'bwd'"):
        llama.add_hook("blocks.0.hook_resid_pre", lambda x, hook: None, dir="sideways")


def test_handle_remove_detaches_one_hook(llama: HookedTransformer) -> None:
    [keep] = llama.add_hook("blocks.1.attn.hook_z", lambda x, hook: None)
    [drop] = llama.add_hook("blocks.1.attn.hook_z", lambda x, hook: None)
    drop.remove()
    drop.remove()  # idempotent
    assert llama.blocks[1].attn.hook_z._fwd == [keep]
    handles = llama.add_hook(lambda n: n.endswith("hook_v"), lambda x, hook: None)
    assert [h.hook_point.name for h in handles] == ["blocks.0.attn.hook_v", "blocks.1.attn.hook_v"]
    llama.reset_hooks()


def test_hook_point_name_and_layer(llama: HookedTransformer) -> None:
    for name, point in llama.hook_dict.items():
        assert point.name == name
        assert llama.get_submodule(name) is point
    assert llama.hook_dict["blocks.1.attn.hook_z"].layer() == 1
    assert llama.hook_dict["blocks.0.ln2.hook_scale"].layer() == 0
    with pytest.raises(ValueError, match="not inside a block"):
        llama.hook_dict["hook_embed"].layer()
    assert llama.hook_dict["blocks.1.hook_resid_post"] is llama.blocks[1].hook_resid_post


def test_unhooked_hook_point_is_the_identity_on_the_object() -> None:
    point = HookPoint()
    x = torch.randn(2, 3)
    assert point(x) is x
    handle = point.add_hook(lambda t, hook: t * 2)
    assert torch.equal(point(x), 2 * x)
    handle.remove()
    assert point(x) is x
    assert not point.has_hooks()


def test_cache_hooks_store_what_run_with_cache_stores(gpt2: HookedTransformer, tokens) -> None:
    """get_caching_hooks gives CacheHooks: hook points store plain ones without calling them;
    one with options (here pos_slice) is called; both may be passed as ordinary hooks."""
    name = "blocks.1.attn.hook_z"
    cache, fwd, _ = gpt2.get_caching_hooks(name)
    [(_, store)] = fwd
    assert isinstance(store, CacheHook) and store.plain
    sliced: dict[str, torch.Tensor] = {}
    last = CacheHook(sliced, "_last", positions=Slice.unwrap(-1))
    assert not last.plain
    gpt2.run_with_hooks(tokens, fwd_hooks=[(name, store), (name, last)])
    _, want = gpt2.run_with_cache(tokens, names_filter=name)
    assert torch.equal(cache[name], want[name]) and not cache[name].requires_grad
    assert torch.equal(sliced[name + "_last"], want[name][:, -1])


# -- run_with_cache() of every point: stored without hooks attached (hooks._StoreAll) -----------


def _cache_by_hooks(model: HookedTransformer, tokens: torch.Tensor) -> tuple:
    """run_with_cache of every enabled point through attached CacheHooks (a filter that passes
    every name takes the attaching path)."""
    return model.run_with_cache(tokens, names_filter=lambda name: True)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "autograd"])
def test_caching_every_point_equals_the_attached_hooks_path(
    llama: HookedTransformer, tokens, grad: bool
) -> None:
    with torch.set_grad_enabled(grad):
        want_logits, want = _cache_by_hooks(llama, tokens)
        logits, cache = llama.run_with_cache(tokens)
    assert torch.equal(logits, want_logits)
    assert list(cache.keys()) == list(want.keys())  # the same names, in the same order
    for name in want.keys():
        assert torch.equal(cache[name], want[name]), name
        assert not cache[name].requires_grad
    assert _no_hooks(llama) and not llama.is_caching and llama.context_level == 0


def test_caching_every_point_leaves_the_gradients_of_the_forward(
    llama: HookedTransformer, tokens
) -> None:
    grads = []
    for run in (lambda: llama(tokens, return_type="loss"),
                lambda: llama.run_with_cache(tokens, return_type="loss")[0]):  # fmt: skip
        llama.zero_grad(set_to_none=True)
        run().backward()
        grads.append({n: p.grad.clone() for n, p in llama.named_parameters()})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_caching_every_point_attaches_nothing_yet_the_points_fire(
    llama: HookedTransformer, tokens
) -> None:
    """Inside the run the points have no handles, yet they fire and report hooks (of the run's
    context level) in the running thread, and another model run inside it stores nothing."""
    other = HookedTransformer(llama.cfg)
    seen: dict[str, object] = {}

    def look(x, hook):
        point = llama.blocks[1].attn.hook_pattern
        seen["handles"] = len(point.fwd_hooks)
        seen["fires"], seen["only_stores"] = point.fires(), point.only_stores()
        seen["has"] = point.has_hooks(level=llama.context_level)
        seen["bwd"] = point.has_hooks(dir="bwd")
        seen["level"] = llama.context_level
        other(tokens[:, :3])  # another model's points are not this run's

    llama.add_hook("blocks.0.hook_resid_post", look)
    _, cache = llama.run_with_cache(tokens)
    assert seen == {
        "handles": 0, "fires": True, "only_stores": True, "has": True, "bwd": False, "level": 1
    }  # fmt: skip
    _, want = _cache_by_hooks(llama, tokens)
    llama.reset_hooks()
    assert list(cache.keys()) == list(want.keys())
    assert all(torch.equal(cache[n], want[n]) for n in want.keys())
    assert not llama.blocks[1].attn.hook_pattern.fires()  # after the run


def test_caching_every_point_follows_hook_flags_and_other_hooks(
    llama: HookedTransformer, tokens
) -> None:
    """A flag turned on adds its points; a hook already attached runs first and the cache holds
    what it returned, as with attached caching hooks."""
    llama.set_use_attn_result(True)
    llama.add_hook("blocks.0.hook_resid_post", lambda x, hook: x * 2, is_permanent=True)
    _, cache = llama.run_with_cache(tokens)
    _, want = _cache_by_hooks(llama, tokens)
    assert "blocks.0.attn.hook_result" in cache.keys()
    assert list(cache.keys()) == list(want.keys())
    assert all(torch.equal(cache[n], want[n]) for n in want.keys())
    llama.reset_hooks(including_permanent=True)
    llama.set_use_attn_result(False)
    _, cache = llama.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in cache.keys()


def test_caching_every_point_skips_silenced_points_and_ends_on_errors(
    llama: HookedTransformer, tokens
) -> None:
    from lmscope import hooks

    quiet = [llama.blocks[0].hook_resid_post, llama.blocks[0].ln1.hook_scale]
    with silenced(quiet):
        _, cache = llama.run_with_cache(tokens)
    assert {"blocks.0.hook_resid_post", "blocks.0.ln1.hook_scale"}.isdisjoint(cache.keys())
    assert "blocks.1.hook_resid_post" in cache.keys()

    def explode(x, hook):
        raise RuntimeError("boom")

    llama.add_hook("blocks.1.hook_resid_pre", explode)
    with pytest.raises(RuntimeError, match="boom"):
        llama.run_with_cache(tokens)
    llama.reset_hooks()
    assert hooks._ALL is None and not llama.is_caching and llama.context_level == 0
    assert not llama.blocks[1].hook_resid_post.fires()
