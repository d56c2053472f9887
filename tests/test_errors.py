"""Bad input fails early with a message that says what went wrong and what to do instead."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmscope import HookedTransformer, HookedTransformerConfig
from lmscope.loading import checkpoint as checkpoint_module
from tests._tiny import D_VOCAB, N_CTX, TinyModel
from tests._unchecked import unchecked


@pytest.fixture
def gpt2(tiny_gpt2: TinyModel) -> HookedTransformer:
    return HookedTransformer.from_pretrained_no_processing(tiny_gpt2.path)


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, suggestion",
    [("pythia-70", "pythia-70m"), ("smollm-135m", "smollm2-135m"), ("gpt2-smal", "gpt2-small")],
)
def test_unknown_model_name_suggests_close_names(name: str, suggestion: str) -> None:
    with pytest.raises(
        ValueError, match=rf"unknown model '{name}'.*Did you mean:.*\b{re.escape(suggestion)}\b"
    ):
        HookedTransformer.from_pretrained(name)


def test_unknown_hook_name_suggests_close_names(gpt2: HookedTransformer, tokens) -> None:
    typo = "blocks.0.attn.hook_patern"
    hint = r"no hook point named 'blocks\.0\.attn\.hook_patern'.*Did you mean: blocks\.0\.attn\.hook_pattern"
    with pytest.raises(KeyError, match=hint):
        gpt2.add_hook(typo, lambda x, hook: None)
    with pytest.raises(KeyError, match=hint):
        gpt2.run_with_hooks(tokens, fwd_hooks=[(typo, lambda x, hook: None)])
    with pytest.raises(KeyError, match=hint):
        gpt2.run_with_cache(tokens, names_filter=typo)
    with pytest.raises(KeyError, match=hint):
        gpt2.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_pre", typo])
    # a valid hook registered before the bad name is detached again
    with pytest.raises(KeyError, match=hint):
        gpt2.run_with_hooks(
            tokens,
            fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: None)],
            bwd_hooks=[(typo, lambda g, hook: None)],
        )
    assert not any(hp.has_hooks() for hp in gpt2.hook_dict.values())


def test_hook_returning_the_wrong_shape_names_hook_and_shapes(
    gpt2: HookedTransformer, tokens
) -> None:
    def shrink(x, hook):
        return x[..., :32]

    message = (
        r"hook 'shrink' on blocks\.1\.hook_resid_mid returned shape \(2, 12, 32\), "
        r"but the activation has shape \(2, 12, 64\)"
    )
    with pytest.raises(ValueError, match=message):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_mid", shrink)])
    with pytest.raises(
        TypeError,
        match=r"hook '<lambda>' on hook_embed returned str, but a hook must return None or a "
        r"tensor of the activation's shape \(2, 12, 64\), dtype torch\.float32 and device cpu",
    ):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: "oops")])
    assert not any(hp.has_hooks() for hp in gpt2.hook_dict.values())


def test_hook_returning_another_dtype_or_device_names_hook_and_both(
    gpt2: HookedTransformer, tokens
) -> None:
    def to_double(x, hook):
        return x.double()

    def to_meta(x, hook):
        return x.to("meta")

    with pytest.raises(
        ValueError,
        match=r"hook 'to_double' on unembed\.hook_out returned dtype torch\.float64, but the "
        r"activation has dtype torch\.float32; return a tensor like the activation",
    ):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("unembed.hook_out", to_double)])
    with pytest.raises(
        ValueError,
        match=r"hook 'to_meta' on blocks\.0\.attn\.hook_z returned device meta, but the "
        r"activation has device cpu",
    ):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", to_meta)])
    with pytest.raises(ValueError, match=r"returned shape \(2, 12\), .*; dtype torch\.int64"):
        gpt2.run_with_hooks(tokens, fwd_hooks=[("hook_embed", lambda x, hook: x[..., 0].long())])
    assert not any(hp.has_hooks() for hp in gpt2.hook_dict.values())
    # a tensor like the activation replaces it, and returning the input itself is fine
    with torch.no_grad():
        plain = gpt2(tokens)
        same = gpt2.run_with_hooks(tokens, fwd_hooks=[("unembed.hook_out", lambda x, hook: x)])
        doubled = gpt2.run_with_hooks(
            tokens, fwd_hooks=[("unembed.hook_out", lambda x, hook: (2 * x.double()).float())]
        )
    assert torch.equal(same, plain)
    assert torch.equal(doubled, 2 * plain)


def test_backward_hook_returning_another_dtype(gpt2: HookedTransformer, tokens) -> None:
    def grad_to_double(g, hook):
        return g.double()

    loss = gpt2.run_with_hooks(
        tokens, return_type="loss", bwd_hooks=[("blocks.0.hook_mlp_out", grad_to_double)]
    )
    with pytest.raises(
        ValueError,
        match=r"backward hook 'grad_to_double' on blocks\.0\.hook_mlp_out returned dtype "
        r"torch\.float64, but the gradient has dtype torch\.float32",
    ):
        loss.backward()


@pytest.mark.parametrize("arg", ["fwd_hooks", "bwd_hooks"])
def test_bare_hook_tuple_is_refused_with_the_fix(gpt2: HookedTransformer, tokens, arg: str) -> None:
    def noop(x, hook):
        return None

    bare = {arg: ("blocks.0.hook_resid_pre", noop)}
    message = (
        rf"{arg} must be a list of \(name, fn\) pairs, got a bare \(name, fn\) tuple "
        rf"\('blocks\.0\.hook_resid_pre', 'noop'\); wrap it in a list: {arg}=\[\(name, fn\)\]"
    )
    with unchecked(), pytest.raises(TypeError, match=message):
        gpt2.run_with_hooks(tokens, **bare)
    with unchecked(), pytest.raises(TypeError, match=message):
        with gpt2.hooks(**bare):
            pass
    with (
        unchecked(),
        pytest.raises(TypeError, match=r"got a bare \(name, fn\) tuple \('<lambda>', 'noop'\)"),
    ):
        gpt2.run_with_hooks(tokens, **{arg: (lambda n: n.endswith("resid_pre"), noop)})
    with (
        unchecked(),
        pytest.raises(TypeError, match=rf"{arg}\[1\] must be a \(name or name filter, fn\) pair"),
    ):
        gpt2.run_with_hooks(tokens, **{arg: [("hook_embed", noop), "hook_embed"]})
    with (
        unchecked(),
        pytest.raises(
            TypeError, match=rf"{arg}\[0\] for 'hook_embed': the hook must be a function"
        ),
    ):
        gpt2.run_with_hooks(tokens, **{arg: [("hook_embed", "noop")]})
    with (
        unchecked(),
        pytest.raises(TypeError, match=rf"{arg} must be a list of \(name, fn\) pairs, got dict"),
    ):
        gpt2.run_with_hooks(tokens, **{arg: {"hook_embed": noop}})
    assert not any(hp.has_hooks() for hp in gpt2.hook_dict.values())
    # a tuple of pairs is a sequence of pairs, as a list is
    calls = []
    pairs = (("hook_embed", lambda x, hook: calls.append(1)),) * 2
    gpt2.run_with_hooks(tokens, fwd_hooks=pairs)
    assert calls == [1, 1]


def test_backward_hook_returning_the_wrong_shape(gpt2: HookedTransformer, tokens) -> None:
    loss = gpt2.run_with_hooks(
        tokens, return_type="loss", bwd_hooks=[("blocks.0.hook_mlp_out", lambda g, hook: g[0])]
    )
    with pytest.raises(
        ValueError,
        match=r"backward hook '<lambda>' on blocks\.0\.hook_mlp_out returned shape \(12, 64\), but the gradient has shape \(2, 12, 64\)",
    ):
        loss.backward()


# -- inputs ---------------------------------------------------------------------------------------
def test_input_longer_than_n_ctx(gpt2: HookedTransformer) -> None:
    too_long = torch.zeros(1, N_CTX + 1, dtype=torch.long)
    with pytest.raises(
        ValueError, match=rf"input has {N_CTX + 1} tokens but the model's context is n_ctx={N_CTX}"
    ):
        gpt2(too_long)
    assert gpt2(too_long[:, :N_CTX]).shape == (1, N_CTX, D_VOCAB)


def test_empty_token_input(gpt2: HookedTransformer) -> None:
    for empty in (torch.zeros(1, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"input is empty \(0 tokens\)"):
            gpt2(empty)


def test_empty_batch_of_token_ids(gpt2: HookedTransformer) -> None:
    with pytest.raises(
        ValueError, match=r"input is an empty batch \(0 sequences, shape \(0, 5\)\)"
    ):
        gpt2(torch.zeros(0, 5, dtype=torch.long))


def test_empty_string_input(tiny_gpt2_tok: TinyModel) -> None:
    """An empty string is an error wherever it has no token (no BOS), alone or in a list; with BOS
    it is the one-token sequence [BOS], alone or in a list."""
    model = HookedTransformer.from_pretrained_no_processing(
        tiny_gpt2_tok.path, default_prepend_bos=False
    )
    with pytest.raises(
        ValueError, match=r"input is empty \(0 tokens: the text is empty and no BOS"
    ):
        model("")
    with pytest.raises(ValueError, match=r"input is empty \(0 tokens.*prepend_bos=True"):
        model("", prepend_bos=False)
    for texts, first in ((["", "Hi"], 0), (["Hi", "", ""], 1), (["", ""], 0)):
        with pytest.raises(
            ValueError, match=rf"input string {first} of the list is empty \(0 tokens"
        ):
            model(texts)
        with pytest.raises(ValueError, match=rf"input string {first} of the list is empty"):
            model.to_tokens(texts, prepend_bos=False)
    with pytest.raises(ValueError, match="empty list of strings"):
        model.to_tokens([])
    # with BOS the empty string is one token, alone and in a list
    bos = model.tokenizer.bos_token_id
    assert model.to_tokens("", prepend_bos=True).tolist() == [[bos]]
    with torch.no_grad():
        alone = model("", prepend_bos=True)
        batch = model(["", "Hi"], prepend_bos=True, padding_side="left")
    assert batch.shape[0] == 2
    torch.testing.assert_close(batch[0, -1], alone[0, -1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_small_integer_token_dtypes_give_the_same_logits(
    gpt2: HookedTransformer, tokens, dtype: torch.dtype
) -> None:
    with torch.no_grad():
        assert torch.equal(gpt2(tokens.to(dtype)), gpt2(tokens))


def test_bool_token_input_is_refused(gpt2: HookedTransformer) -> None:
    with (
        unchecked(),
        pytest.raises(
            ValueError, match=r"token input is a bool tensor \(a mask\?\), not token ids"
        ),
    ):
        gpt2(torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("bad_id", [D_VOCAB, -1, 10_000])
def test_token_ids_out_of_vocabulary(gpt2: HookedTransformer, bad_id: int) -> None:
    tokens = torch.tensor([[1, 2, bad_id, 3]])
    with pytest.raises(
        ValueError,
        match=rf"token ids must lie in \[0, {D_VOCAB}\); got ids from {min(bad_id, 1)} to {max(bad_id, 3)}",
    ):
        gpt2(tokens)


def test_float_or_badly_shaped_token_input(gpt2: HookedTransformer) -> None:
    with (
        unchecked(),
        pytest.raises(
            ValueError, match=r"token input must be integer ids.*float32.*start_at_layer"
        ),
    ):
        gpt2(torch.randn(1, 4, 64))
    with (
        unchecked(),
        pytest.raises(
            ValueError,
            match=r"token input must be integer ids of shape \[batch, pos\] or \[pos\], got \(1, 2, 3\)",
        ),
    ):
        gpt2(torch.zeros(1, 2, 3, dtype=torch.long))


def test_attention_mask_must_have_the_tokens_shape(gpt2: HookedTransformer, tokens) -> None:
    """A mask that does not match the tokens [batch, pos] is refused, never broadcast; forward
    (from token ids or from a residual) and generate share the check."""
    ones = torch.ones_like(tokens)
    for bad in (ones[:1], ones[:, :-1], ones[0], ones[..., None]):
        message = (
            rf"attention_mask has shape {re.escape(str(tuple(bad.shape)))}, but the tokens have "
            r"shape \(2, 12\): it needs one entry per token, \[batch, pos\] \(it is not broadcast\)"
        )
        with unchecked(), pytest.raises(ValueError, match=message):
            gpt2(tokens, attention_mask=bad)
        with unchecked(), pytest.raises(ValueError, match=message):
            gpt2.generate(tokens, 1, attention_mask=bad, verbose=False)
    resid = gpt2(tokens, stop_at_layer=1)
    with (
        unchecked(),
        pytest.raises(ValueError, match=r"attention_mask has shape \(1, 12\), but the tokens"),
    ):
        gpt2(resid, start_at_layer=1, attention_mask=ones[:1])


def test_attention_mask_dtype_and_values(gpt2: HookedTransformer, tokens) -> None:
    ones = torch.ones_like(tokens)
    for dtype in (torch.float32, torch.float16):
        with (
            unchecked(),
            pytest.raises(
                ValueError, match=rf"attention_mask must hold integers or bools.*got {dtype}"
            ),
        ):
            gpt2(tokens, attention_mask=ones.to(dtype))
    for value, low, high in ((2, 1, 2), (-1, -1, 1)):
        bad = ones.clone()
        bad[1, 3] = value
        with (
            unchecked(),
            pytest.raises(
                ValueError,
                match=rf"attention_mask must be 1 for real tokens and 0 for padding, but it holds "
                rf"values from {low} to {high}",
            ),
        ):
            gpt2(tokens, attention_mask=bad)
    empty_row = ones.clone()
    empty_row[1] = 0
    with (
        unchecked(),
        pytest.raises(ValueError, match=r"attention_mask row 1 is all 0 \(rows \[1\] have no real"),
    ):
        gpt2(tokens, attention_mask=empty_row)
    with unchecked(), pytest.raises(ValueError, match=r"holds values from 2 to 2"):
        gpt2.generate(tokens, 1, attention_mask=2 * ones, verbose=False)
    with (
        unchecked(),
        pytest.raises(TypeError, match=r"attention_mask must be a tensor of 1s.*got str"),
    ):
        gpt2(tokens, attention_mask="all")
    # a bool, int32 or nested-list mask gives the same logits as a long one
    padded = ones.clone()
    padded[0, 9:] = 0
    with torch.no_grad():
        want = gpt2(tokens, attention_mask=padded)
        for same in (padded.bool(), padded.int(), padded.tolist()):
            assert torch.equal(gpt2(tokens, attention_mask=same), want)
        assert torch.equal(gpt2(tokens, attention_mask=ones.bool()), gpt2(tokens))
        # and the padded row's real positions are those of the row alone
        torch.testing.assert_close(want[0, :9], gpt2(tokens[:1, :9])[0], atol=1e-5, rtol=0)


def test_string_input_without_tokenizer(gpt2: HookedTransformer) -> None:
    with pytest.raises(
        ValueError, match="this model has no tokenizer: pass token ids, or call model.set_tokenizer"
    ):
        gpt2("hello")
    with pytest.raises(ValueError, match="no tokenizer"):
        gpt2.to_tokens("hello")


def test_bad_return_type_and_start_at_layer(gpt2: HookedTransformer, tokens) -> None:
    with (
        unchecked(),
        pytest.raises(
            ValueError, match="return_type must be 'logits', 'loss', 'both' or None, got 'logit'"
        ),
    ):
        gpt2(tokens, return_type="logit")
    with (
        unchecked(),
        pytest.raises(
            ValueError,
            match=r"with start_at_layer, input is the residual stream \[batch, pos, 64\]",
        ),
    ):
        gpt2(torch.randn(2, 12, 32), start_at_layer=1)
    resid = gpt2(tokens, stop_at_layer=1)
    with unchecked(), pytest.raises(ValueError, match="a loss needs token ids: pass tokens="):
        gpt2(resid, start_at_layer=1, return_type="loss")
    with (
        unchecked(),
        pytest.raises(
            ValueError,
            match=r"tokens has shape \(1, 12\), but the residual stream's \[batch, pos\] is \(2, 12\)",
        ),
    ):
        gpt2(resid, start_at_layer=1, tokens=tokens[:1], return_type="loss")
    # and the split run agrees with the full one
    with torch.no_grad():
        torch.testing.assert_close(gpt2(resid, start_at_layer=1), gpt2(tokens), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            gpt2(resid, start_at_layer=1, tokens=tokens, return_type="loss"),
            gpt2(tokens, return_type="loss"),
            atol=1e-6,
            rtol=0,
        )


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="d_model=60 is not divisible by n_heads=8"):
        HookedTransformerConfig(d_model=60, n_layers=1, n_ctx=8, d_vocab=10, n_heads=8)
    with pytest.raises(ValueError, match="n_heads=4 must be a multiple of n_key_value_heads=3"):
        HookedTransformerConfig(
            d_model=64, n_layers=1, n_ctx=8, d_vocab=10, n_heads=4, n_key_value_heads=3
        )
    with pytest.raises(ValueError, match="act_fn 'swish' is not supported"):
        HookedTransformerConfig(
            d_model=64, n_layers=1, n_ctx=8, d_vocab=10, n_heads=4, act_fn="swish"
        )
    with pytest.raises(ValueError, match=r"unknown HookedTransformerConfig fields: \['d_modle'\]"):
        HookedTransformerConfig.from_dict({"d_modle": 64})


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fixture, missing",
    [
        ("tiny_gpt2", "transformer.h.1.mlp.c_fc.weight"),
        ("tiny_gpt2", "transformer.h.0.attn.c_attn.bias"),
        ("tiny_llama", "model.layers.0.self_attn.k_proj.weight"),
        ("tiny_llama", "lm_head.weight"),
        ("tiny_llama_tied_bias", "model.layers.1.mlp.up_proj.bias"),
        ("tiny_neox", "gpt_neox.final_layer_norm.bias"),
    ],
)
def test_checkpoint_missing_a_tensor_names_it(
    request: pytest.FixtureRequest, tmp_path: Path, fixture: str, missing: str
) -> None:
    tiny: TinyModel = request.getfixturevalue(fixture)
    path = _copy_checkpoint(tiny.path, tmp_path / "broken")
    [weights] = path.glob("*.safetensors")
    tensors = load_file(weights)
    assert missing in tensors
    del tensors[missing]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(KeyError, match=rf"is missing tensor '{re.escape(missing)}'"):
        HookedTransformer.from_pretrained(path)


def test_checkpoint_with_a_wrong_shape_names_it(tiny_gpt2: TinyModel, tmp_path: Path) -> None:
    path = _copy_checkpoint(tiny_gpt2.path, tmp_path / "reshaped")
    [weights] = path.glob("*.safetensors")
    tensors = load_file(weights)
    tensors["transformer.h.0.mlp.c_fc.weight"] = tensors["transformer.h.0.mlp.c_fc.weight"][
        :, :100
    ].contiguous()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"blocks\.0\.mlp\.W_in: the checkpoint gives shape \(64, 100\), the model expects \(64, 256\)",
    ):
        HookedTransformer.from_pretrained(path)


@pytest.mark.parametrize("model_type", [None, "xlnet"])
def test_unsupported_architecture_is_named_with_the_supported_list(
    tiny_gpt2: TinyModel, tmp_path: Path, model_type: str | None
) -> None:
    path = _copy_checkpoint(tiny_gpt2.path, tmp_path / "xlnet")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["XLNetLMHeadModel"]
    if model_type is not None:
        config["model_type"] = model_type
    (path / "config.json").write_text(json.dumps(config))
    message = (
        r"architecture \['XLNetLMHeadModel'\] is not supported by lmscope\..*"
        r"Supported architectures: .*GPT2LMHeadModel.*GPTNeoXForCausalLM.*LlamaForCausalLM.*MistralForCausalLM"
    )
    with pytest.raises(ValueError, match=message):
        HookedTransformer.from_pretrained(path)
    # (BERT is an encoder: its error names HookedEncoder, tests/encoders/test_encoder_errors.py)


def test_directory_without_config_or_weights(tmp_path: Path, tiny_gpt2: TinyModel) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        HookedTransformer.from_pretrained(empty)
    shutil.copy(tiny_gpt2.path / "config.json", empty / "config.json")
    with pytest.raises(
        FileNotFoundError, match=r"has no \*\.safetensors or pytorch_model\*\.bin weights"
    ):
        HookedTransformer.from_pretrained(empty)


def _bin_checkpoint(tiny: TinyModel, path: Path) -> Path:
    path.mkdir()
    shutil.copy(tiny.path / "config.json", path / "config.json")
    state = {k: v.detach().clone().contiguous() for k, v in tiny.hf_model.state_dict().items()}
    torch.save(state, path / "pytorch_model.bin")
    return path


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_bin_checkpoint_loads_with_weights_only_and_matches_safetensors(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fixture: str,
    tokens,
) -> None:
    tiny: TinyModel = request.getfixturevalue(fixture)
    path = _bin_checkpoint(tiny, tmp_path / "bin")
    assert not list(path.glob("*.safetensors"))
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", spy)
    from_bin = HookedTransformer.from_pretrained(path)
    assert calls == [True]
    from_safetensors = HookedTransformer.from_pretrained(tiny.path)
    for name, value in from_safetensors.named_weights().items():
        assert torch.equal(from_bin.named_weights()[name], value), name
    with torch.no_grad():
        assert torch.equal(from_bin(tokens), from_safetensors(tokens))


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_bin_checkpoint_refuses_pickled_code(tmp_path: Path, tiny_gpt2: TinyModel) -> None:
    path = tmp_path / "evil"
    path.mkdir()
    shutil.copy(tiny_gpt2.path / "config.json", path / "config.json")
    torch.save(
        {"transformer.wte.weight": torch.zeros(2), "x": _Payload()}, path / "pytorch_model.bin"
    )
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        HookedTransformer.from_pretrained(path)
