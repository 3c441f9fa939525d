"""A cell's certificate rows: the defense's per-sample certificates of a batch, the per-sample
columns they add to ``samples.parquet``, and their aggregation into ``certified.parquet``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pandas as pd
import torch

from robustbench_mm.runner.resolve import ResolvedCell
from robustbench_mm.runner.store import SCHEMA_VERSION
from robustbench_mm.types import Batch


def certify_batch(cell: ResolvedCell, model: Any, batch: Batch) -> pd.DataFrame:
    radii = sorted(set(cell.defense.certificate_radii()) | ({float(cell.attack.eps)} if cell.attack.norm == "l2"
                                                            and cell.attack.eps else set()))
    if hasattr(cell.task, "class_prompts"):  # zero-shot: prediction-wise certificates (docs/methods.md)
        batch = replace(batch, extra={**batch.extra, "class_prompts": tuple(cell.task.class_prompts())})
    with torch.no_grad():
        frame = cell.defense.certify(model, batch, radii)
    if frame is None:
        raise RuntimeError(f"defense {cell.defense.name} declared a certificate but returned none")
    return frame


def only_clean_correct(cert: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Certified accuracy counts a sample only if the table's clean verdict also got it right: a
    certificate of a prediction the evaluated classifier does not make (for randomized smoothing,
    CERTIFY and PREDICT draw different noise and may disagree) certifies nobody in the tables. Such
    rows become 0 (abstentions stay NaN, which also counts as not certified)."""
    if cert.empty:
        return cert
    wrong = {int(r["index"]) for r in rows if not r["clean_correct"]}
    mask = (cert["quantity"] == "certified_accuracy") & cert["index"].astype(int).isin(wrong) & cert["value"].notna()
    if not bool(mask.any()):
        return cert
    cert = cert.copy()
    cert.loc[mask, "value"] = 0.0
    return cert


def attach_bound(rows: list[dict[str, Any]], cert: pd.DataFrame, cell: ResolvedCell) -> None:
    """Per-sample certified bound at the attack's l2 radius (first quantity the defense reports)."""
    if cell.attack.norm != "l2" or cert.empty:
        return
    quantity = cert["quantity"].iloc[0]
    at = cert[(cert["quantity"] == quantity) & ((cert["radius"] - float(cell.attack.eps)).abs() < 1e-9)]
    bound = dict(zip(at["index"].astype(int), at["value"].astype(float)))
    for r in rows:
        r["certified_bound"] = bound.get(r["index"], float("nan"))


def attach_certified(rows: list[dict[str, Any]], cert: pd.DataFrame, cell: ResolvedCell) -> None:
    """``certified``: the sample is clean-correct and its prediction has a *sound* certificate at the
    attack's l2 radius (``certified_accuracy`` = 1 with ``bound_kind`` sound); estimates never count."""
    if cell.attack.norm != "l2" or cert.empty:
        return
    kind = cert["bound_kind"] if "bound_kind" in cert else pd.Series("estimate", index=cert.index)
    at = cert[(cert["quantity"] == "certified_accuracy") & (kind == "sound")
              & ((cert["radius"] - float(cell.attack.eps)).abs() < 1e-9) & (cert["value"] == 1.0)]
    ok = set(at["index"].astype(int))
    for r in rows:
        r["certified"] = bool(r["clean_correct"]) and r["index"] in ok


RS_COLUMNS = {"rs_radius": float, "p_lower": float, "rs_prediction": int, "rs_abstain": bool}


def attach_rs(rows: list[dict[str, Any]], cert: pd.DataFrame) -> None:
    """Per-sample randomized-smoothing columns (``rs_radius``, ``p_lower``, ``rs_prediction``,
    ``rs_abstain``) where the defense certified the smoothed classifier; absent otherwise."""
    if cert.empty or not (cert["quantity"] == "rs_radius").any():
        return
    for name, cast in RS_COLUMNS.items():
        at = cert[cert["quantity"] == name]
        values = dict(zip(at["index"].astype(int), at["value"].astype(float)))
        for r in rows:
            r[name] = cast(values[r["index"]]) if r["index"] in values else float("nan")


def aggregate_certified(cell: ResolvedCell, per_sample: pd.DataFrame) -> pd.DataFrame:
    """``certified.parquet`` rows: per radius and quantity, mean/q05/median over samples.

    Abstentions count as the quantity's worst value (-1 for cosine bounds, 0 for accuracies), so
    a mean never hides them; ``abstain_rate`` reports them separately. ``bound_kind`` is the
    defense's label (``sound`` or ``estimate``); a defense that does not say is an ``estimate``.
    """
    out = []
    for (radius, quantity), g in per_sample.groupby(["radius", "quantity"], sort=True):
        worst = -1.0 if str(quantity).startswith("fcsb") else 0.0
        v = g["value"].astype(float).fillna(worst)
        out.append({
            "cell_id": cell.cell_id, "model": cell.entry.name, "defense": cell.defense.name, "task": cell.task.name,
            "radius": float(radius), "quantity": quantity, "mean": float(v.mean()), "q05": float(v.quantile(0.05)),
            "median": float(v.median()), "n": int(len(g)), "abstain_rate": float(g["abstain"].mean()),
            "mc_samples": int(g["mc_samples"].iloc[0]), "alpha": float(g["alpha"].iloc[0]),
            "schema_version": SCHEMA_VERSION,
            "bound_kind": str(g["bound_kind"].iloc[0]) if "bound_kind" in g else "estimate",
        })
    return pd.DataFrame(out)
