"""What ``mmrobust train`` does for a training defense: a thin caller of ``TrainingDefense.train``
(the template owns the reuse/retrain/resume rule; this is the name the CLI and API call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustbench_mm.defenses.training.template import TrainingDefense


def train_command(defense: TrainingDefense, model: Any, *, out: Path | None = None, resume: bool = True,
                  force: bool = False) -> dict[str, Any]:
    """Train ``defense`` for ``model`` (see ``TrainingDefense.train``); returns its record with
    ``path`` and ``reused``."""
    return defense.train(model, out=out, resume=resume, force=force)
