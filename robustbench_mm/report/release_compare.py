"""``mmrobust compare RELEASE_A RELEASE_B``: what changed between two leaderboard releases.

Per entry (``stores.ENTRY_KEY``) in both: robust accuracy before and after with both 95% intervals,
the rank in its table (same task + threat model) before and after, and the protocol ids. A move is
read against A's interval, as the nightly check does (``report/compare.py``): outside it with another
protocol id it is ``explained`` by the protocol versions between them (``report/protocol_history.py``);
outside it with the same id it is ``unexplained`` (code, weights or data changed). Entries only in
A are ``removed``, only in B ``new``. Bad input raises ``StoreError``/``ConfigError`` (one line, exit 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_mm.errors import StoreError
from robustbench_mm.report import protocol_history
from robustbench_mm.report.carry import entry_key
from robustbench_mm.report.compare import label
from robustbench_mm.report.stores import ENTRY_KEY

NEEDED = ("protocol", "rank", "robust_accuracy", "robust_low", "robust_high")
TOL = 1e-9  # the nightly check's tolerance at the interval's edges
CHANGES = ("unexplained", "explained", "within-interval", "same", "new", "removed")  # print order


@dataclass
class EntryChange:
    """One entry of either release; ``before``/``after`` fields are None where it is absent."""

    key: tuple[Any, ...]
    change: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    explanation: list[str] = field(default_factory=list)  # protocol versions between the two ids

    @property
    def label(self) -> str:
        return label(self.key)

    @property
    def delta(self) -> float | None:
        if self.before is None or self.after is None:
            return None
        return float(self.after["robust_accuracy"]) - float(self.before["robust_accuracy"])

    @property
    def rank_change(self) -> int | None:
        """Places moved up (rank before - rank after): +2 means two places higher in its table."""
        if self.before is None or self.after is None:
            return None
        return int(self.before["rank"]) - int(self.after["rank"])

    def row(self) -> dict[str, Any]:
        """A flat, JSON-ready row (NaN as None)."""
        out: dict[str, Any] = dict(zip(ENTRY_KEY, self.key))
        out["change"] = self.change
        for side, values in (("before", self.before), ("after", self.after)):
            for name in NEEDED:
                out[f"{name}_{side}"] = _plain(values[name]) if values is not None else None
        out.update(delta=_plain(self.delta), rank_change=self.rank_change, explanation=list(self.explanation))
        return out


@dataclass
class ReleaseComparison:
    release_a: str
    release_b: str
    changes: list[EntryChange]

    def of(self, kind: str) -> list[EntryChange]:
        return [c for c in self.changes if c.change == kind]

    def summary(self) -> str:
        both = [c for c in self.changes if c.before is not None and c.after is not None]
        counts = ", ".join(f"{len(self.of(k))} {k}" for k in CHANGES[:4] if self.of(k)) or "none"
        return (f"{len(both)} entries in both ({counts}), {len(self.of('new'))} new, "
                f"{len(self.of('removed'))} removed")


def _plain(x: Any) -> Any:
    """numpy scalars as Python ones, NaN as None: what ``json.dumps`` can write."""
    if x is None or isinstance(x, str):
        return x
    x = x.item() if hasattr(x, "item") else x
    return None if isinstance(x, float) and math.isnan(x) else x


def read_entries(release: str | Path) -> pd.DataFrame:
    """A release's ``entries.parquet``, checked to hold what a comparison needs."""
    root = Path(release)
    table = root / "entries.parquet"
    if not table.is_file():
        what = "does not exist" if not root.exists() else "is not a leaderboard release (no entries.parquet)"
        raise StoreError(f"{root} {what}; pass a release folder written by `mmrobust leaderboard --out`, "
                         f"e.g. results/leaderboard/v1")
    try:
        df = pd.read_parquet(table)
    except Exception as exc:  # noqa: BLE001  (pyarrow raises several types for a damaged file)
        raise StoreError(f"{table} is unreadable ({type(exc).__name__}); rebuild the release with "
                         f"`mmrobust leaderboard --out {root}` or restore the file from git") from None
    missing = [c for c in (*ENTRY_KEY, *NEEDED) if c not in df.columns]
    if missing:
        raise StoreError(f"{table} lacks column(s) {', '.join(missing)}; rebuild the release with "
                         f"`mmrobust leaderboard --out {root}`")
    return df


def _by_key(df: pd.DataFrame) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {entry_key(r): {c: r[c] for c in NEEDED} for r in df.to_dict("records")}


def compare_releases(release_a: str | Path, release_b: str | Path,
                     protocols: Path | None = None) -> ReleaseComparison:
    """Compare release A (before) with release B (after); ``protocols``: a folder of protocol files
    (default ``tasks/protocols/``)."""
    old, new = _by_key(read_entries(release_a)), _by_key(read_entries(release_b))
    versions = protocol_history.load_versions(protocols)
    # every id must be known, so that each protocol move can be named
    protocol_history.require({str(e["protocol"]) for e in old.values()}, versions, str(release_a))
    protocol_history.require({str(e["protocol"]) for e in new.values()}, versions, str(release_b))
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key), new.get(key)
        explanation = []
        if before is not None and after is not None:
            explanation = protocol_history.between(str(before["protocol"]), str(after["protocol"]), versions)
        changes.append(EntryChange(key, classify(before, after), before, after, explanation))
    changes.sort(key=_reading_order)
    return ReleaseComparison(str(release_a), str(release_b), changes)


def _reading_order(c: EntryChange) -> tuple[Any, ...]:
    """Worst news first, then table by table (task, norm, eps) in the later rank order."""
    task, norm, eps, model, defense = c.key
    rank = (c.after or c.before or {}).get("rank", 0)
    return CHANGES.index(c.change), task, norm, eps, int(rank), model, defense


def classify(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    if before is None:
        return "new"
    if after is None:
        return "removed"
    was, now = float(before["robust_accuracy"]), float(after["robust_accuracy"])
    low, high = float(before["robust_low"]), float(before["robust_high"])
    if abs(now - was) < 1e-12:
        return "same"
    if low - TOL <= now <= high + TOL:
        return "within-interval"
    return "unexplained" if str(before["protocol"]) == str(after["protocol"]) else "explained"
