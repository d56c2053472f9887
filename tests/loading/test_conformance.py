"""The family conformance suite: one set of checks against transformers (eager attention), run on
every tiny checkpoint of tests/_families.py's FAMILY_SPECS (as HF's `ModelTesterMixin` runs its
common tests on every model).

Each test takes a family name; `spec.skip` names the checks that genuinely do not apply to a
family, with the reason (reported as a pytest skip). A check that depends on a feature the
family lacks (post-norms, experts, grouped-query attention) skips itself, naming what is missing.

To add a family: add its `FamilySpec` to `FAMILY_SPECS` in tests/_families.py (see the module
docstring there); nothing here changes. Its special behaviour (a router, a rope variant, a fold
at load) gets its own test in tests/loading/test_families_<group>.py through the `tiny_family`
fixture.

Tolerances are the suite's: logits, hidden states, loss and cached decoding to 1e-5 in float32,
the processed model's log-probabilities to 1e-4 (folding and centring reorder float sums). A
recurrent family's cached decoding is held to 1e-5 or 1.5 x transformers' own cached-vs-uncached
gap, whichever is larger (tests/_tiny.py's `recurrent_cached_atol` says why).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

import lmscope.loading
from lmscope import HookedTransformer
from lmscope.generation import KVCache
from tests._families import CHECKS, FAMILY_SPECS, FamilySpec, family_params
from tests._tiny import D_VOCAB, TinyModel, recurrent_cached_atol

LOGIT_ATOL = 1e-5
LOGPROB_ATOL = 1e-4
NEW_TOKENS = 6
PAD_ID = 7


def _applies(check: str, spec: FamilySpec) -> None:
    assert check in CHECKS, check
    if check in spec.skip:
        pytest.skip(spec.skip[check])


@pytest.fixture(params=family_params(list(FAMILY_SPECS)))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def spec(family: str) -> FamilySpec:
    return FAMILY_SPECS[family]


@pytest.fixture
def tiny(family: str, tiny_family: Callable[[str], TinyModel]) -> TinyModel:
    return tiny_family(family)


@pytest.fixture
def model(tiny: TinyModel) -> HookedTransformer:
    """lmscope's model of the checkpoint, weights as stored (fresh per test: tests edit it)."""
    return HookedTransformer.from_pretrained_no_processing(tiny.path)


@pytest.fixture
def tokens(spec: FamilySpec) -> torch.Tensor:
    """A fixed [2, spec.seq] batch of token ids (no padding)."""
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, D_VOCAB, (2, spec.seq), generator=gen)


def _ragged(spec: FamilySpec) -> list[torch.Tensor]:
    """Rows of `spec.ragged` lengths, drawn above the special token ids 0-2."""
    gen = torch.Generator().manual_seed(2)
    return [torch.randint(3, D_VOCAB, (n,), generator=gen) for n in spec.ragged]


