"""entries.parquet: schema agreement, ranking, Wilson intervals, sound-only certificates, flags,
and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy.stats import binomtest

from robustbench_mm.report import entries as entries_mod
from robustbench_mm.report.release import write_release
from robustbench_mm.runner.store import MARKER, ResultStore

T, F = True, False
MMROBUST = str(Path(sys.executable).parent / "mmrobust")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MMROBUST, *args], capture_output=True, text=True, timeout=120)


def assert_matches_schema(df: pd.DataFrame, schema: dict[str, Any]) -> None:
    """``df``'s columns are ``schema.json``'s, in its order, each of the type it gives."""
    assert list(df.columns) == list(schema["columns"])
    kinds = {"string": "O", "float64": "f", "int64": "i", "list<string>": "O"}
    for col, spec in schema["columns"].items():
        assert df[col].dtype.kind == kinds[spec["type"]], (col, df[col].dtype)
        if spec["type"] == "list<string>":
            assert all(all(isinstance(x, str) for x in v) for v in df[col])
        if spec["type"] == "string":
            assert all(isinstance(v, str) for v in df[col]), col


@pytest.fixture
def board_store(make_store):  # type: ignore[no-untyped-def]
    clean = [T] * 16 + [F] * 4
    return make_store("s", [
        dict(cell_id="a", clean=clean, adv=[F] * 12 + [T] * 8),                     # robust 4/20
        dict(cell_id="b", defense="tecoa", clean=clean, adv=[F] * 4 + [T] * 16),      # robust 12/20
        dict(cell_id="c", defense="mmcoa", clean=clean, adv=[F] * 8 + [T] * 12, unreliable=True,
             sanity={"validity_guard": "pass", "zero_gradient": "fail (3 of 16 examples)"}),  # 8/20
        dict(cell_id="d", defense="fs", norm="l2", eps=0.5, clean=clean, adv=[F] * 6 + [T] * 14,
             certified=[("certified_accuracy", 0.5, 0.35, "sound"), ("fcsb", 0.5, 0.6, "sound"),
                        ("certified_accuracy", 0.25, 0.5, "sound")]),
        dict(cell_id="e", defense="fs-psm", norm="l2", eps=0.5, clean=clean, adv=[F] * 6 + [T] * 14,
             certified=[("certified_accuracy", 0.5, 0.4, "estimate")]),
        dict(cell_id="f", model="llava-tiny", task="fmnist-vqa", clean=clean),
        dict(cell_id="g", defense="topk-rs", status="failed"),
    ])


def test_columns_and_types_agree_with_schema(board_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_release([board_store], tmp_path / "v1")
    df = pd.read_parquet(tmp_path / "v1" / "entries.parquet")
    schema = json.loads((tmp_path / "v1" / "schema.json").read_text())
    assert schema["schema_version"] == 1
    assert list(df.columns) == list(schema["columns"])
    wanted = ("task, norm, eps, model, defense, protocol, rank, clean_accuracy, robust_accuracy, robust_low, "
              "robust_high, asr, ir_r1_clean, ir_r1_robust, certified_accuracy, certified_radius, fcsb, flags, n, seed, "
              "weights_revision, "
              "git_commit, created_at, detail, model_card, defense_card, paper").split(", ")
    assert list(df.columns) == wanted
    assert all(spec["meaning"] and "unit" in spec for spec in schema["columns"].values())
    assert_matches_schema(df, schema)


def test_rank_interval_certificates_and_flags(board_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    board = entries_mod.build([board_store])
    df = board.entries.set_index(["task", "norm", "defense", "model"])
    assert len(df) == 6  # the failed cell is not an entry
    for _, g in board.entries.groupby(["task", "norm", "eps"]):
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))
        assert list(g.sort_values("rank")["robust_accuracy"]) == sorted(g["robust_accuracy"], reverse=True)
    linf = df.loc[("fmnist-zeroshot", "linf")]
    assert list(linf.sort_values("rank").index) == [("tecoa", "clip-tiny"), ("mmcoa", "clip-tiny"),
                                                   ("none", "clip-tiny")]
    e = df.loc[("fmnist-zeroshot", "linf", "tecoa", "clip-tiny")]
    ci = binomtest(12, 20).proportion_ci(confidence_level=0.95, method="wilson")
    assert e["robust_accuracy"] == 0.6
    assert e["robust_low"] == pytest.approx(ci.low, abs=1e-6) and e["robust_high"] == pytest.approx(ci.high, abs=1e-6)
    assert e["paper"].startswith("https://arxiv.org/")
    flags = list(df.loc[("fmnist-zeroshot", "linf", "mmcoa", "clip-tiny"), "flags"])
    assert flags == ["unreliable", "sanity:zero_gradient"]
    fs = df.loc[("fmnist-zeroshot", "l2", "fs", "clip-tiny")]
    assert fs["certified_accuracy"] == 0.35 and fs["certified_radius"] == 0.5 and fs["fcsb"] == 0.6
    assert "abstain 10%" in list(fs["flags"])
    psm = df.loc[("fmnist-zeroshot", "l2", "fs-psm", "clip-tiny")]  # an estimate is never called certified
    assert math.isnan(psm["certified_accuracy"]) and math.isnan(psm["certified_radius"])
    assert math.isnan(e["certified_accuracy"])  # linf entries carry no l2 certificate


def test_certificate_above_attack_is_flagged(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("s", [dict(cell_id="x", defense="fs", norm="l2", eps=0.5, clean=[T] * 10,
                                  adv=[F] * 8 + [T] * 2, certified=[("certified_accuracy", 0.5, 0.5, "sound")])])
    e = entries_mod.build([store]).entries.iloc[0]
    assert "certified>robust" in list(e["flags"])


def test_feature_bound_alone_leaves_certified_accuracy_empty(make_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A generative task's FS certificate bounds the features (FCSB), never the answer: certified
    accuracy stays empty (not 0%), FCSB is shown, and the page says why."""
    store = make_store("s", [dict(cell_id="v", model="llava-tiny", task="fmnist-vqa", defense="fs", norm="l2",
                                  eps=0.5, clean=[T] * 10, adv=[F] * 3 + [T] * 7,
                                  certified=[("fcsb", 0.5, 0.23, "sound"), ("fcsb", 0.25, 0.6, "sound")])])
    cell = store / "cells" / "v" / "samples.parquet"  # as the runner writes it: no sample has a certified answer
    pd.read_parquet(cell).assign(certified=False).to_parquet(cell, index=False)
    ResultStore(store).rebuild_views()
    write_release([store], tmp_path / "v1")
    e = pd.read_parquet(tmp_path / "v1" / "entries.parquet").iloc[0]
    assert math.isnan(e["certified_accuracy"])
    assert e["fcsb"] == pytest.approx(0.23) and e["certified_radius"] == 0.5
    page = (tmp_path / "v1" / e["detail"]).read_text()
    assert "the sound bound is on the features (FCSB), not on the answer" in page and "0.0% at l2" not in page


