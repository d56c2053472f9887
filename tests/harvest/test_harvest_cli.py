"""`python -m lmscope harvest`: the same files as lmscope.harvest; bad input is one
`lmscope: error:` line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from harvest_helpers import corpus

import lmscope
from lmscope.cli import main
from lmscope.harvest.reducers import Histogram, TopK, parse
from tests._tiny import TinyModel


def _args(model: TinyModel, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "harvest", "--model", str(model.path), "--dataset", str(data), "--out", str(out),
        "--hooks", "blocks.0.hook_resid_post", "--seq-len", "16", "--shard-tokens", "64", *extra,
    ]  # fmt: skip


def test_cli_writes_what_the_api_writes(
    tiny_gpt2_tok: TinyModel,
    tiny_tok_model: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus(40)))
    main(_args(tiny_gpt2_tok, data, tmp_path / "cli", "--reducer", "top_k:k=3,context=1"))
    assert "shards" in capsys.readouterr().out
    api = lmscope.harvest(
        lmscope.HookedTransformer.from_pretrained(tiny_gpt2_tok.path, verbose=False), data,
        hooks=["blocks.0.hook_resid_post"], out=tmp_path / "api", seq_len=16, shard_tokens=64,
        reducers=[TopK(k=3, context=1)], verbose=False,
    )  # fmt: skip
    cli = lmscope.harvest.open(tmp_path / "cli")
    assert cli.manifest["shards"] == api.manifest["shards"]
    values = cli.reduced["blocks.0.hook_resid_post"]["top_k"]["values"]
    assert torch.equal(values, api.reduced["blocks.0.hook_resid_post"]["top_k"]["values"])


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (("--hooks", "blocks.9.hook_resid_post"), "no hook point named 'blocks.9.hook_resid_post'"),
        (("--reducer", "median"), "unknown reducer 'median'"),
        (("--reducer", "top_k:kk=3"), "'kk=3' is not param=value"),
        (("--dtype", "float8"), "dtype 'float8' is not a floating torch dtype"),
        (("--seq-len", "8", "--shard-tokens", "4"), "pass shard_tokens >= 8"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    tiny_gpt2_tok: TinyModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    phrase: str,
) -> None:
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(corpus(10)))
    with pytest.raises(SystemExit) as exit_info:
        main(_args(tiny_gpt2_tok, data, tmp_path / "out", *extra))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmscope: error: ") and phrase in lines[0], lines


def test_parse_reducers() -> None:
    assert parse("top_k:k=20,context=4") == TopK(k=20, context=4)
    assert parse("histogram:low=-2.5,high=2,bins=10,name=h") == Histogram(-2.5, 2, 10, name="h")