def _padded(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows padded on `side` with PAD_ID, and the attention mask."""
    length = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), length), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        tokens[i, span] = s
        mask[i, span] = 1
    return tokens, mask


def _hf_padded_kwargs(hf: torch.nn.Module, mask: torch.Tensor) -> dict[str, Any]:
    """transformers' arguments for a padded batch: the mask, and position ids counted over real
    tokens where its forward takes them."""
    kwargs: dict[str, Any] = {"attention_mask": mask}
    if "position_ids" in inspect.signature(hf.forward).parameters:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return kwargs


def _after_blocks(hf: torch.nn.Module) -> torch.nn.Module:
    """The module that reads the last block's output: the final norm, or for post-LN OPT (which
    has none) its project_out."""
    base = getattr(hf, "model", None) or hf.base_model
    decoder = getattr(base, "decoder", None)
    if decoder is not None:  # OPT
        return decoder.final_layer_norm or decoder.project_out
    for name in ("final_layernorm", "norm", "ln_f", "norm_f", "final_layer_norm"):
        if getattr(base, name, None) is not None:
            return getattr(base, name)
    raise AssertionError(f"no final norm found on {type(base).__name__}")


def _attn_layers(model: HookedTransformer) -> list[int]:
    """The layers with softmax attention (a hybrid's linear-attention layers have none: their
    recurrent hooks are checked in its family tests)."""
    kinds = model.cfg.layer_types
    return [i for i in range(model.cfg.n_layers) if i >= len(kinds) or kinds[i] != "linear"]


def _layer_attn(model: HookedTransformer, layer: int) -> tuple[Any, bool]:
    """The layer's own attention config (Gemma 4's global layers have their own head size and
    key/value heads) and whether the layer reuses an earlier layer's keys and values (so computes
    none and has no key/value hooks that fire)."""
    sources = model.cfg.kv_source_layers
    return model.blocks[layer].attn.cfg, sources is not None and sources[layer] is not None


def _experts_at(model: HookedTransformer, layer: int) -> str:
    """The hook prefix of layer `layer`'s routed experts: `blocks.{l}.mlp.`, or `blocks.{l}.moe.`
    where they run beside a dense MLP (Gemma 4 26B-A4B)."""
    return f"blocks.{layer}.{'moe' if model.cfg.moe_beside_mlp else 'mlp'}."


# -- agreement with transformers ------------------------------------------------------------------
@torch.no_grad()
def test_logits_match_hf(spec: FamilySpec, tiny: TinyModel, model, tokens) -> None:
    _applies("logits", spec)
    expected = tiny.hf_model(tokens).logits
    got = model(tokens)
    assert got.shape == (2, spec.seq, model.cfg.d_vocab_out) == expected.shape
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_residual_stream_matches_hf_hidden_states(
    spec: FamilySpec, tiny: TinyModel, model, tokens
) -> None:
    """resid_pre of each layer is HF's hidden state; the last resid_post is what HF's final norm
    (or OPT's project_out) reads."""
    _applies("hidden_states", spec)
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
            cache["resid_pre", layer], hidden[layer], atol=LOGIT_ATOL, rtol=0
        )
    torch.testing.assert_close(
        cache["resid_post", n - 1], captured["blocks_out"], atol=LOGIT_ATOL, rtol=0
    )


@torch.no_grad()
def test_loss_matches_hf(spec: FamilySpec, tiny: TinyModel, model, tokens) -> None:
    _applies("loss", spec)
    expected = tiny.hf_model(tokens, labels=tokens).loss
    got = model(tokens, return_type="loss")
    assert got.shape == ()
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)
    logits, loss = model(tokens, return_type="both")
    torch.testing.assert_close(loss, got, atol=0, rtol=0)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, spec.seq - 1)
    manual = -logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(per_token, manual, atol=1e-6, rtol=0)


