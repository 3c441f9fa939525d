"""Batch-level resume inside a cell: an interrupted cell continues after its last finished batch and
ends with exactly the rows an uninterrupted run writes (randomized defense included)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.runner import cell as cell_mod
from robustbench_mm.runner import resume
from robustbench_mm.runner.resolve import CellSpec
from robustbench_mm.runner.store import ResultStore

# fs (randomized: its noise generator carries from batch to batch) with 3 batches of 2
SPEC = CellSpec(model="clip-tiny", attack="pgd", defense="fs-quick", task="fmnist-zeroshot", steps=3, n=6,
                batch_size=2, seed=0, device="cpu")


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    with ResultStore(out) as store:
        return {t: store.read(t) for t in ("samples", "certified")}


def _interrupt_at_batch(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    real, calls = cell_mod.evaluate_halving_on_oom, []

    def stop_at_k(*args: object) -> object:
        calls.append(1)
        if len(calls) == k:
            raise KeyboardInterrupt  # Ctrl-C or a killed session: nothing is committed
        return real(*args)

    monkeypatch.setattr(cell_mod, "evaluate_halving_on_oom", stop_at_k)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("whole")
    assert api.run_cell(SPEC, out=str(out)).status == "ok"
    return _tables(out)


def test_resumed_cell_equals_uninterrupted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           uninterrupted: dict[str, pd.DataFrame]) -> None:
    _interrupt_at_batch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        api.run_cell(SPEC, out=str(tmp_path))
    progress = list((tmp_path / "progress").glob("*.pt"))
    assert len(progress) == 1 and not any((tmp_path / "cells").iterdir())
    monkeypatch.undo()

    seen: list[int] = []
    summary = api.run_cell(SPEC, out=str(tmp_path), progress=seen.append)
    assert summary.status == "ok" and summary.row["n"] == 6
    assert seen == [2, 2, 2]  # the two saved batches count as done
    assert not progress[0].exists()  # dropped once the cell committed
    resumed = _tables(tmp_path)
    for table, rows in uninterrupted.items():
        pd.testing.assert_frame_equal(resumed[table], rows)


@pytest.mark.parametrize("damage", ["other-commit", "unreadable"])
def test_progress_that_cannot_be_trusted_starts_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture, damage: str,
                                                     uninterrupted: dict[str, pd.DataFrame]) -> None:
    _interrupt_at_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        api.run_cell(SPEC, out=str(tmp_path))
    monkeypatch.undo()
    (saved,) = (tmp_path / "progress").glob("*.pt")
    if damage == "unreadable":
        saved.write_bytes(b"not a checkpoint")
    else:
        monkeypatch.setattr(resume, "git_commit", lambda: "0" * 40)
    seen: list[int] = []
    with caplog.at_level(logging.WARNING):
        assert api.run_cell(SPEC, out=str(tmp_path), progress=seen.append).status == "ok"
    assert "starts over" in caplog.text and ("git_commit" in caplog.text or damage == "unreadable")
    assert seen == [2, 2, 2]
    for table, rows in _tables(tmp_path).items():
        pd.testing.assert_frame_equal(rows, uninterrupted[table])


def test_randomized_defense_that_cannot_reseed_is_not_resumed() -> None:
    """A randomized defense that cannot restart its random state per batch (``reseed``) runs each cell whole."""
    from robustbench_mm.defenses.base import Defense
    from robustbench_mm.runner.resolve import resolve

    class Opaque(Defense):
        randomized = True

        def apply(self, model: object) -> object:
            return model

    cell = resolve(SPEC)
    store = ResultStore(Path("unused"))
    assert resume.Checkpoint.for_cell(store, cell) is not None
    cell.defense = Opaque()
    assert resume.Checkpoint.for_cell(store, cell) is None
