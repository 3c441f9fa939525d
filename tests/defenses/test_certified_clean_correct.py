"""Certified accuracy counts only samples the table's clean verdict gets right: a certificate of a
prediction the evaluated classifier does not make certifies nobody."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from robustbench_mm.runner.certified import certified_at
from robustbench_mm.runner.certified_rows import attach_certified, only_clean_correct


def _cert() -> pd.DataFrame:
    return pd.DataFrame({"index": [0, 1, 2, 0], "radius": [0.5, 0.5, 0.5, 0.5],
                         "quantity": ["certified_accuracy"] * 3 + ["fcsb"], "value": [1.0, 1.0, float("nan"), 0.9],
                         "abstain": [False, False, True, False], "bound_kind": ["sound"] * 4})


def test_a_certified_sample_the_clean_verdict_gets_wrong_is_not_certified() -> None:
    rows = [{"index": 0, "clean_correct": True}, {"index": 1, "clean_correct": False},
            {"index": 2, "clean_correct": True}]
    raw = _cert()
    cert = only_clean_correct(raw, rows)
    assert cert["value"].tolist()[:2] == [1.0, 0.0] and pd.isna(cert["value"].iloc[2])  # abstention stays NaN
    assert cert["value"].iloc[3] == 0.9  # feature bounds are not a verdict on the prediction: untouched
    assert raw["value"].iloc[1] == 1.0  # the defense's own frame is not modified in place
    assert certified_at(cert, "l2", 0.5) == 1 / 3
    attach_certified(rows, raw, SimpleNamespace(attack=SimpleNamespace(norm="l2", eps=0.5)))  # type: ignore[arg-type]
    assert [r["certified"] for r in rows] == [True, False, False]