@torch.no_grad()
def test_padded_loss_matches_hf(spec: FamilySpec, tiny: TinyModel, model) -> None:
    _applies("padded_loss", spec)
    tokens, mask = _padded(_ragged(spec), "right")
    labels = tokens.masked_fill(mask == 0, -100)
    expected = tiny.hf_model(tokens, attention_mask=mask, labels=labels).loss
    got = model(tokens, attention_mask=mask, return_type="loss")
    torch.testing.assert_close(got, expected, atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_processed_model_log_probs_match_hf(spec: FamilySpec, tiny: TinyModel, tokens) -> None:
    _applies("processed", spec)
    processed = HookedTransformer.from_pretrained(tiny.path)
    cfg = processed.cfg
    post_ln = cfg.norm_placement == "post_residual"
    # post-LN norms write the residual stream itself: nothing can be folded (or centred)
    assert cfg.processing["fold_ln"] is not post_ln
    assert cfg.normalization_type in (("LN",) if post_ln else ("LNPre", "RMSPre"))
    if not post_ln:
        # centring the unembedding would shift the logits inside the soft-cap's tanh
        assert cfg.processing["center_unembed"] is (cfg.output_logits_soft_cap <= 0)
        # clip_qkv clamps v after its bias, so b_V stays where it is (and attention sinks leave
        # rows that sum to less than 1, latent attention has no b_V, and a value norm follows it)
        folds = (
            cfg.clip_qkv is None
            and not cfg.attn_sinks
            and not cfg.kv_lora_rank
            and not cfg.use_v_norm
            and not cfg.attn_output_gate  # the gate scales what b_V adds, per position
        )
        assert cfg.processing["fold_value_biases"] is folds
        for block in processed.blocks:  # pre-norms fold; post-norms keep their weights
            for name in ("ln1", "ln2"):
                assert getattr(getattr(block, name), "w", None) is None
            for name in ("ln1_post", "ln2_post"):
                if hasattr(block, name):
                    assert getattr(block, name).w is not None
    expected = tiny.hf_model(tokens).logits.log_softmax(-1)
    got = processed(tokens).log_softmax(-1)
    torch.testing.assert_close(got, expected, atol=LOGPROB_ATOL, rtol=0)


@torch.no_grad()
def test_processed_cache_gives_the_processed_model(
    spec: FamilySpec, tiny: TinyModel, tokens, processed_cache_dir, monkeypatch
) -> None:
    """A processed load kept in the processed-weights cache and mapped back by the next load is
    the processed model bit for bit: parameters, config and logits."""
    _applies("processed", spec)
    processed = HookedTransformer.from_pretrained(tiny.path, processed_cache=False)
    HookedTransformer.from_pretrained(tiny.path)  # processes, notes the key
    HookedTransformer.from_pretrained(tiny.path)  # processes, and keeps the weights
    assert len([p for p in processed_cache_dir.iterdir() if not p.name.startswith(".")]) == 1
    monkeypatch.setattr(lmscope.loading, "process_unit", _no_processing)
    kept = HookedTransformer.from_pretrained(tiny.path)  # maps them
    assert repr(kept.cfg) == repr(processed.cfg)
    want, got = processed.state_dict(), kept.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert torch.equal(kept(tokens), processed(tokens))


def _no_processing(*args: Any) -> None:
    raise AssertionError("a load from the processed-weights cache processed weights")


# -- padding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_matches_each_sequence_alone(spec: FamilySpec, model, side: str) -> None:
    _applies("padded_alone", spec)
    seqs = _ragged(spec)
    tokens, mask = _padded(seqs, side)
    batched = model(tokens, attention_mask=mask)
    assert torch.isfinite(batched).all()  # padding rows too: no NaN from fully masked queries
    length = tokens.shape[1]
    for i, seq in enumerate(seqs):
        alone = model(seq[None])[0]
        real = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        torch.testing.assert_close(batched[i, real], alone, atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
@torch.no_grad()
def test_padded_batch_matches_hf(spec: FamilySpec, tiny: TinyModel, model, side: str) -> None:
    """HF with the same attention mask (and position ids counted over real tokens, where its
    forward takes them) agrees at every real position."""
    _applies("padded_hf", spec)
    tokens, mask = _padded(_ragged(spec), side)
    expected = tiny.hf_model(tokens, **_hf_padded_kwargs(tiny.hf_model, mask)).logits
    got = model(tokens, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=LOGIT_ATOL, rtol=0)


# -- attention paths ------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True])
@torch.no_grad()
def test_explicit_attention_path_matches_sdpa(
    spec: FamilySpec, model, tokens, padded: bool
) -> None:
    _applies("explicit_attention", spec)
    kwargs = {}
    if padded:
        tokens, kwargs["attention_mask"] = _padded(_ragged(spec), "left")
    fast = model(tokens, **kwargs)
    seen = []
    explicit = model.run_with_hooks(
        tokens,
        fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: seen.append(hook.name))],
        **kwargs,
    )
    layers = _attn_layers(model)
    assert seen == [f"blocks.{i}.attn.hook_pattern" for i in layers]
    torch.testing.assert_close(explicit, fast, atol=LOGIT_ATOL, rtol=0)
    # The explicit path's z equals the fast path's z too (hook_z alone keeps the fast path).
    layer = next((i for i in layers if i >= 1), layers[0])
    z, pattern = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.attn.hook_pattern"
    _, fast_cache = model.run_with_cache(tokens, names_filter=z, **kwargs)
    _, slow_cache = model.run_with_cache(tokens, names_filter=[z, pattern], **kwargs)
    torch.testing.assert_close(slow_cache[z], fast_cache[z], atol=LOGIT_ATOL, rtol=0)


