"""``mmrobust leaderboard --verify RELEASE``: re-derive every entry's numbers from its committed
per-sample rows (``samples/<slug>.parquet``) and compare them with ``entries.parquet``.

Recomputed from the samples alone: n, clean and robust accuracy, the 95% Wilson interval (as
``entries.entry_row`` computes it), asr (as ``runner/summary.summary_row``), certified accuracy
(the mean of the per-sample sound ``certified`` flag) and the rank (``entries.rank`` over the
recomputed table). An entry with a published certified accuracy but no ``certified`` column is a
failure: a number nobody can re-derive must not pass as verified.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_mm.report.entries import rank
from robustbench_mm.report.samples import path_of
from robustbench_mm.runner.stats import wilson_interval

TOL = 1e-9
FIELDS = ("n", "clean_accuracy", "robust_accuracy", "robust_low", "robust_high", "asr", "certified_accuracy")


@dataclass
class Mismatch:
    """The first entry whose published value differs from the recomputed one (or cannot be recomputed)."""

    entry: str
    field: str
    published: Any
    recomputed: Any
    note: str = ""

    def line(self) -> str:
        tail = f" ({self.note})" if self.note else ""
        return f"{self.entry}: {self.field} published {self.published!r}, recomputed {self.recomputed!r}{tail}"


@dataclass
class Verification:
    entries: int
    mismatch: Mismatch | None

    @property
    def ok(self) -> bool:
        return self.mismatch is None


def recompute(s: pd.DataFrame) -> dict[str, Any]:
    """An entry's numbers from its per-sample rows."""
    n = len(s)
    clean_ok = int(s["clean_correct"].astype(bool).sum())
    robust = float(s["adv_correct"].astype(bool).mean()) if n else math.nan
    lo, hi = wilson_interval(round(robust * n), n) if n else wilson_interval(0, 0)
    succ = int(s["success"].astype(bool).sum())
    cert = float(s["certified"].astype(bool).mean()) if "certified" in s and n else math.nan
    return {"n": n, "clean_accuracy": clean_ok / n if n else math.nan, "robust_accuracy": robust,
            "robust_low": lo, "robust_high": hi, "asr": succ / clean_ok if clean_ok else math.nan,
            "certified_accuracy": cert}


def same(a: Any, b: Any) -> bool:
    fa, fb = float(a), float(b)
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb)
    return abs(fa - fb) <= TOL


def verify(release: str | Path) -> Verification:
    """Check a release; ``Verification.mismatch`` is the first difference, in table order."""
    root = Path(release)
    table = root / "entries.parquet"
    if not table.is_file():
        return Verification(0, Mismatch(str(root), "entries.parquet", "missing", None,
                                        "not a leaderboard release"))
    published = pd.read_parquet(table)
    if not (root / "samples").is_dir():
        return Verification(0, Mismatch(str(root), "samples/", "missing", None,
                                        "the release has no per-sample rows (made before they were written); "
                                        "rebuild it from its stores"))
    recomputed = published.copy()
    for i, e in published.iterrows():
        name, path = Path(e["detail"]).stem, root / path_of(e["detail"])
        if not path.is_file():
            return Verification(0, Mismatch(name, "samples", "missing", None, f"no {path_of(e['detail'])}"))
        values = recompute(pd.read_parquet(path))
        for field in FIELDS:
            if field == "certified_accuracy" and not math.isnan(float(e[field])) and math.isnan(values[field]):
                return Verification(0, Mismatch(name, field, float(e[field]), None,
                                                "no per-sample certificate rows (`certified` column) to recompute it"))
            if not same(e[field], values[field]):
                return Verification(0, Mismatch(name, field, _plain(e[field]), _plain(values[field])))
            recomputed.at[i, field] = values[field]
    ranked = rank(recomputed).set_index("detail")["rank"]
    for _, e in published.iterrows():
        if int(e["rank"]) != int(ranked[e["detail"]]):
            return Verification(0, Mismatch(Path(e["detail"]).stem, "rank", int(e["rank"]), int(ranked[e["detail"]])))
    return Verification(len(published), None)


def _plain(x: Any) -> Any:
    return int(x) if isinstance(x, int) or (hasattr(x, "dtype") and "int" in str(x.dtype)) else float(x)
