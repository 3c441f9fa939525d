"""``entries.parquet``: one ranked row per task x threat model x model x defense.

Columns and their meaning live in ``schema.json`` (same folder); ``COLUMNS`` is read from it so
the table and its schema cannot drift apart. Certified columns come only from certificates whose
``bound_kind`` is ``sound`` (a store that does not say so gets none: false robustness is worse
than none).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import yaml

from robustbench_mm.report.budget import fmt_eps, slug
from robustbench_mm.report.stores import ENTRY_KEY, Cell, read_stores
from robustbench_mm.runner.stats import wilson_interval

HERE = Path(__file__).parent
GROUP = ["task", "norm", "eps"]  # a ranked table


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads((HERE / "schema.json").read_text())  # type: ignore[no-any-return]


def columns() -> list[str]:
    return list(schema()["columns"])


@lru_cache(maxsize=1)
def _papers() -> dict[str, dict[str, str]]:
    return yaml.safe_load((HERE / "papers.yaml").read_text()) or {}


def paper_of(defense: str, impl: str = "") -> dict[str, str]:
    """``{title, url}`` of a defense's paper (by preset name, then impl); empty for ``none``."""
    papers = _papers()
    return papers.get(defense) or papers.get(impl) or {}


@dataclass
class Board:
    """The ranked entries plus, per entry slug, the cell behind it (for detail pages)."""

    entries: pd.DataFrame
    cells: dict[str, Cell]


def entry_slug(task: str, norm: str, eps: float, model: str, defense: str) -> str:
    return slug(task, model, defense, norm, fmt_eps(eps))


def build(paths: Sequence[str | Path]) -> Board:
    """Entries of the given protocol stores (``StoreError`` on bad input, before any write)."""
    cells = read_stores(paths)
    rows, by_slug = [], {}
    for key, cell in cells.items():
        row = entry_row(dict(zip(ENTRY_KEY, key)), cell)
        rows.append(row)
        by_slug[Path(row["detail"]).stem] = cell
    df = pd.DataFrame(rows, columns=columns())
    return Board(rank(df), by_slug)


def rank(df: pd.DataFrame) -> pd.DataFrame:
    """Sort each task x threat model by robust accuracy (then clean accuracy, names) and number 1..k."""
    if df.empty:
        return df
    df = df.sort_values(GROUP + ["robust_accuracy", "clean_accuracy", "model", "defense"],
                        ascending=[True, True, True, False, False, True, True], kind="stable")
    df["rank"] = df.groupby(GROUP, sort=False).cumcount().astype("int64") + 1
    return df.reset_index(drop=True)[columns()]


def entry_row(key: dict[str, Any], cell: Cell) -> dict[str, Any]:
    r = cell.row
    n = int(r["n"])
    robust = float(r["robust_accuracy"])
    lo, hi = wilson_interval(round(robust * n), n)
    cert = certificate(cell, key["norm"], float(key["eps"]))
    defense_impl = ((cell.meta.get("config") or {}).get("defense") or {}).get("impl", "")
    s = entry_slug(key["task"], key["norm"], key["eps"], key["model"], key["defense"])
    return {
        **key, "protocol": str(r.get("protocol", "")), "rank": 0,
        "clean_accuracy": float(r["clean_accuracy"]), "robust_accuracy": robust, "robust_low": lo,
        "robust_high": hi, "asr": float(r["asr"]), **text_to_image(r), **cert["values"],
        "flags": flags(r, cert, robust), "n": n, "seed": int(r["seed"]),
        "weights_revision": str(r.get("model_revision") or ""), "git_commit": str(r.get("git_commit") or ""),
        "created_at": str(r.get("created_at") or ""), "detail": f"entries/{s}.html",
        "model_card": f"cards/model-{slug(key['model'])}.html",
        "defense_card": f"cards/defense-{slug(key['defense'])}.html",
        "paper": paper_of(key["defense"], defense_impl).get("url", ""),
    }


def text_to_image(row: pd.Series) -> dict[str, float]:
    """Text->image Recall@1 clean and robust of a retrieval cell (its other direction, image->text,
    is the entry's clean and robust accuracy); NaN for every other task."""
    def value(name: str) -> float:
        v = row.get(name)
        return float(v) if v is not None and not pd.isna(v) else math.nan

    return {"ir_r1_clean": value("ir_r1_clean"), "ir_r1_robust": value("ir_r1_adv")}


def sound_rows(certified: pd.DataFrame) -> pd.DataFrame:
    """Certificate rows marked ``bound_kind == 'sound'`` (none when the store does not say)."""
    if certified.empty or "bound_kind" not in certified:
        return certified.iloc[0:0]
    return certified[certified["bound_kind"].astype(str) == "sound"]


def certificate(cell: Cell, norm: str, eps: float) -> dict[str, Any]:
    """Sound certified accuracy and FCSB at the entry's l2 radius, and the abstention rate there."""
    nan = math.nan
    values = {"certified_accuracy": nan, "certified_radius": nan, "fcsb": nan}
    cert = cell.certified
    if norm != "l2" or cert.empty:
        return {"values": values, "abstain": 0.0}
    at = cert[(cert["radius"].astype(float) - eps).abs() < 1e-9]
    abstain = float(at["abstain_rate"].max()) if "abstain_rate" in at and len(at) else 0.0
    sound = sound_rows(at)
    if sound.empty:
        return {"values": values, "abstain": abstain}
    by_q = dict(zip(sound["quantity"].astype(str), sound["mean"].astype(float)))
    # only a certificate of the prediction gives certified accuracy; a feature bound alone (FCSB on a
    # generative task, where no answer is certified) leaves it empty rather than 0%
    acc = by_q.get("certified_accuracy", nan)
    values = {"certified_accuracy": acc, "certified_radius": eps, "fcsb": by_q.get("fcsb", nan)}
    if math.isnan(acc) and math.isnan(values["fcsb"]):
        values["certified_radius"] = nan
    return {"values": values, "abstain": abstain}


def sanity_checks(row: pd.Series) -> dict[str, str]:
    try:
        checks = json.loads(row.get("sanity") or "{}")
    except (TypeError, ValueError):
        return {"sanity": "unreadable"}
    return {str(k): str(v) for k, v in checks.items()} if isinstance(checks, dict) else {}


def flags(row: pd.Series, cert: dict[str, Any], robust: float) -> list[str]:
    """Badges a reader must see: unreliable, failed sanity checks, abstentions, a bound above the attack."""
    out = ["unreliable"] if bool(row.get("unreliable", False)) else []
    out += [f"sanity:{k}" for k, v in sanity_checks(row).items() if v.startswith("fail") or v == "unreadable"]
    if cert["abstain"] > 0:
        out.append(f"abstain {100 * cert['abstain']:.0f}%")
    acc = cert["values"]["certified_accuracy"]
    if not math.isnan(acc) and acc > robust + 1e-12:
        out.append("certified>robust")
    if str(row.get("git_commit") or "").endswith("-dirty"):
        out.append("dirty-commit")  # run from uncommitted code: nobody can rebuild it exactly
    return out