@torch.no_grad()
def test_attention_patterns_are_masked_distributions(model, tokens) -> None:
    """Each row sums to 1 (with the sink's share, where there are sinks), and a key is weighted
    exactly where the layer lets the query see it: causal, within the window (local layers) or
    the chunk (chunked layers)."""
    cfg = model.cfg
    p = tokens.shape[1]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("pattern"))
    q = torch.arange(p)[:, None]
    k = torch.arange(p)[None, :]
    for layer in _attn_layers(model):
        kind = cfg.layer_types[layer] if cfg.layer_types else "global"
        pattern = cache["pattern", layer]
        assert pattern.shape == (2, cfg.n_heads, p, p)
        sinks = cache[f"blocks.{layer}.attn.hook_sink_pattern"] if cfg.attn_sinks else 0
        torch.testing.assert_close(pattern.sum(-1) + sinks, torch.ones(2, cfg.n_heads, p))
        hidden = k > q
        if kind == "local":
            assert cfg.window_size < p
            hidden = hidden | (k <= q - cfg.window_size)
        if kind == "chunked":
            assert cfg.attention_chunk_size < p
            hidden = hidden | (k // cfg.attention_chunk_size != q // cfg.attention_chunk_size)
        assert torch.all(pattern[..., hidden] == 0), (layer, kind)
        assert torch.all(pattern[..., ~hidden] > 0), (layer, kind)


# -- residual stream and hooks --------------------------------------------------------------------
@torch.no_grad()
def test_residual_stream_decomposes_exactly(spec: FamilySpec, model, tokens) -> None:
    _applies("decomposition", spec)
    # (norm hooks left uncached: a hooked norm takes its explicit path, so recomputing a post-LN
    # norm below must see the same fast kernel the forward pass used)
    _, cache = model.run_with_cache(
        tokens,
        names_filter=lambda n: "resid" in n or n.endswith(("attn_out", "mlp_out", "per_layer_out")),
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
            end = mid + mlp_out
            if model.cfg.d_per_layer_input:  # Gemma 4: the per-layer input, then the scalar
                end = end + cache[f"blocks.{layer}.hook_per_layer_out"]
            if model.cfg.layer_scalars:
                end = end * model.blocks[layer].layer_scalar
            assert torch.equal(end, post)
        if layer + 1 < model.cfg.n_layers:
            assert torch.equal(post, cache["resid_pre", layer + 1])


_NORMS = ("ln1", "ln2", "ln1_post", "ln2_post", "ln_final", "ln_embed")
_STANDARD = ("attn", "mlp", "embed", "pos_embed", "unembed", *_NORMS)


@torch.no_grad()
def test_every_hook_fires_once_with_its_shape(spec: FamilySpec, model, tokens) -> None:
    """Every enabled hook fires once per forward (rotary hooks only on rotating layers, an
    expert's hooks only when tokens reach it), and the standard hooks have TransformerLens's
    shapes (the family hooks' shapes: test_family_hooks_fire_with_documented_shapes)."""
    _applies("hook_shapes", spec)
    cfg = model.cfg
    b, p = tokens.shape
    h, dm = cfg.n_heads, cfg.d_model
    shapes: dict[str, list[tuple[int, ...]]] = {}
    enabled = [n for n in model.hook_dict if model._disabled_reason(n) is None]
    with model.hooks(
        fwd_hooks=[(n, lambda x, hook: shapes.setdefault(hook.name, []).append(x.shape))
                   for n in enabled]
    ):  # fmt: skip
        model(tokens)

    def may_stay_silent(name: str) -> bool:
        parts = name.split(".")
        if ".experts." in name:  # no token routed to this expert
            return True
        if parts[0] == "blocks" and _layer_attn(model, int(parts[1]))[1]:
            # a layer reusing another's keys and values computes only its queries
            if parts[-1] in ("hook_k", "hook_rot_k", "hook_v") or parts[-2] in ("k_norm", "v_norm"):
                return True
        rotates = cfg.rotary_layers is None or cfg.rotary_layers[int(parts[1])]
        after_rotary = parts[-2] in ("q_norm", "k_norm") and cfg.qk_norm_after_rotary
        return not rotates and (parts[-1] in ("hook_rot_q", "hook_rot_k") or after_rotary)

    assert set(shapes) <= set(enabled)
    assert {n for n in enabled if n not in shapes and not may_stay_silent(n)} == set()
    assert all(len(seen) == 1 for seen in shapes.values()), shapes
    expected = {
        "hook_attn_scores": (b, h, p, p),
        "hook_pattern": (b, h, p, p),
        "hook_scale": (b, p, 1),
        "hook_normalized": (b, p, dm),
        "hook_out": (b, p, cfg.d_vocab_out),
        "hook_embed": (b, p, dm),
        "hook_pos_embed": (b, p, dm),
        "hook_resid_pre": (b, p, dm),
        "hook_resid_mid": (b, p, dm),
        "hook_resid_post": (b, p, dm),
        "hook_attn_out": (b, p, dm),
        "hook_mlp_out": (b, p, dm),
    }
    checked = 0
    for name, seen in shapes.items():
        parent, leaf = (["", *name.split(".")])[-2:]
        if parent == "attn":  # the layer's own head size and key/value heads
            acfg = _layer_attn(model, int(name.split(".")[1]))[0]
            kv, dh = acfg.n_key_value_heads, acfg.d_head
            head = {"q": (b, p, h, dh), "k": (b, p, kv, dh), "v": (b, p, kv, dh)}
            expected |= {f"hook_{x}": head[x] for x in ("q", "k", "v")}
            expected |= {"hook_rot_q": head["q"], "hook_rot_k": head["k"], "hook_z": head["q"]}
        if parent == "mlp" and not cfg.num_experts:  # the layer's own width (Gemma 4's 2x)
            d_mlp = model.blocks[int(name.split(".")[1])].mlp.d_mlp
            expected |= {x: (b, p, d_mlp) for x in ("hook_pre", "hook_pre_linear", "hook_post")}
        block_level = parent.isdigit() and name.count(".") == 2  # blocks.{l}.hook_*
        standard = parent in _STANDARD or block_level or parent == ""
        if standard and leaf in expected and not (parent == "mlp" and cfg.num_experts):
            assert seen == [torch.Size(expected[leaf])], name
            checked += 1
    assert checked >= 10 * cfg.n_layers


def test_family_hooks_fire_with_documented_shapes(model, tokens) -> None:
    """Norm hooks (pre, post, q/k) and routing hooks fire once each where the family has them."""
    cfg = model.cfg
    b, p = tokens.shape
    dm, h = cfg.d_model, cfg.n_heads
    expected: dict[str, tuple] = {}
    for layer in range(cfg.n_layers):
        x = f"blocks.{layer}."
        if cfg.norm_placement == "post":
            assert f"{x}ln1.hook_scale" not in model.hook_dict  # no pre-norm to hook
        elif cfg.normalization_type is not None:  # pre-norms, or post-LN OPT's norms
            expected[f"{x}ln1.hook_scale"] = (b, p, 1)
            expected[f"{x}ln2.hook_normalized"] = (b, p, dm)
        if cfg.norm_placement in ("post", "pre_and_post"):
            for ln in ("ln1_post", "ln2_post"):
                expected[f"{x}{ln}.hook_scale"] = (b, p, 1)
                expected[f"{x}{ln}.hook_normalized"] = (b, p, dm)
        rotates = cfg.rotary_layers is None or cfg.rotary_layers[layer]
        has_attn = layer in _attn_layers(model)
        acfg, reuses_kv = _layer_attn(model, layer) if has_attn else (cfg, False)
        kv, dh = acfg.n_key_value_heads, acfg.d_head
        if has_attn and cfg.use_qk_norm and (rotates or not cfg.qk_norm_after_rotary):
            if cfg.qk_norm_per_head:
                expected[f"{x}attn.q_norm.hook_scale"] = (b, p, h, 1)
                expected[f"{x}attn.q_norm.hook_normalized"] = (b, p, h, dh)
                if not reuses_kv:
                    expected[f"{x}attn.k_norm.hook_scale"] = (b, p, kv, 1)
                    expected[f"{x}attn.k_norm.hook_normalized"] = (b, p, kv, dh)
            else:
                expected[f"{x}attn.q_norm.hook_scale"] = (b, p, 1)
                expected[f"{x}attn.q_norm.hook_normalized"] = (b, p, h * dh)
                expected[f"{x}attn.k_norm.hook_scale"] = (b, p, 1)
                expected[f"{x}attn.k_norm.hook_normalized"] = (b, p, kv * dh)
        if cfg.num_experts and cfg.mlp_type(layer) == "moe":
            k, e, moe = cfg.experts_per_token, cfg.num_experts, _experts_at(model, layer)
            expected[f"{moe}hook_router_logits"] = (b, p, e)
            expected[f"{moe}hook_expert_weights"] = (b, p, k)
            expected[f"{moe}hook_expert_indices"] = (b, p, k)
        if cfg.router_input_norm:  # the router's own weightless norm
            expected[f"{x}moe.router_ln.hook_scale"] = (b, p, 1)
        if cfg.moe_beside_mlp:  # the two branches, each after its post-norm
            expected[f"{x}hook_dense_out"] = expected[f"{x}hook_moe_out"] = (b, p, dm)
            expected[f"{x}ln2_moe.hook_normalized"] = (b, p, dm)
    seen: dict[str, list] = {}

    def record(x: torch.Tensor, hook: Any) -> None:
        seen.setdefault(hook.name, []).append(tuple(x.shape))

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(n, record) for n in expected])
    assert seen == {name: [shape] for name, shape in expected.items()}


