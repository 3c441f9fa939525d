"""Batch-level resume inside one cell.

A cell commits atomically, but some cells take hours on a CPU (smoothing defenses average many noisy
copies per forward). After every batch the cell's finished rows are saved in the store
(``DIR/progress/<cell_id>.pt``); rerunning the same command continues after the last saved batch.
A resumed cell equals an uninterrupted one: attack randomness is per example, and the defense's noise
generator and torch's global generator are seeded afresh for every batch (``runner.shards``), so
nothing random carries from one batch to the next and none is saved. Progress made at another commit is not reused (the cell records one
commit), nor progress that cannot be read: the cell then starts over, with a warning.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robustbench_mm.runner.provenance import git_commit

log = logging.getLogger(__name__)
FORMAT = 2  # 2: no carried random state (every batch seeds itself)


@dataclass
class CellProgress:
    """What a cell has finished: ``batches`` batches, their rows and certificates, its gallery."""

    batches: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    cert: list[pd.DataFrame] = field(default_factory=list)
    gallery: list[Any] = field(default_factory=list)
    elapsed_s: float = 0.0


class Checkpoint:
    """Saves and restores a cell's ``CellProgress`` in ``path``; valid only for the same key."""

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path, self.key = path, key

    @classmethod
    def for_cell(cls, store: Any, cell: Any) -> "Checkpoint | None":
        """The cell's checkpoint in ``store``; None for stores that keep no progress (workers) and for
        randomized defenses that cannot restart their random state per batch (``Defense.reseed``)."""
        from robustbench_mm.defenses.base import Defense

        where = getattr(store, "progress_file", None)
        if where is None:
            return None
        if cell.defense.randomized and type(cell.defense).reseed is Defense.reseed:
            return None  # it cannot restart its random state per batch: a resumed run could draw differently
        key = {"format": FORMAT, "cell_id": cell.cell_id, "git_commit": git_commit(),
               "batch_size": cell.spec.batch_size, "shard": cell.spec.shard or ""}
        return cls(where(cell.cell_id), key)

    def load(self) -> CellProgress | None:
        if not self.path.exists():
            return None
        try:
            saved = torch.load(self.path, weights_only=False)  # our own file in the user's store
            key, progress = saved["key"], saved["progress"]
        except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint only costs the time it saved
            log.warning("progress in %s is unreadable (%s); the cell starts over", self.path, exc)
            return None
        if key != self.key:
            changed = sorted(k for k in self.key if key.get(k) != self.key[k])
            log.warning("progress in %s was made with another %s; the cell starts over", self.path, ", ".join(changed))
            return None
        log.warning("resuming cell %s after %d finished batches (%d samples)", self.key["cell_id"],
                    progress.batches, len(progress.rows))
        return progress  # type: ignore[no-any-return]

    def save(self, progress: CellProgress) -> None:
        """Atomic write (tmp + rename): a crash while saving keeps the previous batch's progress."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": self.key, "progress": progress}, tmp)
        tmp.replace(self.path)

    def drop(self) -> None:
        self.path.unlink(missing_ok=True)
