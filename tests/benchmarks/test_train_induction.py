"""The induction-head benchmark (benchmarks/train_induction.py), shortened: after a few hundred
steps of lmscope.train a head of the 2-layer attention-only model attends like an induction head
on held-out repeated sequences, and the repeated half's loss falls far below the first half's."""

from __future__ import annotations

from benchmarks import train_induction as bench


def test_induction_head_forms_in_a_short_run() -> None:
    result = bench.run("quick", steps=300, verbose=False)
    assert result["before_best_induction_score"] < 0.3  # a random model: no induction head
    assert result["best_induction_score"] > 0.6
    assert result["best_head"].startswith("L1")  # induction needs a previous-token head first
    assert result["loss_repeated_half"] < 0.5 * result["loss_first_half"]
