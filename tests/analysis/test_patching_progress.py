"""The patching sweep's progress bar: TransformerLens shows a tqdm bar over the patches of
`generic_activation_patch`; lmscope's shows on a terminal or in a Jupyter kernel (the notebooks run
sweeps of tens of seconds) and never with `verbose=False`."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch
from tiny_analysis_models import make_model, random_tokens

from lmscope.analysis import patching as P


class RecordingBar:
    """Stands in for tqdm: records how it was made and what it was told."""

    made: list[RecordingBar] = []

    def __init__(self, total: int, disable: bool, **kwargs: Any) -> None:
        self.total, self.disable, self.kwargs, self.done, self.closed = (
            total,
            disable,
            kwargs,
            0,
            False,
        )
        RecordingBar.made.append(self)

    def update(self, n: int) -> None:
        self.done += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def sweep(monkeypatch: pytest.MonkeyPatch):
    model = make_model("ln")
    clean = random_tokens(2, 5, seed=1)
    corrupted = clean.flip(0)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    RecordingBar.made = []
    monkeypatch.setattr(P, "tqdm", RecordingBar)

    def run(**kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            return P.get_act_patch_resid_pre(
                model, corrupted, clean_cache, lambda logits: logits[:, -1, 0].mean(), **kwargs
            )

    return model, run


def test_the_bar_counts_every_patch_and_closes(sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    model, run = sweep
    monkeypatch.setattr(P, "_interactive", lambda: True)
    grid = run(patches_per_forward=3)
    (bar,) = RecordingBar.made
    assert grid.shape == (model.cfg.n_layers, 5)
    assert bar.total == bar.done == model.cfg.n_layers * 5
    assert not bar.disable and bar.closed
    assert bar.kwargs["desc"] == "patching resid_pre" and bar.kwargs["delay"] == 2


def test_verbose_false_or_no_terminal_hides_it(sweep, monkeypatch: pytest.MonkeyPatch) -> None:
    _, run = sweep
    monkeypatch.setattr(P, "_interactive", lambda: True)
    run(verbose=False)
    monkeypatch.setattr(P, "_interactive", lambda: False)
    run()
    assert [bar.disable for bar in RecordingBar.made] == [True, True]


def test_a_jupyter_kernel_counts_as_interactive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    fake_ipython = types.ModuleType("IPython")
    shell = types.SimpleNamespace(kernel=object())  # what ipykernel's shell carries
    fake_ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    assert P._interactive()
    fake_ipython.get_ipython = lambda: types.SimpleNamespace()  # a terminal IPython shell
    assert not P._interactive()
    fake_ipython.get_ipython = lambda: None  # IPython imported, no shell running
    assert not P._interactive()
