"""Issue 4's acceptance thresholds for the shipped zoo, measured through the runner as a user would
(`mmrobust run ... --attack none` and PGD with the preset's steps): clean accuracy, and ASR of
undefended PGD linf at 8/255 (>= 50%) and 32/255 (>= 90%). Samples are fixed by (task, seed, n)."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustbench_mm import api
from robustbench_mm.runner.resolve import CellSpec

CLEAN = {("clip-tiny", "fmnist-zeroshot"): 0.85, ("llava-tiny", "fmnist-vqa"): 0.80,
         ("llava-tiny", "fmnist-caption"): 0.80, ("blip2-tiny", "fmnist-vqa"): 0.80,
         ("blip2-tiny", "fmnist-caption"): 0.80}


@pytest.mark.slow
@pytest.mark.parametrize("model,task", list(CLEAN))
def test_clean_accuracy_meets_the_card_threshold(model: str, task: str, tmp_path: Path) -> None:
    n = 500 if model == "clip-tiny" else 200
    row = api.run_cell(CellSpec(model=model, task=task, attack="none", n=n, device="cpu"), out=tmp_path).row
    assert row["clean_accuracy"] >= CLEAN[(model, task)], row["clean_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["clip-tiny", "llava-tiny", "blip2-tiny"])
def test_undefended_pgd_breaks_the_zoo(model: str, tmp_path: Path) -> None:
    for eps, floor in ((8 / 255, 0.5), (32 / 255, 0.9)):
        row = api.run_cell(CellSpec(model=model, attack="pgd", eps=eps, n=64, device="cpu"), out=tmp_path).row
        assert row["asr"] >= floor, (eps, row["asr"])
        assert row["max_linf"] <= eps + 1e-6