@torch.no_grad()
def test_hook_flags_keep_the_logits(spec: FamilySpec, model, tokens) -> None:
    """Per-head inputs, per-head results and hook_mlp_in change no number."""
    _applies("hook_flags", spec)
    expected = model(tokens)
    for setter in ("set_use_split_qkv_input", "set_use_attn_result", "set_use_hook_mlp_in"):
        getattr(model, setter)(True)
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, expected, atol=LOGIT_ATOL, rtol=0)
    cfg = model.cfg
    first = _attn_layers(model)[0]
    assert cache[f"blocks.{first}.hook_k_input"].shape == (
        *tokens.shape,
        cfg.n_key_value_heads,
        cfg.d_model,
    )
    assert cache["result", first].shape == (*tokens.shape, cfg.n_heads, cfg.d_model)
    block = model.blocks[first]
    attn_out = cache["result", first].sum(2) + block.attn.b_O
    if hasattr(block, "ln1_post"):  # the post-norm follows the summed heads
        attn_out = block.ln1_post(attn_out)
    torch.testing.assert_close(attn_out, cache["attn_out", first], atol=1e-5, rtol=0)


@torch.no_grad()
def test_post_norms_normalise_each_sublayer_output(model, tokens) -> None:
    if model.cfg.norm_placement not in ("post", "pre_and_post"):
        pytest.skip("no post-norms")
    _, cache = model.run_with_cache(tokens)
    for layer, block in enumerate(model.blocks):
        for ln, out in (("ln1_post", "attn_out"), ("ln2_post", "mlp_out")):
            normalized = cache[f"blocks.{layer}.{ln}.hook_normalized"]
            torch.testing.assert_close(
                normalized * getattr(block, ln).applied_weight(),
                cache[out, layer],
                atol=1e-6,
                rtol=0,
            )
            scale = cache[f"blocks.{layer}.{ln}.hook_scale"][..., 0]  # sqrt(mean(x^2) + eps)
            torch.testing.assert_close(
                normalized.pow(2).mean(-1), 1 - model.cfg.eps / scale**2, atol=1e-5, rtol=0
            )


