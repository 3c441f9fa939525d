"""``samples/<entry slug>.parquet``: the per-sample rows behind one release entry, committed so that
anyone can re-derive the entry's numbers from them (``mmrobust leaderboard --verify``).

Certificates: ``certified`` (the sample's prediction has a sound certificate at the entry's l2
radius, as ``runner/certified_rows.attach_certified`` marks it) is written only for an entry with a
certified accuracy. The store's flag is ``False`` on every sample of a cell without a sound
certificate, which would read as "0% certified" rather than "no certificate".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_mm.errors import StoreError
from robustbench_mm.report.stores import Cell

FOLDER = "samples"
BASE = ("index", "label", "clean_pred", "adv_pred", "clean_correct", "adv_correct", "success", "broken_by")
OPTIONAL = ("broken_draws", "correct_draw_fraction", "final_adv_correct", "clean_text", "adv_text")
CERT = ("certified_bound", "rs_radius", "p_lower", "rs_prediction", "rs_abstain")  # context, not recomputed
BOOL = ("clean_correct", "adv_correct", "success", "certified")


def path_of(detail: str) -> str:
    """Release-relative path of an entry's samples file (the stem of its detail page)."""
    return f"{FOLDER}/{Path(detail).stem}.parquet"


def frame(cell: Cell, e: dict[str, Any]) -> pd.DataFrame:
    """The entry's per-sample columns, in a fixed order (``StoreError`` if the store lacks one)."""
    s = cell.samples
    missing = [c for c in BASE if c not in s]
    if missing:
        raise StoreError(f"cell {cell.row.get('cell_id')} has no per-sample {', '.join(missing)}; re-run its "
                         f"`mmrobust benchmark` command into a new store")
    cols = list(BASE) + [c for c in OPTIONAL + CERT if c in s]
    # a store's view fills the flag with NaN for a cell that did not record it: that is no flag
    if not math.isnan(float(e["certified_accuracy"])) and "certified" in s and s["certified"].notna().all():
        cols.append("certified")
    out = s[cols].sort_values("index", kind="stable").reset_index(drop=True)
    for c in BOOL:
        if c in out:
            out[c] = out[c].fillna(False).astype(bool)
    out["broken_by"] = out["broken_by"].fillna("").astype(str)
    return out


def write(cell: Cell, e: dict[str, Any], root: Path) -> None:
    frame(cell, e).to_parquet(root / path_of(e["detail"]), index=False, compression="zstd")
