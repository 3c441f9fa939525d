"""Gallery grids of a store, read back: one cell's grid and captions, or several stacked.

The grids were rendered when their cells ran (``runner/gallery_render.py``); nothing is recomputed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from robustbench_mm.errors import StoreError
from robustbench_mm.runner.gallery_render import GALLERY_DIR, GRID_FILE, META_FILE


def cell_gallery(cell_dir: Path) -> tuple[Path, list[dict[str, Any]]] | None:
    """``(grid.png, captions)`` of a committed cell, or ``None`` when the cell recorded no gallery."""
    grid = cell_dir / GALLERY_DIR / GRID_FILE
    if not grid.is_file():
        return None
    try:
        meta = json.loads((cell_dir / GALLERY_DIR / META_FILE).read_text())
    except (OSError, ValueError):
        meta = []
    return grid, meta


def stack(grids: Sequence[Path]) -> bytes:
    """Grids one under another (``mmrobust show --gallery``); each keeps its own title."""
    images = [Image.open(p).convert("RGB") for p in grids]
    if not images:
        raise StoreError("no gallery to write")
    width = max(i.width for i in images)
    canvas = Image.new("RGB", (width, sum(i.height for i in images)), "white")
    y = 0
    for img in images:
        canvas.paste(img, (0, y))
        y += img.height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