def test_mixture_of_experts_routing_hooks(model, tokens) -> None:
    cfg = model.cfg
    if not cfg.num_experts:
        pytest.skip("not a mixture of experts")
    b, p = tokens.shape
    layer = cfg.mlp_types.index("moe") if cfg.mlp_types else 0
    mlp = _experts_at(model, layer)
    # what the experts add: the MLP's output, or beside a dense MLP their own branch's
    out = f"blocks.{layer}.hook_{'moe_out' if cfg.moe_beside_mlp else 'mlp_out'}"
    _, cache = model.run_with_cache(tokens)
    weights, indices = cache[mlp + "hook_expert_weights"], cache[mlp + "hook_expert_indices"]
    logits = cache[mlp + "hook_router_logits"]
    if cfg.router_per_expert_scale:  # Gemma 4: each chosen weight times its expert's scale
        scales = model.get_submodule(mlp[:-1]).per_expert_scale[indices]
        assert not torch.allclose(scales, torch.ones_like(scales))
        weights = weights / scales
    scores = logits.sigmoid() if cfg.router_scoring == "sigmoid" else logits.softmax(-1)
    scale = cfg.routed_scaling_factor
    if cfg.router_scoring == "sparsemixer":  # each weight a softmax over the experts near it
        assert bool((weights > 0).all()) and bool((weights <= 1).all())
    elif cfg.norm_topk_prob:
        torch.testing.assert_close(weights.sum(-1), torch.full((b, p), scale))
    else:
        assert torch.all(weights.sum(-1) <= scale + 1e-6)
        torch.testing.assert_close(weights, scale * scores.gather(-1, indices))
    # each expert's hooks see exactly the tokens routed to it
    routed = 0
    for e in range(cfg.num_experts):
        n_routed = int((indices == e).sum())
        if n_routed:
            assert cache[f"{mlp}experts.{e}.hook_post"].shape == (n_routed, cfg.d_mlp)
        routed += n_routed
    assert routed == b * p * cfg.experts_per_token
    # the routing weights are live: zeroing them switches the routed experts off, leaving the
    # shared experts (if any)
    seen = []
    with torch.no_grad():
        model.run_with_hooks(
            tokens,
            fwd_hooks=[
                (mlp + "hook_expert_weights", lambda w, hook: torch.zeros_like(w)),
                (out, lambda x, hook: seen.append(x.clone())),
            ],
        )
    shared = cache[mlp + "hook_shared_expert_out"] if cfg.shared_expert_d_mlp else 0 * seen[0]
    torch.testing.assert_close(seen[0], shared, atol=1e-6, rtol=0)
    assert cache[out].abs().max() > 0


