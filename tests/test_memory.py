"""lmscope tunes glibc malloc on import (freed memory is kept for reuse), unless told not to."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import lmscope.memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_on_import_and_off_by_env() -> None:
    assert lmscope.memory.tune_malloc() is True
    code = "import lmscope, lmscope.memory as m; print(m._tuned)"
    env = {**os.environ, "LMSCOPE_TUNE_MALLOC": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
