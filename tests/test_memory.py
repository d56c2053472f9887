"""lmscope tunes glibc malloc on the first run_with_cache (freed memory is kept for reuse), not on
import, and not at all when told not to."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import lmscope.memory


@pytest.mark.slow  # two Python subprocesses importing torch (~6 s on 2 cores)
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_on_the_first_cached_run_not_on_import_and_off_by_env() -> None:
    assert lmscope.memory.tune_malloc() is True
    code = (
        "import torch, lmscope, lmscope.memory as m; print(m._tuned); "
        "cfg = dict(n_layers=1, d_model=8, n_ctx=8, d_head=4, n_heads=2, d_vocab=16, act_fn='relu'); "
        "lmscope.HookedTransformer(cfg).run_with_cache(torch.zeros(1, 3, dtype=torch.long)); "
        "print(m._tuned)"
    )
    for setting, after in (("1", "True"), ("0", "False")):
        env = {**os.environ, "LMSCOPE_TUNE_MALLOC": setting}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.stdout.split() == ["None", after], out.stderr
