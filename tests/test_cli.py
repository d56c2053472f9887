"""`python -m lmscope`: bad input prints one `lmscope: error:` line and exits 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmscope.cli import main
from tests._tiny import TinyModel


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmscope", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _assert_one_error_line(stderr: str, *phrases: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmscope: error: "), stderr
    assert "Traceback" not in stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (("--model", "nosuchmodel"), ("unknown model 'nosuchmodel'", "MODEL_ALIASES")),
        # each a CLI subprocess (~3 s on 2 cores): test-fast runs the first only
        pytest.param(
            ("--prompt", ""), ("--prompt is empty", "pass some text"), marks=pytest.mark.slow
        ),
        # an uncached hub id while offline, with an empty cache: fails at once, no network wait
        pytest.param(
            ("--model", "lmscope-test/no-such-repo"),
            ("not in the local cache", "Connect to the"),
            marks=pytest.mark.slow,
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: tuple[str, ...], phrases: tuple[str, ...], tmp_path: Path
) -> None:
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = _run_cli("demo", *args, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stdout == ""
    _assert_one_error_line(out.stderr, *phrases)


def test_bad_input_in_process(
    tiny_gpt2_tok: TinyModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [
        (["--model", " "], "--model is empty"),
        (["--model", str(tmp_path / "missing.gguf")], "no such file or directory"),
        (["--model", str(tmp_path)], "has no config.json"),  # a directory that is no checkpoint
        (["--model", str(tiny_gpt2_tok.path), "--prompt", "word " * 100], "shorten it"),
        (["--html", str(tmp_path / "page.png")], "must name an .html file"),
        (["--html", str(tmp_path / "no" / "page.html")], "does not exist"),
    ]
    for args, phrase in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["demo", *args])
        assert exit_info.value.code == 2
        _assert_one_error_line(capsys.readouterr().err, phrase)
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: the same status
        main(["demo", "--no-such-option"])
    assert exit_info.value.code == 2


def test_demo_leaves_autograd_as_it_found_it() -> None:
    """demo runs without gradients but must not switch them off for the caller (a notebook or a
    test that calls it in-process), also when it fails."""
    with pytest.raises(SystemExit):
        main(["demo", "--model", "no-such-model-anywhere"])
    assert torch.is_grad_enabled()
