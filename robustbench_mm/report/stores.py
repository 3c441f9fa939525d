"""Read protocol stores for the leaderboard: validate them and pick one cell per entry key.

Bad input raises ``StoreError`` (one line, exit 2 in the CLI) before anything is written: a path
that is no store, a store of another schema version, a store without protocol cells, and two
stores that disagree about the same entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from robustbench_mm.errors import StoreError
from robustbench_mm.report.budget import fmt_eps
from robustbench_mm.runner.store import MARKER, SCHEMA_VERSION, ResultStore

ENTRY_KEY = ["task", "norm", "eps", "model", "defense"]
EPS_DIGITS = 9  # eps compared after rounding: 8/255 from two stores must be one key


@dataclass
class Cell:
    """One protocol cell chosen for an entry, with the rows and files behind it."""

    row: pd.Series
    samples: pd.DataFrame
    certified: pd.DataFrame
    cell_dir: Path
    meta: dict[str, Any]


def read_stores(paths: Sequence[str | Path]) -> dict[tuple[Any, ...], Cell]:
    """``{entry key: Cell}`` over all stores; one cell per (task, norm, eps, model, defense)."""
    if not paths:
        raise StoreError("leaderboard needs at least one store written by `mmrobust benchmark --out DIR`, "
                         "or --carry RELEASE to re-render an earlier release")
    chosen: dict[tuple[Any, ...], tuple[Path, Cell]] = {}
    for path in paths:
        root = Path(path)
        for key, cell in _store_cells(root).items():
            if key in chosen and not _same(chosen[key][1], cell):
                other = chosen[key][0]
                raise StoreError(f"stores {other} and {root} both hold {_label(key)} with different results "
                                 f"(cells {chosen[key][1].row['cell_id']} and {cell.row['cell_id']}); "
                                 f"pass only one of them")
            chosen.setdefault(key, (root, cell))
    return {k: v[1] for k, v in sorted(chosen.items(), key=lambda kv: str(kv[0]))}


def _label(key: tuple[Any, ...]) -> str:
    task, norm, eps, model, defense = key
    return f"{task} / {model} / {defense} at {norm} {fmt_eps(eps)}"


def _same(a: Cell, b: Cell) -> bool:
    cols = ("cell_id", "n", "robust_accuracy", "clean_accuracy")
    return all(str(a.row.get(c)) == str(b.row.get(c)) for c in cols)


def _check_store(root: Path) -> ResultStore:
    if not root.is_dir():
        raise StoreError(f"{root} does not exist; run the manifest's `mmrobust benchmark ... --out {root}` first")
    marker = root / MARKER
    if not marker.is_file():
        raise StoreError(f"{root} is not an mmrobust store (no {MARKER}); pass a directory written by "
                         f"`mmrobust benchmark --out DIR`")
    try:
        version = json.loads(marker.read_text()).get("schema_version")
    except (OSError, ValueError, AttributeError):
        raise StoreError(f"{marker} is unreadable; run `mmrobust store repair {root}`") from None
    if version != SCHEMA_VERSION:
        raise StoreError(f"store {root} has schema version {version}, this mmrobust reads version "
                         f"{SCHEMA_VERSION}; re-run its benchmark commands into a new store with this version")
    store = ResultStore(root)
    problems = store.check()
    if problems:
        raise StoreError(f"store {root} is damaged: {problems[0]}; run `mmrobust store repair {root}`")
    return store


def _store_cells(root: Path) -> dict[tuple[Any, ...], Cell]:
    store = _check_store(root)
    asr = store.read("asr")
    if asr.empty:
        raise StoreError(f"store {root} has no cells yet; run `mmrobust benchmark ... --out {root}` first")
    versions = set(asr.get("schema_version", pd.Series([SCHEMA_VERSION])).dropna().astype(int))
    if versions - {SCHEMA_VERSION}:
        raise StoreError(f"store {root} holds rows of schema version {sorted(versions)}, this mmrobust reads "
                         f"version {SCHEMA_VERSION}; re-run its benchmark commands into a new store")
    if "shard" in asr and bool((asr["shard"].fillna("").astype(str) != "").any()):
        raise StoreError(f"store {root} holds shards of cells (--shard i/k); combine all k shard stores with "
                         f"`mmrobust merge DIR1 ... DIRk --out DIR` and pass DIR")
    protocol = asr["protocol"].fillna("").astype(str) if "protocol" in asr else pd.Series("", index=asr.index)
    asr = asr[(protocol != "") & (asr["status"] == "ok")].copy()
    if asr.empty:
        raise StoreError(f"store {root} has no finished protocol cells (plain `mmrobust run/grid` cells are not "
                         f"ranked); fill it with `mmrobust benchmark ... --out {root}`")
    asr["eps"] = asr["eps"].astype(float).round(EPS_DIGITS)
    if "vision_encoder" in asr:  # a VLM with a swapped tower is its own entry, named with its encoder
        enc = asr["vision_encoder"].fillna("").astype(str)
        asr.loc[enc != "", "model"] = asr["model"].astype(str) + " + " + enc
    # per key: the largest n, then the newest run (a store resumed with a bigger n supersedes itself)
    asr = asr.sort_values(["n", "created_at"]).drop_duplicates(ENTRY_KEY, keep="last")
    samples, certified = store.read("samples"), store.read("certified")
    out = {}
    for _, row in asr.iterrows():
        cid = row["cell_id"]
        cell_dir = root / "cells" / cid
        out[tuple(row[k] for k in ENTRY_KEY)] = Cell(
            row, _rows_of(samples, cid), _rows_of(certified, cid), cell_dir, _meta(cell_dir))
    return out


def _rows_of(df: pd.DataFrame, cell_id: str) -> pd.DataFrame:
    return df[df["cell_id"] == cell_id].reset_index(drop=True) if not df.empty else df


def _meta(cell_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((cell_dir / "meta.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}