# -- KV cache and generation ----------------------------------------------------------------------
@torch.no_grad()
def test_kv_cached_forward_matches_uncached(
    spec: FamilySpec, tiny: TinyModel, model, tokens
) -> None:
    """A prompt chunk, then single tokens (past every window), then chunks again through the KV
    cache give the full forward's logits."""
    _applies("kv_cache", spec)
    p = spec.seq
    bounds = [0, 7, *range(8, min(p, 16) + 1), *([30, p] if p > 30 else [])]
    bounds = sorted(set(b for b in bounds if b <= p) | {p})
    if getattr(getattr(model, "rotary", None), "kind", None) == "dynamic":
        # past its context each step's frequencies follow the length so far (in transformers
        # too), so a cached run equals an uncached one only inside the context
        context = tiny.hf_model.config.max_position_embeddings
        bounds = [b for b in bounds if b <= context]
        tokens = tokens[:, : bounds[-1]]
    full = model(tokens)
    cache = KVCache.init_cache(model.cfg, batch_size=2, capacity=p)
    parts = [
        model(tokens[:, a:b], past_kv_cache=cache)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    atol, why = LOGIT_ATOL, "the suite's float32 tolerance"
    if "linear" in model.cfg.layer_types:  # rounding amplified by the gated delta-net's norm
        atol, why = recurrent_cached_atol(tiny.hf_model, tokens, bounds, LOGIT_ATOL)
    torch.testing.assert_close(
        torch.cat(parts, dim=1), full, atol=atol, rtol=0, msg=lambda m: f"{m}\natol: {why}"
    )


@pytest.mark.parametrize("batch", ["padded", "single"])
@torch.no_grad()
def test_greedy_generation_matches_hf(spec: FamilySpec, tiny: TinyModel, model, batch: str) -> None:
    """Greedy decoding of a left-padded batch and of one unpadded row (past every sliding window
    and, for LongRoPE, past the pretraining context) equals transformers'."""
    _applies("greedy", spec)
    seqs = _ragged(spec)
    if batch == "padded":
        prompt, mask = _padded(seqs, "left")
    else:
        prompt = seqs[1][None]
        mask = torch.ones_like(prompt)
    theirs = tiny.hf_model.generate(
        prompt,
        attention_mask=mask,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    ours = model.generate(
        prompt,
        max_new_tokens=NEW_TOKENS,
        do_sample=False,
        stop_at_eos=False,
        verbose=False,
        attention_mask=mask if batch == "padded" else None,
    )
    assert theirs.shape == (prompt.shape[0], prompt.shape[1] + NEW_TOKENS)
    assert torch.equal(ours, theirs)


# -- grouped-query attention ----------------------------------------------------------------------
@torch.no_grad()
def test_gqa_keys_and_values_have_kv_head_shape(
    spec: FamilySpec, tiny: TinyModel, model, tokens
) -> None:
    _applies("gqa_ungroup", spec)
    cfg = model.cfg
    if cfg.n_key_value_heads == cfg.n_heads:
        pytest.skip("no grouped-query attention")
    b, p = tokens.shape
    kv_names = lambda n: n.endswith(("hook_k", "hook_v"))  # noqa: E731
    _, cache = model.run_with_cache(tokens, names_filter=kv_names)
    first, *rest = _attn_layers(model)
    second = rest[0] if rest else first
    assert cache["k", first].shape == (b, p, cfg.n_key_value_heads, cfg.d_head)
    kv_second = _layer_attn(model, second)[0].n_key_value_heads
    assert cache["v", second].shape[:3] == (b, p, kv_second)
    ungrouped = HookedTransformer.from_pretrained_no_processing(
        tiny.path, ungroup_grouped_query_attention=True
    )
    logits, ucache = ungrouped.run_with_cache(tokens, names_filter=kv_names)
    assert ucache["k", first].shape == (b, p, cfg.n_heads, cfg.d_head)
    grouped = cache["k", first].repeat_interleave(cfg.n_groups, dim=2)
    torch.testing.assert_close(ucache["k", first], grouped, atol=0, rtol=0)
    torch.testing.assert_close(logits, model(tokens), atol=LOGIT_ATOL, rtol=0)


@pytest.mark.parametrize("ungroup", [False, True])
@pytest.mark.parametrize("which", ["k", "v"])
@torch.no_grad()
def test_patching_one_kv_head(
    spec: FamilySpec, tiny: TinyModel, tokens, ungroup: bool, which: str
) -> None:
    """Patching one key/value head from another prompt changes the output; patching it with its
    own activation changes nothing."""
    _applies("patch_kv_head", spec)
    model = HookedTransformer.from_pretrained_no_processing(
        tiny.path, ungroup_grouped_query_attention=ungroup
    )
    name = f"blocks.{_attn_layers(model)[0]}.attn.hook_{which}"
    clean = model(tokens)
    _, source = model.run_with_cache(tokens.flip(-1), names_filter=name)

    def patch(x: torch.Tensor, hook: Any) -> torch.Tensor:
        x[:, :, 0] = source[hook.name][:, :, 0]
        return x

    patched = model.run_with_hooks(tokens, fwd_hooks=[(name, patch)])
    assert torch.isfinite(patched).all()
    assert (patched - clean).abs().max() > 1e-4
    same = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x.clone())])
    torch.testing.assert_close(same, clean, atol=0, rtol=0)
