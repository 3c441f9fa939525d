"""Leaderboard tables, files and the nightly comparison, on synthetic stores."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.errors import StoreError
from robustbench_mm.report import leaderboard as lb

EVIL = "<script>alert(1)</script>"

T, F = True, False


@pytest.fixture
def two_stores(make_store):  # type: ignore[no-untyped-def]
    clean = [T] * 8 + [F] * 2
    a = make_store("a", [
        dict(cell_id="c-none", attack="none", clean=clean),
        # pgd breaks samples 0-2, apgd breaks 2-4: worst case breaks 0-4 (5 of 8 clean-correct)
        dict(cell_id="c-pgd", attack="pgd", clean=[T] * 10, adv=[F] * 10),  # older run: must not leak in
        dict(cell_id="c-fs", attack="pgd", defense="fs", clean=clean, adv=[F] + [T] * 9,
             defense_params={"sigma": 0.25}, certified=[(0.25, 0.8), (0.5, 0.6)]),
    ])
    b = make_store("b", [
        dict(cell_id="c-apgd", attack="apgd-ce", clean=clean, adv=[T, T, F, F, F] + [T] * 5),
        dict(cell_id="c-evil", model=EVIL, attack="pgd", defense="none", clean=clean,
             defense_params={"note": EVIL}),
        # same cell id as in store a, newer (e.g. retrained weights): wins, with its own samples
        dict(cell_id="c-pgd", attack="pgd", clean=clean, adv=[F, F, F] + [T] * 7,
             created_at="2026-02-01T00:00:00+00:00"),
    ])
    return a, b


def test_tables_merge_dedupe_worst_case_and_provenance(two_stores) -> None:  # type: ignore[no-untyped-def]
    board = lb.build(list(two_stores))
    assert sorted(board.cells["cell_id"]) == ["c-apgd", "c-evil", "c-fs", "c-none", "c-pgd"]
    assert board.cells.set_index("cell_id").loc["c-pgd", "run_dir"].endswith("b")  # newest run of a cell wins
    for col in ("model", "model_revision", "attack", "norm", "eps", "steps", "defense", "defense_config", "n",
                "git_commit", "seed"):
        assert board.cells[col].notna().all(), col
    assert '"sigma": 0.25' in board.cells.set_index("cell_id").loc["c-fs", "defense_config"]

    worst = board.worst.set_index(["model", "defense"]).loc[("clip-tiny", "none")]
    assert worst["attacks"] == "apgd-ce,pgd" and worst["n_attacks"] == 2
    assert math.isclose(worst["worst_asr"], 5 / 8) and math.isclose(worst["worst_robust_accuracy"], 3 / 10)
    assert worst["worst_asr_low"] <= worst["worst_asr"] <= worst["worst_asr_high"]
    # the worst case is never better than any single attack
    per_attack = board.cells[(board.cells["model"] == "clip-tiny") & (board.cells["defense"] == "none")]
    assert worst["worst_robust_accuracy"] <= per_attack["robust_accuracy"].min() + 1e-12

    cert = board.certified
    assert list(cert["radius"]) == [0.25, 0.5] and list(cert["mean"]) == [0.8, 0.6]
    assert (cert["git_commit"] == "abc123def4567890").all()


def test_files_written_and_every_string_escaped(two_stores, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    files, comparison = api.leaderboard(list(two_stores), out=tmp_path / "results")
    assert comparison is None
    out = tmp_path / "results"
    for name in ("leaderboard.parquet", "leaderboard.md", "index.html", "leaderboard_worst.parquet",
                 "leaderboard_certified.parquet"):
        assert (out / name).is_file(), name
    assert len(list((out / "plots").glob("*.png"))) == 2  # ASR vs eps, fcsb vs radius
    page = (out / "index.html").read_text()
    assert EVIL not in page and "<script>alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the page's own sorting script
    assert page.count('src="data:image/png;base64,') == 2
    assert "http://" not in page and "https://" not in page  # works offline
    md = (out / "leaderboard.md").read_text()
    assert EVIL not in md and "&lt;script&gt;" in md
    assert pd.read_parquet(out / "leaderboard.parquet").shape[0] == 5


def test_missing_or_empty_store_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not an mmrobust store"):
        lb.build([tmp_path / "nowhere"])
    with pytest.raises(StoreError, match="at least one RUN_DIR"):
        lb.build([])


def test_compare_flags_moves_beyond_the_interval(two_stores) -> None:  # type: ignore[no-untyped-def]
    old = lb.build(list(two_stores)).cells
    same = lb.compare(old, old)
    assert not same.regressions and set(same.changes["change"]) == {"same"}

    new = old.copy()
    i = new.index[new["cell_id"] == "c-pgd"][0]
    new.loc[i, "asr"] = 0.99  # far above the snapshot interval
    j = new.index[new["cell_id"] == "c-apgd"][0]
    new.loc[j, ["status", "error"]] = ["failed", "CUDA error"]
    new = new[new["cell_id"] != "c-evil"]
    result = lb.compare(old, new)
    changes = result.changes.set_index("attack")
    assert len(result.regressions) == 2
    assert any("outside the snapshot's 95% interval" in r and "up (" in r for r in result.regressions)
    assert any("now failed: CUDA error" in r for r in result.regressions)
    assert "removed" in set(result.changes["change"])
    assert changes.loc["none", "change"] == "same"
