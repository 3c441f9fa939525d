"""Certificate rows are labelled sound or estimate (the release builder, tests/report/test_entries.py,
lists only sound rows as certified; paper tables name estimates as such)."""

from __future__ import annotations

import pandas as pd

from robustbench_mm.report.bound_kind import infer, with_bound_kind


def test_bound_kind_is_kept_when_present_and_inferred_when_missing() -> None:
    assert infer("fs-psm", "fcsb") == "sound" and infer("fs", "s_hat") == "estimate"
    assert infer("crmt", "certified_accuracy") == "estimate" and infer("mystery", "fcsb") == "estimate"
    df = pd.DataFrame({"defense": ["crmt", "fs"], "quantity": ["certified_accuracy", "fcsb"],
                       "bound_kind": ["sound", None]})
    assert list(with_bound_kind(df)["bound_kind"]) == ["sound", "sound"]  # a recorded label wins
