"""Gallery grids: clean | adversarial | perturbation (amplified) per sample, with readable labels.

A grid is rendered once, when a cell runs (``runner/gallery_capture.py``), into the cell's directory
of the store (``cells/<id>/gallery/grid.png`` + ``gallery.json``); the report reads it back
(``report/gallery.py``): the leaderboard copies it and ``mmrobust show DIR --gallery OUT.png``
stacks the grids of a store. Nothing is recomputed.
"""

from __future__ import annotations

import io
from typing import Any, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GALLERY_DIR = "gallery"
GRID_FILE = "grid.png"
META_FILE = "gallery.json"
CELL_PX = 96          # each 32 px image is shown 3x (nearest neighbour: the pixels an attacker changed stay visible)
TEXT_W = 300
PAD = 4


class GallerySample(NamedTuple):
    """One row of a grid: images are ``[H,W,3]`` uint8; texts are class names or generated answers."""

    index: int
    clean: np.ndarray
    adv: np.ndarray
    label: str
    clean_out: str
    adv_out: str
    verdict: str  # "broken" | "robust" | "clean wrong" (never attacked: not counted robust)


def _font(size: int = 11) -> Any:
    return ImageFont.load_default(size=size)


def amplified(clean: np.ndarray, adv: np.ndarray) -> np.ndarray:
    """``adv - clean`` scaled so its largest entry spans the range: grey = unchanged, ``[H,W,3]`` uint8."""
    delta = adv.astype(np.float32) - clean.astype(np.float32)
    peak = float(np.abs(delta).max())
    scaled = 0.5 + 0.5 * delta / peak if peak > 0 else np.full_like(delta, 0.5)
    return np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)


def _tile(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img, "RGB").resize((CELL_PX, CELL_PX), Image.NEAREST)


def _wrap(text: str, width: int = 44) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_grid(samples: Sequence[GallerySample], title: str) -> bytes:
    """PNG bytes: a title, column heads, then one row per sample (clean, adversarial, amplified delta, texts)."""
    font, head_h, row_h = _font(), 36, CELL_PX + PAD
    width = 3 * (CELL_PX + PAD) + TEXT_W + PAD
    canvas = Image.new("RGB", (width, head_h + row_h * len(samples) + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, 2), _wrap(title, 70), fill="black", font=_font(12))
    for k, head in enumerate(("clean", "adversarial", "perturbation (amplified)")):
        draw.text((PAD + k * (CELL_PX + PAD), 20), head, fill="#444", font=font)
    for r, s in enumerate(samples):
        y = head_h + r * row_h
        for k, img in enumerate((s.clean, s.adv, amplified(s.clean, s.adv))):
            canvas.paste(_tile(img), (PAD + k * (CELL_PX + PAD), y))
        x = PAD + 3 * (CELL_PX + PAD)
        lines = [f"#{s.index}  true: {_wrap(s.label, 34)}", f"clean: {_wrap(s.clean_out)}",
                 f"adv:   {_wrap(s.adv_out)}", s.verdict]
        color_of = {"broken": "#b00", "robust": "#070"}
        for j, line in enumerate(lines):
            color = color_of.get(s.verdict, "#777") if j == 3 else "black"
            draw.text((x, y + 4 + 16 * j), line, fill=color, font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def captions(samples: Sequence[GallerySample]) -> list[dict[str, Any]]:
    """The texts of a grid as data (``gallery.json``), so pages can show them as text."""
    return [{"index": s.index, "label": s.label, "clean_out": s.clean_out, "adv_out": s.adv_out,
             "verdict": s.verdict} for s in samples]