def test_dirty_commit_is_flagged(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("s", [dict(cell_id="x", git_commit="abc123-dirty"), dict(cell_id="y", defense="fs")])
    flags = dict(zip(entries_mod.build([store]).entries["defense"], entries_mod.build([store]).entries["flags"]))
    assert list(flags["none"]) == ["dirty-commit"] and list(flags["fs"]) == []


def test_bigger_n_supersedes_within_a_store(make_store) -> None:  # type: ignore[no-untyped-def]
    store = make_store("s", [dict(cell_id="small", n=10), dict(cell_id="big", n=30, adv=[F] * 30)])
    e = entries_mod.build([store]).entries
    assert len(e) == 1 and e["n"].iloc[0] == 30 and e["robust_accuracy"].iloc[0] == 0.0


def test_two_stores_same_cell_merge_but_conflicts_fail(make_store, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    a = make_store("a", [dict(cell_id="x")])
    same = make_store("same", [dict(cell_id="x")])
    other = make_store("other", [dict(cell_id="y", adv=[F] * 20)])
    assert len(entries_mod.build([a, same]).entries) == 1
    out = tmp_path / "v1"
    code, _, err = cli("leaderboard", str(a), str(other), "--out", str(out))
    assert code == 2 and err.count("\n") == 1, err
    assert "different results" in err and "pass only one" in err
    assert not out.exists()


@pytest.mark.slow  # one run of the installed binary (~5 s of imports)
def test_bad_stores_are_one_line_exit_2_and_nothing_written(make_store, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    good = make_store("good", [dict(cell_id="x")])
    write_release([good], tmp_path / "v1")
    before = {p: p.read_bytes() for p in (tmp_path / "v1").rglob("*") if p.is_file()}
    empty = make_store("empty", [])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    plain = make_store("plain", [dict(cell_id="p", protocol=None)])
    old = make_store("old", [dict(cell_id="o")])
    (old / MARKER).write_text(json.dumps({"schema_version": 0}))
    oldrows = make_store("oldrows", [dict(cell_id="r", schema_version=0)])
    cases = {empty: "no cells yet", foreign: "not an mmrobust store", plain: "no finished protocol cells",
             old: "schema version 0", oldrows: "schema version [0]", tmp_path / "missing": "does not exist"}
    for store, message in cases.items():
        code, _, err = cli("leaderboard", str(good), str(store), "--out", str(tmp_path / "v1"))
        assert code == 2, (store, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    proc = _cli("leaderboard", str(good), str(empty), "--out", str(tmp_path / "v1"))  # the installed binary too
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no cells yet" in proc.stderr, proc.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "v1").rglob("*") if p.is_file()}
    assert after == before  # the earlier release is untouched
