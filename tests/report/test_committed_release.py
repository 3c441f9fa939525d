"""The committed release ``results/leaderboard/v1/`` itself: one row per manifest command, columns as
``schema.json`` says, every run from a clean commit of this repository, no certificate above its
attack, and every link and image of every page present."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm.presets import parse_number
from robustbench_mm.report import manifest
from tests.report.test_entries import assert_matches_schema
from tests.report.test_release_browser import assert_links_resolve

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "results" / "leaderboard" / "v1"


@pytest.fixture(scope="module")
def entries() -> pd.DataFrame:
    return pd.read_parquet(RELEASE / "entries.parquet")


def test_one_entry_per_manifest_command(entries: pd.DataFrame) -> None:
    wanted = {(manifest.option(c, "--task"), manifest.option(c, "--model"), manifest.option(c, "--defense"),
               manifest.option(c, "--norm"), round(parse_number(manifest.option(c, "--eps"), "--eps"), 9),
               int(manifest.option(c, "--n")))
              for c in manifest.load(RELEASE / "manifest.yaml")}
    got = {(r.task, r.model, r.defense, r.norm, round(float(r.eps), 9), int(r.n)) for r in entries.itertuples()}
    assert len(got) == len(entries)
    assert got == wanted


def test_columns_agree_with_schema(entries: pd.DataFrame) -> None:
    assert_matches_schema(entries, json.loads((RELEASE / "schema.json").read_text()))


def test_every_entry_comes_from_a_clean_commit_of_this_repository(entries: pd.DataFrame) -> None:
    commits = set(entries["git_commit"])
    assert all(re.fullmatch(r"[0-9a-f]{40}", c) for c in commits), commits  # "-dirty" never matches
    assert (REPO / ".git").exists(), "run the tests from a git clone: the commits are looked up in its history"
    for c in sorted(commits):  # in main's history, so anyone can check it out and rerun the command
        found = subprocess.run(["git", "-C", str(REPO), "merge-base", "--is-ancestor", c, "HEAD"], capture_output=True)
        assert found.returncode == 0, f"{c} is not an ancestor of HEAD (in a shallow clone: git fetch --unshallow)"


def test_ranks_and_certificates_are_consistent(entries: pd.DataFrame) -> None:
    for _, g in entries.groupby(["task", "norm", "eps"]):
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))
        ordered = g.sort_values("rank")["robust_accuracy"].tolist()
        assert ordered == sorted(ordered, reverse=True)
    for r in entries.itertuples():
        assert r.robust_low <= r.robust_accuracy <= r.robust_high
        assert r.robust_accuracy <= r.clean_accuracy + 1e-12
        if not math.isnan(r.certified_accuracy):  # a sound certificate can never beat the attack
            assert r.certified_accuracy <= r.robust_accuracy + 1e-12, (r.model, r.defense)
            assert r.norm == "l2" and r.certified_radius == r.eps


def test_every_link_and_image_of_the_release_resolves(entries: pd.DataFrame) -> None:
    assert_links_resolve(RELEASE)
    for r in entries.itertuples():
        assert (RELEASE / r.detail).is_file() and (RELEASE / r.model_card).is_file()
        assert "gallery/" in (RELEASE / r.detail).read_text(), f"{r.detail} has no gallery"
