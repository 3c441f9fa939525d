"""How budgets are written for readers: ``8/255`` on the 1/255 grid, a short decimal otherwise."""

from __future__ import annotations

import math
from typing import Any


def fmt_eps(eps: Any) -> str:
    """``8/255`` when ``eps`` is a multiple k/255 with 0 < k < 255, ``0`` for 0, else 4 significant digits.

    Args:
        eps: budget in [0,1] pixel units (any norm); ``None``/NaN give ``""``.
    """
    try:
        e = float(eps)
    except (TypeError, ValueError):
        return ""
    if math.isnan(e):
        return ""
    if e == 0:
        return "0"
    k = e * 255
    if 0 < round(k) < 255 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{e:.4g}"


def slug(*parts: Any) -> str:
    """A file-name-safe id from parts (``8/255`` becomes ``8-255``); stable across runs."""
    text = "--".join(str(p) for p in parts).replace("/", "-")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
