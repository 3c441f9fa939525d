"""Only sound certificate rows are called certified in the leaderboard tables, page and plots."""

from __future__ import annotations

import pandas as pd

from robustbench_mm.report import leaderboard as lb
from robustbench_mm.report import page
from robustbench_mm.report.bound_kind import infer, with_bound_kind

T = True


def test_estimates_are_never_listed_or_plotted_as_certified(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("s", [
        dict(cell_id="c-fs", attack="pgd-l2", defense="fs", clean=[T] * 4, certified=[(0.25, 0.8), (0.5, 0.6)]),
        # a store written before bound_kind existed: a crmt row is an estimate, read as such
        dict(cell_id="c-crmt", attack="pgd-l2", defense="crmt", clean=[T] * 4, certified=[(0.25, 0.7)]),
    ])
    board = lb.build([store])
    kinds = board.certified.set_index("cell_id")["bound_kind"]
    assert set(kinds.loc["c-fs"]) == {"sound"} and kinds.loc["c-crmt"] == "estimate"
    figures = page.make_figures(board)
    md = page.render_markdown(board, sorted(figures))
    certified_part, estimate_part = md.split("### Estimated bounds")
    cert_section = certified_part.split("### Certified bounds")[1]
    assert "| crmt |" not in cert_section and "| fs |" in cert_section
    assert "| crmt |" in estimate_part and "(estimate, not certified)" in estimate_part
    assert "fmnist-zeroshot--fcsb-estimate-vs-radius.png" in figures
    assert "fmnist-zeroshot--fcsb-vs-radius.png" in figures
    html = page.render_html(board, figures)
    assert "Estimated bounds per radius" in html and "estimate, not certified" in html


def test_bound_kind_is_kept_when_present_and_inferred_when_missing() -> None:
    assert infer("fs-psm", "fcsb") == "sound" and infer("fs", "s_hat") == "estimate"
    assert infer("crmt", "certified_accuracy") == "estimate" and infer("mystery", "fcsb") == "estimate"
    df = pd.DataFrame({"defense": ["crmt", "fs"], "quantity": ["certified_accuracy", "fcsb"],
                       "bound_kind": ["sound", None]})
    assert list(with_bound_kind(df)["bound_kind"]) == ["sound", "sound"]  # a recorded label wins
