"""``mmrobust leaderboard --carry RELEASE``: a rebuild keeps the earlier release's entries that no store
holds, byte for byte apart from their recomputed rank; a store's entry replaces a carried one; bad
input is one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from robustbench_mm.report import manifest
from robustbench_mm.report.release import write_release
from tests.report.test_release_browser import assert_links_resolve

T, F = True, False
CLEAN = [T] * 16 + [F] * 4
SLUG_A = "fmnist-zeroshot--clip-tiny--none--linf--8-255"
SLUG_D = "fmnist-zeroshot--clip-tiny--fs--l2--0.5"


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def first(make_store, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    store = make_store("s1", [
        dict(cell_id="a", clean=CLEAN, adv=[F] * 12 + [T] * 8),                        # none: robust 4/20
        dict(cell_id="b", defense="tecoa", clean=CLEAN, adv=[F] * 4 + [T] * 16),        # tecoa: 12/20
        dict(cell_id="d", defense="fs", norm="l2", eps=0.5, clean=CLEAN, adv=[F] * 6 + [T] * 14,
             certified=[("certified_accuracy", 0.5, 0.35, "sound"), ("certified_accuracy", 0.25, 0.5, "sound")]),
    ])
    rel = tmp_path / "release"
    write_release([store], rel)
    return rel


def test_carried_entries_keep_their_files_and_get_new_ranks(first: Path, make_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    before = _tree(first)
    old = pd.read_parquet(first / "entries.parquet").set_index("defense")
    page_a = (first / "entries" / f"{SLUG_A}.html").read_text()
    assert "Rank 2 of 2." in page_a
    newer = make_store("s2", [
        dict(cell_id="c", defense="mmcoa", clean=CLEAN, adv=[T] * 20, git_commit="fedcba9876543210"),  # 16/20
        dict(cell_id="b2", defense="tecoa", clean=CLEAN, adv=[F] * 8 + [T] * 12),                     # 8/20
    ])
    summary = write_release([newer], first, carry=first)  # in place, as `make leaderboard CARRY=...` does
    assert summary["carried"] == 2
    df = pd.read_parquet(first / "entries.parquet")
    linf = df[df["norm"] == "linf"].set_index("defense")
    assert list(linf.sort_values("rank").index) == ["mmcoa", "tecoa", "none"]
    assert list(linf.sort_values("rank")["rank"]) == [1, 2, 3]
    assert linf.loc["tecoa", "robust_accuracy"] == pytest.approx(8 / 20)  # the store replaced the carried entry
    for col in ("robust_accuracy", "robust_low", "robust_high", "git_commit", "created_at", "seed", "n"):
        assert linf.loc["none", col] == old.loc["none", col]
    l2 = df[df["norm"] == "l2"].iloc[0]
    assert (l2["rank"], l2["certified_accuracy"]) == (1, pytest.approx(0.35))
    after = _tree(first)
    # the carried entries' own files are the earlier ones, byte for byte, except the rank line
    for name in (f"gallery/{SLUG_A}.png", f"gallery/{SLUG_D}.png", f"plots/{SLUG_D}--certified.png",
                 f"entries/{SLUG_D}.html"):
        assert after[name] == before[name], name
    assert (first / "entries" / f"{SLUG_A}.html").read_text() == page_a.replace("Rank 2 of 2.", "Rank 3 of 3.")
    assert_links_resolve(first)  # every page of the rebuilt release links only to files that exist
    index = (first / "index.html").read_text()
    assert "mmcoa" in index and f"entries/{SLUG_A}.html" in index


def test_carry_alone_rerenders_the_release(first: Path, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (first / "manifest.yaml").write_text("release: v1\ncommands: []\n")
    write_release([], first, carry=first)  # the index now links the manifest
    code, out, _ = cli("leaderboard", "--carry", str(first), "--out", str(tmp_path / "again"))
    assert code == 0 and "3 entries (3 carried from" in out
    pd.testing.assert_frame_equal(pd.read_parquet(first / "entries.parquet"),
                                  pd.read_parquet(tmp_path / "again" / "entries.parquet"))
    assert _tree(tmp_path / "again") == _tree(first)  # the same release, manifest included


def test_release_from_before_the_text_to_image_columns_still_carries(first: Path, tmp_path: Path) -> None:
    """A release written before ir_r1_clean/ir_r1_robust existed (no retrieval entries) carries, with
    those columns empty, and renders no retrieval columns for its sections."""
    old = pd.read_parquet(first / "entries.parquet").drop(columns=["ir_r1_clean", "ir_r1_robust"])
    old.to_parquet(first / "entries.parquet", index=False)
    summary = write_release([], tmp_path / "again", carry=first)
    df = pd.read_parquet(tmp_path / "again" / "entries.parquet")
    assert summary["carried"] == 3 and df["ir_r1_clean"].isna().all() and df["ir_r1_robust"].isna().all()
    assert "text->image" not in (tmp_path / "again" / "leaderboard.md").read_text()


@pytest.mark.parametrize("damage", ["not-a-release", "other-schema", "missing-page"])
def test_bad_carry_is_one_line_exit_2_and_nothing_written(first: Path, make_store, cli, tmp_path: Path,
                                                          damage: str) -> None:  # type: ignore[no-untyped-def]
    carry = tmp_path / "carry"
    shutil.copytree(first, carry)
    if damage == "not-a-release":
        (carry / "entries.parquet").unlink()
    elif damage == "other-schema":
        schema = json.loads((carry / "schema.json").read_text())
        (carry / "schema.json").write_text(json.dumps({**schema, "schema_version": 99}))
    else:
        (carry / "entries" / f"{SLUG_A}.html").unlink()
    store = make_store("s3", [dict(cell_id="z", defense="mmcoa", clean=CLEAN)])
    before = _tree(first)
    code, out, err = cli("leaderboard", str(store), "--carry", str(carry), "--out", str(first))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--carry" in err
    assert _tree(first) == before
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".release")]


def test_make_leaderboard_carry_reads_only_the_stores_on_disk(first: Path, make_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The partial-build workflow: the manifest names two stores, one was built this time."""
    built = make_store("built", [dict(cell_id="c", defense="mmcoa", clean=CLEAN, adv=[T] * 20)])
    missing = tmp_path / "not-built"
    cmd = "mmrobust benchmark --model clip-tiny --defense {d} --task fmnist-zeroshot --norm linf --eps 8/255 --n 20 --out {o}"
    (first / "manifest.yaml").write_text(yaml.safe_dump({"release": "v1", "commands": [
        cmd.format(d="mmcoa", o=built), cmd.format(d="tecoa", o=missing)]}))
    assert manifest.main(["stores", str(first / "manifest.yaml"), "--existing"]) == 0
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(["make", "-s", "-C", str(repo), "leaderboard", f"LEADERBOARD={first}", f"CARRY={first}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "4 entries (3 carried from" in done.stdout
    df = pd.read_parquet(first / "entries.parquet")
    assert sorted(df["defense"]) == ["fs", "mmcoa", "none", "tecoa"]
    assert (first / "manifest.yaml").read_text().count("benchmark") == 2  # kept
