"""Checkpoint tensors a family leaves unread on purpose (`Family.unread`): the multi-token-prediction
heads hub checkpoints carry and transformers ignores. A tiny checkpoint with such tensors added
loads with unchanged logits; a stray tensor beside them is still refused."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lmscope import HookedTransformer
from lmscope.errors import CheckpointError
from tests._tiny import TinyModel

LOGIT_ATOL = 1e-5  # lmscope's float32 tolerance against transformers

# family spec -> the tensors its hub checkpoints carry beyond what transformers reads
EXTRA: dict[str, Callable[[int], dict[str, torch.Tensor]]] = {
    "qwen3_next": lambda n: {
        "mtp.fc.weight": torch.randn(40, 80),
        "mtp.layers.0.mlp.experts.0.up_proj.weight": torch.randn(12, 40),
        "mtp.norm.weight": torch.randn(40),
    },
    "deepseek_v3": lambda n: {
        f"model.layers.{n}.enorm.weight": torch.randn(8),
        f"model.layers.{n}.eh_proj.weight": torch.randn(8, 16),
    },
}


def _with_extra(tiny: TinyModel, extra: dict[str, torch.Tensor], dest: Path) -> Path:
    """A copy of `tiny`'s checkpoint with `extra` tensors written into its safetensors file."""
    shutil.copytree(tiny.path, dest)
    (file,) = dest.glob("*.safetensors")
    save_file({**load_file(file), **extra}, file, metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("name", list(EXTRA))
@torch.no_grad()
def test_mtp_tensors_are_left_unread_and_strays_refused(
    name: str, tiny_family: Callable[[str], TinyModel], tmp_path: Path
) -> None:
    tiny = tiny_family(name)
    tokens = torch.arange(9).reshape(1, 9)
    expected = HookedTransformer.from_pretrained_no_processing(tiny.path)(tokens)
    extra = EXTRA[name](tiny.hf_model.config.num_hidden_layers)
    with_mtp = _with_extra(tiny, extra, tmp_path / "mtp")
    model = HookedTransformer.from_pretrained_no_processing(with_mtp)
    # the same weights; rewritten files are mapped at other addresses, so kernels may round 1 ulp
    torch.testing.assert_close(model(tokens), expected, atol=LOGIT_ATOL, rtol=0)
    torch.testing.assert_close(model(tokens), tiny.hf_model(tokens).logits, atol=LOGIT_ATOL, rtol=0)

    stray = _with_extra(
        tiny, {**extra, "model.extra_head.weight": torch.randn(4, 4)}, tmp_path / "s"
    )
    with pytest.raises(CheckpointError, match=r"model\.extra_head\.weight") as err:
        HookedTransformer.from_pretrained_no_processing(stray)
    assert not any(n in str(err.value) for n in extra)  # only the stray is named
