"""``mmrobust show DIR --json | --csv | --gallery OUT.png``: a store's cells for machines and eyes."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_mm.errors import StoreError
from robustbench_mm.report.budget import fmt_eps
from robustbench_mm.report.gallery import cell_gallery, stack

ORDER = ["task", "model", "defense", "attack", "norm", "eps"]


def cells(asr: pd.DataFrame) -> pd.DataFrame:
    """Cells sorted for reading; ``eps`` written as ``8/255`` where on the 1/255 grid, ``eps_value`` numeric."""
    if asr.empty:
        return asr
    df = asr.sort_values([c for c in ORDER if c in asr], kind="stable").reset_index(drop=True)
    df.insert(df.columns.get_loc("eps") + 1, "eps_value", df["eps"].astype(float))
    df["eps"] = [fmt_eps(e) for e in df["eps"]]
    return df


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def to_json(df: pd.DataFrame) -> str:
    return json.dumps([{k: _plain(v) for k, v in r.items()} for r in df.to_dict("records")], indent=2, default=str)


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def write_gallery(root: str | Path, asr: pd.DataFrame, out: str | Path) -> int:
    """Stack the galleries of the store's cells into ``out`` (atomic); returns how many cells had one."""
    root, target = Path(root), Path(out)
    if target.suffix.lower() != ".png":
        raise StoreError(f"--gallery {out}: give a .png file name")
    ordered = cells(asr) if not asr.empty else asr
    grids = [found[0] for cid in (ordered["cell_id"] if not ordered.empty else [])
             if (found := cell_gallery(root / "cells" / str(cid)))]
    if not grids:
        raise StoreError(f"no cell in {root} recorded a gallery (cells run before galleries existed); re-run them "
                         f"with --force to record one")
    data = stack(grids)
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise StoreError(f"cannot write --gallery {out} ({exc.strerror}); choose a writable path") from None
    return len(grids)
