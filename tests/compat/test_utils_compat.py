"""TransformerLens's utils functions behave as TransformerLens documents them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch

from lmscope import utilities, utils
from tests._tiny import fake_hub_cache
from tests._unchecked import unchecked


def test_matrix_predicates() -> None:
    assert utils.is_square(torch.zeros(3, 3)) and not utils.is_square(torch.zeros(2, 3))
    assert not utils.is_square(torch.zeros(1, 3, 3))
    assert utils.is_lower_triangular(torch.ones(4, 4).tril())
    assert not utils.is_lower_triangular(torch.ones(4, 4))
    assert not utils.is_lower_triangular(torch.ones(2, 3).tril())


def test_tensor_helpers() -> None:
    assert utils.remove_batch_dim(torch.zeros(1, 4, 5)).shape == (4, 5)
    assert utils.remove_batch_dim(torch.zeros(2, 4)).shape == (2, 4)
    assert utils.transpose(torch.zeros(2, 3, 4)).shape == (2, 4, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert utils.get_offset_position_ids(0, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert utils.get_offset_position_ids(3, mask).tolist() == [[1, 2], [3, 4]]
    assert utils.get_cumsum_along_dim(torch.tensor([1, 2, 3]), 0, reverse=True).tolist() == [
        6,
        5,
        3,
    ]
    rep = utils.repeat_along_head_dimension(torch.arange(6.0).reshape(1, 2, 3), n_heads=2)
    assert rep.shape == (1, 2, 2, 3) and torch.equal(rep[:, :, 1], rep[:, :, 0])
    assert utils.filter_dict_by_prefix({"a.b": 1, "a.c": 2, "ab.d": 3}, "a") == {"b": 1, "c": 2}


def test_to_numpy() -> None:
    assert (
        utils.to_numpy(torch.ones(2, dtype=torch.bfloat16, requires_grad=True)).dtype.name
        == "float32"
    )
    assert utils.to_numpy([1, 2]).tolist() == [1, 2]
    with unchecked(), pytest.raises(ValueError, match="to_numpy"):
        utils.to_numpy(object())


def test_init_functions_follow_fans() -> None:
    assert utils.calc_fan_in_and_fan_out(torch.empty(12, 768, 64)) == (768, 768)
    assert utils.calc_fan_in_and_fan_out(torch.empty(5)) == (1, 5)
    with pytest.raises(ValueError):
        utils.calc_fan_in_and_fan_out(torch.empty(()))
    torch.manual_seed(0)
    w = utils.init_kaiming_uniform_(torch.empty(400, 300))  # relu gain sqrt(2), fan_in 400
    bound = math.sqrt(2) * math.sqrt(3 / 400)
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    w = utils.init_kaiming_normal_(torch.empty(400, 1000), nonlinearity="linear", mode="fan_out")
    assert abs(w.std().item() - 1 / math.sqrt(1000)) < 2e-3 / math.sqrt(10)
    w = utils.init_xavier_uniform_(torch.empty(200, 300), gain=2.0)
    assert w.abs().max() <= 2.0 * math.sqrt(6 / 500)
    w = utils.init_xavier_normal_(torch.empty(500, 500))
    assert abs(w.std().item() - math.sqrt(2 / 1000)) < 1e-3


def test_defaults_and_library() -> None:
    assert utils.override_or_use_default_value(True, utils.USE_DEFAULT_VALUE) is True
    assert utils.override_or_use_default_value(True, False) is False
    assert utils.is_library_available("torch") and not utils.is_library_available("no_such_pkg_xq")
    model = SimpleNamespace(
        cfg=SimpleNamespace(default_prepend_bos=True),
        tokenizer=SimpleNamespace(padding_side="right"),
    )
    with utils.LocallyOverridenDefaults(model, prepend_bos=False, padding_side="left"):
        assert model.cfg.default_prepend_bos is False and model.tokenizer.padding_side == "left"
    assert model.cfg.default_prepend_bos is True and model.tokenizer.padding_side == "right"
    with pytest.raises(ValueError, match="padding_side"):
        utils.LocallyOverridenDefaults(model, padding_side="middle")


def test_losses_with_masks() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.5, 0.5]]]))
    tokens = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[1, 1, 0]])
    per_token = utils.lm_cross_entropy_loss(logits, tokens, mask, per_token=True)
    assert torch.allclose(per_token, torch.tensor([[math.log(2), 0.0]]))
    assert torch.allclose(
        utils.lm_cross_entropy_loss(logits, tokens, mask), torch.tensor(math.log(2))
    )
    with unchecked(), pytest.raises(ValueError, match="no position"):
        utils.lm_cross_entropy_loss(logits, tokens, torch.tensor([[1, 0, 0]]))
    with unchecked(), pytest.raises(ValueError, match="shape"):
        utils.lm_cross_entropy_loss(logits, tokens, torch.ones(1, 2, dtype=torch.long))
    assert utils.lm_accuracy(logits, tokens, per_token=True).tolist() == [[False, True]]
    assert utils.lm_accuracy(logits, tokens, attention_mask=mask).item() == 0.0


def test_attention_mask_and_bos_helpers() -> None:
    tok = SimpleNamespace(pad_token_id=0, bos_token_id=0, padding_side="left")
    tokens = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]])  # BOS shares the pad id
    assert utils.get_attention_mask(tok, tokens, prepend_bos=True).tolist() == [
        [0, 1, 1, 1],
        [1, 1, 1, 1],
    ]
    assert utils.get_attention_mask(tok, tokens, prepend_bos=False).tolist() == [
        [0, 0, 1, 1],
        [0, 1, 1, 1],
    ]
    right = torch.tensor([[3, 4, 0, 0]])
    assert utils.get_attention_mask(tok, right, False, padding_side="right").tolist() == [
        [1, 1, 0, 0]
    ]
    assert utils.get_tokens_with_bos_removed(tok, tokens).tolist() == [[0, 5, 6], [7, 8, 9]]
    assert utils.get_input_with_manually_prepended_bos("<s>", ["a", "b"]) == ["<s>a", "<s>b"]
    assert utils.get_input_with_manually_prepended_bos(None, "a") == "a"


def test_activation_functions() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert torch.allclose(
        utils.gelu_new(x), torch.nn.functional.gelu(x, approximate="tanh"), atol=1e-6
    )
    assert torch.allclose(utils.gelu_fast(x), utils.gelu_new(x), atol=1e-6)
    assert torch.allclose(utils.solu(x), x * x.softmax(-1))
    assert utilities.sample_logits(torch.tensor([[0.0, 5.0, 1.0]]), do_sample=False).tolist() == [1]


def test_download_file_from_hf_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    snapshot = fake_hub_cache(tmp_path, "org/repo")
    (snapshot / "cfg.json").write_text('{"n_layers": 3}')
    torch.save({"w": torch.ones(2)}, snapshot / "w.pth")
    assert utils.download_file_from_hf("org/repo", "cfg.json", cache_dir=str(tmp_path)) == {
        "n_layers": 3
    }
    loaded = utils.download_file_from_hf("org/repo", "w.pth", cache_dir=str(tmp_path))
    assert torch.equal(loaded["w"], torch.ones(2))
    with pytest.raises(OSError, match="not in the local cache"):
        utils.download_file_from_hf("org/repo", "missing.json", cache_dir=str(tmp_path))


def test_get_dataset_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="not one of"):
        utils.get_dataset("not-a-dataset")


def test_to_numpy_names_an_invalid_type() -> None:
    # TransformerLens's unit tests match "invalid type" in the message.
    with unchecked(), pytest.raises(ValueError, match="invalid type dict"):
        utils.to_numpy({"a": 1})
