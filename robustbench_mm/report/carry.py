"""Carry the entries of an earlier release into a rebuild (``mmrobust leaderboard --carry RELEASE``).

Why: the stores behind a release are large and machine-local, so they are not committed. When a
later session (re)builds some entries, the others can only come from the committed release itself.
A carried entry keeps its row (numbers, commit, creation time) and its files (detail page, gallery,
certified plot, samples file) byte for byte; only its rank depends on the other entries, so the rank is
recomputed, in the table and in the page's "Rank k of m" line. An entry that a store holds replaces
the carried one (a store is the newer measurement).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from robustbench_mm.errors import StoreError
from robustbench_mm.report.entries import columns, schema
from robustbench_mm.report.stores import ENTRY_KEY, EPS_DIGITS

RANK_LINE = re.compile(r"Rank \d+ of \d+\.")
# entries columns added after schema version 1 was first released; an older release lacks them
ADDED_COLUMNS = ("ir_r1_clean", "ir_r1_robust")


def entry_key(row: dict[str, Any] | pd.Series) -> tuple[Any, ...]:
    return tuple(round(float(row[k]), EPS_DIGITS) if k == "eps" else str(row[k]) for k in ENTRY_KEY)


def _files(e: dict[str, Any]) -> list[str]:
    """The release files that belong to one entry alone (plots shared by entries are redrawn)."""
    stem = Path(e["detail"]).stem
    # samples/: absent in releases made before per-sample rows were written (v1); copied when there
    return [e["detail"], f"gallery/{stem}.png", f"plots/{stem}--certified.png", f"samples/{stem}.parquet"]


def read_release(path: str | Path, exclude: Iterable[tuple[Any, ...]] = ()) -> pd.DataFrame:
    """Rows of the release at ``path`` whose key is not in ``exclude``, checked to be complete.

    Raises ``StoreError`` (one line, exit 2) before anything is written: no release there, a
    release of another schema version, or an entry whose detail page is missing.
    """
    root = Path(path)
    table = root / "entries.parquet"
    if not table.is_file():
        raise StoreError(f"--carry {root} is not a leaderboard release (no entries.parquet); pass a folder "
                         f"written by `mmrobust leaderboard --out`")
    try:
        version = json.loads((root / "schema.json").read_text()).get("schema_version")
        df = pd.read_parquet(table)
    except (OSError, ValueError, AttributeError) as exc:
        raise StoreError(f"--carry {root} is unreadable ({exc}); rebuild it from its stores with "
                         f"`make leaderboard`") from None
    for name in ADDED_COLUMNS:  # a release from before these columns: none of its entries is retrieval
        if name not in df.columns:
            df[name] = np.nan
    df = df[[c for c in columns() if c in df.columns] + [c for c in df.columns if c not in columns()]]
    if version != schema()["schema_version"] or list(df.columns) != columns():
        raise StoreError(f"--carry {root} has entries schema version {version}, this mmrobust writes version "
                         f"{schema()['schema_version']}; rebuild it from its stores with `make leaderboard`")
    skip = set(exclude)
    df = df[[entry_key(r) not in skip for _, r in df.iterrows()]].reset_index(drop=True)
    for detail in df["detail"]:
        if not (root / detail).is_file():
            raise StoreError(f"--carry {root} is incomplete: {detail} is missing; restore the release "
                             f"(git checkout -- {root}) or rebuild it from its stores")
    # parquet gives list columns back as arrays; the release writes lists
    df["flags"] = [list(f) if isinstance(f, (list, np.ndarray)) else [] for f in df["flags"]]
    df["eps"] = df["eps"].astype(float).round(EPS_DIGITS)
    return df


def copy_entry(source: Path, root: Path, e: dict[str, Any], group_size: int) -> None:
    """Copy a carried entry's files from ``source`` into the new release ``root``, with its new rank."""
    for name in _files(e):
        if (source / name).is_file():
            shutil.copyfile(source / name, root / name)
    page = root / e["detail"]
    html = page.read_text()
    new, found = RANK_LINE.subn(f"Rank {int(e['rank'])} of {group_size}.", html)
    if found != 1:
        raise StoreError(f"--carry {source}: {e['detail']} has no single 'Rank k of m.' line; rebuild it "
                         f"from its stores")
    page.write_text(new)
