"""How budgets are written for readers (``8/255`` on the 1/255 grid, from ``presets.fmt_eps``) and
file-name-safe ids for the release's pages."""

from __future__ import annotations

from typing import Any

from robustbench_mm.presets import fmt_eps

__all__ = ["fmt_eps", "slug"]


def slug(*parts: Any) -> str:
    """A file-name-safe id from parts (``8/255`` becomes ``8-255``); stable across runs."""
    text = "--".join(str(p) for p in parts).replace("/", "-")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
