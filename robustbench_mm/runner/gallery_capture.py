"""Keep the first few samples of a running cell for its gallery; hand them to the store as one table.

``capture`` is called per evaluated batch with the images and the fp32 verdict's outputs; ``take``
returns the ``gallery`` table (``name``, ``data`` bytes) that ``ResultStore.commit_cell`` writes as
files into the cell's directory in the same atomic commit, so a gallery never outlives or
precedes its cell. Rows travel inside the tables dict, so remote executors carry them as well.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from robustbench_mm.presets import fmt_eps
from robustbench_mm.runner.gallery_render import GRID_FILE, META_FILE, GallerySample, captions, render_grid

GALLERY_SAMPLES = 8
TABLE = "gallery"  # the key in a cell's tables; written as files, not parquet
_pending: dict[str, list[GallerySample]] = {}


def _uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())


def _name(value: Any, classes: Sequence[str] | None) -> str:
    if isinstance(value, str):
        return value
    k = int(value)
    return str(classes[k]) if classes and 0 <= k < len(classes) else str(k)


def capture(cell: Any, batch: Any, x_adv: torch.Tensor, clean_pred: Any, adv_pred: Any,
            success: torch.Tensor, clean_ok: torch.Tensor) -> None:
    """Remember samples of ``batch`` until the cell has ``GALLERY_SAMPLES`` (first in dataset order)."""
    kept = _pending.setdefault(cell.cell_id, [])
    if len(kept) >= GALLERY_SAMPLES or batch.pixels.dim() != 4 or batch.pixels.shape[1] != 3:
        return
    classes = getattr(cell.task, "classes", None)
    classes = list(classes) if isinstance(classes, (list, tuple)) else None
    answers = batch.answers or []
    for i in range(min(len(batch), GALLERY_SAMPLES - len(kept))):
        label = _name(int(batch.labels[i]), classes) if classes or not answers else str(answers[i])
        verdict = "clean wrong" if not bool(clean_ok[i]) else ("broken" if bool(success[i]) else "robust")
        kept.append(GallerySample(int(batch.index[i]), _uint8(batch.pixels[i]), _uint8(x_adv[i]), label,
                                  _name(clean_pred[i], classes), _name(adv_pred[i], classes), verdict))


def take(cell: Any, ok: bool) -> pd.DataFrame | None:
    """The cell's ``gallery`` table (``grid.png`` and ``gallery.json``), or ``None``; clears the buffer."""
    samples = sorted(_pending.pop(cell.cell_id, []), key=lambda s: s.index)
    if not ok or not samples:
        return None
    threat = cell.attack.describe()
    title = (f"{cell.entry.name} / {cell.defense.name} / {cell.attack.name} / {cell.task.name} / "
             f"{threat['norm'] or 'clean'} {fmt_eps(threat['eps'])}")
    meta = json.dumps({"title": title, "samples": captions(samples)}, indent=1).encode()
    return pd.DataFrame({"name": [GRID_FILE, META_FILE], "data": [render_grid(samples, title), meta]})


def reset(cell_id: str) -> None:
    """Forget what an earlier, interrupted evaluation of ``cell_id`` captured."""
    _pending.pop(cell_id, None)


def pending(cell_id: str) -> list[GallerySample]:
    """What ``cell_id`` has captured so far (saved with a cell's progress)."""
    return list(_pending.get(cell_id, []))


def restore(cell_id: str, samples: list[GallerySample]) -> None:
    """Continue a resumed cell's capture from its saved samples."""
    _pending[cell_id] = list(samples)
