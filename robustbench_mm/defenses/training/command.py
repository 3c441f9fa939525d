"""What ``mmrobust train`` does for a training defense."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustbench_mm.defenses.training.paths import DONE_FILE, cache_root, finished, recorded_hash

if TYPE_CHECKING:
    from robustbench_mm.defenses.training.template import TrainingDefense

log = logging.getLogger(__name__)


def train_command(defense: TrainingDefense, model: Any, *, out: Path | None = None, resume: bool = True,
                  force: bool = False) -> dict[str, Any]:
    """What ``mmrobust train`` does for a training defense: train into ``out`` (default: the cache
    directory of the recipe), resuming a checkpoint; finished weights are reused unless ``force``."""
    path = Path(out) if out else cache_root() / defense.recipe_hash(model)
    if not force:
        existing = defense.weights_dir(model) if out is None else path
        if finished(existing) and recorded_hash(existing) == defense.recipe_hash(model):
            record = json.loads((existing / DONE_FILE).read_text())
            return record | {"path": str(existing), "reused": True}
    if force or (finished(path) and recorded_hash(path) != defense.recipe_hash(model)):
        log.info("%s: %s holds weights of another recipe or base-model revision; retraining", defense.name, path)
        shutil.rmtree(path / "checkpoint", ignore_errors=True)
        (path / DONE_FILE).unlink(missing_ok=True)
    return defense.fit(model, path, resume=resume) | {"path": str(path), "reused": False}
