"""Certified accuracy read from a cell's certificate rows (sound ``certified_accuracy`` rows only)."""

from __future__ import annotations

import pandas as pd


def certified_at(table: pd.DataFrame, norm: str | None, eps: float) -> float:
    """Share of samples certified correct at l2 radius ``eps`` (abstentions count as not certified).

    ``table`` is per-sample (``value`` column, one row per sample) or aggregated (``mean``); NaN when
    the threat model is not l2 or no sound ``certified_accuracy`` row exists at that radius."""
    nan = float("nan")
    if norm != "l2" or table is None or table.empty or "quantity" not in table:
        return nan
    kind = table["bound_kind"] if "bound_kind" in table else pd.Series("estimate", index=table.index)
    at = table[(table["quantity"] == "certified_accuracy") & (kind == "sound")
               & ((table["radius"].astype(float) - float(eps)).abs() < 1e-9)]
    if at.empty:
        return nan
    if "value" in at:
        return float(at["value"].astype(float).fillna(0.0).mean())
    return float(at["mean"].astype(float).iloc[0])
