"""Nightly check: compare fresh entries with a release's ``entries.parquet``.

A regression is an entry whose robust accuracy left the release's 95% interval
``[robust_low, robust_high]`` (either direction: with fixed seeds a real move means code,
weights or data changed). New and missing entries are listed, never fatal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from robustbench_mm.report.budget import fmt_eps
from robustbench_mm.report.stores import ENTRY_KEY, EPS_DIGITS


@dataclass
class Comparison:
    changes: pd.DataFrame   # one row per key in either table: key, change, note
    regressions: list[str]  # one line per regressed entry

    def summary(self) -> str:
        counts = self.changes["change"].value_counts().to_dict() if not self.changes.empty else {}
        return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no entries"


def _keyed(df: pd.DataFrame) -> dict[tuple[Any, ...], pd.Series]:
    df = df.assign(eps=df["eps"].astype(float).round(EPS_DIGITS))
    return {tuple(r[k] for k in ENTRY_KEY): r for _, r in df.iterrows()}


def label(key: tuple[Any, ...]) -> str:
    task, norm, eps, model, defense = key
    return f"{task}/{model}/{defense} ({norm} {fmt_eps(eps)})"


def compare(release: pd.DataFrame, fresh: pd.DataFrame) -> Comparison:
    old, new = _keyed(release), _keyed(fresh)
    rows, regressions = [], []
    for key in sorted(set(old) | set(new), key=str):
        change, note = _classify(old.get(key), new.get(key))
        if change == "regressed":
            regressions.append(f"{label(key)}: {note}")
        rows.append({**dict(zip(ENTRY_KEY, key)), "change": change, "note": note})
    return Comparison(pd.DataFrame(rows, columns=ENTRY_KEY + ["change", "note"]), regressions)


def _classify(before: pd.Series | None, after: pd.Series | None) -> tuple[str, str]:
    if before is None:
        return "new", "not in the release"
    if after is None:
        return "missing", "in the release, not in this run"
    a, lo, hi = float(after["robust_accuracy"]), float(before["robust_low"]), float(before["robust_high"])
    was = float(before["robust_accuracy"])
    if math.isnan(a) or a < lo - 1e-9 or a > hi + 1e-9:
        way = "down (less robust or stronger attack)" if a < lo else "up (more robust or weaker attack)"
        return "regressed", (f"robust accuracy {was:.4f} -> {a:.4f}, outside the release's 95% interval "
                             f"[{lo:.4f}, {hi:.4f}]; {way}")
    if abs(a - was) < 1e-12:
        return "same", ""
    return "within-interval", f"robust accuracy {was:.4f} -> {a:.4f} (inside [{lo:.4f}, {hi:.4f}])"
